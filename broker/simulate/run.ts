/**
 * `runSimulation`: a fleet of virtual devices (device.ts) through the whole life
 * of CONTRACT §3 and §9 against one broker, then what the broker made of them.
 * Used by `aedes-jitp simulate`, by the tests and by `npm run bench`.
 *
 *   prepare       keys and CSRs for every device, before the clock starts
 *   provisioning  `concurrency` devices at a time: claim → CSR → register → own connection
 *   storm         (disconnect-storm) every such device loses its connection at once, all reconnect
 *   health        until the broker has decided every device (audit device.*, registry), bounded by
 *                 the template's health window plus a margin; meanwhile (--config-update) each device
 *                 that applied its first configuration gets one update through the admin API
 *   config-update until every updated device has applied a version from its update on (the update,
 *                 or the broker's rollback after a failed one), bounded
 *   telemetry     `duration` seconds more of telemetry
 *   collecting    each device's registry record and the audit lines about it
 *
 * Each phase is bounded; the run stops by itself.
 */
import { Agent } from 'node:https'
import { createSecureContext } from 'node:tls'
import { setTimeout as sleep } from 'node:timers/promises'
import { createCsr, generateKeyPair, privateKeyToPem } from '../../pki/keys.js'
import type { AdminTarget } from '../cli/admin-client.js'
import { ConfigUpdater, defaultConfigOverride, type ConfigUpdateReport } from './config-update.js'
import { CONFIG_FAIL_MODES, FAULT_KINDS, assignFaults, checkRates, configFailModes, type ConfigFailMode, type FaultKind, type FaultRates } from './faults.js'
import { VirtualDevice, type DeviceCounters, type DeviceRequest, type FleetContext } from './device.js'
import { auditKey, auditSince, eachLimited, NOTABLE_EVENTS, registryDevice, templateHealth, type AuditLine, type RegistryDevice } from './fleet-view.js'
import { STEPS, percentiles, round1, type Percentiles, type Step } from './stats.js'

export interface SimulationOptions {
  readonly devices: number
  /** devices in their provisioning steps at once (default 8) */
  readonly concurrency?: number
  /** provisioning template (default `sensor`) */
  readonly template?: string
  /** register parameters; `{run}` and `{n}` (the device's number, zero-padded) are filled in. Default `{"serialNumber": "{run}-{n}"}` */
  readonly parameters?: Readonly<Record<string, string>>
  /** the claim certificate (chain) and key every device starts with */
  readonly claim: { readonly cert: string, readonly key: string }
  /** CA that signed the broker's MQTTS certificate */
  readonly ca: string
  /** default mqtts://127.0.0.1:8883 */
  readonly mqttUrl?: string
  /** the admin API; null: MQTT only (no activation wait, no registry comparison) */
  readonly admin: AdminTarget | null
  /** telemetry messages per second per device (default 1; 0: none) */
  readonly telemetryRate?: number
  /** seconds of telemetry once the broker has decided every device (default 5) */
  readonly durationSeconds?: number
  readonly faults?: FaultRates
  /** picks the faulty devices (default 1) */
  readonly seed?: number
  /**
   * one configuration update per device once it has applied its first (PUT /v1/devices/{id}/config);
   * default: on when config-fail devices run (their rollback needs it), with the admin API and the full lifecycle
   */
  readonly configUpdate?: boolean
  /** the overrides of that update (default `{"simulatorUpdate": <runId>}`) */
  readonly configOverride?: Record<string, unknown>
  /** names this run's devices (default SIM<base36 time>) */
  readonly runId?: string
  /** `provision`: each device stops at the CONNACK of its own certificate (the benchmark) */
  readonly lifecycle?: 'full' | 'provision'
  /** no device starts provisioning after this many ms of the provisioning phase */
  readonly provisionWithinMs?: number
  /** bound of each connect and request/reply (default 15 s) */
  readonly stepTimeoutMs?: number
  /** safety net for the whole run (default 15 minutes) */
  readonly timeoutSeconds?: number
  readonly signal?: AbortSignal
  readonly onProgress?: (p: SimulationProgress) => void
  readonly progressIntervalMs?: number
  readonly onPhase?: (phase: SimulationPhase) => void
}

