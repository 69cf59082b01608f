/**
 * Where Aedes keeps sessions, retained messages and offline queues, and how
 * brokers talk to each other: Redis (aedes-persistence-redis + mqemitter-redis)
 * when REDIS_URL is set, so several processes share them; Aedes' in-memory
 * persistence otherwise. Connections come from ./redis.ts (error listener at
 * birth: an outage must turn /readyz red, never crash the process). The
 * persistence handed out here is the store's own; what this broker changes in
 * its behaviour is one list of wrappers (./wrappers.ts, applied in build.ts).
 */
import persistenceRedis from 'aedes-persistence-redis'
import type { Redis } from 'ioredis'
import MQEmitterRedis from 'mqemitter-redis'
import { connectRedis, quitGracefully, within } from './redis.js'
import { createMemoryPersistence } from './retained-index.js'

export interface SessionStore {
  readonly kind: 'memory' | 'redis'
  /** options for Aedes.createBroker: the store's persistence, unwrapped, and the emitter */
  readonly aedesOptions: { persistence?: unknown, mq?: unknown }
  /** the session store's own connection (Redis only), for wrappers that need a script */
  readonly redis: Redis | null
  ping (): Promise<boolean>
  close (): Promise<void>
}

export interface SessionStoreOptions {
  /** seconds a queued message is kept for an offline session (aedes-persistence-redis packetTTL); 0: no expiry */
  packetTtlSeconds?: number
  /** queued messages handed out per reconnect (aedes-persistence-redis maxSessionDelivery, default 1000) */
  maxSessionDelivery?: number
}

export function createSessionStore (redisUrl: string | undefined, onError: (err: Error) => void, opts: SessionStoreOptions = {}): SessionStore {
  if (!redisUrl) {
    const persistence = createMemoryPersistence()
    return { kind: 'memory', aedesOptions: { persistence }, redis: null, ping: async () => true, async close () {} }
  }
  // the session store's commands of one event-loop turn go out in one write instead
  // of a syscall each. Not the PUBLISH connection: pipelined there, the broker takes
  // in a flood faster than its deliveries drain, and in the overload test (slow
  // subscriber, Redis) its RSS rose from 250-270 MB to 295-315 MB, past the 300 MB bound
  const persistenceConn = connectRedis(redisUrl, 'failFast', onError, { autoPipelining: true })
  const pubConn = connectRedis(redisUrl, 'failFast', onError)
  const subConn = connectRedis(redisUrl, 'failFast', onError)
  const pingConn = connectRedis(redisUrl, 'failFast', onError)
  // mqemitter-redis closes with a bare `conn.quit()` and waits for 'end' on both
  // connections: connectRedis (./redis.ts) makes that quit end the connection within
  // a deadline even when Redis is down or the connection between reconnect attempts,
  // and never leaves its promise unhandled
  const mq = MQEmitterRedis({ pubConn, subConn })
  ;(mq as unknown as { state: NodeJS.EventEmitter }).state.on('error', onError)
  const ttl = opts.packetTtlSeconds ?? 0
  const persistence = persistenceRedis({
    conn: persistenceConn,
    // queued packets expire instead of living forever when their queue is gone (see wrappers.ts)
    ...(ttl > 0 ? { packetTTL: () => ttl } : {}),
    ...(opts.maxSessionDelivery !== undefined ? { maxSessionDelivery: opts.maxSessionDelivery } : {})
  })
  let closed = false

  return {
    kind: 'redis',
    aedesOptions: { persistence, mq },
    redis: persistenceConn,
    async ping () {
      if (pingConn.status !== 'ready') return false
      try {
        const ping = pingConn.ping()
        ping.catch(() => undefined) // may settle after the timeout won
        return (await within(ping, 500)) === 'PONG'
      } catch {
        return false
      }
    },
    async close () {
      if (closed) return
      closed = true
      // mqemitter-redis quits pub/sub itself when Aedes closes it; these are for a build that failed
      await Promise.all([persistenceConn, pubConn, subConn, pingConn].map(quitGracefully))
    }
  }
}
