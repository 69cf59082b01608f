/**
 * The configuration store (CONTRACT §9): per template a fleet configuration, per
 * device overrides, and per device a history of versions of the effective
 * configuration (integers, +1, never reused) with author, time and content hash,
 * the last known good version (last `applied`), and the ack state of the current
 * version. Rollout records and the rollout lease live here too.
 * One interface, two implementations (memory, Redis), one contract test suite.
 */
import { createHash } from 'node:crypto'

export type JsonObject = Readonly<Record<string, unknown>>

export interface ConfigVersion {
  readonly deviceId: string
  readonly version: number
  /** the effective configuration (template merged with the device's overrides) */
  readonly config: JsonObject
  /** admin CN, `registration`, `rollback`, or `rollout <id>` */
  readonly author: string
  readonly at: number
  /** configHash(config): hex SHA-256 of its canonical JSON (keys sorted) */
  readonly hash: string
  readonly reason?: string | undefined
  /**
   * the device's overrides in force from this version on (CommitInput.overrides,
   * else the ones it had), so a rollback to this version restores them with its
   * content and a later template change cannot bring back what was rolled back.
   * Absent on versions stored before versions recorded them.
   */
  readonly overrides?: JsonObject | undefined
}

/** current: the current version was applied; pending: published, no ack yet; failed: its ack said failed (a rollback follows) */
export type ConfigStatus = 'current' | 'pending' | 'failed'

export interface DeviceConfigState {
  readonly deviceId: string
  readonly template: string
  /** the latest version (what is published retained), null before the first */
  readonly current: ConfigVersion | null
  readonly lastKnownGood: number | null
  readonly status: ConfigStatus
  /** the device's own overrides, merged over the template's configuration */
  readonly overrides: JsonObject
  /** when the device received the current version (its ack timer started); null while not delivered */
  readonly deliveredAt: number | null
}

export interface CommitInput {
  readonly template: string
  readonly config: JsonObject
  /** replaces the device's overrides when given */
  readonly overrides?: JsonObject | undefined
  readonly author: string
  readonly reason?: string | undefined
  readonly at: number
  /** compare-and-set: commit only if the current version is this (null: no version yet); omitted: unconditional */
  readonly expectedVersion?: number | null | undefined
}

export type AckOutcome =
  /** recorded: `applied` made it the last known good; `failed` marked the state failed (the caller rolls back) */
  | { readonly result: 'recorded', readonly state: DeviceConfigState }
  /** not the current version (late, replayed, or from the future): audited and ignored by the caller */
  | { readonly result: 'stale', readonly current: number | null }
  /** already acknowledged (another process, or a duplicate): nothing changed */
  | { readonly result: 'duplicate' }

/** devices by the status of their current version (devices with no version yet are not counted) */
export type ConfigStatusCounts = Readonly<Record<ConfigStatus, number>>

export interface PendingAck { readonly deviceId: string, readonly version: number, readonly deliveredAt: number }

export interface DeviceConfigStore {
  getTemplateConfig (template: string): Promise<{ readonly config: JsonObject, readonly author: string, readonly at: number } | null>
  /** stores the fleet configuration of a template; makes no device version (rollouts or an immediate apply do) */
  setTemplateConfig (template: string, config: JsonObject, author: string, at: number): Promise<void>

  /** null before the device's first version */
  getState (deviceId: string): Promise<DeviceConfigState | null>
  /**
   * Atomically: version = current + 1 (1 for the first), with this config, author,
   * hash and the overrides in force after it; status pending, deliveredAt null;
   * overrides replaced if given; kept
   * in the history (the HISTORY_KEEP newest); the template remembered; a pending
   * ack of the previous version forgotten. Returns null (and changes nothing) when
   * `expectedVersion` is given and does not match. On Redis: one round trip.
   * `config` is the effective configuration: the caller merges template and overrides.
   */
  commit (deviceId: string, input: CommitInput): Promise<ConfigVersion | null>
  /** newest first, at most `limit` (and at most HISTORY_KEEP) */
  history (deviceId: string, limit: number): Promise<ConfigVersion[]>
  getVersion (deviceId: string, version: number): Promise<ConfigVersion | null>

  /** the device received `version` (the current one) at `at`: starts its ack timer, once; false when not current or already delivered */
  markDelivered (deviceId: string, version: number, at: number): Promise<boolean>
  /**
   * One winner per (device, version) across processes. `stale` when `version` is
   * not the current one; `duplicate` when the current one is no longer pending
   * (acknowledged, or timed out by claimTimeout). Removes it from pendingAcks.
   * An ack before markDelivered counts (the device was quicker than the broker).
   */
  recordAck (deviceId: string, version: number, status: 'applied' | 'failed', at: number): Promise<AckOutcome>
  /** delivered, not yet acknowledged, delivered at or before `deliveredBefore` (ms): timeout candidates, oldest first */
  pendingAcks (deliveredBefore: number, limit: number): Promise<PendingAck[]>
  /** atomically marks `version` timed out (status failed) if it is still current and unacknowledged; true for exactly one caller */
  claimTimeout (deviceId: string, version: number, at: number): Promise<boolean>
  /** for the config status gauge: kept up to date by every transition, so this reads counters, not devices */
  countByStatus (): Promise<ConfigStatusCounts>

  // --- rollouts (broker/rollouts.ts owns the record's shape) ---
  /** replaces the whole record (stored as JSON: what JSON cannot hold is lost, as with Redis) */
  putRollout (id: string, record: JsonObject): Promise<void>
  getRollout (id: string): Promise<JsonObject | null>
  /** every record, in id order */
  listRollouts (): Promise<JsonObject[]>
  /**
   * a lease held by one owner at a time; true when `owner` holds it now: taken
   * (free or expired) or renewed (already its own: the TTL starts again). On Redis
   * the TTL runs on Redis' clock, so a dead holder's lease lapses for everyone.
   */
  acquireLease (name: string, owner: string, ttlMs: number): Promise<boolean>
  /** frees the lease if `owner` holds it; another owner's lease is left alone */
  releaseLease (name: string, owner: string): Promise<void>

  close (): Promise<void>
}

/** versions kept per device (CONTRACT §9 asks for at least 20); older ones are trimmed, their numbers never reused */
export const HISTORY_KEEP = 50

/**
 * Canonical JSON: object keys sorted (by UTF-16 code units, as RFC 8785),
 * recursively; no whitespace; numbers and strings as JSON.stringify writes them;
 * members whose value is undefined (or a function) left out, as JSON.stringify does.
 * So two configurations that differ only in key order have one text, one hash.
 */
export function canonicalJson (value: unknown): string {
  return canonical(value) ?? 'null'
}

function canonical (value: unknown): string | undefined {
  if (value !== null && typeof value === 'object' && typeof (value as { toJSON?: unknown }).toJSON === 'function') {
    value = (value as { toJSON: () => unknown }).toJSON()
  }
  if (value === null || typeof value !== 'object') return JSON.stringify(value) as string | undefined
  if (Array.isArray(value)) return '[' + value.map((item) => canonical(item) ?? 'null').join(',') + ']'
  const members: string[] = []
  for (const key of Object.keys(value).sort()) {
    const text = canonical((value as Record<string, unknown>)[key])
    if (text !== undefined) members.push(JSON.stringify(key) + ':' + text)
  }
  return '{' + members.join(',') + '}'
}

/** the content hash of a configuration version: hex SHA-256 of canonicalJson(config) */
export function configHash (config: unknown): string {
  return createHash('sha256').update(canonicalJson(config)).digest('hex')
}
