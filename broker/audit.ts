/**
 * The audit log: one JSON line per decision (pino's format: level label, time
 * in ms), on its own destination. Only allow-listed fields are ever written;
 * secrets cannot reach it because nothing that is not on the list is copied,
 * and a value carrying a key header is redacted (the second fence).
 *
 * Every line carries this process's `brokerId`, a `seq` and a `hash` chaining it
 * to the line before (broker/audit-chain.ts; `aedes-jitp audit verify`). With a
 * file, a restart goes on with the file's chain and sequence, and a rotation
 * (renamed, removed, or truncated in place) is noticed within a second, or at
 * once on SIGHUP (checkRotation), and starts the new file with an
 * `audit.chain.started` line naming the last hash of the old one. With stdout or
 * a stream, each process starts a new chain at seq 1.
 *
 * Each line also goes, unchanged, to where the admin API reads it back
 * (broker/audit-query.ts): an in-process ring when the destination is not a
 * file, and with REDIS_URL a capped Redis stream every broker process shares.
 */
import { randomUUID } from 'node:crypto'
import { closeSync, fstat, fstatSync, mkdirSync, open, openSync, readSync, type Stats } from 'node:fs'
import { stat } from 'node:fs/promises'
import { dirname } from 'node:path'
import { ReplyError, type Redis } from 'ioredis'
import pino from 'pino'
import { CHAIN_STARTED, chainHash, GENESIS_HASH, RESTARTED_AFTER_CUT, RESTARTED_ON_FILE } from './audit-chain.js'
import { AUDIT_STREAM_KEY, createAuditRing, createAuditSource, type AuditPage, type AuditQuery, type AuditRing, type AuditSource } from './audit-query.js'
import { budgetKeyOf } from './address-budget.js'
import { connectRedis, quitGracefully, within } from './store/redis.js'

export type AuditEvent =
  | 'connect.accepted' | 'connect.refused' | 'disconnect' | 'connection.closed'
  | 'subscribe.denied' | 'publish.denied' | 'payload.rejected' | 'client.disconnected.offender'
  | 'provision.certificate.issued' | 'provision.accepted' | 'provision.rejected'
  | 'device.registered' | 'device.revoked' | 'device.quarantined' | 'device.reinstated' | 'certificate.revoked' | 'ca.revoked' | 'crl.loaded' | 'crl.rejected'
  | 'config.published' | 'config.acknowledged' | 'config.rolledback'
  | 'rollout.started' | 'rollout.advanced' | 'rollout.paused' | 'rollout.resumed' | 'rollout.aborted' | 'rollout.completed'
  | 'queue.dropped' | 'claim.session.expired' | 'session.takeover'
  | 'broker.started' | 'broker.stopped'
  | 'admin.request'
  | 'certificate.rotated' | 'certificate.rotation.requested' | 'config.reloaded' | 'config.reload.failed'
  | 'device.activated' | 'device.provisioned' | 'pii.detected'
  | 'token.issued' | 'token.refused' | 'client.created' | 'client.deleted'
  | 'enrollment.accepted' | 'enrollment.refused' | 'audit.chain.started' | 'audit.stream.gap' | 'worker.started' | 'worker.exited'

export interface AuditFields {
  clientId?: string | undefined
  deviceId?: string | undefined
  role?: string | undefined
  certificateId?: string | undefined
  remoteAddress?: string | undefined
  topic?: string | undefined
  reason?: string | undefined
  errorCode?: string | undefined
  statusCode?: number | undefined
  template?: string | undefined
  version?: number | undefined
  count?: number | undefined
  qos?: number | undefined
  brokerId?: string | undefined
  /** the operator (CN of the admin certificate, or the CLI user) behind an admin action */
  actor?: string | undefined
  issuer?: string | undefined
  serialNumber?: string | undefined
  /** admin.request: the HTTP method and the request path with its query (admin URLs carry no secrets) */
  method?: string | undefined
  url?: string | undefined
  /** configuration lifecycle (CONTRACT §9): the rollout, and the version a rollback went back to */
  rolloutId?: string | undefined
  fromVersion?: number | undefined
  /** how the connection authenticated: certificate, oauth2 (external JWKS), broker-token, sas (CONTRACT §10) */
  authMethod?: string | undefined
  /** the OAuth2 client id or enrollment group a token decision is about (never the secret) */
  oauthClientId?: string | undefined
  group?: string | undefined
  /** the granted scopes, space separated */
  scope?: string | undefined
  /** pii.detected: the JSON pointer and the kind (email, phone, card, iban), never the value */
  path?: string | undefined
  kind?: string | undefined
  /** device.quarantined: which health check failed (state, config, connect, or a topic) */
  check?: string | undefined
  /** worker.*: the worker's process id and exit code */
  pid?: number | undefined
  code?: number | undefined
}

