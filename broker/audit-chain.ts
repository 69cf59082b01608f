/**
 * The audit log's hash chain (CONTRACT §6): every line carries `seq` and
 * `hash`, and `aedes-jitp audit verify` recomputes them.
 *
 * Canonical form of a line (what is hashed): its JSON object without `hash`,
 * with the keys `level`, `time`, `event` first (those present), then every other
 * key except `seq` in code-unit order (JavaScript's default sort), then `seq`;
 * each value as JSON.stringify writes it, no whitespace. The writer
 * (broker/audit.ts) writes lines in exactly that order with `,"hash":"…"` added
 * last, so a line's bytes up to `,"hash"` plus `}` ARE its canonical form; the
 * verifier re-serializes instead of cutting bytes, so a line that went through
 * a JSON parser and back (the Redis stream, the admin API, `audit --json`, jq)
 * still verifies.
 *
 * hash = lowercase hex SHA-256 of the previous line's hash (64 hex characters)
 * immediately followed by the canonical form, as UTF-8. A chain's first line
 * hashes over 64 zeros; a chain that continues another one (a restart on the
 * same file, a rotated file, a file truncated under the writer) starts with an
 * `audit.chain.started` line whose `prevHash` is the hash it continues from, and
 * `seq` goes on from there.
 *
 * Each broker process writes its own chain and stamps every line with its
 * `brokerId`; a view that merges several processes (the Redis stream, a file
 * several processes appended to) verifies per brokerId (`--merged`).
 */
import { hash } from 'node:crypto'
import { createReadStream } from 'node:fs'

/** the hash a new chain's first line is computed over */
export const GENESIS_HASH = '0'.repeat(64)
export const CHAIN_STARTED = 'audit.chain.started'
/**
 * The reasons of the `audit.chain.started` lines a writer puts in the MIDDLE of a
 * file (a restart appending to it): the file's earlier lines are its beginning,
 * so a file that starts with one has lost them. A rotated or truncated file
 * starts with its own marker, whose reason is none of these.
 */
export const RESTARTED_ON_FILE = 'restarted on the same file'
export const RESTARTED_AFTER_CUT = 'restarted after a line cut short (a crash while it was being written?)'
const MID_FILE_REASONS: ReadonlySet<unknown> = new Set([RESTARTED_ON_FILE, RESTARTED_AFTER_CUT])
const HEAD = ['level', 'time', 'event'] as const
const HEAD_SET: ReadonlySet<string> = new Set([...HEAD, 'seq', 'hash'])
const HASH = /^[0-9a-f]{64}$/

/** the canonical JSON of a parsed line (see the top of this file) */
export function canonicalJson (record: Readonly<Record<string, unknown>>): string {
  let out = ''
  const add = (key: string): void => {
    const value = record[key]
    if (value === undefined) return
    out += (out === '' ? '{' : ',') + JSON.stringify(key) + ':' + JSON.stringify(value)
  }
  for (const key of HEAD) add(key)
  for (const key of Object.keys(record).filter((k) => !HEAD_SET.has(k)).sort()) add(key)
  add('seq')
  return out === '' ? '{}' : out + '}'
}

export function chainHash (prevHash: string, canonical: string): string {
  // one-shot: no Hash object per line (the broker seals every audit line with it)
  return hash('sha256', prevHash + canonical, 'hex')
}

// ---------------------------------------------------------------- verification

export type ChainFault = 'changed' | 'removed' | 'reordered' | 'inserted' | 'cut' | 'not-chained'

export interface VerifyFailure {
  readonly ok: false
  readonly file: string
  /** 1-based line number in `file` */
  readonly line: number
  /** the line's seq (when it has one), else the seq expected there */
  readonly seq: number | null
  readonly fault: ChainFault
  readonly message: string
}

export interface VerifySuccess {
  readonly ok: true
  readonly lines: number
  /** chains seen (brokerIds with --merged, else 1 per run of files) */
  readonly chains: number
  readonly firstSeq: number | null
  readonly lastSeq: number | null
  readonly lastHash: string | null
  /** how the (first) chain is anchored: genesis, a prevHash, or its first line taken as it is (--partial) */
  readonly anchor: string
  /** things worth saying that are not faults (a last line still being written) */
  readonly notes: string[]
}

export type VerifyResult = VerifySuccess | VerifyFailure

export interface VerifyOptions {
  /** lines of several processes interleaved: one chain per brokerId, order between chains free */
  merged?: boolean
  /** a chain may start in the middle (copytruncate, an excerpt, the trimmed Redis stream): its first line is taken as it is */
  partial?: boolean
}

interface Parsed {
  readonly rec: Record<string, unknown>
  readonly seq: number
  readonly hash: string
  readonly canonical: string
}

interface Chain {
  prev: string
  next: number
  lastSeq: number
}

interface Pending {
  readonly file: string
  readonly line: number
  readonly key: string
  /** null: not a chained line at all */
  readonly parsed: Parsed | null
  readonly prev: string
  readonly expected: number
}

