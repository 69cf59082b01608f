/**
 * Staged rollouts (CONTRACT §9): a configuration change — a template's new fleet
 * configuration, or a patch merged into each device's overrides — applied to a
 * set of devices in waves, advancing only while the share of `failed` and
 * timed-out acknowledgements stays under the abort threshold; on abort every
 * device the rollout changed goes back to its previous version's content.
 *
 * State lives in the configuration store, so a rollout survives a restart. Every
 * process runs a ticker; only the holder of the store lease `rollouts` drives
 * (the others do nothing), and another process takes over when the holder dies.
 *
 * Two records per rollout, each with one writer, so no write can undo another:
 * - the rollout record (`<id>`), written only by the driver: cohorts, the version
 *   each device was on before the rollout (`from`, written BEFORE the device is
 *   changed), the version the rollout committed (`to`), outcomes and progress;
 * - the control record (`<id>:control`), written only by operators (pause,
 *   resume, abort, from any process) and read by the driver at every step.
 *
 * A device is changed by a compare-and-set on the version recorded in `from`
 * (ConfigService.apply with expectedVersion), so a new driver finishing a wave
 * its predecessor started can never change a device a second time: the CAS
 * fails, and the version after `from` authored `rollout <id>` tells it the
 * device was already changed.
 *
 * How a changed device is judged (its version v = to[device]):
 * - applied: v is current with status current (the device acknowledged it);
 * - failed / timed out: v is current with status failed (its ack said failed, or
 *   no ack in time: the state cannot tell which until the rollback that follows),
 *   or version v+1 exists authored `rollback` (the automatic rollback that only a
 *   failed ack or a timeout of v makes) — timed out when that rollback's reason
 *   says so;
 * - superseded (reported as skipped): v+1 was made by anyone else (an operator,
 *   another rollout) before the device acknowledged v: nothing to judge;
 * - pending: v is current and not yet acknowledged: in flight (delivered, and the
 *   ack timeout bounds the wait; or published less than `deliveryGraceMs` ago, as
 *   an online device receives it at once) or offline (not delivered after that).
 * The rollout aborts as soon as the waves so far have `minSample` outcomes
 * (default: the first wave's size) and (failed + timedOut) / outcomes >=
 * abortThreshold (with at least one failure). Otherwise a wave advances, and the
 * last wave completes the rollout, once every device of the waves so far was
 * changed (or skipped), none is in flight, at least one outcome is known, and the
 * wave's `minWaitSeconds` have passed: below `minSample` outcomes the threshold is
 * not consulted at all (a bigger wave brings the sample). Devices that are offline
 * count as pending and hold nothing up; a wave all of whose devices are offline
 * holds the rollout until one answers.
 * While paused nothing is changed and nothing decided (the numbers keep
 * updating); the wave's wait counts on. Ended, the record keeps its numbers and
 * only the devices still undecided (offline), which are judged again when asked.
 */
import { createHash, randomBytes } from 'node:crypto'
import type { Audit } from './audit.js'
import { deepMerge, type ConfigService } from './config-service.js'
import { JitpError, isJitpError } from './errors.js'
import type { AppLogger } from './logger.js'
import type { Metrics } from './metrics.js'
import { canonicalJson, type DeviceConfigState, type DeviceConfigStore, type JsonObject } from './store/device-configs.js'
import type { DeviceRecord, Registry } from './store/registry.js'

export interface RolloutSpec {
  target: { template?: string, deviceIds?: string[], status?: 'provisioned' | 'active' | 'quarantined' }
  /** a new template configuration (target.template required): each device gets it merged with its overrides; stored as the template's on completion */
  config?: JsonObject
  /** merged into each targeted device's overrides */
  patch?: JsonObject
  /** cumulative percentages ending at 100, or exponential: base %, ×factor until 100 % */
  waves: number[] | { base: number, factor: number }
  minWaitSeconds: number
  /** share of failed + timed out among the outcomes of the waves so far */
  abortThreshold: number
  /** no abort decision before this many outcomes (default: the first wave's size) */
  minSample?: number
}

export interface WaveProgress {
  percent: number
  /** the devices this wave adds */
  targeted: number
  /** changed (committed and published) by the rollout */
  published: number
  applied: number
  failed: number
  timedOut: number
  /** published, no outcome yet (offline, or the ack not in yet) */
  pending: number
  /** not changed (another change came first, the device vanished, its configuration was refused) or superseded before it acknowledged */
  skipped: number
}

export type RolloutStatus = 'running' | 'paused' | 'aborted' | 'completed'

/** a type, not an interface: it is assignable to the admin routes' open view (an index signature) */
export type Rollout = {
  id: string
  status: RolloutStatus
  spec: RolloutSpec
  author: string
  createdAt: number
  updatedAt: number
  /** every targeted device */
  devices: number
  /** 1-based number of the wave started last (0 before the first) */
  currentWave: number
  waves: WaveProgress[]
  reason?: string
}

