/**
 * Delivery and acknowledgement of configuration versions (CONTRACT §9):
 * - delivery: a device's ack timer starts when the broker hands it its current
 *   version on `devices/<id>/config` (live, from its offline queue, or retained at
 *   subscribe), not when the version was published: an offline device is not
 *   timed out while it is away;
 * - ack on `devices/<id>/config/ack` (already authorized and schema-valid here):
 *   `applied` makes the version the last known good, `failed` rolls back to it,
 *   an ack of another version is audited and ignored;
 * - timeout: a device that received its version and did not acknowledge it within
 *   CONFIG_ACK_TIMEOUT_SECONDS (or the template's) is rolled back.
 * The store's atomic operations make exactly one broker process act on a given
 * ack or timeout in a cluster.
 */
import type { Client } from 'aedes'
import { findPii, redactText } from '../broker/pii-detect.js'
import type { ConfigService } from '../broker/config-service.js'
import type { AuditFields } from '../broker/audit.js'
import type { Plugin, PluginContext, PluginHooks } from '../broker/plugin.js'
import type { DeviceConfigStore } from '../broker/store/device-configs.js'

export interface ConfigAckOptions {
  readonly service: ConfigService
  readonly store: DeviceConfigStore
  /** how often this process looks for timed-out acks (default 1 s) */
  readonly scanIntervalMs?: number
  /** told when a device's `applied` ack of its current version is recorded (plugins/health.ts: the `config` check) */
  readonly onApplied?: (deviceId: string) => void
}

const DEFAULT_SCAN_MS = 1000
/** timeout candidates handled per scan; the rest wait for the next one */
const SCAN_BATCH = 200
/** the config status gauge is read from the store's counters every this many scans */
const GAUGE_EVERY_SCANS = 5
const MAX_ERROR_TEXT = 200
const DEVICES = 'devices/'
const CONFIG = '/config'

interface Ack { version: number, status: 'applied' | 'failed', error?: string }

function parseAck (payload: Buffer | string): Ack | null {
  try {
    const ack = JSON.parse(payload.toString()) as Partial<Ack>
    if (typeof ack.version !== 'number' || (ack.status !== 'applied' && ack.status !== 'failed')) return null
    return { version: ack.version, status: ack.status, ...(typeof ack.error === 'string' ? { error: ack.error } : {}) }
  } catch {
    return null
  }
}

/** the broker writes `{"version":<n>,...` first: read that without parsing the whole configuration */
const VERSION_PREFIX = /^\{"version":(\d{1,15})[,}]/
function versionOf (payload: Buffer | string): number | null {
  if (payload.length === 0) return null
  const m = VERSION_PREFIX.exec(typeof payload === 'string' ? payload.slice(0, 32) : payload.toString('latin1', 0, 32))
  if (m) return Number(m[1])
  try {
    const v = (JSON.parse(payload.toString()) as { version?: unknown }).version
    return typeof v === 'number' ? v : null
  } catch {
    return null
  }
}

/** `topic` is `devices/<name>/config`, compared without building the string */
function isOwnConfigTopic (topic: string, name: string): boolean {
  return topic.length === DEVICES.length + name.length + CONFIG.length &&
    topic.endsWith(CONFIG) && topic.startsWith(DEVICES) && topic.startsWith(name, DEVICES.length)
}

export const configAckPlugin: Plugin<ConfigAckOptions | undefined> = {
  name: 'config-ack',
  setup (ctx, options): PluginHooks {
    return options ? lifecycleHooks(ctx, options) : auditOnlyHooks(ctx)
  }
}

/** a broker built without the configuration service: acks are audited, nothing more */
function auditOnlyHooks (ctx: PluginContext): PluginHooks {
  return {
    name: 'config-ack',
    published ({ client, identity, packet }) {
      if (!packet.topic.endsWith('/config/ack') || identity?.role !== 'device' || packet.topic !== `devices/${identity.name ?? ''}/config/ack`) return
      const ack = parseAck(packet.payload)
      ctx.audit.write('config.acknowledged', {
        clientId: client?.id, deviceId: identity.name ?? undefined, role: 'device', topic: packet.topic, version: ack?.version, reason: ack?.status
      }, ack?.status === 'failed' ? 'warn' : 'info')
    }
  }
}