export type SimulationPhase = 'preparing' | 'provisioning' | 'provisioned' | 'storm' | 'health' | 'config-update' | 'telemetry' | 'stopping' | 'collecting' | 'done'

export interface SimulationProgress {
  readonly phase: SimulationPhase
  readonly elapsedMs: number
  readonly devices: number
  readonly started: number
  readonly provisioned: number
  readonly online: number
  readonly failed: number
  /** decided by the broker so far (health phase) */
  readonly active: number
  readonly quarantined: number
  readonly sent: number
  readonly acknowledged: number
  readonly rejected: number
}

export interface FaultReport {
  readonly rate: number
  readonly devices: number
  /** what was injected: bad payloads sent, failed acks, configs left unacknowledged, states withheld, connections dropped, messages held */
  readonly injected: number
  /** the devices' status in the registry at the end */
  readonly outcome: Record<string, number>
  readonly quarantinedByReason: Record<string, number>
  /** reports the devices received on devices/<id>/errors */
  readonly reportedOnErrors: number
  /** what the audit log said about these devices (routine lines left out), line counts */
  readonly audit: Record<string, number>
  /** config-fail: the two kinds of device (faults.ts) */
  readonly modes?: Partial<Record<ConfigFailMode, ConfigFailModeReport>>
}

export interface ConfigFailModeReport {
  readonly devices: number
  /** acks `failed` sent */
  readonly failedAcks: number
  /** devices with a config.rolledback audit line */
  readonly rolledBack: number
  readonly outcome: Record<string, number>
  readonly quarantinedByReason: Record<string, number>
}

export interface DeviceReport {
  readonly index: number
  readonly parameters: Readonly<Record<string, string>>
  readonly deviceId: string | null
  readonly faults: FaultKind[]
  /** how it failed its configurations (config-fail), else null */
  readonly configFail: ConfigFailMode | null
  readonly provisioned: boolean
  readonly error: { step: string, message: string } | null
  /** the registry's status at the end (null without the admin API or when the broker does not know it) */
  readonly status: string | null
  /** the check that failed, from device.quarantined */
  readonly quarantineCheck: string | null
  /** config.rolledback audit lines of this device */
  readonly rolledBack: number
  readonly configVersions: number[]
  /** the newest version it acknowledged `applied` (0: none), and those it acknowledged `failed` */
  readonly configApplied: number
  readonly configFailed: number[]
  /** the version the simulator's configuration update made (null: none sent) */
  readonly configUpdateVersion: number | null
  readonly messages: Pick<DeviceCounters, 'sent' | 'acknowledged' | 'rejected' | 'rejectedByCode' | 'telemetry' | 'states' | 'badPayloads'>
  readonly rotations: DeviceCounters['rotations']
  readonly connectionsLost: number
  readonly latencyMs: Partial<Record<Step, number>>
  readonly registry: RegistryDevice | null
}

export interface SimulationSummary {
  readonly runId: string
  readonly template: string
  readonly mqttUrl: string
  readonly devices: number
  readonly provisioned: number
  readonly failed: number
  /** registry status at the end; null without the admin API */
  readonly active: number | null
  readonly quarantined: number | null
  readonly quarantinedByReason: Record<string, number>
  /** still `provisioned` (undecided) when the wait ended */
  readonly undecided: number | null
  /** devices with a config.rolledback audit line */
  readonly rolledBack: number | null
  /** the configuration update (--config-update); null when none was pushed */
  readonly configUpdate: ConfigUpdateReport | null
  /** the devices' counters, summed */
  readonly messages: Pick<DeviceCounters, 'sent' | 'acknowledged' | 'rejected' | 'rejectedByCode' | 'telemetry' | 'states' | 'configAcks' | 'configsIgnored' | 'badPayloads' | 'commands' | 'skippedOffline'>
  readonly latencyMs: Record<Step, Percentiles | null>
  readonly provisioning: { readonly seconds: number, readonly devicesPerSecond: number }
  readonly connections: { readonly lost: number, readonly reconnects: number, readonly subscribeRefused: number }
  readonly rotations: DeviceCounters['rotations']
  readonly storm: { readonly devices: number, readonly dropped: number, readonly recovered: number, readonly recoveryMs: Percentiles | null, readonly allBackMs: number | null, readonly refusedByBroker: number } | null
  readonly faults: Partial<Record<FaultKind, FaultReport>>
  readonly healthWindowSeconds: number | null
  /** phases that ended at their bound rather than by themselves */
  readonly boundsHit: string[]
  readonly errors: Array<{ index: number, step: string, message: string }>
  readonly durationSeconds: number
  readonly perDevice: DeviceReport[]
}