export interface Rollouts {
  /** validates (InvalidRequest; InvalidConfiguration from the service), resolves and orders the targets, stores it, audited rollout.started */
  start (spec: RolloutSpec, author: string): Promise<Rollout>
  get (id: string): Promise<Rollout | null>
  /** newest first */
  list (): Promise<Rollout[]>
  /** RolloutNotFound; RolloutStateConflict once aborted or completed; audited rollout.paused */
  pause (id: string, author: string): Promise<Rollout>
  resume (id: string, author: string): Promise<Rollout>
  /** the driver rolls the changed devices back within a tick; audited rollout.aborted */
  abort (id: string, author: string): Promise<Rollout>
  /** stops the ticker, lets a step in progress reach its next safe point, and releases the lease for the next process */
  close (): Promise<void>
}

export interface RolloutDeps {
  readonly store: DeviceConfigStore
  readonly registry: Pick<Registry, 'getDevice' | 'listDevicesPage'>
  readonly service: Pick<ConfigService, 'apply' | 'rollback' | 'validate' | 'effective'>
  readonly audit: Pick<Audit, 'write'>
  readonly metrics: Pick<Metrics, 'rolloutDevices'>
  readonly log: Pick<AppLogger, 'info' | 'warn' | 'debug'>
  readonly now: () => number
  /** this process's id, the lease owner */
  readonly owner: string
  /** ticker period (ms), default 250 */
  readonly tickMs?: number
  /** the lease's time to live (ms), default 3000: how long the others wait after the holder dies */
  readonly leaseTtlMs?: number
  /** a published version not delivered this long (ms, default 2000) means the device is offline rather than about to receive it */
  readonly deliveryGraceMs?: number
}

const LEASE = 'rollouts'
const DEFAULT_TICK_MS = 250
const DEFAULT_LEASE_TTL_MS = 3000
const DEFAULT_DELIVERY_GRACE_MS = 2000
/** the driver looks for rollouts started on other processes this often (ms, real time) */
const DISCOVER_MS = 1000
/** devices whose `from` is recorded in one write before any of them is changed */
const APPLY_CHUNK = 1000
/** store round trips in flight at once for one rollout */
const PARALLEL = 32
const MAX_WAVES = 50
const MAX_DEVICE_IDS = 100_000
const LIST_PAGE = 1000
const CONTROL_SUFFIX = ':control'
/** the author of the automatic rollback after a failed ack or a timeout (broker/config-service.ts callers) */
const AUTOMATIC_ROLLBACK_AUTHOR = 'rollback'
/** how the automatic rollback's reason names a timeout */
const TIMEOUT_REASON = /time(d)?[ -]?out|no ack/i
const GAUGE_STATES = ['targeted', 'published', 'applied', 'failed', 'timedOut', 'pending'] as const

type Outcome = 'applied' | 'failed' | 'timedOut' | 'superseded'
/** what a device not yet judged looks like now (never stored: recomputed by each driver) */
type Provisional = 'failing' | 'inFlight' | 'notDelivered'

/** the driver's record, stored as JSON under the rollout's id */
interface RolloutRecord {
  kind: 'rollout'
  id: string
  spec: RolloutSpec
  author: string
  createdAt: number
  updatedAt: number
  /** the driver's word; `paused` and an operator's abort come from the control record */
  status: 'running' | 'aborted' | 'completed'
  reason?: string
  /** a `config` rollout's template */
  template: string | null
  percents: number[]
  /** cumulative device counts: wave k covers devices[0 .. ends[k]) */
  ends: number[]
  /** ordered by SHA-256(id + deviceId) */
  devices: string[]
  minSample: number
  /** the wave started last, -1 before the first */
  wave: number
  waveStartedAt: number | null
  /** the version each device was on, recorded before the rollout changes it (null: none yet) */
  from: Record<string, number | null>
  /** the version the rollout committed */
  to: Record<string, number>
  /** devices of a started wave the rollout did not change, and why */
  skipped: Record<string, string>
  /** final outcomes, never judged again */
  outcome: Record<string, Outcome>
  /** aborted: the changed devices' rollbacks still to do */
  restoring: boolean
  /** what the abort did for each changed device */
  restored: Record<string, string>
  progress: WaveProgress[]
  /**
   * Once ended, the per-device maps are dropped (the driver lists every record each
   * second: old rollouts must stay small); what is kept is `progress`, and the
   * devices still undecided at completion, judged again on demand:
   * device → [its version, its wave, the column it is counted in].
   */
  compacted?: boolean
  late?: Record<string, [number, number, 'pending' | 'failed']>
}

/** the operators' record, stored under `<id>:control` */
interface ControlRecord {
  kind: 'rollout-control'
  id: string
  status: 'running' | 'paused' | 'aborted'
  author: string
  at: number
  reason?: string
}

function invalid (detail: string): JitpError {
  return new JitpError('InvalidRequest', detail)
}

function isPlainObject (v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v)
}

function authorOf (id: string): string {
  return `rollout ${id}`
}

