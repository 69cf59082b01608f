/**
 * The one way this broker opens and closes a Redis connection: the session
 * store, mqemitter-redis, the registry and flow control all come through here.
 * Every connection gets its error listener at birth (an outage must turn
 * /readyz red, never crash the process with an unhandled 'error'), and one of
 * a few named option sets, chosen by what a caller needs while Redis is away.
 */
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
  return conn
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

const QUIT_WAIT_MS = 500

/**
 * QUIT, not only disconnect(): QUIT is queued behind the commands already sent,
 * so their promises settle instead of being rejected by a flushed queue. It
 * cannot get through unless the connection is ready; disconnect() then also
 * cancels a pending reconnect, which would otherwise keep the process alive.
 */
export async function quitGracefully (conn: Redis): Promise<void> {
  if (conn.status === 'end') return
  if (conn.status === 'ready') await within(conn.quit().catch(() => undefined), QUIT_WAIT_MS)
  conn.disconnect()
}
