/**
 * Reading the audit log back, for the admin API (`GET /v1/audit`): from the
 * capped Redis stream every broker process appends to (REDIS_URL), from the
 * audit file, or from the in-process ring of the last lines when AUDIT_LOG is
 * stdout. Oldest first; a page ends at `limit` matches or after a bounded scan,
 * and its cursor is the position after the last line looked at, so paging (and
 * following the log) never rescans or skips a line.
 */
import { open, type FileHandle } from 'node:fs/promises'
import { ReplyError, type Redis } from 'ioredis'
import { JitpError } from './errors.js'
import { connectRedis, quitGracefully, waitReady } from './store/redis.js'

export interface AuditQuery {
  /** event glob: `*` any run of characters, `?` one character (`device.*`) */
  readonly event?: string | undefined
  readonly deviceId?: string | undefined
  /** only lines with `time` at or after this (ms since the epoch) */
  readonly since?: number | undefined
  readonly limit: number
  /** a `nextCursor` or `followCursor` this source returned */
  readonly cursor?: string | undefined
}

export interface AuditRecord {
  readonly time: number
  readonly level: string
  readonly event: string
  readonly [k: string]: unknown
}

export interface AuditPage {
  readonly items: AuditRecord[]
  /** more lines may match right now: pass it as `cursor` for the next page; null at the end of the log */
  readonly nextCursor: string | null
  /**
   * where the next line to be written will be found: passed as `cursor` later it
   * returns only what was written since (`audit --follow`). Equals nextCursor when that is set.
   */
  readonly followCursor: string
}

export interface AuditSource {
  readonly kind: 'redis' | 'file' | 'memory'
  query (q: AuditQuery): Promise<AuditPage>
  close (): Promise<void>
}

/** `since` as the admin API and the CLI take it: ISO 8601 or ms since the epoch; null when it is neither */
export function parseSince (since: string): number | null {
  const ms = /^\d+$/.test(since) ? Number(since) : Date.parse(since)
  return Number.isFinite(ms) ? ms : null
}

/** lines looked at per call at most: a query that matches little returns a cursor instead of scanning the whole log */
export const AUDIT_SCAN_MAX = 10_000

/** what an event glob is matched with */
export interface GlobMatcher { test (s: string): boolean }

/**
 * The glob of `aedes-jitp audit --event` and `GET /v1/audit?event=`: `*` and `?`,
 * everything else literal, the whole name. Matched by two pointers that go back
 * only to the last `*` (at most |glob| × |name| steps), not by a regular
 * expression: `*?*?…*?Z` as `.*..*.…` backtracks exponentially, and one admin
 * request held the broker's only thread for seconds per line.
 */
export function globMatcher (glob: string): GlobMatcher {
  return {
    test (s: string): boolean {
      let g = 0
      let i = 0
      let star = -1
      let resume = 0
      while (i < s.length) {
        const c = glob[g]
        if (c === '*') {
          star = g++
          resume = i
        } else if (c !== undefined && (c === '?' || c === s[i])) {
          g++
          i++
        } else if (star >= 0) {
          g = star + 1
          i = ++resume
        } else {
          return false
        }
      }
      while (glob[g] === '*') g++
      return g === glob.length
    }
  }
}

/** one serialized line as a record, or null for anything that is not an audit line */
export function parseAuditLine (line: string): AuditRecord | null {
  let entry: unknown
  try {
    entry = JSON.parse(line)
  } catch {
    return null
  }
  if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) return null
  const e = entry as Record<string, unknown>
  if (typeof e.event !== 'string' || typeof e.time !== 'number') return null
  return { ...e, time: e.time, event: e.event, level: typeof e.level === 'string' ? e.level : '' }
}

type Match = (line: string) => AuditRecord | null

function matcher (q: AuditQuery): Match {
  const event = q.event !== undefined && q.event !== '' ? globMatcher(q.event) : undefined
  const { deviceId, since } = q
  return function match (line) {
    const r = parseAuditLine(line)
    if (r === null) return null
    if (since !== undefined && r.time < since) return null
    if (event !== undefined && !event.test(r.event)) return null
    if (deviceId !== undefined && r.deviceId !== deviceId) return null
    return r
  }
}

function limitOf (q: AuditQuery): number {
  return Number.isFinite(q.limit) ? Math.max(1, Math.floor(q.limit)) : 1
}

/** cursors are opaque to clients but say which kind of source issued them, so one from another source is refused, not misread */
function encodeCursor (kind: 'r' | 'f' | 'm', position: string): string {
  return `${kind}:${position}`
}

function decodeCursor (cursor: string | undefined, kind: 'r' | 'f' | 'm', shape: RegExp): string | undefined {
  if (cursor === undefined || cursor === '') return undefined
  const prefix = `${kind}:`
  const position = cursor.startsWith(prefix) ? cursor.slice(prefix.length) : ''
  if (!shape.test(position)) throw new JitpError('InvalidRequest', 'cursor was not issued by this audit log')
  return position
}

// ---------------------------------------------------------------- memory ring