const ALLOWED: ReadonlyArray<keyof AuditFields> = [
  'clientId', 'deviceId', 'role', 'certificateId', 'remoteAddress', 'topic', 'reason',
  'errorCode', 'statusCode', 'template', 'version', 'count', 'qos', 'brokerId', 'actor', 'issuer', 'serialNumber',
  'method', 'url', 'rolloutId', 'fromVersion',
  'authMethod', 'oauthClientId', 'group', 'scope', 'path', 'kind', 'check', 'pid', 'code'
]

/** Caps attacker-chosen strings (client ids, topics) so one line stays one line of sane size. */
const MAX_FIELD = 256

function clean (value: string): string {
  const s = value.length > MAX_FIELD ? value.slice(0, MAX_FIELD) + '…' : value
  // a client-chosen string must never smuggle key material into the log
  return s.includes('PRIVATE KEY') ? '[redacted]' : s
}

export interface Audit {
  /** this process's id on every line (and the Aedes broker id): one hash chain per brokerId */
  readonly brokerId: string
  write (event: AuditEvent, fields?: AuditFields, level?: 'info' | 'warn' | 'error'): void
  /**
   * A refusal that anyone can cause before being identified (`connect.refused`,
   * `token.refused`), aggregated so that nobody can flood the log (CONTRACT §6):
   * per event, errorCode and remote address budget (an IPv6 /64 is one) and
   * interval, the first `burst` are written as `write` does, the rest counted
   * and written as one line with their `count` when the interval ends (or at
   * `flushRefusals`, or close). Beyond MAX_AGGREGATED_KEYS budgets in an interval,
   * refusals are only counted, pooled per event and code without an address.
   */
  refusal (event: 'connect.refused' | 'token.refused', fields: AuditFields, level?: 'info' | 'warn' | 'error', burst?: number): void
  /** writes the refusals counted so far now */
  flushRefusals (): void
  /** the file written out, and the Redis batch sent (bounded: a Redis that is away does not hold it) */
  flush (): Promise<void>
  /**
   * The admin API's read side (`GET /v1/audit`): the Redis stream when there is
   * one (every process's lines), else the audit file, else this process's ring.
   * This process's own lines written so far are flushed first, so it sees them.
   */
  query (q: AuditQuery): Promise<AuditPage>
  /** the Redis stream's backlog while Redis is away, and the lines dropped from it, for metrics */
  stats (): { backlog: number, dropped: number }
  /** a file destination: looks for a rotation now (SIGHUP) instead of at the next periodic check */
  checkRotation (): Promise<void>
  /** flushes what it can within about a second (Redis away: not waited for), then releases file and connection */
  close (): Promise<void>
}

export interface AuditOptions {
  /** stamped on every line; default a random UUID */
  brokerId?: string | undefined
  /** also append every line to the capped stream `streamKey` on this Redis */
  redisUrl?: string | undefined
  streamKey?: string | undefined
  /** XADD MAXLEN ~ this (AUDIT_STREAM_MAXLEN) */
  streamMaxLen?: number | undefined
  /** lines kept in process when the destination is not a file (AUDIT_MEMORY_LINES) */
  memoryLines?: number | undefined
  /** lines kept while Redis is away; beyond, the oldest are dropped */
  backlogLines?: number | undefined
  /** where the writer's own trouble goes (Redis away, lines dropped): once per episode, never per line */
  log?: { warn (obj: object, msg: string): void } | undefined
  /** the interval of `refusal`'s aggregation (AUDIT_AGGREGATE_SECONDS), default 10 s */
  refusalIntervalMs?: number | undefined
}

