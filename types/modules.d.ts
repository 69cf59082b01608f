declare module 'aedes-persistence-redis' {
  import type { RedisOptions, Redis } from 'ioredis'
  interface PersistenceRedisOptions extends RedisOptions {
    conn?: Redis
    maxSessionDelivery?: number
    packetTTL?: (packet: unknown) => number
  }
  /** an aedes persistence; aedes calls setup(broker) itself */
  export interface RedisPersistence {
    destroy (): Promise<void>
  }
  function persistenceRedis (opts?: PersistenceRedisOptions): RedisPersistence
  export default persistenceRedis
}
