/**
 * The configuration store inside one broker process: nothing survives a restart
 * and no other process sees it. Every method runs to completion without an
 * await, so each is atomic as the Redis scripts are. What goes in and comes out
 * is copied through JSON, so a caller's later mutation never reaches the store
 * and both implementations hand back the same values.
 */
import type {
  AckOutcome, CommitInput, ConfigStatus, ConfigStatusCounts, ConfigVersion, DeviceConfigState, DeviceConfigStore, JsonObject, PendingAck
} from './device-configs.js'
import { configHash, HISTORY_KEEP } from './device-configs.js'

interface DeviceEntry {
  template: string
  current: ConfigVersion | null
  lastKnownGood: number | null
  status: ConfigStatus
  overrides: JsonObject
  deliveredAt: number | null
  /** oldest first, at most HISTORY_KEEP */
  history: ConfigVersion[]
}

const copy = <T>(value: T): T => JSON.parse(JSON.stringify(value)) as T

export interface MemoryDeviceConfigStoreOptions {
  /** the lease clock (Redis uses its own) */
  now?: (() => number) | undefined
  onError?: ((err: Error) => void) | undefined
}

export class MemoryDeviceConfigStore implements DeviceConfigStore {
  readonly #now: () => number
  readonly #templates = new Map<string, { config: JsonObject, author: string, at: number }>()
  readonly #devices = new Map<string, DeviceEntry>()
  readonly #rollouts = new Map<string, string>()
  readonly #leases = new Map<string, { owner: string, expiresAt: number }>()

  constructor (opts: MemoryDeviceConfigStoreOptions = {}) {
    this.#now = opts.now ?? Date.now
  }

  async getTemplateConfig (template: string): Promise<{ readonly config: JsonObject, readonly author: string, readonly at: number } | null> {
    const entry = this.#templates.get(template)
    return entry ? copy(entry) : null
  }

  async setTemplateConfig (template: string, config: JsonObject, author: string, at: number): Promise<void> {
    this.#templates.set(template, copy({ config, author, at }))
  }

  async getState (deviceId: string): Promise<DeviceConfigState | null> {
    const entry = this.#devices.get(deviceId)
    return entry ? stateOf(deviceId, entry) : null
  }

  async commit (deviceId: string, input: CommitInput): Promise<ConfigVersion | null> {
    const entry = this.#devices.get(deviceId)
    // versions start at 1: an expected 0 means "none yet", as null does (and as on Redis)
    if (input.expectedVersion !== undefined && (input.expectedVersion ?? 0) !== (entry?.current?.version ?? 0)) return null
    const config = copy(input.config)
    const overrides = copy(input.overrides ?? entry?.overrides ?? {})
    const version: ConfigVersion = {
      deviceId,
      // the history may be trimmed, the counter never goes back
      version: (entry?.current?.version ?? 0) + 1,
      config,
      author: input.author,
      at: input.at,
      hash: configHash(config),
      ...(input.reason !== undefined ? { reason: input.reason } : {}),
      overrides
    }
    const next: DeviceEntry = entry ?? { template: input.template, current: null, lastKnownGood: null, status: 'pending', overrides: {}, deliveredAt: null, history: [] }
    next.template = input.template
    next.current = version
    next.status = 'pending'
    next.deliveredAt = null
    next.overrides = copy(overrides)
    next.history.push(version)
    if (next.history.length > HISTORY_KEEP) next.history.splice(0, next.history.length - HISTORY_KEEP)
    this.#devices.set(deviceId, next)
    return copy(version)
  }

  async history (deviceId: string, limit: number): Promise<ConfigVersion[]> {
    const history = this.#devices.get(deviceId)?.history ?? []
    const n = Math.max(0, Math.floor(limit))
    return history.slice(Math.max(0, history.length - n)).reverse().map(copy)
  }

  async getVersion (deviceId: string, version: number): Promise<ConfigVersion | null> {
    const found = this.#devices.get(deviceId)?.history.find((v) => v.version === version)
    return found ? copy(found) : null
  }

  async markDelivered (deviceId: string, version: number, at: number): Promise<boolean> {
    const entry = this.#devices.get(deviceId)
    if (!entry || entry.current?.version !== version || entry.status !== 'pending' || entry.deliveredAt !== null) return false
    entry.deliveredAt = at
    return true
  }

  async recordAck (deviceId: string, version: number, status: 'applied' | 'failed', _at: number): Promise<AckOutcome> {
    const entry = this.#devices.get(deviceId)
    const current = entry?.current?.version ?? null
    if (!entry || current !== version) return { result: 'stale', current }
    if (entry.status !== 'pending') return { result: 'duplicate' }
    if (status === 'applied') {
      entry.status = 'current'
      entry.lastKnownGood = version
    } else {
      entry.status = 'failed'
    }
    return { result: 'recorded', state: stateOf(deviceId, entry) }
  }

  async pendingAcks (deliveredBefore: number, limit: number): Promise<PendingAck[]> {
    const due: PendingAck[] = []
    for (const [deviceId, entry] of this.#devices) {
      if (entry.status === 'pending' && entry.deliveredAt !== null && entry.current !== null && entry.deliveredAt <= deliveredBefore) {
        due.push({ deviceId, version: entry.current.version, deliveredAt: entry.deliveredAt })
      }
    }
    // as Redis' sorted set orders equal scores: by member
    due.sort((a, b) => a.deliveredAt - b.deliveredAt || (a.deviceId < b.deviceId ? -1 : a.deviceId > b.deviceId ? 1 : 0))
    return due.slice(0, Math.max(0, Math.floor(limit)))
  }

  async claimTimeout (deviceId: string, version: number, _at: number): Promise<boolean> {
    const entry = this.#devices.get(deviceId)
    if (!entry || entry.current?.version !== version || entry.status !== 'pending') return false
    entry.status = 'failed'
    return true
  }

  async countByStatus (): Promise<ConfigStatusCounts> {
    const counts = { current: 0, pending: 0, failed: 0 }
    for (const entry of this.#devices.values()) counts[entry.status]++
    return counts
  }

  async putRollout (id: string, record: JsonObject): Promise<void> {
    this.#rollouts.set(id, JSON.stringify(record))
  }

  async getRollout (id: string): Promise<JsonObject | null> {
    const text = this.#rollouts.get(id)
    return text === undefined ? null : JSON.parse(text) as JsonObject
  }

  async listRollouts (): Promise<JsonObject[]> {
    return [...this.#rollouts.keys()].sort().map((id) => JSON.parse(this.#rollouts.get(id)!) as JsonObject)
  }

  async acquireLease (name: string, owner: string, ttlMs: number): Promise<boolean> {
    const now = this.#now()
    const lease = this.#leases.get(name)
    if (lease && lease.expiresAt > now && lease.owner !== owner) return false
    this.#leases.set(name, { owner, expiresAt: now + ttlMs })
    return true
  }

  async releaseLease (name: string, owner: string): Promise<void> {
    if (this.#leases.get(name)?.owner === owner) this.#leases.delete(name)
  }

  async close (): Promise<void> {}
}

function stateOf (deviceId: string, entry: DeviceEntry): DeviceConfigState {
  return copy({
    deviceId,
    template: entry.template,
    current: entry.current,
    lastKnownGood: entry.lastKnownGood,
    status: entry.status,
    overrides: entry.overrides,
    deliveredAt: entry.deliveredAt
  })
}