function lifecycleHooks (ctx: PluginContext, { service, store, scanIntervalMs = DEFAULT_SCAN_MS, onApplied }: ConfigAckOptions): PluginHooks {
  const { audit, log, metrics } = ctx
  /** per connection, the last version marked delivered: a repeated delivery costs no store call */
  const delivered = new WeakMap<Client, number>()

  function markDelivered (client: Client, deviceId: string, version: number): void {
    if (delivered.get(client) === version) return
    delivered.set(client, version)
    store.markDelivered(deviceId, version, ctx.now()).catch(function markFailed (err: Error) {
      // the next delivery of this version (a reconnect) tries again
      delivered.delete(client)
      log.warn({ deviceId, version, err: err.message }, 'config: could not record the delivery of a version')
    })
  }

  type Plan = { readonly toVersion: number } | { readonly skip: string, readonly errorCode?: 'NoLastKnownGood' | 'VersionNotFound' }

  /** where a failed or timed-out `version` goes back to: the last known good, if that changes anything */
  async function planRollback (deviceId: string, version: number): Promise<Plan> {
    const state = await store.getState(deviceId)
    if (!state?.current || state.current.version !== version) return { skip: 'a newer version was committed meanwhile' }
    // version 1 (or everything since) never applied: nothing to go back to, the device keeps it
    if (state.lastKnownGood === null) return { skip: 'no version was ever applied', errorCode: 'NoLastKnownGood' }
    const good = await store.getVersion(deviceId, state.lastKnownGood)
    if (good === null) return { skip: `the last known good version ${state.lastKnownGood} is no longer in the history`, errorCode: 'VersionNotFound' }
    // a device that fails (or ignores) what it applied before would otherwise be rolled back again and again
    if (good.hash === state.current.hash) return { skip: `it already has the last known good content (version ${good.version})` }
    return { toVersion: good.version }
  }

  /**
   * One audit line per outcome (config.acknowledged: applied, failed, stale,
   * timeout; with why nothing was rolled back when nothing was), then the rollback,
   * audited config.rolledback by the service. Only if the failed version is still
   * the current one: an operator's newer version is left alone.
   */
  async function settle (deviceId: string, version: number, kind: 'failed' | 'timeout', fields: AuditFields, reason: string): Promise<void> {
    const plan = await planRollback(deviceId, version)
    const skipped = 'skip' in plan ? `; not rolled back: ${plan.skip}` : ''
    audit.write('config.acknowledged', { ...fields, reason: reason + skipped, errorCode: 'skip' in plan ? plan.errorCode : undefined }, 'warn')
    if ('skip' in plan) return
    const v = await service.rollback(deviceId, { toVersion: plan.toVersion, author: 'rollback', reason, kind, expectedVersion: version })
    if (v === null) log.info({ deviceId, version }, 'config: not rolled back, a newer version was committed meanwhile')
  }

  async function acknowledged (deviceId: string, clientId: string | undefined, topic: string, ack: Ack): Promise<void> {
    const outcome = await store.recordAck(deviceId, ack.version, ack.status, ctx.now())
    const fields: AuditFields = { clientId, deviceId, role: 'device', topic, version: ack.version }
    if (outcome.result === 'duplicate') return
    if (outcome.result === 'stale') {
      metrics.configAcks.inc({ status: 'stale' })
      audit.write('config.acknowledged', { ...fields, reason: `stale: ${ack.status} of version ${ack.version}, current is ${outcome.current ?? 'none'}; ignored` }, 'warn')
      return
    }
    metrics.configAcks.inc({ status: ack.status })
    if (ack.status === 'applied') {
      audit.write('config.acknowledged', { ...fields, reason: 'applied' })
      onApplied?.(deviceId)
      return
    }
    // the device's own words go into the version's history, the audit log and the admin API: what the
    // inline detector finds in them (an address, a phone or card number, an IBAN) is written as its kind,
    // over the whole text before it is cut, so no half of one survives the cut (CONTRACT §5, §6)
    const text = ack.error ?? 'no error given'
    const error = redactText(text, findPii(text)).slice(0, MAX_ERROR_TEXT)
    await settle(deviceId, ack.version, 'failed', fields, `device reported failed: ${error}`)
  }

  let scanning = false
  let scans = 0
  async function scanTimeouts (): Promise<void> {
    const now = ctx.now()
    const candidates = await store.pendingAcks(now - service.ackTimeoutMs(), SCAN_BATCH)
    for (const c of candidates) {
      // templates may wait longer than the shortest timeout
      const state = await store.getState(c.deviceId)
      if (!state || state.current?.version !== c.version) continue
      const timeoutMs = service.ackTimeoutMs(state.template)
      if (c.deliveredAt > now - timeoutMs) continue
      if (!await store.claimTimeout(c.deviceId, c.version, now)) continue
      metrics.configAcks.inc({ status: 'timeout' })
      await settle(c.deviceId, c.version, 'timeout', { deviceId: c.deviceId, version: c.version }, `no acknowledgement within ${timeoutMs / 1000} s`)
    }
    if (++scans % GAUGE_EVERY_SCANS === 1) {
      const counts = await store.countByStatus()
      for (const [status, n] of Object.entries(counts)) metrics.configStatus.set({ status }, n)
    }
  }
  const timer = setInterval(function scanAckTimeouts () {
    if (scanning) return
    scanning = true
    scanTimeouts().catch((err: Error) => log.warn({ err: err.message }, 'config: ack timeout scan failed')).finally(() => { scanning = false })
  }, scanIntervalMs)
  timer.unref()

  return {
    name: 'config-ack',
    transformForward ({ client, identity, packet }) {
      // every delivery passes here: the cheap tests first; an observer, the packet goes on unchanged
      if (identity.role === 'device' && identity.name !== null && isOwnConfigTopic(packet.topic, identity.name)) {
        const version = versionOf(packet.payload)
        if (version !== null) markDelivered(client, identity.name, version)
      }
      return packet
    },
    published ({ client, identity, packet }) {
      // every routed publish passes here: the cheap test first
      if (!packet.topic.endsWith('/config/ack') || identity?.role !== 'device' || packet.topic !== `devices/${identity.name ?? ''}/config/ack`) return
      const ack = parseAck(packet.payload)
      if (ack === null) return
      const deviceId = identity.name!
      acknowledged(deviceId, client?.id, packet.topic, ack).catch((err: Error) => {
        log.warn({ deviceId, version: ack.version, err: err.message }, 'config: could not record an acknowledgement')
      })
    },
    async close () {
      clearInterval(timer)
    }
  }
}
