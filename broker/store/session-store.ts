/**
 * Where Aedes keeps sessions, retained messages and offline queues, and how
 * brokers talk to each other: Redis (aedes-persistence-redis + mqemitter-redis)
 * when REDIS_URL is set, so several processes share them; Aedes' in-memory
 * persistence otherwise, with retained messages indexed by topic level. Every
 * Redis connection gets an error listener: an outage must turn /readyz red,
 * never crash the process.
 */
import persistenceRedis from 'aedes-persistence-redis'
import { Redis } from 'ioredis'
import MQEmitterRedis from 'mqemitter-redis'
import { createMemoryPersistence, indexRetained } from './retained-index.js'

export interface SessionStore {
  readonly kind: 'memory' | 'redis'
  /** options for Aedes.createBroker */
  readonly aedesOptions: { persistence?: unknown, mq?: unknown }
  ping (): Promise<boolean>
  close (): Promise<void>
}

/** ioredis options for every broker-side connection */
export const REDIS_OPTIONS = Object.freeze({
  // fail calls fast while Redis is away instead of queueing them forever
  maxRetriesPerRequest: 1,
  retryStrategy: (times: number) => Math.min(times * 100, 1000),
  connectTimeout: 2000,
  lazyConnect: false
})

function connect (url: string, onError: (err: Error) => void, opts: { autoPipelining?: boolean } = {}): Redis {
  const conn = new Redis(url, { ...REDIS_OPTIONS, enableAutoPipelining: opts.autoPipelining === true })
  conn.on('error', onError)
  return conn
}

async function quitGracefully (conn: Redis): Promise<void> {
  if (conn.status === 'ready') {
    const quit = conn.quit().catch(() => undefined)
    await Promise.race([quit, new Promise((resolve) => setTimeout(resolve, 500).unref())])
  }
  conn.disconnect()
}

export function createSessionStore (redisUrl: string | undefined, onError: (err: Error) => void): SessionStore {
  if (!redisUrl) {
    const persistence = indexRetained(createMemoryPersistence())
    return { kind: 'memory', aedesOptions: { persistence }, ping: async () => true, async close () {} }
  }
  // the session store's commands of one event-loop turn go out in one write instead
  // of a syscall each. Not the PUBLISH connection: pipelined there, the broker takes
  // in a flood faster than its deliveries drain, and in the overload test (slow
  // subscriber, Redis) its RSS rose from 250-270 MB to 295-315 MB, past the 300 MB bound
  const persistenceConn = connect(redisUrl, onError, { autoPipelining: true })
  const pubConn = connect(redisUrl, onError)
  const subConn = connect(redisUrl, onError)
  const pingConn = connect(redisUrl, onError)
  // mqemitter-redis closes with a bare `conn.quit()`; when the socket closes before
  // QUIT's reply is read, that promise rejects with no handler and the process would
  // die of an unhandled rejection at shutdown. Its 'end' listener still fires.
  for (const conn of [pubConn, subConn]) {
    const quit = conn.quit.bind(conn)
    conn.quit = ((...args: Parameters<typeof quit>) => {
      const p = quit(...args)
      p.catch(() => undefined)
      return p
    }) as typeof conn.quit
  }
  const mq = MQEmitterRedis({ pubConn, subConn })
  ;(mq as unknown as { state: NodeJS.EventEmitter }).state.on('error', onError)
  const persistence = persistenceRedis({ conn: persistenceConn })
  let closed = false

  return {
    kind: 'redis',
    aedesOptions: { persistence, mq },
    async ping () {
      if (pingConn.status !== 'ready') return false
      try {
        const ping = pingConn.ping()
        ping.catch(() => undefined) // may settle after the timeout won
        const answer = await Promise.race([
          ping,
          new Promise<string>((resolve) => setTimeout(resolve, 500, 'timeout').unref())
        ])
        return answer === 'PONG'
      } catch {
        return false
      }
    },
    async close () {
      if (closed) return
      closed = true
      // QUIT, not disconnect(): it is queued behind commands already sent, so their
      // promises settle instead of being rejected with "Connection is closed" by a
      // flushed queue. mqemitter-redis quits pub/sub itself when Aedes closes it.
      await Promise.all([persistenceConn, pubConn, subConn, pingConn].map(quitGracefully))
    }
  }
}
