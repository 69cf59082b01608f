/**
 * `aedes-jitp audit [--follow] [--event GLOB] [--device ID] [--since T] [FILE]`: the audit log for humans.
 * `aedes-jitp audit verify [--merged] [--partial] FILE...`: checks the hash chain (broker/audit-chain.ts).
 * With FILE (or `-` for stdin) it reads that file here; without, it asks the admin API
 * (`GET /v1/audit`), which answers from the Redis stream every broker process writes
 * to, or from the embedded broker's file or ring: one query sees the whole cluster.
 */
import { createReadStream, existsSync, statSync, watch } from 'node:fs'
import { createInterface } from 'node:readline'
import { parseArgs } from 'node:util'
import { verifyFiles } from '../audit-chain.js'
import { globMatcher, parseSince, type GlobMatcher } from '../audit-query.js'
import { ADMIN_OPTIONS, adminCall, adminTarget, withQuery, type AdminTarget } from './admin-client.js'

/**
 * Every control character a terminal could act on: C0, DEL, C1, and the Unicode
 * line and paragraph separators. A client id is chosen by the client: unescaped,
 * `\n` would forge a second audit line and ANSI escapes would repaint the screen.
 */
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g
const NAMED: Readonly<Record<string, string>> = { '\n': '\\n', '\r': '\\r', '\t': '\\t' }

/** `\n`, `\r`, `\t` by name, the others as `\xNN` or `\uNNNN`; a backslash doubled so an escape cannot be forged either */
export function escapeControl (value: string): string {
  return value.replace(/\\/g, '\\\\').replace(CONTROL, (c) => {
    const named = NAMED[c]
    if (named !== undefined) return named
    const code = c.charCodeAt(0)
    return code <= 0xff ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`
  })
}

const SHOWN = ['clientId', 'deviceId', 'role', 'topic', 'errorCode', 'reason', 'remoteAddress', 'certificateId', 'template', 'version', 'count']

export function formatLine (line: string, filter: { event?: GlobMatcher | undefined, device?: string | undefined, since?: number | undefined }): string | null {
  let entry: Record<string, unknown>
  try {
    entry = JSON.parse(line) as Record<string, unknown>
  } catch {
    return null
  }
  if (typeof entry.event !== 'string') return null
  if (filter.event && !filter.event.test(entry.event)) return null
  if (filter.device && entry.deviceId !== filter.device) return null
  if (filter.since !== undefined && (typeof entry.time !== 'number' || entry.time < filter.since)) return null
  const time = typeof entry.time === 'number' ? new Date(entry.time).toISOString() : '-'
  const level = typeof entry.level === 'string' ? escapeControl(entry.level.toUpperCase()) : ''
  const details = SHOWN.filter((k) => entry[k] !== undefined).map((k) => `${k}=${escapeControl(String(entry[k]))}`).join(' ')
  return `${time} ${level.padEnd(5)} ${escapeControl(entry.event).padEnd(28)} ${details}`
}

/** ISO 8601 or ms since the epoch */
function sinceArg (since: string | undefined): number | undefined {
  if (since === undefined) return undefined
  const ms = parseSince(since)
  if (ms === null) throw new Error(`audit: --since '${since}' is neither an ISO 8601 time nor milliseconds since the epoch`)
  return ms
}

const FOLLOW_POLL_MS = 1000

/** pages through GET /v1/audit; with follow, keeps asking from the follow cursor until interrupted */
async function fromApi (target: AdminTarget, query: { event?: string | undefined, deviceId?: string | undefined, since?: number | undefined }, follow: boolean, print: (line: string) => void): Promise<number | null> {
  let cursor: string | undefined
  for (;;) {
    const page = await adminCall<{ items: unknown[], nextCursor: string | null, followCursor: string }>(target, 'GET',
      withQuery('/v1/audit', { ...query, limit: 1000, cursor }))
    for (const item of page.items) print(JSON.stringify(item))
    if (page.nextCursor) {
      cursor = page.nextCursor
      continue
    }
    if (!follow) return 0
    cursor = page.followCursor
    await new Promise((resolve) => setTimeout(resolve, FOLLOW_POLL_MS))
  }
}

/**
 * Exit 0 with a one-line summary on an intact chain; otherwise (thrown: a
 * one-line reason on stderr, exit 1) the file, the 1-based line and the seq of
 * the first line changed, removed, inserted or reordered. Several files are one
 * chain in the order given (a rotated file, then its successor).
 */
async function verifyCommand (args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      merged: { type: 'boolean', default: false },
      partial: { type: 'boolean', default: false },
      json: { type: 'boolean', default: false }
    }
  })
  if (positionals.length === 0) throw new Error('audit verify: name the file(s) to verify (- for stdin)')
  for (const file of positionals) {
    if (file !== '-' && !existsSync(file)) throw new Error(`audit verify: no such file ${file}`)
  }
  const result = await verifyFiles(positionals, { merged: values.merged, partial: values.partial })
  if (values.json) process.stdout.write(JSON.stringify(result) + '\n')
  if (!result.ok) {
    throw new Error(`audit verify: ${escapeControl(result.file)} line ${result.line} (seq ${result.seq ?? '?'}): ${result.message}`)
  }
  if (!values.json) {
    const notes = result.notes.length > 0 ? `; ${result.notes.join('; ')}` : ''
    // merged: several chains, so no one seq range or last hash to show
    const chain = values.merged
      ? `${result.chains} chains (one per brokerId)${values.partial ? ', each from its first line' : ''}`
      : `${result.firstSeq === null ? 'no lines' : `seq ${result.firstSeq}..${result.lastSeq}`}, ${result.anchor}, last hash ${result.lastHash ?? '-'}`
    process.stdout.write(`audit verify: intact: ${result.lines} lines, ${chain}${notes}\n`)
  }
  return 0
}

export async function auditCommand (args: string[]): Promise<number | null> {
  if (args[0] === 'verify') return verifyCommand(args.slice(1))
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      ...ADMIN_OPTIONS,
      follow: { type: 'boolean', short: 'f', default: false },
      event: { type: 'string' },
      device: { type: 'string' },
      since: { type: 'string' }
    }
  })
  const file = positionals[0]
  const since = sinceArg(values.since)
  const filter = { event: values.event ? globMatcher(values.event) : undefined, device: values.device, since }
  const print = (line: string): void => {
    if (values.json) {
      // the API already filtered; a file is filtered here, the line passed on as it is
      if (file === undefined || formatLine(line, filter) !== null) process.stdout.write(line + '\n')
      return
    }
    const out = formatLine(line, filter)
    if (out !== null) process.stdout.write(out + '\n')
  }
  if (file === undefined) {
    return fromApi(adminTarget(values), { event: values.event, deviceId: values.device, since }, values.follow, print)
  }
  if (file === '-') {
    for await (const line of createInterface({ input: process.stdin })) print(line)
    return 0
  }
  if (!existsSync(file)) throw new Error(`audit: no such file ${file}`)
  let position = 0
  const readFrom = async (start: number): Promise<number> => {
    const size = statSync(file).size
    if (size < start) start = 0 // rotated or truncated
    if (size === start) return start
    const rl = createInterface({ input: createReadStream(file, { start, end: size - 1 }) })
    let consumed = start
    for await (const line of rl) {
      consumed += Buffer.byteLength(line) + 1
      print(line)
    }
    return Math.min(consumed, size)
  }
  position = await readFrom(0)
  if (!values.follow) return 0
  let busy = false
  watch(file, () => {
    if (busy) return
    busy = true
    readFrom(position).then((p) => { position = p; busy = false }, () => { busy = false })
  })
  return null
}