const ADMIN_CONCURRENCY = 8
const POLL_MS = 500
/** a device's check is decided at the end of its window: the broker's timer or scan may come a little later */
const decisionMargin = (windowSeconds: number): number => Math.max(5000, windowSeconds * 100)

function fill (template: string, runId: string, n: string): string {
  return template.replaceAll('{run}', runId).replaceAll('{n}', n)
}

function abortable (ms: number, signal: AbortSignal | undefined): Promise<void> {
  return sleep(ms, undefined, signal ? { signal } : undefined).catch(() => undefined)
}

/** keys and CSRs, made before the clock starts (a secure element would have them ready) */
export function deviceRequests (count: number): DeviceRequest[] {
  return Array.from({ length: count }, (_, i) => {
    const keys = generateKeyPair('ec')
    return { keyPem: privateKeyToPem(keys.privateKey), csr: createCsr({ commonName: `simulated-${i}`, ...keys }) }
  })
}

export function parseMqttUrl (raw: string): { host: string, port: number } {
  let url: URL
  try {
    url = new URL(raw)
  } catch {
    throw new Error(`--mqtt-url: '${raw}' is not a URL (e.g. mqtts://127.0.0.1:8883)`)
  }
  if (url.protocol !== 'mqtts:') throw new Error(`--mqtt-url: devices connect over mutual TLS only: mqtts://host:port, not ${url.protocol.replace(':', '')}`)
  return { host: url.hostname.replace(/^\[|\]$/g, ''), port: url.port ? Number(url.port) : 8883 }
}

export async function runSimulation (opts: SimulationOptions): Promise<SimulationSummary> {
  // keep-alive: a run reads the registry device by device, a fresh TLS handshake each would cost more than the read
  const agent = opts.admin ? new Agent({ keepAlive: true, maxSockets: ADMIN_CONCURRENCY }) : null
  try {
    return await simulate(opts, opts.admin && agent ? { ...opts.admin, agent } : null)
  } finally {
    // its idle connections would keep the process alive
    agent?.destroy()
  }
}

