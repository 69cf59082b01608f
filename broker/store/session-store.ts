/**
 * Where Aedes keeps sessions, retained messages and offline queues, and how
 * brokers talk to each other: Redis (aedes-persistence-redis + mqemitter-redis)
 * when REDIS_URL is set, so several processes share them; Aedes' in-memory
 * defaults otherwise. Every Redis connection gets an error listener: an outage
 * must turn /readyz red, never crash the process.
 */
import persistenceRedis, { type RedisPersistence } from 'aedes-persistence-redis'
import { Redis } from 'ioredis'
import MQEmitterRedis from 'mqemitter-redis'

export interface SessionStore {
  readonly kind: 'memory' | 'redis'
  /** options for Aedes.createBroker */
  readonly aedesOptions: { persistence?: unknown, mq?: unknown }
  ping (): Promise<boolean>
  close (): Promise<void>
}

export function redisOptions (onError: (err: Error) => void) {
  return {
    // fail calls fast while Redis is away instead of queueing them forever
    maxRetriesPerRequest: 1,
    retryStrategy: (times: number) => Math.min(times * 100, 1000),
    connectTimeout: 2000,
    lazyConnect: false,
    onError
  }
}

function connect (url: string, onError: (err: Error) => void): Redis {
  const { onError: _, ...opts } = redisOptions(onError)
  const conn = new Redis(url, opts)
  conn.on('error', onError)
  return conn
}

export function createSessionStore (redisUrl: string | undefined, onError: (err: Error) => void): SessionStore {
  if (!redisUrl) {
    return { kind: 'memory', aedesOptions: {}, ping: async () => true, async close () {} }
  }
  const persistenceConn = connect(redisUrl, onError)
  const pubConn = connect(redisUrl, onError)
  const subConn = connect(redisUrl, onError)
  const pingConn = connect(redisUrl, onError)
  const mq = MQEmitterRedis({ pubConn, subConn })
  ;(mq as unknown as { state: NodeJS.EventEmitter }).state.on('error', onError)
  const persistence: RedisPersistence = persistenceRedis({ conn: persistenceConn })
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
      // mq is closed by aedes.close(); the rest is ours
      // the promise form: the callback form waits for a 'ready' event Aedes 1.x never causes
      await Promise.resolve(persistence.destroy()).catch(() => undefined)
      for (const conn of [persistenceConn, pubConn, subConn, pingConn]) conn.disconnect()
    }
  }
}