function parse (text: string): Parsed | null {
  let rec: unknown
  try {
    rec = JSON.parse(text)
  } catch {
    return null
  }
  if (typeof rec !== 'object' || rec === null || Array.isArray(rec)) return null
  const r = rec as Record<string, unknown>
  if (typeof r.hash !== 'string' || !Number.isSafeInteger(r.seq) || (r.seq as number) < 1) return null
  return { rec: r, seq: r.seq as number, hash: r.hash, canonical: canonicalJson(r) }
}

const short = (hash: string): string => `${hash.slice(0, 12)}…`

function startsChain (p: Parsed): string | null {
  const prev = p.rec.prevHash
  return p.rec.event === CHAIN_STARTED && typeof prev === 'string' && HASH.test(prev) ? prev : null
}

/** What happened at a line that does not continue its chain, told with the next line of the same chain (if any). */
function classify (at: Pending, next: Parsed | null): { fault: ChainFault, message: string } {
  const { prev, expected } = at
  const nextContinues = next !== null && next.seq === expected && chainHash(prev, next.canonical) === next.hash
  const p = at.parsed
  if (p === null) {
    if (next !== null && next.seq === expected && startsChain(next) === prev) {
      return { fault: 'cut', message: 'cut short (a crash while it was being written?); the chain resumes on the next line' }
    }
    if (nextContinues) return { fault: 'inserted', message: 'inserted: not a chained audit line, and the next line continues the chain without it' }
    return { fault: 'not-chained', message: 'not a chained audit line (no seq/hash, or not JSON): changed or inserted' }
  }
  if (p.seq === expected) {
    if (nextContinues) return { fault: 'inserted', message: `inserted: the next line carries seq ${expected} and continues the chain without this one` }
    return { fault: 'changed', message: 'changed: its content does not match its hash' }
  }
  // the seq itself edited: the line verifies with the seq it should have
  if (chainHash(prev, canonicalJson({ ...p.rec, seq: expected })) === p.hash) {
    return { fault: 'changed', message: `changed: its seq was ${expected}` }
  }
  if (p.seq > expected) {
    if (next !== null && next.seq === expected) return { fault: 'reordered', message: `reordered: seq ${p.seq} comes before seq ${expected}` }
    const missing = p.seq - expected === 1 ? `seq ${expected}` : `seq ${expected}..${p.seq - 1}`
    return { fault: 'removed', message: `removed: ${missing} missing before this line` }
  }
  if (nextContinues) return { fault: 'inserted', message: `inserted: seq ${p.seq} again (expected ${expected}), and the next line continues the chain without it` }
  return { fault: 'reordered', message: `reordered or inserted: seq goes back from ${expected - 1} to ${p.seq}` }
}

/**
 * Checks lines in order, over one or several files (a rotated file and its
 * successor: the chain runs on across them). Stops at the first line that does
 * not continue its chain and names it. Feed with push(), end with finish().
 */
export class ChainVerifier {
  readonly #opts: VerifyOptions
  readonly #chains = new Map<string, Chain>()
  #pending: Pending | undefined
  #result: VerifyFailure | undefined
  #lines = 0
  #firstSeq: number | null = null
  #lastSeq: number | null = null
  #lastHash: string | null = null
  #anchor = ''
  readonly #notes: string[] = []

  constructor (opts: VerifyOptions = {}) {
    this.#opts = opts
  }

  /** the failure found so far (verification can stop) */
  get failed (): VerifyFailure | undefined { return this.#result }

  #fail (at: Pending, next: Parsed | null): void {
    const { fault, message } = classify(at, next)
    this.#result = { ok: false, file: at.file, line: at.line, seq: at.parsed?.seq ?? (at.expected > 0 ? at.expected : null), fault, message }
    this.#pending = undefined
  }