async function simulate (opts: SimulationOptions, admin: AdminTarget | null): Promise<SimulationSummary> {
  const count = opts.devices
  if (!Number.isInteger(count) || count < 1) throw new Error('devices: a whole number, at least 1')
  const concurrency = opts.concurrency ?? 8
  if (!Number.isInteger(concurrency) || concurrency < 1) throw new Error('concurrency: a whole number, at least 1')
  const rate = opts.telemetryRate ?? 1
  if (!(rate >= 0) || rate > 1000) throw new Error('telemetry rate: messages per second per device, 0 to 1000')
  const durationSeconds = opts.durationSeconds ?? 5
  if (!(durationSeconds >= 0)) throw new Error('duration: seconds, 0 or more')
  const faultRates = opts.faults ?? {}
  checkRates(faultRates)
  const template = opts.template ?? 'sensor'
  const mqttUrl = opts.mqttUrl ?? 'mqtts://127.0.0.1:8883'
  const { host, port } = parseMqttUrl(mqttUrl)
  const lifecycle = opts.lifecycle ?? 'full'
  const runId = opts.runId ?? `SIM${Date.now().toString(36).toUpperCase()}`
  const signal = opts.signal
  const startedAt = Date.now()
  const hardDeadline = startedAt + (opts.timeoutSeconds ?? 900) * 1000
  const boundsHit: string[] = []
  let phase = 'preparing' as SimulationPhase
  let stopping = false
  const enter = (p: SimulationPhase): void => {
    phase = p
    opts.onPhase?.(p)
    report()
  }
  const over = (): boolean => stopping || signal?.aborted === true || Date.now() > hardDeadline

  // fail early on what cannot work: an unknown template, an admin API that refuses us
  const health = admin && lifecycle === 'full' ? await templateHealth(admin, template) : null
  opts.onPhase?.('preparing')
  const requests = deviceRequests(count)
  const faults = assignFaults(count, faultRates, opts.seed ?? 1)
  const failModes = configFailModes(faults)
  // without an update, a config-fail device that fails updates applies its one version: nothing to roll back
  const wantsUpdate = opts.configUpdate ?? (opts.configOverride !== undefined || (faultRates['config-fail'] ?? 0) > 0)
  if (wantsUpdate && opts.configUpdate === true && admin === null) throw new Error('config update: it goes through the admin API (leave out --no-admin)')
  const updater = wantsUpdate && admin && lifecycle === 'full' ? new ConfigUpdater(admin, opts.configOverride ?? defaultConfigOverride(runId), ADMIN_CONCURRENCY) : null
  const width = Math.max(4, String(count - 1).length)
  const params = opts.parameters ?? { serialNumber: '{run}-{n}' }
  const ctx: FleetContext = {
    host,
    port,
    ca: opts.ca,
    claimContext: createSecureContext({ ca: opts.ca, cert: opts.claim.cert, key: opts.claim.key }),
    template,
    lifecycle,
    telemetryIntervalMs: rate > 0 ? 1000 / rate : null,
    stepTimeoutMs: opts.stepTimeoutMs ?? 15_000,
    deadline: () => hardDeadline,
    stopping: () => stopping,
    changed: () => {},
    ...(updater ? { firstConfigApplied: (d: VirtualDevice) => updater.schedule(d) } : {})
  }
  const devices = requests.map((req, i) => {
    const n = String(i).padStart(width, '0')
    const parameters = Object.fromEntries(Object.entries(params).map(([k, v]) => [k, fill(v, runId, n)]))
    return new VirtualDevice(i, parameters, faults[i]!, req, ctx, failModes[i]!)
  })

  const decisions = new Map<string, { status: string, check: string | null }>()
  function report (): void {
    if (!opts.onProgress) return
    let provisioned = 0; let online = 0; let failed = 0; let started = 0; let sent = 0; let acknowledged = 0; let rejected = 0
    for (const d of devices) {
      if (d.phase !== 'waiting') started++
      if (d.deviceId !== null) provisioned++
      if (d.online) online++
      if (d.phase === 'failed') failed++
      sent += d.counters.sent
      acknowledged += d.counters.acknowledged
      rejected += d.counters.rejected
    }
    let active = 0; let quarantined = 0
    for (const v of decisions.values()) {
      if (v.status === 'active') active++
      else if (v.status === 'quarantined') quarantined++
    }
    opts.onProgress({ phase, elapsedMs: Date.now() - startedAt, devices: count, started, provisioned, online, failed, active, quarantined, sent, acknowledged, rejected })
  }
  const ticker = opts.onProgress ? setInterval(report, opts.progressIntervalMs ?? 1000) : null
  ticker?.unref()

  try {
    // provisioning: `concurrency` lanes; a device leaves its lane once connected with its own certificate
    enter('provisioning')
    const provisionStart = performance.now()
    const provisionUntil = opts.provisionWithinMs === undefined ? Infinity : provisionStart + opts.provisionWithinMs
    let next = 0
    let startedCount = 0
    let lastDone = provisionStart
    async function lane (): Promise<void> {
      while (next < devices.length && !over() && performance.now() < provisionUntil) {
        const d = devices[next++]!
        startedCount++
        await d.provision()
        lastDone = performance.now()
      }
    }
    await Promise.all(Array.from({ length: Math.min(concurrency, count) }, lane))
    if (startedCount < count && !over()) boundsHit.push(`provisioning stopped after ${opts.provisionWithinMs} ms (${startedCount} of ${count} devices started)`)
    const provisionSeconds = (lastDone - provisionStart) / 1000
    enter('provisioned')
    const provisionedDevices = devices.filter((d) => d.deviceId !== null)

    // disconnect storm: once every such device is up and has reported, all lose their connection in the same tick
    let storm: SimulationSummary['storm'] = null
    const stormDevices = devices.filter((d) => d.faults.has('disconnect-storm') && d.deviceId !== null)
    let stormWindow: { from: number, to: number } | null = null
    if (lifecycle === 'full' && stormDevices.length > 0 && !over()) {
      enter('storm')
      const settleUntil = Date.now() + 15_000
      while (!stormDevices.every((d) => d.settled) && Date.now() < settleUntil && !over()) await abortable(100, signal)
      const at = performance.now()
      const fromMs = Date.now()
      let dropped = 0
      for (const d of stormDevices) if (d.dropConnection()) dropped++
      const backWithin = 60_000
      const giveUp = new AbortController()
      const stop = (): void => giveUp.abort()
      signal?.addEventListener('abort', stop)
      const allBack = await Promise.race([
        Promise.all(stormDevices.map((d) => d.whenOnline())).then(() => performance.now() - at),
        abortable(backWithin, giveUp.signal).then(() => null)
      ])
      // the bound's timer must not keep the process alive after the run
      giveUp.abort()
      signal?.removeEventListener('abort', stop)
      if (allBack === null) boundsHit.push(`disconnect storm: not every device was back within ${backWithin / 1000} s`)
      const recovered = stormDevices.flatMap((d) => d.outages.filter((o) => o.at >= at).map((o) => o.ms))
      stormWindow = { from: fromMs, to: Date.now() }
      storm = { devices: stormDevices.length, dropped, recovered: recovered.length, recoveryMs: percentiles(recovered), allBackMs: allBack === null ? null : Math.round(allBack), refusedByBroker: 0 }
    }

    // health: until every device is decided, bounded by the last window plus a margin
    let healthWindowSeconds: number | null = null
    if (lifecycle === 'full' && admin && health && provisionedDevices.length > 0 && !over()) {
      enter('health')
      healthWindowSeconds = health.withinSeconds
      await waitForDecisions(admin, provisionedDevices, health, startedAt, decisions, over, signal, boundsHit)
    }

    // the configuration update's outcome: applied, or failed and rolled back to the last known good (and applied)
    if (updater) {
      updater.close()
      if (!over()) {
        enter('config-update')
        const boundMs = ctx.stepTimeoutMs
        const unsettled = await updater.settle(boundMs, over, signal)
        if (unsettled.length > 0 && !over()) boundsHit.push(`config update: ${unsettled.length} device(s) had applied no version from their update on ${boundMs / 1000} s after the health phase (failed and not rolled back?)`)
      }
    }

    if (lifecycle === 'full' && durationSeconds > 0 && provisionedDevices.length > 0 && !over()) {
      enter('telemetry')
      await abortable(durationSeconds * 1000, signal)
    }

    enter('stopping')
    stopping = true
    await Promise.all(devices.map((d) => d.stop()))
    if (Date.now() > hardDeadline) boundsHit.push(`the run's bound (${opts.timeoutSeconds ?? 900} s)`)
    if (signal?.aborted) boundsHit.push('interrupted')

    enter('collecting')
    const registry = new Map<string, RegistryDevice | null>()
    const audit = new Map<string, AuditLine[]>()
    const unattributed: AuditLine[] = []
    if (admin && lifecycle === 'full' && provisionedDevices.length > 0) {
      const records = await eachLimited(provisionedDevices, ADMIN_CONCURRENCY, (d) => registryDevice(admin, d.deviceId!))
      provisionedDevices.forEach((d, i) => registry.set(d.deviceId!, records[i] ?? null))
      const ours = new Set(provisionedDevices.map((d) => d.deviceId!))
      // a minute before the start: the broker's clock may be behind ours
      for (const event of NOTABLE_EVENTS) {
        const { lines } = await auditSince(admin, event, { since: startedAt - 60_000 })
        for (const line of lines) {
          const id = typeof line.deviceId === 'string' ? line.deviceId : typeof line.clientId === 'string' ? line.clientId : null
          if (id !== null && ours.has(id)) {
            const list = audit.get(id) ?? []
            list.push(line)
            audit.set(id, list)
          } else if (id === null) {
            unattributed.push(line)
          }
        }
      }
      if (storm && stormWindow) {
        // refusals before any identity (a full listener) are aggregated per address, with a count
        const refused = unattributed.filter((l) => l.event === 'connect.refused' && l.time >= stormWindow.from - 2000 && l.time <= stormWindow.to + 2000)
        storm = { ...storm, refusedByBroker: refused.reduce((s, l) => s + (typeof l.count === 'number' ? l.count : 1), 0) }
      }
    }

    enter('done')
    return summarize({
      runId, template, mqttUrl, devices, registry, audit, admin: admin !== null && lifecycle === 'full', provisionSeconds, storm,
      healthWindowSeconds, boundsHit, startedAt, faultRates, updater, unattributedStorm: stormWindow ? unattributed.filter((l) => l.time >= stormWindow.from - 2000 && l.time <= stormWindow.to + 2000) : []
    })
  } finally {
    stopping = true
    if (ticker) clearInterval(ticker)
    if (phase !== 'done') await Promise.all(devices.map((d) => d.stop().catch(() => undefined)))
  }
}

