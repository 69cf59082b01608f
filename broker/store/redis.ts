/**
 * The one way this broker opens and closes a Redis connection: the session
 * store, mqemitter-redis, the registry and flow control all come through here.
 * Every connection gets its error listener at birth (an outage must turn
 * /readyz red, never crash the process with an unhandled 'error'), and one of
 * a few named option sets, chosen by what a caller needs while Redis is away.
 */
import { createHash } from 'node:crypto'
import { Redis, type RedisOptions } from 'ioredis'

/** what every connection shares */
const BASE: RedisOptions = Object.freeze({
  // reconnect quickly, then once a second, for as long as it takes
  retryStrategy: (times: number) => Math.min(times * 100, 1000),
  connectTimeout: 2000,
  // ioredis arms this timer on disconnect() and clears it only on the socket's 'close'; a
  // socket that already died never closes again, so the default 2 s would hold the process open
  disconnectTimeout: 200,
  lazyConnect: false
})

export const REDIS_PRESETS = Object.freeze({
  /**
   * Session store, PUBLISH, pings, flow control: a command made while Redis is
   * away waits in the offline queue for one reconnect attempt and then rejects,
   * so a publish that cannot be stored fails (and is not acknowledged) instead
   * of hanging until Redis returns.
   */
  failFast: Object.freeze({ ...BASE, maxRetriesPerRequest: 1 }),
  /**
   * Registry calls: no offline queue at all (the registry waits for `ready`
   * itself, briefly), and commandTimeout bounds a call on a connection that
   * looks alive but no longer answers (half-open TCP).
   */
  registry: Object.freeze({ ...BASE, maxRetriesPerRequest: 1, enableOfflineQueue: false, commandTimeout: 2000 }),
  /**
   * Pub/sub subscribers: SUBSCRIBE stays queued until Redis first answers and
   * is repeated after every reconnect.
   */
  subscriber: Object.freeze({ ...BASE, maxRetriesPerRequest: null, autoResubscribe: true })
})

export type RedisPreset = keyof typeof REDIS_PRESETS

export interface ConnectOptions {
  /**
   * the commands of one event-loop turn go out in one write. Worth it for the
   * session store; not for the PUBLISH connection (see session-store.ts)
   */
  autoPipelining?: boolean
}

/** A connection with the preset's options and `onError` listening from the start. */
export function connectRedis (url: string, preset: RedisPreset, onError: (err: Error) => void, opts: ConnectOptions = {}): Redis {
  const conn = new Redis(url, { ...REDIS_PRESETS[preset], enableAutoPipelining: opts.autoPipelining === true })
  conn.on('error', onError)
  endsEvenWhileReconnecting(conn)
  quitsWithinADeadline(conn)
  return conn
}

/** how long a QUIT sent on a live connection may wait for Redis' answer before the socket is dropped */
const QUIT_WAIT_MS = 500

/**
 * quit() must end the connection soon whatever state Redis is in; the libraries
 * call it bare and wait for 'end' (mqemitter-redis' close; aedes-persistence-redis'
 * destroy calls disconnect()). ioredis queues a QUIT made while the connection is
 * not ready behind the commands already in its offline queue: with Redis down that
 * queue is flushed (QUIT rejected) at the next failed attempt and the connection
 * goes on reconnecting for ever, so 'end' never comes. Not ready: disconnect now
 * (what is queued is rejected, as it would be at the next failed attempt anyway).
 * Ready: QUIT, so the replies already on their way still arrive, and disconnect
 * if Redis has not closed the connection within QUIT_WAIT_MS (a half-open socket
 * never answers). The returned promise never goes unhandled: a socket that closes
 * before QUIT's reply is read rejects it, and a bare quit() must not kill the
 * process at shutdown.
 */
function quitsWithinADeadline (conn: Redis): void {
  const quit = conn.quit.bind(conn)
  conn.quit = function quitWithinADeadline (callback?: (err?: Error | null, res?: 'OK') => void) {
    if (conn.status !== 'ready' && conn.status !== 'end') {
      conn.disconnect()
      callback?.(null, 'OK')
      return Promise.resolve('OK' as const)
    }
    // a socket that closes before the replies are read rejects what was sent before QUIT too
    closingDeliberately.add(conn)
    const quitting = quit(callback)
    quitting.catch(() => undefined)
    if (conn.status !== 'end') {
      const deadline = setTimeout(() => { if (conn.status !== 'end') conn.disconnect() }, QUIT_WAIT_MS)
      deadline.unref()
      conn.once('end', () => clearTimeout(deadline))
    }
    return quitting
  } as typeof conn.quit
}

/** what ioredis (5.11) keeps private and this module needs to finish a close it leaves half done */
interface QueuedCommand { command: { promise: Promise<unknown>, reject (err: Error): void } }
interface IoredisInternals {
  setStatus (status: 'end'): void
  flushQueue (err: Error, opts?: unknown): void
  manuallyClosing: boolean
  offlineQueue: { toArray (): QueuedCommand[] }
  commandQueue: { toArray (): QueuedCommand[] }
  /** the commands in flight when a ready connection dropped, resent once it is ready again */
  prevCommandQueue: { toArray (): QueuedCommand[] } | null
}

/** connections this process is closing (disconnect() or quit()), until they connect again */
const closingDeliberately = new WeakSet<Redis>()

