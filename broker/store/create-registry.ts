/**
 * Redis when a URL is configured (shared by every broker process and the CLI),
 * otherwise an in-process registry.
 */
import { MemoryRegistry } from './memory-registry.js'
import { RedisRegistry } from './redis-registry.js'
import type { Registry } from './registry.js'

export function createRegistry (opts: { redisUrl?: string, now?: () => number, onError?: (err: Error) => void }): Registry {
  if (opts.redisUrl) return new RedisRegistry({ url: opts.redisUrl, now: opts.now, onError: opts.onError })
  return new MemoryRegistry({ now: opts.now, onError: opts.onError })
}