async function waitForDecisions (
  admin: AdminTarget, devices: readonly VirtualDevice[], health: { withinSeconds: number, reported: boolean }, startedAt: number,
  decisions: Map<string, { status: string, check: string | null }>, over: () => boolean, signal: AbortSignal | undefined, boundsHit: string[]
): Promise<void> {
  const ours = new Map(devices.map((d) => [d.deviceId!, d]))
  const margin = decisionMargin(health.withinSeconds)
  const deadlineOf = (d: VirtualDevice): number => (d.registeredAt ?? Date.now()) + health.withinSeconds * 1000 + margin
  const until = Math.max(...devices.map(deadlineOf))
  const undecided = (): VirtualDevice[] => devices.filter((d) => !decisions.has(d.deviceId!))
  let cursor: string | null = null
  // a broker that does not report a health check may not verify health at all: its registry says `active` at once
  let sweptAll = health.reported
  const lastSwept = new Map<string, number>()
  // at least one pass: a long provisioning or storm may end after every window did
  for (;;) {
    const { lines, follow } = await auditSince(admin, 'device.*', cursor === null ? { since: startedAt - 60_000 } : { cursor })
    cursor = follow
    for (const line of lines) {
      const id = typeof line.deviceId === 'string' ? line.deviceId : null
      if (id === null || !ours.has(id)) continue
      if (line.event === 'device.activated') decisions.set(id, { status: 'active', check: null })
      else if (line.event === 'device.quarantined') decisions.set(id, { status: 'quarantined', check: typeof line.check === 'string' ? line.check : null })
      else if (line.event === 'device.revoked') decisions.set(id, { status: 'revoked', check: null })
      else if (line.event === 'device.reinstated') decisions.delete(id)
    }
    // the registry for devices whose window is over and that the audit has not decided (once, then every 5 s)
    const now = Date.now()
    const due = undecided().filter((d) => !sweptAll || (now > deadlineOf(d) - margin + 1000 && now - (lastSwept.get(d.deviceId!) ?? 0) > 5000))
    sweptAll = true
    if (due.length > 0) {
      const records = await eachLimited(due, ADMIN_CONCURRENCY, (d) => registryDevice(admin, d.deviceId!))
      due.forEach((d, i) => {
        lastSwept.set(d.deviceId!, now)
        const status = records[i]?.status
        if (status !== undefined && status !== 'provisioned') decisions.set(d.deviceId!, { status, check: null })
      })
    }
    if (undecided().length === 0 || Date.now() >= until || over()) break
    await abortable(POLL_MS, signal)
  }
  const left = undecided().length
  if (left > 0 && !over()) boundsHit.push(`health: ${left} device(s) still undecided ${Math.round((until - startedAt) / 1000)} s into the run (window ${health.withinSeconds} s + ${margin / 1000} s)`)
}

