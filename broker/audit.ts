/**
 * The audit log: one pino JSON line per decision, on its own destination.
 * Only allow-listed fields are ever written; secrets cannot reach it because
 * nothing that is not on the list is copied (redaction is the second fence).
 *
 * Each serialized line also goes, unchanged, to where the admin API reads it
 * back (broker/audit-query.ts): an in-process ring when the destination is not
 * a file, and with REDIS_URL a capped Redis stream every broker process shares.
 */
import { mkdirSync } from 'node:fs'
import { dirname } from 'node:path'
import { ReplyError, type Redis } from 'ioredis'
import pino from 'pino'
import { AUDIT_STREAM_KEY, createAuditRing, createAuditSource, type AuditPage, type AuditQuery, type AuditRing, type AuditSource } from './audit-query.js'
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
  | 'enrollment.accepted' | 'enrollment.refused' | 'audit.chain.started' | 'worker.started' | 'worker.exited'

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
  write (event: AuditEvent, fields?: AuditFields, level?: 'info' | 'warn' | 'error'): void
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
  /** flushes what it can within about a second (Redis away: not waited for), then releases file and connection */
  close (): Promise<void>
}

export interface AuditOptions {
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
}

const DEFAULT_STREAM_MAXLEN = 100_000
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
function createStreamWriter (url: string, key: string, maxLen: number, backlogLines: number, warn: (details: object, message: string) => void): StreamWriter {
  const backlog = new Backlog(Math.max(1, backlogLines))
  let dropped = 0
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

export function createAudit (destination: string | NodeJS.WritableStream, opts: AuditOptions = {}): Audit {
  const toFile = typeof destination === 'string' && destination !== 'stdout'
  let stream: pino.DestinationStream
  let sonic: ReturnType<typeof pino.destination> | undefined
  if (typeof destination === 'string') {
    if (toFile) mkdirSync(dirname(destination), { recursive: true })
    sonic = pino.destination({ dest: toFile ? destination : 1, sync: false, minLength: 0 })
    stream = sonic
  } else {
    stream = destination
  }
  const warn = opts.log !== undefined
    ? (details: object, message: string): void => opts.log?.warn(details, message)
    : (details: object, message: string): void => { process.emitWarning(`${message} ${JSON.stringify(details)}`) }
  const ring: AuditRing | undefined = toFile ? undefined : createAuditRing(opts.memoryLines ?? DEFAULT_MEMORY_LINES)
  const streamKey = opts.streamKey ?? AUDIT_STREAM_KEY
  const writer = opts.redisUrl !== undefined && opts.redisUrl !== ''
    ? createStreamWriter(opts.redisUrl, streamKey, opts.streamMaxLen ?? DEFAULT_STREAM_MAXLEN, opts.backlogLines ?? DEFAULT_BACKLOG_LINES, warn)
    : undefined
  const source: AuditSource = createAuditSource({
    redis: writer?.conn,
    streamKey,
    file: toFile ? destination : undefined,
    ring
  })
  // the line exactly as serialized, once: the destination gets it, and the ring and the stream get the same text
  const tee: pino.DestinationStream = {
    write (msg: string) {
      stream.write(msg)
      if (ring === undefined && writer === undefined) return
      const line = msg.endsWith('\n') ? msg.slice(0, -1) : msg
      ring?.push(line)
      writer?.push(line)
    }
  }
  const logger = pino({
    base: null,
    messageKey: 'message',
    timestamp: pino.stdTimeFunctions.epochTime,
    formatters: { level: (label) => ({ level: label }) },
    redact: {
      paths: ['privateKey', 'certificateOwnershipToken', 'password', 'certificateSigningRequest', 'certificatePem', '*.privateKey', '*.password'],
      remove: true
    }
  }, tee)

  const flushFile = (): Promise<void> => new Promise((resolve) => {
    if (!sonic) return resolve()
    sonic.flush(() => resolve())
  })

  return {
    write (event, fields = {}, level = 'info') {
      const line: Record<string, unknown> = { event }
      for (const key of ALLOWED) {
        const v = fields[key]
        if (v === undefined) continue
        line[key] = typeof v === 'string' ? clean(v) : v
      }
      logger[level](line)
    },
    async flush () {
      await Promise.all([flushFile(), writer?.flush(FLUSH_STREAM_MS)])
    },
    async query (q) {
      if (source.kind === 'file') await flushFile()
      else if (writer !== undefined) await writer.flush(FLUSH_STREAM_MS)
      return source.query(q)
    },
    stats: () => writer?.stats() ?? { backlog: 0, dropped: 0 },
    async close () {
      const closing = writer?.close()
      if (sonic) {
        const s = sonic
        sonic = undefined
        await new Promise<void>((resolve) => {
          s.flush(() => {
            if ((s as unknown as { fd: number }).fd === 1) return resolve()
            s.once('close', () => resolve())
            s.end()
          })
        })
      }
      await closing
      await source.close()
    }
  }
}