/**
 * The last `capacity` serialized lines of this process. Positions are absolute
 * (lines ever pushed), so a cursor stays meaningful while the ring wraps: one
 * older than the oldest line kept resumes at the oldest.
 */
export interface AuditRing {
  readonly capacity: number
  /** lines ever pushed; the next line's position */
  readonly total: number
  push (line: string): void
  /** the line at an absolute position, if still kept */
  at (position: number): string | undefined
}

export function createAuditRing (capacity: number): AuditRing {
  const size = Math.max(1, Math.floor(capacity))
  const lines = new Array<string>(size)
  let total = 0
  return {
    capacity: size,
    get total () { return total },
    push (line) {
      lines[total % size] = line
      total++
    },
    at (position) {
      if (position < 0 || position >= total || position < total - size) return undefined
      return lines[position % size]
    }
  }
}

function ringSource (ring: AuditRing): AuditSource {
  return {
    kind: 'memory',
    async query (q) {
      const match = matcher(q)
      const limit = limitOf(q)
      const from = decodeCursor(q.cursor, 'm', /^\d{1,15}$/)
      const end = ring.total
      let position = Math.max(from === undefined ? 0 : Number(from), end - ring.capacity)
      if (position > end) position = end // a cursor from before a restart: the ring is newer than it
      const items: AuditRecord[] = []
      for (let scanned = 0; position < end; position++, scanned++) {
        if (scanned >= AUDIT_SCAN_MAX || items.length >= limit) break
        const r = match(ring.at(position) ?? '')
        if (r !== null) items.push(r)
      }
      const cursor = encodeCursor('m', String(position))
      return { items, nextCursor: position < end ? cursor : null, followCursor: cursor }
    },
    async close () {}
  }
}

// ---------------------------------------------------------------- file

const CHUNK = 64 * 1024
/** a "line" longer than this is no audit line (each field is capped): skipped whole */
const MAX_LINE = 1024 * 1024
/** `since` finds its start by bisection over time; lines of processes sharing a file or a clock step interleave within about this much */
const CLOCK_SKEW_MS = 60_000

async function readAt (fh: FileHandle, position: number, length: number): Promise<Buffer> {
  const buf = Buffer.allocUnsafe(length)
  const { bytesRead } = await fh.read(buf, 0, length, position)
  return buf.subarray(0, bytesRead)
}

/** the time of the first whole line starting at or after `position` (a line start when 0 or just after a newline), or null */
async function timeOfLineFrom (fh: FileHandle, position: number, size: number): Promise<{ start: number, time: number | null } | null> {
  let start = position
  if (position > 0) {
    // find the end of the line `position - 1` is in
    let p = position - 1
    for (;;) {
      if (p >= size) return null
      const chunk = await readAt(fh, p, Math.min(CHUNK, size - p))
      const nl = chunk.indexOf(0x0a)
      if (nl >= 0) { start = p + nl + 1; break }
      p += chunk.length
      if (p - position > MAX_LINE) return null
    }
  }
  if (start >= size) return null
  const chunk = await readAt(fh, start, Math.min(CHUNK, size - start))
  const nl = chunk.indexOf(0x0a)
  // a line too long for one chunk, or not finished yet: "unknown", which keeps the bisection conservative
  const r = nl >= 0 ? parseAuditLine(chunk.subarray(0, nl).toString('utf8')) : null
  return { start, time: r === null ? null : r.time }
}

/**
 * The byte offset of the first line at or after `since`, by bisection: the file
 * is written in time order. An unreadable line counts as "late enough", so the
 * scan may start a little early but never after a line it should return.
 */
async function offsetOfTime (fh: FileHandle, size: number, since: number): Promise<number> {
  let lo = 0
  let hi = size
  while (lo < hi) {
    const mid = Math.floor((lo + hi) / 2)
    const line = await timeOfLineFrom(fh, mid, size)
    if (line === null || line.time === null || line.time >= since) hi = mid
    else lo = mid + 1
  }
  return (await timeOfLineFrom(fh, lo, size))?.start ?? size
}

function fileSource (file: string): AuditSource {
  return {
    kind: 'file',
    async query (q) {
      const match = matcher(q)
      const limit = limitOf(q)
      const from = decodeCursor(q.cursor, 'f', /^\d{1,15}$/)
      let fh: FileHandle
      try {
        fh = await open(file, 'r')
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { items: [], nextCursor: null, followCursor: encodeCursor('f', '0') }
        throw err
      }
      try {
        const size = (await fh.stat()).size
        let position: number
        if (from !== undefined) position = Number(from) > size ? 0 : Number(from) // larger than the file: rotated or truncated
        else if (q.since !== undefined) position = await offsetOfTime(fh, size, q.since - CLOCK_SKEW_MS)
        else position = 0
        const items: AuditRecord[] = []
        let scanned = 0
        let carry: Buffer = Buffer.alloc(0)
        let read = position
        let skipping = false
        scan: while (read < size) {
          const chunk = await readAt(fh, read, Math.min(CHUNK, size - read))
          if (chunk.length === 0) break
          read += chunk.length
          let buf = carry.length > 0 ? Buffer.concat([carry, chunk]) : chunk
          for (;;) {
            const nl = buf.indexOf(0x0a)
            if (nl < 0) break
            const line = buf.subarray(0, nl)
            buf = buf.subarray(nl + 1)
            position += nl + 1
            if (skipping) { skipping = false; continue }
            scanned++
            const r = match(line.toString('utf8'))
            if (r !== null) items.push(r)
            if (items.length >= limit || scanned >= AUDIT_SCAN_MAX) break scan
          }
          if (buf.length > MAX_LINE) {
            // not an audit line: skip to its end without holding it
            position += buf.length
            buf = Buffer.alloc(0)
            skipping = true
          }
          carry = Buffer.from(buf)
        }
        // a last line without its newline is still being written: the cursor stays before it
        const cursor = encodeCursor('f', String(position))
        const more = items.length >= limit || scanned >= AUDIT_SCAN_MAX
        return { items, nextCursor: more && position < size ? cursor : null, followCursor: cursor }
      } finally {
        await fh.close()
      }
    },
    async close () {}
  }
}