interface SummaryInput {
  runId: string
  template: string
  mqttUrl: string
  devices: VirtualDevice[]
  registry: Map<string, RegistryDevice | null>
  audit: Map<string, AuditLine[]>
  admin: boolean
  provisionSeconds: number
  storm: SimulationSummary['storm']
  healthWindowSeconds: number | null
  boundsHit: string[]
  startedAt: number
  faultRates: FaultRates
  updater: ConfigUpdater | null
  unattributedStorm: AuditLine[]
}

function bump (map: Record<string, number>, key: string, by = 1): void {
  map[key] = (map[key] ?? 0) + by
}

function injectedBy (kind: FaultKind, d: VirtualDevice): number {
  const c = d.counters
  switch (kind) {
    case 'bad-payload': return c.badPayloads
    case 'config-fail': return c.configAcks.failed
    case 'config-silent': return c.configsIgnored
    case 'silent': return d.configVersions.length > 0 || d.configMissing ? 1 : 0
    case 'disconnect-storm': return c.connectionsLost
    case 'slow-subscriber': return c.slowHeld
  }
}

function summarize (s: SummaryInput): SimulationSummary {
  const latency = Object.fromEntries(STEPS.map((step) => [step, [] as number[]])) as Record<Step, number[]>
  const messages: SimulationSummary['messages'] = {
    sent: 0, acknowledged: 0, rejected: 0, rejectedByCode: {}, telemetry: 0, states: 0, configAcks: { applied: 0, failed: 0 }, configsIgnored: 0, badPayloads: 0, commands: 0, skippedOffline: 0
  }
  const rotations = { requested: 0, completed: 0, failed: 0 }
  let lost = 0; let reconnects = 0; let subscribeRefused = 0
  let active = 0; let quarantined = 0; let undecided = 0; let rolledBack = 0
  const quarantinedByReason: Record<string, number> = {}
  const perDevice: DeviceReport[] = []
  const faults: Partial<Record<FaultKind, FaultReport & { outcome: Record<string, number>, quarantinedByReason: Record<string, number>, audit: Record<string, number> }>> = {}
  for (const kind of FAULT_KINDS) {
    const rate = s.faultRates[kind]
    if (rate === undefined) continue
    faults[kind] = { rate, devices: 0, injected: 0, outcome: {}, quarantinedByReason: {}, reportedOnErrors: 0, audit: {} }
  }
  const modes: Partial<Record<ConfigFailMode, { devices: number, failedAcks: number, rolledBack: number, outcome: Record<string, number>, quarantinedByReason: Record<string, number> }>> = {}
  if (faults['config-fail']) {
    for (const mode of CONFIG_FAIL_MODES) modes[mode] = { devices: 0, failedAcks: 0, rolledBack: 0, outcome: {}, quarantinedByReason: {} }
    ;(faults['config-fail'] as { modes?: FaultReport['modes'] }).modes = modes
  }
  for (const d of s.devices) {
    const c = d.counters
    for (const step of STEPS) if (d.steps[step] !== undefined) latency[step].push(d.steps[step])
    messages.sent += c.sent
    messages.acknowledged += c.acknowledged
    messages.rejected += c.rejected
    for (const [code, n] of Object.entries(c.rejectedByCode)) bump(messages.rejectedByCode, code, n)
    messages.telemetry += c.telemetry
    messages.states += c.states
    messages.configAcks.applied += c.configAcks.applied
    messages.configAcks.failed += c.configAcks.failed
    messages.configsIgnored += c.configsIgnored
    messages.badPayloads += c.badPayloads
    messages.commands += c.commands
    messages.skippedOffline += c.skippedOffline
    rotations.requested += c.rotations.requested
    rotations.completed += c.rotations.completed
    rotations.failed += c.rotations.failed
    lost += c.connectionsLost
    reconnects += c.reconnects
    subscribeRefused += c.subscribeRefused

    const record = d.deviceId !== null ? s.registry.get(d.deviceId) ?? null : null
    const lines = d.deviceId !== null ? s.audit.get(d.deviceId) ?? [] : []
    const status = record?.status ?? null
    const quarantine = [...lines].reverse().find((l) => l.event === 'device.quarantined')
    const check = quarantine ? (typeof quarantine.check === 'string' ? quarantine.check : typeof quarantine.reason === 'string' ? quarantine.reason : 'unknown') : null
    const rolled = lines.filter((l) => l.event === 'config.rolledback').length
    if (rolled > 0) rolledBack++
    if (status === 'active') active++
    if (status === 'quarantined') {
      quarantined++
      bump(quarantinedByReason, check ?? 'unknown')
    }
    if (status === 'provisioned') undecided++
    const mode = d.configFail !== null ? modes[d.configFail] : undefined
    if (mode) {
      mode.devices++
      mode.failedAcks += c.configAcks.failed
      if (rolled > 0) mode.rolledBack++
      bump(mode.outcome, status ?? (d.deviceId === null ? 'not provisioned' : 'unknown'))
      if (status === 'quarantined') bump(mode.quarantinedByReason, check ?? 'unknown')
    }

    for (const kind of d.faults) {
      const f = faults[kind]
      if (!f) continue
      ;(f as { devices: number }).devices++
      ;(f as { injected: number }).injected += injectedBy(kind, d)
      ;(f as { reportedOnErrors: number }).reportedOnErrors += c.rejected
      bump(f.outcome, status ?? (d.deviceId === null ? 'not provisioned' : 'unknown'))
      if (status === 'quarantined') bump(f.quarantinedByReason, check ?? 'unknown')
      for (const line of lines) {
        const key = auditKey(line)
        if (key !== null) bump(f.audit, key)
      }
      if (kind === 'disconnect-storm') {
        // what the broker saw of the reconnects: its own connects past the first, and refusals before any identity
        const accepted = lines.filter((l) => l.event === 'connect.accepted').length
        if (accepted > 1) bump(f.audit, 'connect.accepted (again)', accepted - 1)
      }
    }

    perDevice.push({
      index: d.index,
      parameters: d.parameters,
      deviceId: d.deviceId,
      faults: [...d.faults].sort(),
      configFail: d.configFail,
      provisioned: d.deviceId !== null,
      error: d.error,
      status,
      quarantineCheck: check,
      rolledBack: rolled,
      configVersions: [...d.configVersions],
      configApplied: d.lastApplied,
      configFailed: [...d.failedVersions],
      configUpdateVersion: s.updater?.versions.get(d) ?? null,
      messages: { sent: c.sent, acknowledged: c.acknowledged, rejected: c.rejected, rejectedByCode: { ...c.rejectedByCode }, telemetry: c.telemetry, states: c.states, badPayloads: c.badPayloads },
      rotations: { ...c.rotations },
      connectionsLost: c.connectionsLost,
      latencyMs: Object.fromEntries(Object.entries(d.steps).map(([k, v]) => [k, round1(v)])),
      registry: record
    })
  }
  const storm = faults['disconnect-storm']
  if (storm) {
    for (const line of s.unattributedStorm) {
      if (line.event !== 'connect.refused') continue
      const key = auditKey(line)
      if (key !== null) bump(storm.audit, key, typeof line.count === 'number' ? line.count : 1)
    }
  }
  const provisioned = s.devices.filter((d) => d.deviceId !== null).length
  const failedDevices = s.devices.filter((d) => d.error !== null)
  return {
    runId: s.runId,
    template: s.template,
    mqttUrl: s.mqttUrl,
    devices: s.devices.length,
    provisioned,
    failed: failedDevices.length,
    active: s.admin ? active : null,
    quarantined: s.admin ? quarantined : null,
    quarantinedByReason,
    undecided: s.admin ? undecided : null,
    rolledBack: s.admin ? rolledBack : null,
    configUpdate: s.updater?.report() ?? null,
    messages,
    latencyMs: Object.fromEntries(STEPS.map((step) => [step, percentiles(latency[step])])) as Record<Step, Percentiles | null>,
    provisioning: { seconds: Math.round(s.provisionSeconds * 100) / 100, devicesPerSecond: s.provisionSeconds > 0 ? round1(provisioned / s.provisionSeconds) : 0 },
    connections: { lost, reconnects, subscribeRefused },
    rotations,
    storm: s.storm,
    faults,
    healthWindowSeconds: s.healthWindowSeconds,
    boundsHit: s.boundsHit,
    errors: failedDevices.slice(0, 20).map((d) => ({ index: d.index, step: d.error!.step, message: d.error!.message })),
    durationSeconds: round1((Date.now() - s.startedAt) / 1000),
    perDevice
  }
}