/** refusals written one by one per event, code, remote address budget and interval before they are only counted (`refusal`'s default) */
export const REFUSAL_BURST = 50
/** (event, code, budget) keys kept per interval; beyond, refusals are pooled per event and code, without an address */
export const MAX_AGGREGATED_KEYS = 10_000
const POOLED = '*'

interface RefusalAggregate {
  readonly event: string
  readonly remoteAddress: string | undefined
  readonly errorCode: unknown
  readonly level: string
  reason: unknown
  written: number
  /** refusals only counted, written when the interval ends */
  more: number
}

const DEFAULT_STREAM_MAXLEN = 1_000_000
const DEFAULT_MEMORY_LINES = 10_000
const DEFAULT_BACKLOG_LINES = 10_000
/** lines gather this long before one pipeline takes them to Redis: never a round trip per line */
const STREAM_BATCH_MS = 50
const STREAM_BATCH_MAX = 1000
/** close() waits this long at most for lines still on their way to Redis */
const CLOSE_FLUSH_MS = 700
/** and this long for the connection's QUIT (quitGracefully finishes on its own after) */
const CLOSE_QUIT_MS = 400
/** query() and flush() wait this long at most for this process's pending lines */
const FLUSH_STREAM_MS = 500

/** A FIFO with a fixed capacity that drops its oldest entries when full; failed lines go back to its front. */
class Backlog {
  readonly #buf: Array<string | undefined>
  #head = 0
  #size = 0
  constructor (readonly capacity: number) {
    this.#buf = new Array<string | undefined>(capacity)
  }