// ---------------------------------------------------------------- Redis stream

/** the default stream key every broker process appends to */
export const AUDIT_STREAM_KEY = 'jitp:audit'
/** how long a query waits for a Redis connection that is (re)connecting before it is refused */
const REDIS_WAIT_MS = 1000
const XRANGE_COUNT = 1000
const STREAM_ID = /^\d{1,20}-\d{1,20}$/

/** the stream id right after `id`: cursors are inclusive start positions */
function idAfter (id: string): string {
  const [ms = '0', seq = '0'] = id.split('-')
  return `${ms}-${(BigInt(seq) + 1n).toString()}`
}

function lineOf (fields: string[]): string {
  for (let i = 0; i + 1 < fields.length; i += 2) if (fields[i] === 'line') return fields[i + 1] ?? ''
  return ''
}

function redisSource (conn: Redis, key: string, owned: boolean): AuditSource {
  return {
    kind: 'redis',
    async query (q) {
      const match = matcher(q)
      const limit = limitOf(q)
      const from = decodeCursor(q.cursor, 'r', STREAM_ID)
      if (!await waitReady(conn, REDIS_WAIT_MS)) throw new JitpError('StoreUnavailable', `audit stream: Redis is unavailable (connection ${conn.status})`)
      // stream ids are Redis' clock at XADD, which comes after the line's own time (batching, a backlog while Redis was away)
      let start = from ?? (q.since !== undefined ? `${Math.max(0, Math.floor(q.since) - CLOCK_SKEW_MS)}-0` : '0-0')
      const items: AuditRecord[] = []
      let scanned = 0
      let more = true
      while (more && scanned < AUDIT_SCAN_MAX && items.length < limit) {
        const count = Math.min(XRANGE_COUNT, AUDIT_SCAN_MAX - scanned)
        const entries = await conn.xrange(key, start, '+', 'COUNT', count).catch((err: unknown) => {
          // the connection died under the call: the same answer as when it was down before it
          if (err instanceof ReplyError) throw err
          throw new JitpError('StoreUnavailable', `audit stream: ${(err as Error).message}`)
        })
        more = entries.length === count
        for (const [id, fields] of entries) {
          scanned++
          start = idAfter(id)
          const r = match(lineOf(fields))
          if (r !== null) items.push(r)
          if (items.length >= limit) {
            // the rest of this batch is read again by the next page: cheaper than guessing
            more = true
            break
          }
        }
      }
      // the stream is in XADD order: each process's lines leave in batches (and after an outage, late), so
      // two processes' lines can be a little out of time order there; within a page they are put back in it
      items.sort((a, b) => a.time - b.time)
      const cursor = encodeCursor('r', start)
      return { items, nextCursor: more ? cursor : null, followCursor: cursor }
    },
    async close () {
      if (owned) await quitGracefully(conn)
    }
  }
}

export interface AuditSourceOptions {
  /** the audit file (AUDIT_LOG a path, memory store) */
  file?: string | undefined
  /** the in-process ring (AUDIT_LOG=stdout, memory store) */
  ring?: AuditRing | undefined
  /** the shared stream: a connection of its own to this URL... */
  redisUrl?: string | undefined
  /** ...or one borrowed from the audit writer, left open by close() */
  redis?: Redis | undefined
  streamKey?: string | undefined
  onError?: ((err: Error) => void) | undefined
}

/** The Redis stream if there is one (it sees every process), else the file, else the ring. */
export function createAuditSource (opts: AuditSourceOptions): AuditSource {
  const key = opts.streamKey ?? AUDIT_STREAM_KEY
  if (opts.redis !== undefined) return redisSource(opts.redis, key, false)
  if (opts.redisUrl !== undefined && opts.redisUrl !== '') {
    return redisSource(connectRedis(opts.redisUrl, 'registry', opts.onError ?? (() => {})), key, true)
  }
  if (opts.file !== undefined) return fileSource(opts.file)
  if (opts.ring !== undefined) return ringSource(opts.ring)
  throw new Error('audit source: needs a Redis URL, a file or a ring')
}