/**
 * ioredis ends a connection (status 'end', the 'end' event, pending commands
 * rejected) from its socket's 'close'. Between two reconnect attempts (status
 * 'reconnecting') that socket has already closed: disconnect() (and quit(),
 * which calls disconnect() when nothing is queued) cancels the next attempt and
 * ends the dead socket again, which never closes twice, so the connection stays
 * 'reconnecting' and 'end' never comes. mqemitter-redis closes by waiting for
 * 'end' on both of its connections, so after a Redis outage Aedes' broker.close
 * never called back and the broker could not shut down
 * (test/faults/shutdown-after-redis-restart.test.ts). This finishes the close
 * the way ioredis' own close handler does when the socket does close. Every
 * connection comes through connectRedis, so this is the one place.
 */
function endsEvenWhileReconnecting (conn: Redis): void {
  const disconnect = conn.disconnect.bind(conn)
  const internals = conn as unknown as IoredisInternals
  // closing rejects the commands still queued, when the socket closes: whoever awaits one
  // still sees that, but one nobody awaits (ioredis' own re-SUBSCRIBE and SELECT once a
  // reconnect's ready check answers, even after disconnect()) must not become an unhandled
  // rejection because this process closed the connection. So at a deliberate close every
  // command is marked handled right before ioredis rejects it, whenever that is.
  const flushQueue = internals.flushQueue.bind(conn)
  internals.flushQueue = function flushQueueOfAClose (err: Error, opts?: unknown): void {
    if (closingDeliberately.has(conn)) {
      // those in flight when the connection last dropped would wait for a resend that never
      // comes (until a reconnect, ioredis keeps them in the command queue itself, flushed below)
      const previous = internals.prevCommandQueue === (internals.commandQueue as unknown) ? null : internals.prevCommandQueue
      internals.prevCommandQueue = null
      for (const queue of [internals.offlineQueue, internals.commandQueue, previous]) {
        for (const item of queue?.toArray() ?? []) item.command.promise.catch(() => undefined)
      }
      for (const item of previous?.toArray() ?? []) item.command.reject(err)
    }
    flushQueue(err, opts)
  }
  conn.on('connect', () => { closingDeliberately.delete(conn) })
  conn.disconnect = function disconnectEvenWhileReconnecting (reconnect = false): void {
    const socketGone = conn.status === 'reconnecting'
    if (!reconnect) closingDeliberately.add(conn)
    disconnect(reconnect)
    if (reconnect || !socketGone || conn.status !== 'reconnecting') return
    internals.manuallyClosing = false
    internals.setStatus('end')
    internals.flushQueue(new Error('Connection is closed.'))
  }
}

/** the promise's value, or undefined once `ms` have passed */
export async function within<T> (promise: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<undefined>((resolve) => { timer = setTimeout(resolve, Math.max(0, ms), undefined) })
  try {
    return await Promise.race([promise, timeout])
  } finally {
    clearTimeout(timer)
  }
}


/**
 * QUIT, not only disconnect(): QUIT is queued behind the commands already sent,
 * so their promises settle instead of being rejected by a flushed queue. It
 * cannot get through unless the connection is ready; disconnect() then also
 * cancels a pending reconnect, which would otherwise keep the process alive.
 */
export async function quitGracefully (conn: Redis): Promise<void> {
  if (conn.status === 'end') return
  const ended = new Promise<void>((resolve) => conn.once('end', () => resolve()))
  if (conn.status === 'ready') await within(conn.quit().catch(() => undefined), QUIT_WAIT_MS)
  conn.disconnect()
  // 'end' follows the socket's close (at most ioredis' disconnectTimeout for a socket that hangs)
  await within(ended, QUIT_WAIT_MS)
}

/** resolves true once the connection is ready, false when it ends or `ms` pass first */
export function waitReady (conn: Redis, ms: number): Promise<boolean> {
  if (conn.status === 'ready') return Promise.resolve(true)
  if (conn.status === 'end' || ms <= 0) return Promise.resolve(false)
  return within(readyOrEnd(conn), ms).then((ok) => ok === true)
}

/**
 * One promise per connection and outage that settles on 'ready' (true) or 'end'
 * (false), shared by every call waiting for it. A listener pair per waiting call
 * piled up in an outage, where every registry call waits: past ten, Node printed
 * a MaxListenersExceededWarning ("possible memory leak") on each connection.
 */
const settling = new WeakMap<Redis, Promise<boolean>>()

function readyOrEnd (conn: Redis): Promise<boolean> {
  let settled = settling.get(conn)
  if (settled === undefined) {
    settled = new Promise<boolean>((resolve) => {
      const done = (ok: boolean): void => {
        conn.off('ready', onReady)
        conn.off('end', onEnd)
        settling.delete(conn)
        resolve(ok)
      }
      const onReady = (): void => done(true)
      const onEnd = (): void => done(false)
      conn.once('ready', onReady)
      conn.once('end', onEnd)
    })
    settling.set(conn, settled)
  }
  return settled
}

/** a Lua script run by its SHA-1 (EVALSHA): Redis neither receives nor hashes its text on every call */
export interface RedisScript { readonly text: string, readonly sha: string }

export function redisScript (text: string): RedisScript {
  return Object.freeze({ text, sha: createHash('sha1').update(text).digest('hex') })
}

/** EVALSHA, and EVAL with the text only after a NOSCRIPT (a server that has not seen it yet, or restarted) */
export async function runScript (conn: Redis, script: RedisScript, keys: readonly string[], args: ReadonlyArray<string | number>): Promise<unknown> {
  try {
    return await conn.evalsha(script.sha, keys.length, ...keys, ...args)
  } catch (err) {
    if (!(err instanceof Error) || !err.message.startsWith('NOSCRIPT')) throw err
    return await conn.eval(script.text, keys.length, ...keys, ...args)
  }
}