  push (file: string, lineNo: number, text: string): void {
    if (this.#result !== undefined) return
    // an empty line holds no record (two processes' appends racing a start on a shared file can leave one): nothing to check
    if (text.trim() === '') return
    this.#lines++
    const parsed = parse(text)
    const merged = this.#opts.merged === true
    const key = merged && parsed !== null && typeof parsed.rec.brokerId === 'string' ? parsed.rec.brokerId : ''
    const pending = this.#pending
    if (pending !== undefined) {
      // merged: a line of another chain says nothing about the pending one, unless it fails too (then the earlier one is named)
      if (!merged || pending.key === key || parsed === null) return this.#fail(pending, parsed)
    }
    if (parsed === null) {
      // which chain a broken line belonged to cannot be told in a merged view: named at once
      if (merged) return this.#fail({ file, line: lineNo, key, parsed: null, prev: GENESIS_HASH, expected: 0 }, null)
      const chain = this.#chains.get(key)
      this.#pending = { file, line: lineNo, key, parsed: null, prev: chain?.prev ?? GENESIS_HASH, expected: chain?.next ?? 1 }
      return
    }
    let chain = this.#chains.get(key)
    if (chain === undefined) {
      const prevHash = startsChain(parsed)
      let anchor: string
      if (prevHash !== null) {
        chain = { prev: prevHash, next: parsed.seq, lastSeq: parsed.seq - 1 }
        anchor = prevHash === GENESIS_HASH ? 'from the genesis hash' : `continues ${short(prevHash)} from seq ${parsed.seq}`
      } else if (this.#opts.partial === true) {
        // taken as it is: nothing before it to check it against
        chain = { prev: parsed.hash, next: parsed.seq + 1, lastSeq: parsed.seq }
        this.#chains.set(key, chain)
        this.#seen(parsed, `its first line (seq ${parsed.seq}) taken as it is`)
        return
      } else {
        chain = { prev: GENESIS_HASH, next: 1, lastSeq: 0 }
        anchor = 'from the genesis hash'
      }
      this.#chains.set(key, chain)
      if (this.#anchor === '') this.#anchor = anchor
      const beginningGone = (message: string): void => {
        this.#result = { ok: false, file, line: lineNo, seq: parsed.seq, fault: 'removed', message }
      }
      if (prevHash !== null && !merged && this.#opts.partial !== true && MID_FILE_REASONS.has(parsed.rec.reason)) {
        // deleting a file's lines up to a restart made the rest look like a chain that continues another one
        return beginningGone(`removed: the chain starts at a restart on the same file (seq ${parsed.seq}, "${String(parsed.rec.reason)}") with nothing of the file before it (a copy of part of a file verifies with --partial)`)
      }
      if (prevHash === null && parsed.seq !== 1) {
        // merged: a fault pending on another chain is on an earlier line, so it is the one named
        if (this.#pending !== undefined) return this.#fail(this.#pending, null)
        return beginningGone(`removed: the chain starts at seq ${parsed.seq} with no audit.chain.started before it (its beginning is gone; a copy of a rotated or truncated file verifies with --partial)`)
      }
    }
    if (parsed.seq === chain.next && chainHash(chain.prev, parsed.canonical) === parsed.hash) {
      chain.prev = parsed.hash
      chain.next = parsed.seq + 1
      chain.lastSeq = parsed.seq
      this.#seen(parsed)
      return
    }
    if (this.#pending !== undefined) return this.#fail(this.#pending, null)
    this.#pending = { file, line: lineNo, key, parsed, prev: chain.prev, expected: chain.next }
  }

  #seen (p: Parsed, anchor?: string): void {
    if (anchor !== undefined && this.#anchor === '') this.#anchor = anchor
    this.#firstSeq ??= p.seq
    this.#lastSeq = p.seq
    this.#lastHash = p.hash
  }

  /** a last line without its newline: being written now, or cut by a crash; either way nothing after it to check it by */
  note (message: string): void {
    this.#notes.push(message)
  }

  finish (): VerifyResult {
    if (this.#pending !== undefined) this.#fail(this.#pending, null)
    if (this.#result !== undefined) return this.#result
    return {
      ok: true,
      lines: this.#lines,
      chains: this.#chains.size,
      firstSeq: this.#firstSeq,
      lastSeq: this.#lastSeq,
      lastHash: this.#lastHash,
      anchor: this.#anchor === '' ? 'empty' : this.#anchor,
      notes: this.#notes
    }
  }
}

/** every line, by bytes (a line is what ends with \n), with a flag for a last line with no newline */
async function * linesOf (source: AsyncIterable<Buffer | string>): AsyncGenerator<{ text: string, complete: boolean }> {
  let carry: Buffer = Buffer.alloc(0)
  for await (const chunk of source) {
    const bytes = typeof chunk === 'string' ? Buffer.from(chunk, 'utf8') : chunk
    let buf = carry.length > 0 ? Buffer.concat([carry, bytes]) : bytes
    let nl: number
    while ((nl = buf.indexOf(0x0a)) >= 0) {
      yield { text: buf.subarray(0, nl).toString('utf8'), complete: true }
      buf = buf.subarray(nl + 1)
    }
    carry = Buffer.from(buf)
  }
  if (carry.length > 0) yield { text: carry.toString('utf8'), complete: false }
}

/** Verifies files in order ('-' reads stdin): one chain running across them, or one per brokerId with `merged`. */
export async function verifyFiles (files: string[], opts: VerifyOptions = {}, stdin: NodeJS.ReadableStream = process.stdin): Promise<VerifyResult> {
  const verifier = new ChainVerifier(opts)
  for (const file of files) {
    const source = (file === '-' ? stdin : createReadStream(file)) as AsyncIterable<Buffer | string>
    let n = 0
    for await (const { text, complete } of linesOf(source)) {
      n++
      if (!complete) {
        verifier.note(`${file} line ${n} has no newline yet (being written?): not checked`)
        break
      }
      verifier.push(file, n, text)
      if (verifier.failed !== undefined) return verifier.finish()
    }
  }
  return verifier.finish()
}
