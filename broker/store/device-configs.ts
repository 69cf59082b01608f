/**
 * The configuration store (CONTRACT §9): per template a fleet configuration, per
 * device overrides, and per device a history of versions of the effective
 * configuration (integers, +1, never reused) with author, time and content hash,
 * the last known good version (last `applied`), and the ack state of the current
 * version. Rollout records and the rollout lease live here too.
 * One interface, two implementations (memory, Redis), one contract test suite.
 */

export type JsonObject = Readonly<Record<string, unknown>>

export interface ConfigVersion {
  readonly deviceId: string
  readonly version: number
  /** the effective configuration (template merged with the device's overrides) */
  readonly config: JsonObject
  /** admin CN, `registration`, `rollback`, or `rollout <id>` */
  readonly author: string
  readonly at: number
  /** hex SHA-256 of the canonical JSON of `config` (keys sorted) */
  readonly hash: string
  readonly reason?: string | undefined
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

export interface PendingAck { readonly deviceId: string, readonly version: number, readonly deliveredAt: number }

export interface DeviceConfigStore {
  getTemplateConfig (template: string): Promise<{ readonly config: JsonObject, readonly author: string, readonly at: number } | null>
  /** stores the fleet configuration of a template; makes no device version (rollouts or an immediate apply do) */
  setTemplateConfig (template: string, config: JsonObject, author: string, at: number): Promise<void>

  getState (deviceId: string): Promise<DeviceConfigState | null>
  /**
   * Atomically: version = current + 1 (1 for the first), with this config, author
   * and hash; status pending, deliveredAt null; overrides replaced if given; kept
   * in the history (at least 20 newest). Returns null (and changes nothing) when
   * `expectedVersion` is given and does not match.
   */
  commit (deviceId: string, input: CommitInput): Promise<ConfigVersion | null>
  /** newest first */
  history (deviceId: string, limit: number): Promise<ConfigVersion[]>
  getVersion (deviceId: string, version: number): Promise<ConfigVersion | null>

  /** the device received `version` (the current one) at `at`: starts its ack timer, once; false when not current or already delivered */
  markDelivered (deviceId: string, version: number, at: number): Promise<boolean>
  /** one winner per (device, version) across processes */
  recordAck (deviceId: string, version: number, status: 'applied' | 'failed', at: number): Promise<AckOutcome>
  /** delivered, not yet acknowledged, delivered at or before `deliveredBefore` (ms): timeout candidates, oldest first */
  pendingAcks (deliveredBefore: number, limit: number): Promise<PendingAck[]>
  /** atomically marks `version` timed out (status failed) if it is still current and unacknowledged; true for exactly one caller */
  claimTimeout (deviceId: string, version: number, at: number): Promise<boolean>

  // --- rollouts (broker/rollouts.ts owns the record's shape) ---
  putRollout (id: string, record: JsonObject): Promise<void>
  getRollout (id: string): Promise<JsonObject | null>
  listRollouts (): Promise<JsonObject[]>
  /** a lease held by one process at a time; true when `owner` holds it now (taken or renewed) */
  acquireLease (name: string, owner: string, ttlMs: number): Promise<boolean>
  releaseLease (name: string, owner: string): Promise<void>

  close (): Promise<void>
}
