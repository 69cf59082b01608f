/**
 * Redis when a URL is configured (shared by every broker process and the CLI),
 * otherwise an in-process store.
 */
import type { DeviceConfigStore } from './device-configs.js'
import { MemoryDeviceConfigStore } from './memory-device-configs.js'
import { RedisDeviceConfigStore } from './redis-device-configs.js'

export interface DeviceConfigStoreOptions {
  redisUrl?: string | undefined
  onError?: ((err: Error) => void) | undefined
  /** Redis only; default 'cfg:' */
  keyPrefix?: string | undefined
  /** memory only: the lease clock (Redis keeps its own) */
  now?: (() => number) | undefined
}

export function createDeviceConfigStore (opts: DeviceConfigStoreOptions): DeviceConfigStore {
  if (opts.redisUrl) return new RedisDeviceConfigStore({ url: opts.redisUrl, keyPrefix: opts.keyPrefix, onError: opts.onError })
  return new MemoryDeviceConfigStore({ now: opts.now, onError: opts.onError })
}