/** the cumulative percentages of a wave plan, checked */
export function wavePercents (waves: RolloutSpec['waves']): number[] {
  let out: number[]
  if (Array.isArray(waves)) {
    if (waves.length === 0 || waves.length > MAX_WAVES) throw invalid(`waves: 1 to ${MAX_WAVES} percentages`)
    out = waves.map((p, i) => {
      if (typeof p !== 'number' || !Number.isFinite(p) || p <= 0 || p > 100) throw invalid(`waves/${i}: a percentage in (0, 100]`)
      return p
    })
    for (let i = 1; i < out.length; i++) if (out[i]! <= out[i - 1]!) throw invalid(`waves/${i}: percentages are cumulative and must increase`)
    if (out[out.length - 1] !== 100) throw invalid('waves: the last wave must be 100 (percentages are cumulative)')
    return out
  }
  if (!isPlainObject(waves)) throw invalid('waves: an array of percentages or {"base", "factor"}')
  const { base, factor } = waves
  if (typeof base !== 'number' || !Number.isFinite(base) || base <= 0 || base > 100) throw invalid('waves/base: a percentage in (0, 100]')
  if (typeof factor !== 'number' || !Number.isFinite(factor) || factor <= 1) throw invalid('waves/factor: a number above 1')
  out = []
  // rounded so 1 × 3 × 3 … reads as the operator would write it
  for (let p = base; p < 100; p *= factor) {
    out.push(Math.round(p * 1000) / 1000)
    if (out.length >= MAX_WAVES) throw invalid(`waves: base ${base} × factor ${factor} needs more than ${MAX_WAVES} waves to reach 100`)
  }
  out.push(100)
  return out
}

/** cumulative device counts: wave k covers the first ceil(percent_k × n / 100) devices */
export function waveEnds (percents: readonly number[], n: number): number[] {
  return percents.map((p) => Math.min(n, Math.ceil(p * n / 100 - 1e-9)))
}

/** the rollout's deterministic order: the same cohorts after any restart, unrelated to device ids */
export function cohortOrder (rolloutId: string, deviceIds: readonly string[]): string[] {
  const key = (d: string): string => createHash('sha256').update(rolloutId).update(d).digest('hex')
  return deviceIds
    .map((d) => ({ d, k: key(d) }))
    .sort((a, b) => a.k < b.k ? -1 : a.k > b.k ? 1 : a.d < b.d ? -1 : a.d > b.d ? 1 : 0)
    .map((x) => x.d)
}

/** runs `fn` over `items`, at most `limit` at a time */
async function eachLimit<T> (items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0
  async function worker (): Promise<void> {
    while (next < items.length) await fn(items[next++]!)
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker))
}

function checkSpec (spec: RolloutSpec): number[] {
  if (!isPlainObject(spec)) throw invalid('a rollout is an object')
  const target = spec.target as unknown
  if (!isPlainObject(target)) throw invalid('target: an object with "template", "deviceIds" and/or "status"')
  if (target.template === undefined && target.deviceIds === undefined && target.status === undefined) throw invalid('target: name a template, device ids or a status')
  if (target.template !== undefined && (typeof target.template !== 'string' || target.template === '')) throw invalid('target/template: a template name')
  if (target.status !== undefined && target.status !== 'provisioned' && target.status !== 'active' && target.status !== 'quarantined') throw invalid('target/status: provisioned, active or quarantined')
  if (target.deviceIds !== undefined) {
    if (!Array.isArray(target.deviceIds) || target.deviceIds.length === 0 || target.deviceIds.length > MAX_DEVICE_IDS) throw invalid(`target/deviceIds: 1 to ${MAX_DEVICE_IDS} device ids`)
    target.deviceIds.forEach((d, i) => { if (typeof d !== 'string' || d === '') throw invalid(`target/deviceIds/${i}: a device id`) })
  }
  if ((spec.config === undefined) === (spec.patch === undefined)) throw invalid('give exactly one of "config" (a new template configuration) or "patch" (merged into each device\'s overrides)')
  if (spec.config !== undefined && !isPlainObject(spec.config)) throw invalid('config: an object')
  if (spec.patch !== undefined && !isPlainObject(spec.patch)) throw invalid('patch: an object')
  if (spec.config !== undefined && target.template === undefined) throw invalid('target/template: a new template configuration needs its template')
  if (typeof spec.minWaitSeconds !== 'number' || !Number.isFinite(spec.minWaitSeconds) || spec.minWaitSeconds < 0) throw invalid('minWaitSeconds: a number of seconds, 0 or more')
  if (typeof spec.abortThreshold !== 'number' || !(spec.abortThreshold >= 0 && spec.abortThreshold <= 1)) throw invalid('abortThreshold: a share between 0 and 1')
  if (spec.minSample !== undefined && (!Number.isInteger(spec.minSample) || spec.minSample < 1)) throw invalid('minSample: a whole number, 1 or more')
  return wavePercents(spec.waves)
}

function emptyWave (percent: number, targeted: number): WaveProgress {
  return { percent, targeted, published: 0, applied: 0, failed: 0, timedOut: 0, pending: 0, skipped: 0 }
}

/** per wave, from the final outcomes and what the undecided devices look like now */
function progressOf (rec: RolloutRecord, provisional: ReadonlyMap<string, Provisional>): WaveProgress[] {
  return rec.percents.map((percent, k) => {
    const start = k === 0 ? 0 : rec.ends[k - 1]!
    const end = rec.ends[k]!
    const w = emptyWave(percent, end - start)
    if (k > rec.wave) return w
    for (let i = start; i < end; i++) {
      const d = rec.devices[i]!
      if (rec.skipped[d] !== undefined) { w.skipped++; continue }
      if (rec.to[d] === undefined) continue
      w.published++
      const o = rec.outcome[d] ?? (provisional.get(d) === 'failing' ? 'failed' : undefined)
      if (o === 'applied') w.applied++
      else if (o === 'failed') w.failed++
      else if (o === 'timedOut') w.timedOut++
      else if (o === 'superseded') w.skipped++
      else w.pending++
    }
    return w
  })
}

