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

declare module 'qlobber' {
  interface QlobberOptions { separator?: string, wildcard_one?: string, wildcard_some?: string, match_empty_levels?: boolean }
  /** a topic matcher that only answers whether anything added matches */
  export class QlobberTrue {
    constructor (options?: QlobberOptions)
    add (topic: string): this
    test (topic: string): boolean
  }
}
