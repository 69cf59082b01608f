/**
 * The configuration update `aedes-jitp simulate` pushes (`--config-update`, on by
 * default when config-fail devices run): once a device has applied its first
 * configuration, one new version through the admin API as an operator would
 * (`PUT /v1/devices/{id}/config`, CONTRACT §8), with a harmless override. Healthy
 * devices apply it; the config-fail devices that fail updates ack it `failed`, and
 * the broker rolls them back to their last known good as a new version (§9,
 * `config.rolledback`), which they apply. Without it nothing would ever be rolled
 * back: a device whose first version fails has no last known good.
 *
 * The update waits until the broker has recorded the first version as applied (its
 * `lastKnownGood`): the device's PUBACK comes before the broker's store has the ack,
 * and an update committed in between would make that ack stale and leave the device
 * with nothing to return to. Every wait is bounded.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import { adminCall, AdminApiError, type AdminTarget } from '../cli/admin-client.js'
import type { VirtualDevice } from './device.js'

/** how long the broker may take to record a device's first `applied` ack */
const RECORDED_WITHIN_MS = 5000
const RECORDED_POLL_MS = 100
const SETTLE_POLL_MS = 100

/** a key no template of the project uses, so every device gets a content it never had */
export const defaultConfigOverride = (runId: string): Record<string, unknown> => ({ simulatorUpdate: runId })

export interface ConfigUpdateReport {
  /** the overrides each device got */
  readonly override: Record<string, unknown>
  /** devices the update was sent to */
  readonly sent: number
  /** of those, devices that applied the update itself */
  readonly applied: number
  /** of those, devices that acked it `failed` */
  readonly failed: number
  /** of the failed, devices that then applied a later version (the broker's rollback) */
  readonly failedThenRolledBack: number
  /** of those, devices that had applied no version from the update on when the run stopped waiting */
  readonly unsettled: number
  /** the broker refused the override itself (400): sent to no device after that */
  readonly refused: string | null
  /** updates not sent, and why (the first ones) */
  readonly errors: Array<{ index: number, message: string }>
}

export class ConfigUpdater {
  /** the version the update made, per device */
  readonly versions = new Map<VirtualDevice, number>()
  private readonly tasks: Array<Promise<void>> = []
  private readonly errors: Array<{ index: number, message: string }> = []
  private errorCount = 0
  /** the broker refused the override itself (400): no point in sending it to the others */
  private refused: string | null = null
  private closed = false
  private running = 0
  private readonly waiting: Array<() => void> = []

  constructor (
    private readonly admin: AdminTarget,
    readonly override: Record<string, unknown>,
    private readonly concurrency: number
  ) {}

  /** called at the PUBACK of a device's `applied` ack of its first version */
  schedule (device: VirtualDevice): void {
    if (this.closed || device.deviceId === null) return
    this.tasks.push(this.inLane(() => this.update(device)).catch((err: unknown) => this.error(device, err)))
  }

  /** no update starts after this */
  close (): void {
    this.closed = true
  }

  /**
   * Waits for the updates under way, then until every updated device has applied a
   * version from its update on (the update, or the rollback after it), at most
   * `boundMs`; returns the devices that had not.
   */
  async settle (boundMs: number, over: () => boolean, signal?: AbortSignal): Promise<VirtualDevice[]> {
    await Promise.all(this.tasks)
    const until = Date.now() + boundMs
    for (;;) {
      const pending = [...this.versions].filter(([d, v]) => d.lastApplied < v && d.phase !== 'failed').map(([d]) => d)
      if (pending.length === 0 || Date.now() >= until || over()) return pending
      await sleep(SETTLE_POLL_MS, undefined, signal ? { signal } : undefined).catch(() => undefined)
    }
  }

  report (): ConfigUpdateReport {
    let applied = 0; let failed = 0; let rolledBack = 0; let unsettled = 0
    for (const [d, v] of this.versions) {
      if (d.failedVersions.includes(v)) {
        failed++
        if (d.lastApplied > v) rolledBack++
      } else if (d.lastApplied >= v) {
        applied++
      }
      if (d.lastApplied < v) unsettled++
    }
    const errors = [...this.errors]
    if (this.errorCount > errors.length) errors.push({ index: -1, message: `and ${this.errorCount - errors.length} more` })
    return { override: this.override, sent: this.versions.size, applied, failed, failedThenRolledBack: rolledBack, unsettled, refused: this.refused, errors }
  }

  private async update (device: VirtualDevice): Promise<void> {
    if (this.refused !== null) return
    const id = encodeURIComponent(device.deviceId!)
    const until = Date.now() + RECORDED_WITHIN_MS
    for (;;) {
      const state = await adminCall<{ lastKnownGood: number | null }>(this.admin, 'GET', `/v1/devices/${id}/config`)
      if (state.lastKnownGood !== null) break
      if (Date.now() >= until) throw new Error(`the broker had not recorded its applied configuration ${RECORDED_WITHIN_MS / 1000} s after the device's ack`)
      await sleep(RECORDED_POLL_MS)
    }
    if (this.closed || this.refused !== null) return
    try {
      const v = await adminCall<{ version: number }>(this.admin, 'PUT', `/v1/devices/${id}/config`, { config: this.override })
      this.versions.set(device, v.version)
    } catch (err) {
      if (!(err instanceof AdminApiError && err.statusCode === 400)) throw err
      this.refused ??= `the broker refused the configuration update ${JSON.stringify(this.override)} (${err.message.slice(0, 300)}): give one the template's configSchema accepts with --config-override`
    }
  }

  private error (device: VirtualDevice, err: unknown): void {
    this.errorCount++
    if (this.errors.length < 5) this.errors.push({ index: device.index, message: (err instanceof Error ? err.message : String(err)).split('\n')[0]!.slice(0, 300) })
  }

  /** `concurrency` admin calls at a time; a finished one hands its place to the next */
  private async inLane (fn: () => Promise<void>): Promise<void> {
    if (this.running < this.concurrency) this.running++
    else await new Promise<void>((resolve) => this.waiting.push(resolve))
    try {
      await fn()
    } finally {
      const next = this.waiting.shift()
      if (next) next()
      else this.running--
    }
  }
}