function totals (waves: readonly WaveProgress[]): { decided: number, bad: number } {
  let decided = 0
  let bad = 0
  for (const w of waves) {
    decided += w.applied + w.failed + w.timedOut
    bad += w.failed + w.timedOut
  }
  return { decided, bad }
}

/**
 * What a changed device's state says about the rollout's version `v` of it:
 * a final outcome, or how it looks while undecided.
 */
async function judge (store: DeviceConfigStore, deviceId: string, v: number, notDeliveredSince: number): Promise<Outcome | Provisional> {
  const state = await store.getState(deviceId)
  const current = state?.current?.version ?? null
  if (state === null || current === null) return 'superseded'
  if (current === v) {
    if (state.status === 'current') return 'applied'
    if (state.status === 'failed') return 'failing'
    if (state.deliveredAt !== null) return 'inFlight'
    // an online device has it within moments of the commit: only after a grace is a device not yet delivered to offline
    return state.current!.at > notDeliveredSince ? 'inFlight' : 'notDelivered'
  }
  if (current < v) return 'superseded'
  // moved on: was it the automatic rollback that only a failed ack or a timeout of v makes?
  const next = await store.getVersion(deviceId, v + 1)
  if (next?.author === AUTOMATIC_ROLLBACK_AUTHOR) return TIMEOUT_REASON.test(next.reason ?? '') ? 'timedOut' : 'failed'
  // v was acknowledged applied before anything else came (the last known good cannot be v otherwise)
  if (state.lastKnownGood === v) return 'applied'
  return 'superseded'
}