  get size (): number { return this.#size }

  /** returns how many old lines were dropped to make room */
  push (line: string): number {
    let dropped = 0
    if (this.#size === this.capacity) {
      this.#buf[this.#head] = undefined
      this.#head = (this.#head + 1) % this.capacity
      this.#size--
      dropped = 1
    }
    this.#buf[(this.#head + this.#size) % this.capacity] = line
    this.#size++
    return dropped
  }

  take (n: number): string[] {
    const out: string[] = []
    while (out.length < n && this.#size > 0) {
      out.push(this.#buf[this.#head] as string)
      this.#buf[this.#head] = undefined
      this.#head = (this.#head + 1) % this.capacity
      this.#size--
    }
    return out
  }

  /** lines that were taken and not delivered, back in front (they are older than everything here); returns how many did not fit */
  unshift (lines: string[]): number {
    let i = lines.length
    while (i > 0 && this.#size < this.capacity) {
      i--
      this.#head = (this.#head - 1 + this.capacity) % this.capacity
      this.#buf[this.#head] = lines[i]
      this.#size++
    }
    return i
  }
}

interface StreamWriter {
  readonly conn: Redis
  push (line: string): void
  /** sends what is pending now and waits for it, at most `ms` */
  flush (ms: number): Promise<void>
  stats (): { backlog: number, dropped: number }
  close (): Promise<void>
}

/**
 * The Redis side: lines wait in a bounded backlog and leave in one pipeline per
 * STREAM_BATCH_MS, only while the connection is ready (no offline queue: a
 * command is never parked inside ioredis). Lines a dropped connection did not
 * deliver go back to the front; lines Redis refuses (a reply error, e.g. the key
 * holding another type) would be refused again and are dropped. Nothing here
 * throws into write().
 */
function createStreamWriter (url: string, key: string, maxLen: number, backlogLines: number, warn: (details: object, message: string) => void, onGap: (count: number) => void): StreamWriter {
  const backlog = new Backlog(Math.max(1, backlogLines))
  let dropped = 0
  /** dropped lines the stream has not been told about yet: once it takes lines again, one audit.stream.gap line says how many */
  let unreported = 0
  let outage = false
  let dropWarned = false
  const conn = connectRedis(url, 'registry', (err) => {
    if (outage) return
    outage = true
    warn({ err: err.message, backlog: backlog.size }, 'audit stream: Redis unavailable, lines kept in a bounded backlog until it returns')
  })
  let timer: NodeJS.Timeout | undefined
  let inFlight: Promise<void> | undefined
  let closed = false

  const drop = (n: number, why: string): void => {
    if (n <= 0) return
    dropped += n
    unreported += n
    if (dropWarned) return
    dropWarned = true
    warn({ dropped, capacity: backlog.capacity }, `audit stream: ${why}; lines dropped from the stream (the audit file or stdout still has them)`)
  }

  conn.on('ready', () => {
    outage = false
    dropWarned = false
    schedule()
  })

  function schedule (): void {
    if (timer !== undefined || inFlight !== undefined || closed || backlog.size === 0 || conn.status !== 'ready') return
    timer = setTimeout(send, STREAM_BATCH_MS)
    timer.unref()
  }

  function send (): void {
    timer = undefined
    if (closed || inFlight !== undefined || backlog.size === 0 || conn.status !== 'ready') return
    const batch = backlog.take(STREAM_BATCH_MAX)
    const pipeline = conn.pipeline()
    for (const line of batch) pipeline.xadd(key, 'MAXLEN', '~', maxLen, '*', 'line', line)
    inFlight = pipeline.exec().then((replies) => {
      if (replies === null) return requeue(batch)
      const undelivered: string[] = []
      let refused = 0
      replies.forEach(([err], i) => {
        if (err === null) return
        if (err instanceof ReplyError) refused++
        else undelivered.push(batch[i] as string)
      })
      drop(refused, `Redis refused XADD on ${key}`)
      requeue(undelivered)
      if (unreported > 0 && refused + undelivered.length < batch.length) {
        const count = unreported
        unreported = 0
        onGap(count)
      }
    }, () => requeue(batch)).finally(() => {
      inFlight = undefined
      schedule()
    })
  }

  function requeue (lines: string[]): void {
    drop(backlog.unshift(lines), 'backlog full while Redis was away')
  }

  /** a connection still making its first connect is worth waiting for (briefly); one in an outage is not */
  let everReady = false
  conn.once('ready', () => { everReady = true })

  async function flush (ms: number): Promise<void> {
    const deadline = Date.now() + ms
    while (Date.now() < deadline) {
      if (inFlight !== undefined) {
        await within(inFlight, deadline - Date.now())
        continue
      }
      if (backlog.size === 0) return
      if (conn.status !== 'ready') {
        if (everReady || conn.status === 'end') return
        await within(new Promise((resolve) => conn.once('ready', resolve)), deadline - Date.now())
        continue
      }
      clearTimeout(timer)
      timer = undefined
      send()
    }
  }

  return {
    conn,
    push (line) {
      drop(backlog.push(line), 'backlog full while Redis was away')
      schedule()
    },
    flush,
    stats: () => ({ backlog: backlog.size, dropped }),
    async close () {
      if (closed) return
      clearTimeout(timer)
      timer = undefined
      // a last flush, then no more batches
      await flush(CLOSE_FLUSH_MS)
      closed = true
      clearTimeout(timer)
      drop(backlog.size, 'closing while Redis was away')
      await within(quitGracefully(conn), CLOSE_QUIT_MS)
    }
  }
}

/** how often a file destination looks for a rotation (renamed or removed: reopen; shrunk: truncated in place) */
const ROTATION_CHECK_MS = 1000
/**
 * Lines written within this window reach the file (or stdout) in one write. Each
 * asynchronous write is a round trip through libuv's thread pool (a wake-up of a
 * pool thread, then of the event loop): with a line or two per connect, that was
 * the largest cost the audit added to a connect. A crash loses at most this much.
 */
const COALESCE_MS = 10
/** at start, the end of an existing file is read back this far at most to find the last line */
const TAIL_MAX = 1024 * 1024

/** the keys after level/time/event, in the canonical order (broker/audit-chain.ts), each with its JSON prefix */
const ORDERED: ReadonlyArray<readonly [key: string, prefix: string]> = [...new Set<string>([...ALLOWED, 'brokerId', 'prevHash'])]
  .sort()
  .map((key) => [key, `,${JSON.stringify(key)}:`] as const)

function jsonValue (v: unknown): string {
  if (typeof v === 'number' || typeof v === 'boolean') return JSON.stringify(v)
  // a lone surrogate would reach the file as U+FFFD but be hashed as itself: made well-formed first, so the bytes and the hash agree
  return JSON.stringify((clean(String(v)) as unknown as { toWellFormed (): string }).toWellFormed())
}

/** sonic-boom sets it once ended or failed (not in its types) */
const isDestroyed = (sonic: ReturnType<typeof pino.destination>): boolean => (sonic as unknown as { destroyed: boolean }).destroyed

/** where an existing audit file's chain stands: its last whole line's seq and hash, and whether a cut line follows it */
interface Tail { seq: number, hash: string, cut: boolean, chained: boolean }

/** Read once at start (synchronously: before the first line is written, never on the hot path). */
function readTail (file: string, size: number): Tail {
  const fd = openSync(file, 'r')
  try {
    for (let len = Math.min(size, 64 * 1024); ; len = Math.min(size, len * 4)) {
      const buf = Buffer.allocUnsafe(len)
      const n = readSync(fd, buf, 0, len, size - len)
      const parts = buf.subarray(0, n).toString('utf8').split('\n')
      const cut = parts.at(-1) !== ''
      // the first part is a whole line only when the read began at the start of the file
      const wholeFrom = len === size ? 0 : 1
      // the last whole line that is not empty (two processes' appends on a shared file can leave an empty one)
      let i = parts.length - 2
      while (i >= wholeFrom && parts[i] === '') i--
      if (i >= wholeFrom) {
        const last = parts[i] ?? ''
        let rec: { seq?: unknown, hash?: unknown } = {}
        try { rec = JSON.parse(last) as typeof rec } catch { /* not a chained line */ }
        if (Number.isSafeInteger(rec.seq) && typeof rec.hash === 'string' && /^[0-9a-f]{64}$/.test(rec.hash)) {
          return { seq: rec.seq as number, hash: rec.hash, cut, chained: true }
        }
        return { seq: 0, hash: GENESIS_HASH, cut, chained: false }
      }
      if (len === size || len >= TAIL_MAX) return { seq: 0, hash: GENESIS_HASH, cut, chained: false }
    }
  } finally {
    closeSync(fd)
  }
}

const fstatAsync = (fd: number): Promise<Stats> => new Promise((resolve, reject) => {
  fstat(fd, (err, st) => { if (err) reject(err); else resolve(st) })
})
const openAsync = (path: string): Promise<number> => new Promise((resolve, reject) => {
  open(path, 'a', (err, fd) => { if (err) reject(err); else resolve(fd) })
})

/** the file destination: its descriptor (opened here, so its inode can be compared with the path's) and its writer */
interface FileTarget {
  readonly path: string
  readonly fd: number
  readonly sonic: ReturnType<typeof pino.destination>
  readonly ino: number
  readonly dev: number
  /** the size last seen: smaller later means truncated in place (copytruncate) */
  size: number
}

/**
 * Asynchronous writes, each line handed over at once. minLength 1, not 0: with
 * 0, sonic-boom's flush(cb) calls back at once instead of after the writes in
 * progress, and flush() must mean "on disk" (a query reads the file back, close
 * releases it). Every write is a whole line (> 1 byte), so nothing waits for more.
 */
const sonicTo = (dest: number): ReturnType<typeof pino.destination> => pino.destination({ dest, sync: false, minLength: 1 })

function fileTarget (path: string, fd: number, st: Stats): FileTarget {
  return { path, fd, sonic: sonicTo(fd), ino: st.ino, dev: st.dev, size: st.size }
}

export function createAudit (destination: string | NodeJS.WritableStream, opts: AuditOptions = {}): Audit {
  const toFile = typeof destination === 'string' && destination !== 'stdout'
  const brokerId = opts.brokerId ?? randomUUID()
  const warn = opts.log !== undefined
    ? (details: object, message: string): void => opts.log?.warn(details, message)
    : (details: object, message: string): void => { process.emitWarning(`${message} ${JSON.stringify(details)}`) }

  // the chain (broker/audit-chain.ts): this process's seq and the last line's hash
  let seq = 0
  let prev = GENESIS_HASH
  /** why the first line starts a chain that continues another (undefined: a new chain, seq 1 over the genesis hash) */
  let continues: string | undefined
  let startLevel: 'info' | 'warn' = 'info'
  let separator = ''

  let file: FileTarget | undefined
  let regular = false
  let out: { write (text: string): unknown }
  let stdoutSonic: ReturnType<typeof pino.destination> | undefined
  if (typeof destination !== 'string') {
    out = destination
  } else if (!toFile) {
    stdoutSonic = sonicTo(1)
    out = stdoutSonic
  } else {
    mkdirSync(dirname(destination), { recursive: true })
    const fd = openSync(destination, 'a')
    const st = fstatSync(fd)
    file = fileTarget(destination, fd, st)
    out = file.sonic
    regular = st.isFile()
    if (regular && st.size > 0) {
      // a restart on the same file: the chain and the sequence go on from its last line
      const tail = readTail(destination, st.size)
      seq = tail.seq
      prev = tail.hash
      continues = tail.chained ? RESTARTED_ON_FILE : 'the file holds no chained line to continue (written before chaining?)'
      if (tail.cut) {
        // the cut line gets its newline, so it stays one (broken) line and the chain resumes on the next
        separator = '\n'
        continues = RESTARTED_AFTER_CUT
        startLevel = 'warn'
      }
    }
  }

  const ring: AuditRing | undefined = toFile ? undefined : createAuditRing(opts.memoryLines ?? DEFAULT_MEMORY_LINES)
  const streamKey = opts.streamKey ?? AUDIT_STREAM_KEY
  const writer = opts.redisUrl !== undefined && opts.redisUrl !== ''
    ? createStreamWriter(opts.redisUrl, streamKey, opts.streamMaxLen ?? DEFAULT_STREAM_MAXLEN, opts.backlogLines ?? DEFAULT_BACKLOG_LINES, warn,
      (count) => { emit('audit.stream.gap', { count, reason: 'lines dropped from the Redis stream while it was away; the audit file has them' }, 'warn') })
    : undefined
  const source: AuditSource = createAuditSource({
    redis: writer?.conn,
    streamKey,
    file: toFile ? destination : undefined,
    ring
  })

  /** what waits for the next write to `out` (COALESCE_MS); a stream given by the caller gets each line at once */
  let pending = ''
  let pendingTimer: NodeJS.Timeout | undefined
  function toOut (text: string): void {
    if (typeof destination !== 'string') {
      out.write(text)
      return
    }
    pending += text
    if (pendingTimer === undefined) {
      pendingTimer = setTimeout(drainPending, COALESCE_MS)
      pendingTimer.unref()
    }
  }
  /** hands what is pending to the current destination now (before a flush, a rotation, close) */
  function drainPending (): void {
    clearTimeout(pendingTimer)
    pendingTimer = undefined
    if (pending === '') return
    const text = pending
    pending = ''
    out.write(text)
  }

  let closed = false
  let lateWarned = false
  /**
   * One line: serialized here in the canonical order (not by pino: the hash
   * needs an order a verifier can rebuild), sealed with seq and hash, and the
   * same text to the destination, the ring and the stream.
   */
  function emit (event: string, fields: Readonly<Record<string, unknown>>, level: string, prevHash?: string): void {
    if (closed) {
      if (!lateWarned) warn({ event }, 'audit line written after close: dropped')
      lateWarned = true
      return
    }
    let body = `{"level":"${level}","time":${Date.now()},"event":${JSON.stringify(event)}`
    for (const [key, prefix] of ORDERED) {
      const v = key === 'brokerId' ? brokerId : key === 'prevHash' ? prevHash : fields[key]
      if (v !== undefined) body += prefix + jsonValue(v)
    }
    body += `,"seq":${++seq}`
    const hash = chainHash(prev, body + '}')
    prev = hash
    const line = `${body},"hash":"${hash}"}`
    toOut(separator + line + '\n')
    separator = ''
    ring?.push(line)
    writer?.push(line)
  }

  /** the first line of a chain that continues another: names the hash it continues from */
  function startChain (reason: string, level: 'info' | 'warn' = 'info'): void {
    emit(CHAIN_STARTED, { reason }, level, prev)
  }
  if (continues !== undefined) startChain(continues, startLevel)

  // rotation (docs/OPERATIONS.md): renamed or removed → a new file whose first line names the last hash of the old one;
  // truncated in place (copytruncate) → a chain.started line where the writing goes on
  let checking: Promise<void> | undefined
  async function lookForRotation (): Promise<void> {
    const f = file
    if (f === undefined || closed) return
    const [onDisk, ours] = await Promise.all([stat(f.path).catch(() => null), fstatAsync(f.fd).catch(() => null)])
    if (ours === null || closed || file !== f || !ours.isFile()) return
    if (onDisk !== null && onDisk.ino === f.ino && onDisk.dev === f.dev) {
      if (ours.size < f.size) startChain('the file was truncated in place (copytruncate): the lines before this one are in the copy', 'warn')
      f.size = ours.size
      return
    }
    const fd = await openAsync(f.path)
    const st = await fstatAsync(fd).catch(() => null)
    if (closed || file !== f || st === null) {
      closeSync(fd)
      return
    }
    const next = fileTarget(f.path, fd, st)
    // the lines written before the switch belong to the old file
    drainPending()
    file = next
    out = next.sonic
    startChain(onDisk === null ? 'the file was moved away or removed: a new one' : 'the file was rotated (another file at its path): a new one')
    // the old file gets what was written before the switch, then is closed
    f.sonic.end()
  }
  const checkRotation = (): Promise<void> => {
    checking ??= lookForRotation().catch((err: unknown) => {
      warn({ err: (err as Error).message, file: file?.path }, 'audit: could not reopen the audit file after a rotation; still writing to the old one')
    }).finally(() => { checking = undefined })
    return checking
  }
  const rotationTimer = regular ? setInterval(() => { void checkRotation() }, ROTATION_CHECK_MS) : undefined
  rotationTimer?.unref()

  const flushFile = (): Promise<void> => new Promise((resolve) => {
    drainPending()
    const sonic = file?.sonic ?? stdoutSonic
    if (sonic === undefined || isDestroyed(sonic)) return resolve()
    sonic.flush(() => resolve())
  })

  /** per event, code and address budget this interval */
  const refusals = new Map<string, RefusalAggregate>()
  function writeRefusalCounts (): void {
    for (const r of refusals.values()) {
      if (r.more > 0) emit(r.event, { remoteAddress: r.remoteAddress, errorCode: r.errorCode, reason: r.reason, count: r.more }, r.level)
    }
    refusals.clear()
  }
  const refusalTimer = setInterval(writeRefusalCounts, opts.refusalIntervalMs ?? 10_000)
  refusalTimer.unref()

  return {
    brokerId,
    write (event, fields = {}, level = 'info') {
      emit(event, fields as Readonly<Record<string, unknown>>, level)
    },
    refusal (event, fields, level = 'warn', burst = REFUSAL_BURST) {
      const address = typeof fields.remoteAddress === 'string' ? fields.remoteAddress : undefined
      const head = `${event}\u0000${String(fields.errorCode)}\u0000`
      let key = head + (address === undefined ? POOLED : budgetKeyOf(address))
      let r = refusals.get(key)
      if (r === undefined && refusals.size >= MAX_AGGREGATED_KEYS) {
        // too many budgets this interval: the rest pooled per event and code, counted only
        key = head + POOLED
        r = refusals.get(key) ?? { event, remoteAddress: undefined, errorCode: fields.errorCode, level, reason: fields.reason, written: burst, more: 0 }
        refusals.set(key, r)
      }
      if (r === undefined) {
        r = { event, remoteAddress: address, errorCode: fields.errorCode, level, reason: fields.reason, written: 0, more: 0 }
        refusals.set(key, r)
      }
      if (r.written < burst) {
        r.written++
        emit(event, fields as Readonly<Record<string, unknown>>, level)
        return
      }
      r.more++
      r.reason = fields.reason
    },
    flushRefusals: writeRefusalCounts,
    async flush () {
      await Promise.all([flushFile(), writer?.flush(FLUSH_STREAM_MS)])
    },
    async query (q) {
      if (source.kind === 'file') await flushFile()
      else if (writer !== undefined) await writer.flush(FLUSH_STREAM_MS)
      return source.query(q)
    },
    stats: () => writer?.stats() ?? { backlog: 0, dropped: 0 },
    checkRotation,
    async close () {
      if (closed) return
      clearInterval(rotationTimer)
      clearInterval(refusalTimer)
      writeRefusalCounts()
      await checking
      const closing = writer?.close()
      closed = true
      drainPending()
      const sonic = file?.sonic ?? stdoutSonic
      file = undefined
      stdoutSonic = undefined
      if (sonic !== undefined && !isDestroyed(sonic)) {
        await new Promise<void>((resolve) => {
          sonic.flush(() => {
            if ((sonic as unknown as { fd: number }).fd === 1) return resolve()
            sonic.once('close', () => resolve())
            sonic.end()
          })
        })
      }
      await closing
      await source.close()
    }
  }
}