export function createRollouts (deps: RolloutDeps): Rollouts {
  const { store, registry, service, audit, metrics, log, now, owner } = deps
  const tickMs = deps.tickMs ?? DEFAULT_TICK_MS
  const leaseTtlMs = deps.leaseTtlMs ?? DEFAULT_LEASE_TTL_MS
  const deliveryGraceMs = deps.deliveryGraceMs ?? DEFAULT_DELIVERY_GRACE_MS

  /** true while this process holds the lease (as of the last tick) */
  let holding = false
  let closed = false
  let ticking = false
  let driving: Promise<void> | null = null
  let lastDiscover = 0
  /** the driver's rollouts: its copy is the record's truth while it holds the lease */
  const active = new Map<string, RolloutRecord>()
  /** per rollout, undecided devices as last seen */
  const provisional = new Map<string, Map<string, Provisional>>()

  async function readRecord (id: string): Promise<RolloutRecord | null> {
    const r = await store.getRollout(id) as unknown as RolloutRecord | null
    return r?.kind === 'rollout' ? r : null
  }

  async function readControl (id: string): Promise<ControlRecord | null> {
    const c = await store.getRollout(id + CONTROL_SUFFIX) as unknown as ControlRecord | null
    return c?.kind === 'rollout-control' ? c : null
  }

  function viewOf (rec: RolloutRecord, ctl: ControlRecord | null, waves: WaveProgress[] = rec.progress): Rollout {
    const status: RolloutStatus = rec.status !== 'running' ? rec.status : (ctl?.status ?? 'running')
    const reason = rec.status !== 'running' ? rec.reason : ctl?.reason
    return {
      id: rec.id,
      status,
      spec: rec.spec,
      author: rec.author,
      createdAt: rec.createdAt,
      updatedAt: Math.max(rec.updatedAt, ctl?.at ?? 0),
      devices: rec.ends[rec.ends.length - 1] ?? 0,
      currentWave: rec.wave + 1,
      waves,
      ...(reason !== undefined ? { reason } : {})
    }
  }

  /**
   * A completed rollout's devices that were offline still acknowledge later: its
   * numbers are read again on demand (the driver no longer looks at it).
   */
  async function liveProgress (rec: RolloutRecord): Promise<WaveProgress[]> {
    const late = Object.entries(rec.late ?? {})
    if (rec.status !== 'completed' || late.length === 0) return rec.progress
    const waves = rec.progress.map((w) => ({ ...w }))
    await eachLimit(late, PARALLEL, async ([d, [v, k, counted]]) => {
      const j = await judge(store, d, v, now() - deliveryGraceMs)
      const column = j === 'failing' ? 'failed' : j === 'inFlight' || j === 'notDelivered' ? 'pending' : j === 'superseded' ? 'skipped' : j
      const w = waves[k]
      if (w === undefined || column === counted) return
      w[counted]--
      w[column]++
    })
    return waves
  }

  // ---------------------------------------------------------------- the driver

  function setGauges (rec: RolloutRecord): void {
    const sum = { targeted: 0, published: 0, applied: 0, failed: 0, timedOut: 0, pending: 0 }
    for (const w of rec.progress) for (const s of GAUGE_STATES) sum[s] += w[s]
    for (const s of GAUGE_STATES) metrics.rolloutDevices.set({ rollout: rec.id, state: s }, sum[s])
  }

  function dropGauges (id: string): void {
    for (const s of GAUGE_STATES) metrics.rolloutDevices.remove({ rollout: id, state: s })
  }

  /** writes the driver's record; never after the lease is lost (the new holder owns it now) */
  async function save (rec: RolloutRecord): Promise<void> {
    if (!holding) return
    rec.updatedAt = now()
    if (rec.compacted !== true) rec.progress = progressOf(rec, provisional.get(rec.id) ?? new Map())
    await store.putRollout(rec.id, rec as unknown as JsonObject)
  }

  function stillDriving (): boolean {
    return holding && !closed
  }

  /** the CAS on `from` failed: did this rollout commit the next version (before a crash), or did someone else change the device? */
  async function settle (rec: RolloutRecord, deviceId: string, from: number | null): Promise<void> {
    const next = await store.getVersion(deviceId, (from ?? 0) + 1)
    if (next?.author === authorOf(rec.id)) rec.to[deviceId] = next.version
    else rec.skipped[deviceId] = 'changed by someone else before the rollout reached it'
  }

  async function applyOne (rec: RolloutRecord, deviceId: string, known: DeviceConfigState | null | undefined): Promise<void> {
    const from = rec.from[deviceId] ?? null
    try {
      const state = known !== undefined ? known : await store.getState(deviceId)
      if ((state?.current?.version ?? null) !== from) return await settle(rec, deviceId, from)
      const template = state?.template ?? (await registry.getDevice(deviceId))?.template
      if (template === undefined) {
        rec.skipped[deviceId] = 'device not found'
        return
      }
      const overrides = state?.overrides ?? {}
      let config: JsonObject
      let newOverrides: JsonObject | undefined
      if (rec.spec.config !== undefined) {
        config = deepMerge(rec.spec.config, overrides)
      } else {
        newOverrides = deepMerge(overrides, rec.spec.patch ?? {})
        config = await service.effective(template, newOverrides)
      }
      const v = await service.apply(deviceId, {
        template,
        config,
        ...(newOverrides !== undefined ? { overrides: newOverrides } : {}),
        author: authorOf(rec.id),
        reason: `rollout ${rec.id} wave ${rec.wave + 1} (${rec.percents[rec.wave]}%)`,
        expectedVersion: from
      })
      if (v !== null) rec.to[deviceId] = v.version
      else await settle(rec, deviceId, from)
    } catch (err) {
      if (isJitpError(err) && err.code === 'InvalidConfiguration') {
        // the device's own overrides make the change invalid for it: it keeps its version
        rec.skipped[deviceId] = `configuration refused: ${err.detail ?? err.message}`
        return
      }
      // the store away: `from` is recorded, the next step tries again with the same CAS
      log.warn({ rolloutId: rec.id, deviceId, err: (err as Error).message }, 'rollout: device not changed this time')
    }
  }

  /** changes every device of the started waves that is not yet changed or skipped, in chunks whose `from` is stored first */
  async function applyPending (rec: RolloutRecord): Promise<void> {
    const end = rec.ends[rec.wave] ?? 0
    const todo = rec.devices.slice(0, end).filter((d) => rec.to[d] === undefined && rec.skipped[d] === undefined)
    for (let i = 0; i < todo.length; i += APPLY_CHUNK) {
      if (!stillDriving()) return
      if (i > 0) {
        // an operator's pause or abort stops a long wave between chunks
        const ctl = await readControl(rec.id)
        if (ctl !== null && ctl.status !== 'running') return
      }
      const chunk = todo.slice(i, i + APPLY_CHUNK)
      const states = new Map<string, DeviceConfigState | null>()
      const fresh = chunk.filter((d) => !(d in rec.from))
      if (fresh.length > 0) {
        await eachLimit(fresh, PARALLEL, async (d) => { states.set(d, await store.getState(d)) })
        for (const d of fresh) rec.from[d] = states.get(d)?.current?.version ?? null
        // BEFORE any of them changes: a successor knows what each was on
        await save(rec)
        if (!stillDriving()) return
      }
      await eachLimit(chunk, PARALLEL, (d) => applyOne(rec, d, states.get(d)))
      await save(rec)
    }
  }

  /** judges the changed devices without a final outcome */
  async function refresh (rec: RolloutRecord): Promise<void> {
    const seen = new Map<string, Provisional>()
    const undecided = Object.keys(rec.to).filter((d) => rec.outcome[d] === undefined)
    await eachLimit(undecided, PARALLEL, async (d) => {
      const j = await judge(store, d, rec.to[d]!, now() - deliveryGraceMs)
      if (j === 'failing' || j === 'inFlight' || j === 'notDelivered') seen.set(d, j)
      else rec.outcome[d] = j
    })
    provisional.set(rec.id, seen)
    rec.progress = progressOf(rec, seen)
  }

  async function startWave (rec: RolloutRecord, k: number): Promise<void> {
    rec.wave = k
    rec.waveStartedAt = now()
    const count = rec.ends[k]! - (k === 0 ? 0 : rec.ends[k - 1]!)
    await save(rec)
    audit.write('rollout.advanced', {
      rolloutId: rec.id, template: rec.template ?? undefined, count, reason: `wave ${k + 1} of ${rec.percents.length}: ${rec.percents[k]}%`
    })
    log.info({ rolloutId: rec.id, wave: k + 1, percent: rec.percents[k], devices: count }, 'rollout: wave started')
    await applyPending(rec)
  }

  /** every changed device back on its previous version's content, unless someone else changed it since */
  async function restoreOne (rec: RolloutRecord, deviceId: string): Promise<void> {
    const from = rec.from[deviceId] ?? null
    const to = rec.to[deviceId]!
    try {
      const current = (await store.getState(deviceId))?.current ?? null
      if (current === null) {
        rec.restored[deviceId] = 'device has no configuration any more'
        return
      }
      if (from === null) {
        rec.restored[deviceId] = `left on ${current.version}: it had no version before the rollout`
        return
      }
      const previous = await store.getVersion(deviceId, from)
      if (previous === null) {
        rec.restored[deviceId] = `left on ${current.version}: version ${from} is no longer in the history`
        return
      }
      // the same content and the same overrides: nothing to restore (a patch that changed no value still goes)
      if (current.hash === previous.hash && (previous.overrides === undefined || canonicalJson(current.overrides ?? {}) === canonicalJson(previous.overrides))) {
        rec.restored[deviceId] = `on ${current.version}, the content of ${from}`
        return
      }
      // the rollout's own version, or the automatic rollback after it: undone; a later change by anyone else stands
      if (current.version < to || (current.author !== authorOf(rec.id) && current.author !== AUTOMATIC_ROLLBACK_AUTHOR)) {
        rec.restored[deviceId] = `left on ${current.version} (${current.author})`
        return
      }
      const v = await service.rollback(deviceId, { toVersion: from, author: authorOf(rec.id), reason: 'rollout aborted', kind: 'rollout', expectedVersion: current.version })
      // null: it changed meanwhile; judged again at the next step
      if (v !== null) rec.restored[deviceId] = `version ${v.version}, the content of ${from}`
    } catch (err) {
      log.warn({ rolloutId: rec.id, deviceId, err: (err as Error).message }, 'rollout: device not rolled back this time')
    }
  }

  async function restore (rec: RolloutRecord): Promise<void> {
    const todo = Object.keys(rec.to).filter((d) => rec.restored[d] === undefined)
    for (let i = 0; i < todo.length; i += APPLY_CHUNK) {
      if (!stillDriving()) return
      await eachLimit(todo.slice(i, i + APPLY_CHUNK), PARALLEL, (d) => restoreOne(rec, d))
      await save(rec)
    }
    if (Object.keys(rec.to).some((d) => rec.restored[d] === undefined)) return
    rec.restoring = false
    const changed = Object.keys(rec.to).length
    const restored = Object.values(rec.restored).filter((r) => r.startsWith('version ')).length
    await save(compact(rec))
    finish(rec)
    log.info({ rolloutId: rec.id, changed, rolledBack: restored }, 'rollout: aborted, changed devices rolled back')
  }

  /** the ended rollout's record without its per-device maps (progress is final, except the devices still undecided) */
  function compact (rec: RolloutRecord): RolloutRecord {
    rec.progress = progressOf(rec, provisional.get(rec.id) ?? new Map())
    const late: NonNullable<RolloutRecord['late']> = {}
    if (rec.status === 'completed') {
      const seen = provisional.get(rec.id)
      for (let k = 0; k <= rec.wave; k++) {
        for (const d of rec.devices.slice(k === 0 ? 0 : rec.ends[k - 1]!, rec.ends[k]!)) {
          if (rec.to[d] === undefined || rec.outcome[d] !== undefined || rec.skipped[d] !== undefined) continue
          late[d] = [rec.to[d], k, seen?.get(d) === 'failing' ? 'failed' : 'pending']
        }
      }
    }
    Object.assign(rec, { compacted: true, late, devices: [], from: {}, to: {}, skipped: {}, outcome: {}, restored: {} })
    return rec
  }

  function finish (rec: RolloutRecord): void {
    active.delete(rec.id)
    provisional.delete(rec.id)
    dropGauges(rec.id)
  }

  async function abortRollout (rec: RolloutRecord, reason: string, byOperator: boolean): Promise<void> {
    rec.status = 'aborted'
    rec.reason = reason
    rec.restoring = true
    await save(rec)
    // an operator's abort was audited where it was asked for
    if (!byOperator) audit.write('rollout.aborted', { rolloutId: rec.id, template: rec.template ?? undefined, count: Object.keys(rec.to).length, reason }, 'warn')
    log.warn({ rolloutId: rec.id, reason }, 'rollout: aborted')
    await restore(rec)
  }

  async function complete (rec: RolloutRecord): Promise<void> {
    if (rec.spec.config !== undefined && rec.template !== null) {
      // from now on the template's new devices and later merges start from it
      await store.setTemplateConfig(rec.template, rec.spec.config, authorOf(rec.id), now())
    }
    rec.status = 'completed'
    await save(compact(rec))
    const applied = rec.progress.reduce((n, w) => n + w.applied, 0)
    audit.write('rollout.completed', { rolloutId: rec.id, template: rec.template ?? undefined, count: applied, reason: `${rec.ends[rec.ends.length - 1] ?? 0} devices targeted, ${applied} applied` })
    log.info({ rolloutId: rec.id, applied }, 'rollout: completed')
    finish(rec)
  }

  function waitedEnough (rec: RolloutRecord): boolean {
    return rec.waveStartedAt !== null && now() - rec.waveStartedAt >= rec.spec.minWaitSeconds * 1000
  }

  /** one step of one rollout: pick up operators' requests, change what is due, judge, then abort, advance, complete or wait */
  async function step (rec: RolloutRecord): Promise<void> {
    if (rec.status === 'aborted') {
      if (rec.restoring) await restore(rec)
      else finish(rec)
      return
    }
    if (rec.status === 'completed') return finish(rec)
    const ctl = await readControl(rec.id)
    if (ctl?.status === 'aborted') return await abortRollout(rec, ctl.reason ?? `aborted by ${ctl.author}`, true)
    const paused = ctl?.status === 'paused'
    if (!paused) {
      if (rec.wave < 0) await startWave(rec, 0)
      else await applyPending(rec)
    }
    if (!stillDriving()) return
    await refresh(rec)
    setGauges(rec)
    if (!paused) {
      const { decided, bad } = totals(rec.progress)
      const share = decided === 0 ? 0 : bad / decided
      if (bad > 0 && decided >= rec.minSample && share >= rec.spec.abortThreshold) {
        return await abortRollout(rec, `${bad} of ${decided} outcomes failed or timed out (${Math.round(share * 1000) / 10}% ≥ ${rec.spec.abortThreshold * 100}%)`, false)
      }
      // not aborted: the threshold held, or there are too few outcomes yet to judge (a bigger wave brings more)
      const end = rec.ends[rec.wave] ?? 0
      const allChanged = rec.devices.slice(0, end).every((d) => rec.to[d] !== undefined || rec.skipped[d] !== undefined)
      const inFlight = [...(provisional.get(rec.id)?.values() ?? [])].some((p) => p === 'inFlight')
      if (allChanged && !inFlight && decided > 0 && waitedEnough(rec)) {
        if (rec.wave === rec.percents.length - 1) return await complete(rec)
        return await startWave(rec, rec.wave + 1)
      }
    }
    await save(rec)
  }

  /** rollouts started on other processes, and everything after taking the lease over */
  async function discover (): Promise<void> {
    for (const raw of await store.listRollouts()) {
      const rec = raw as unknown as RolloutRecord
      if (rec.kind !== 'rollout' || active.has(rec.id)) continue
      if (rec.status === 'running' || (rec.status === 'aborted' && rec.restoring)) active.set(rec.id, rec)
    }
  }

  async function drive (): Promise<void> {
    if (Date.now() - lastDiscover >= DISCOVER_MS) {
      await discover()
      lastDiscover = Date.now()
    }
    for (const rec of [...active.values()]) {
      if (!stillDriving()) return
      try {
        await step(rec)
      } catch (err) {
        log.warn({ rolloutId: rec.id, err: (err as Error).message }, 'rollout: step failed, trying again next tick')
      }
    }
  }

  /** when this process last asked for the lease (ms, real time) */
  let leaseAskedAt = 0

  async function tick (): Promise<void> {
    if (closed || ticking) return
    ticking = true
    try {
      // the lease is asked for (taken, or renewed) three times per time to live, not at every tick
      if (Date.now() - leaseAskedAt >= leaseTtlMs / 3) {
        leaseAskedAt = Date.now()
        let held = false
        try {
          held = await store.acquireLease(LEASE, owner, leaseTtlMs)
        } catch (err) {
          log.warn({ err: (err as Error).message }, 'rollouts: lease not renewed')
        }
        if (!held || closed) {
          if (holding) log.info({ owner }, 'rollouts: lease lost, no longer driving')
          holding = false
          // a later holder's records are newer than this copy
          active.clear()
          provisional.clear()
          return
        }
        if (!holding) {
          log.info({ owner }, 'rollouts: lease taken, driving')
          lastDiscover = 0
        }
        holding = true
      }
      if (!holding) return
      // the lease is renewed above even while a long step runs; one step at a time
      if (driving === null) {
        driving = drive()
          .catch((err: unknown) => { log.warn({ err: (err as Error).message }, 'rollouts: drive failed, trying again next tick') })
          .finally(() => { driving = null })
      }
    } finally {
      ticking = false
    }
  }

  const timer = setInterval(() => { void tick() }, tickMs)
  timer.unref()
  void tick()

  // ---------------------------------------------------------------- the operators' side

  async function resolveTargets (spec: RolloutSpec): Promise<DeviceRecord[]> {
    const { template, deviceIds, status } = spec.target
    const wanted = (d: DeviceRecord): boolean =>
      d.status !== 'revoked' && (status === undefined || d.status === status) && (template === undefined || d.template === template)
    if (deviceIds !== undefined) {
      const ids = [...new Set(deviceIds)]
      const found: Array<DeviceRecord | null> = new Array(ids.length).fill(null)
      await eachLimit(ids.map((id, i) => [id, i] as const), PARALLEL, async ([id, i]) => { found[i] = await registry.getDevice(id) })
      const unknown = ids.filter((_, i) => found[i] === null)
      if (unknown.length > 0) throw invalid(`target/deviceIds: unknown device${unknown.length > 1 ? 's' : ''} ${unknown.slice(0, 5).join(', ')}${unknown.length > 5 ? ` and ${unknown.length - 5} more` : ''}`)
      return (found as DeviceRecord[]).filter(wanted)
    }
    const out: DeviceRecord[] = []
    let cursor: string | undefined
    do {
      const page = await registry.listDevicesPage({
        limit: LIST_PAGE,
        ...(template !== undefined ? { template } : {}),
        ...(status !== undefined ? { status } : {}),
        ...(cursor !== undefined ? { cursor } : {})
      })
      for (const d of page.items) if (wanted(d)) out.push(d)
      cursor = page.nextCursor ?? undefined
    } while (cursor !== undefined)
    return out
  }

  async function mustGet (id: string): Promise<RolloutRecord> {
    const rec = (holding ? active.get(id) : undefined) ?? await readRecord(id)
    if (rec === null) throw new JitpError('RolloutNotFound', id)
    return rec
  }

  /** pause, resume, abort: the control record, written by operators only */
  async function control (id: string, author: string, to: ControlRecord['status'], event: 'rollout.paused' | 'rollout.resumed' | 'rollout.aborted'): Promise<Rollout> {
    const rec = await mustGet(id)
    const ctl = await readControl(id)
    const status = viewOf(rec, ctl).status
    if (status === 'completed' || (status === 'aborted' && to !== 'aborted')) throw new JitpError('RolloutStateConflict', `rollout ${id} is ${status}`)
    // asking again for the state it is in changes nothing
    if (status === to) return viewOf(rec, ctl)
    const next: ControlRecord = {
      kind: 'rollout-control', id, status: to, author, at: now(), ...(to === 'aborted' ? { reason: `aborted by ${author}` } : {})
    }
    await store.putRollout(id + CONTROL_SUFFIX, next as unknown as JsonObject)
    audit.write(event, { rolloutId: id, actor: author, template: rec.template ?? undefined, ...(to === 'aborted' ? { reason: next.reason } : {}) }, to === 'aborted' ? 'warn' : 'info')
    if (holding) void tick()
    return viewOf(rec, next)
  }

  return {
    async start (spec, author) {
      const percents = checkSpec(spec)
      const targets = await resolveTargets(spec)
      if (targets.length === 0) throw invalid('target: no device matches')
      const template = spec.config !== undefined ? spec.target.template! : null
      if (spec.config !== undefined) {
        service.validate(template!, spec.config)
      } else {
        // the patch over each template's configuration; a device whose own overrides make it invalid is skipped then
        for (const t of new Set(targets.map((d) => d.template))) service.validate(t, await service.effective(t, spec.patch!))
      }
      const id = 'r' + randomBytes(8).toString('hex')
      const devices = cohortOrder(id, targets.map((d) => d.deviceId))
      const ends = waveEnds(percents, devices.length)
      const at = now()
      const rec: RolloutRecord = {
        kind: 'rollout',
        id,
        spec,
        author,
        createdAt: at,
        updatedAt: at,
        status: 'running',
        template,
        percents,
        ends,
        devices,
        minSample: spec.minSample ?? Math.max(1, ends[0]!),
        wave: -1,
        waveStartedAt: null,
        from: {},
        to: {},
        skipped: {},
        outcome: {},
        restoring: false,
        restored: {},
        progress: percents.map((p, k) => emptyWave(p, ends[k]! - (k === 0 ? 0 : ends[k - 1]!)))
      }
      await store.putRollout(id, rec as unknown as JsonObject)
      audit.write('rollout.started', {
        rolloutId: id, actor: author, template: template ?? spec.target.template, count: devices.length,
        reason: `${spec.config !== undefined ? 'template configuration' : 'patch'} in waves ${percents.join(',')}%`
      })
      log.info({ rolloutId: id, devices: devices.length, waves: percents }, 'rollout: started')
      if (holding) {
        active.set(id, rec)
        void tick()
      }
      return viewOf(rec, null)
    },

    async get (id) {
      const rec = (holding ? active.get(id) : undefined) ?? await readRecord(id)
      if (rec === null) return null
      return viewOf(rec, await readControl(id), await liveProgress(rec))
    },

    async list () {
      const all = await store.listRollouts()
      const controls = new Map<string, ControlRecord>()
      for (const r of all) if ((r as unknown as ControlRecord).kind === 'rollout-control') controls.set((r as unknown as ControlRecord).id, r as unknown as ControlRecord)
      return all
        .map((r) => r as unknown as RolloutRecord)
        .filter((r) => r.kind === 'rollout')
        .map((r) => viewOf((holding ? active.get(r.id) : undefined) ?? r, controls.get(r.id) ?? null))
        .sort((a, b) => b.createdAt - a.createdAt || (a.id < b.id ? 1 : -1))
    },

    pause: (id, author) => control(id, author, 'paused', 'rollout.paused'),
    resume: (id, author) => control(id, author, 'running', 'rollout.resumed'),
    abort: (id, author) => control(id, author, 'aborted', 'rollout.aborted'),

    async close () {
      closed = true
      clearInterval(timer)
      // a step stops at its next chunk once `closed` is set
      if (driving !== null) await driving.catch(() => {})
      for (const id of active.keys()) dropGauges(id)
      if (holding) {
        holding = false
        // the next process need not wait for the lease to expire
        await store.releaseLease(LEASE, owner).catch((err: unknown) => log.warn({ err: (err as Error).message }, 'rollouts: lease not released'))
      }
      active.clear()
      provisional.clear()
    }
  }
}

