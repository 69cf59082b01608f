/**
 * Health verification (CONTRACT §3.7). A newly registered (or reinstated) device is
 * `provisioned`, with full device rights, and a window from its template's
 * `healthCheck`. Within it, it must
 *   - connect with its own certificate (`connect`),
 *   - acknowledge its configuration `applied` (`config`, unless `configAck` is false),
 *   - publish one valid message on each topic of `requires` (default `state`);
 * then it is `active` (`device.activated`). When the window closes first it is
 * `quarantined` (`device.quarantined`, `check` naming what it missed).
 *
 * An observer: it never answers a check. Only sessions whose identity says
 * `provisioned` are watched, so an active device costs one property read per
 * message. A watched session writes each check at most once (the registry's
 * recordHealthCheck); a publish counts once the chain has routed it, so a refused or
 * schema-invalid message never counts (and does not stop the device activating).
 *
 * Who decides, in a cluster: the registry's scripts. recordHealthCheck activates on
 * the last check, for exactly one caller; every process sweeps the windows due
 * (healthDue) and expireHealth moves a device from `provisioned` to `quarantined`
 * atomically, for exactly one caller, so a double evaluation is harmless and each
 * transition is audited once. Windows and progress are in the store, not in
 * memory: a broker restart inside a window loses nothing, and the sweep of any
 * process that runs later quarantines a device whose window closed meanwhile.
 *
 * provisioned → active sends no status notice: the rights are the same, the live
 * session stays. provisioned → quarantined does (as setDeviceStatus), so the
 * device's sessions reconnect under the quarantine fence (plugins/policy.ts).
 */
import type { Client } from 'aedes'
import { JitpError } from '../broker/errors.js'
import type { Plugin, PluginContext, PluginHooks } from '../broker/plugin.js'
import type { DeviceConfigState } from '../broker/store/device-configs.js'
import type { SchemaCatalogue } from './schema-catalogue.js'
import type { Template } from './provisioning/templates.js'

export interface HealthOptions {
  readonly templates: ReadonlyMap<string, Template>
  /** every required topic must have a mapping (a typo would quarantine the whole fleet) */
  readonly catalogue: SchemaCatalogue
  /** a reinstated device may have applied its current configuration already: read at its connect */
  readonly configs: { state (deviceId: string): Promise<DeviceConfigState | null> }
  /** how often this process looks for closed windows (default 1 s) */
  readonly sweepIntervalMs?: number
}

export interface HealthHooks extends PluginHooks {
  /** plugins/config-ack.ts: the device acknowledged its current configuration version `applied` */
  configApplied (deviceId: string): void
}

const DEFAULT_SWEEP_MS = 1000
/** a `connect` or `config` check the store could not record is tried again this much later */
const RETRY_MS = 1000
/** windows handled per sweep; the rest wait for the next one */
const SWEEP_BATCH = 200
/** the checks that are not topics (templates.ts refuses them in `requires`) */
const CONNECT = 'connect'
const CONFIG = 'config'

/** one watched session of a provisioned device */
interface Watch {
  readonly client: Client
  readonly deviceId: string
  /** `devices/<id>/` */
  readonly prefix: string
  /** checks of its window not yet met (nor written by this session); null until the window is read */
  outstanding: Set<string> | null
  /** checks seen before the window was read */
  readonly early: Set<string>
}

/** fails the start when a template requires a topic no schema maps: nothing could ever pass it */
function checkRequiredTopics (templates: ReadonlyMap<string, Template>, catalogue: SchemaCatalogue): void {
  for (const t of templates.values()) {
    for (const topic of t.healthCheck.requires) {
      if (catalogue.lookup(`devices/_/${topic}`) === null) {
        throw new JitpError('InvalidConfig', `TEMPLATES_DIR: ${t.name}: healthCheck.requires '${topic}': no schema in SCHEMAS_DIR maps devices/<id>/${topic}`)
      }
    }
  }
}

/**
 * The checks a routed publish on `rest` (the topic after `devices/<id>/`) may meet:
 * the topic and each of its parents (`telemetry/engine` meets `telemetry` too),
 * never `connect` or `config` (a `config/ack` that says `failed` meets nothing).
 */
function topicChecks (rest: string): string[] {
  const out: string[] = []
  for (let i = rest.indexOf('/'); ; i = rest.indexOf('/', i + 1)) {
    const name = i === -1 ? rest : rest.slice(0, i)
    if (name !== CONNECT && name !== CONFIG) out.push(name)
    if (i === -1) return out
  }
}

export const healthPlugin = {
  name: 'health',
  setup (ctx: PluginContext, options: HealthOptions): HealthHooks {
    const { registry, audit, log, metrics } = ctx
    checkRequiredTopics(options.templates, options.catalogue)
    const watches = new WeakMap<Client, Watch>()
    /** the watched session of each device on this process, for config acks (which name the device only) */
    const byDevice = new Map<string, Watch>()

    function unwatch (w: Watch): void {
      watches.delete(w.client)
      if (byDevice.get(w.deviceId) === w) byDevice.delete(w.deviceId)
    }

    /** `at`: when the check was met (a retry keeps it: a check met in time counts even if the store was away) */
    function meet (w: Watch, check: string, at: number = ctx.now()): void {
      if (w.outstanding === null) {
        w.early.add(check)
        return
      }
      // at most one write per check and session
      if (!w.outstanding.delete(check)) return
      registry.recordHealthCheck(w.deviceId, check, at).then(function recorded (outcome) {
        if (outcome.result !== 'activated') return
        unwatch(w)
        metrics.healthTransitions.inc({ outcome: 'activated', check: '' })
        audit.write('device.activated', { clientId: w.client.id, deviceId: w.deviceId, role: 'device', reason: `health check passed (last: ${check})` })
      }, function recordFailed (err: Error) {
        log.warn({ deviceId: w.deviceId, check, err: err.message }, 'health: could not record a check')
        if (watches.get(w.client) !== w) return
        w.outstanding?.add(check)
        // the store is away: a topic check is met again by the next message of that kind, but
        // `connect` and `config` come once a session (a second ack of a version is a duplicate)
        if (check !== CONNECT && check !== CONFIG) return
        setTimeout(function retryHealthCheck () {
          if (!closed && watches.get(w.client) === w) meet(w, check, at)
        }, RETRY_MS).unref()
      })
    }

    /** reads the window and what is met of it, then writes what this session saw meanwhile */
    async function load (w: Watch): Promise<void> {
      const progress = await registry.getHealth(w.deviceId)
      if (watches.get(w.client) !== w) return
      if (progress === null) {
        // no open window (activated or quarantined meanwhile, or a record written by hand)
        unwatch(w)
        return
      }
      const outstanding = new Set(progress.checks.filter((c) => !progress.met.includes(c)))
      // reinstated after it had applied its configuration: its ack of the same version again is a duplicate, so the state answers
      if (outstanding.has(CONFIG) && !w.early.has(CONFIG) && (await options.configs.state(w.deviceId))?.status === 'current') w.early.add(CONFIG)
      if (watches.get(w.client) !== w) return
      w.outstanding = outstanding
      for (const check of w.early) meet(w, check)
      w.early.clear()
      if (outstanding.size === 0) unwatch(w)
    }

    let sweeping = false
    let closed = false
    async function sweep (): Promise<void> {
      const now = ctx.now()
      for (const deviceId of await registry.healthDue(now, SWEEP_BATCH)) {
        const expired = await registry.expireHealth(deviceId, now)
        if (expired === null) continue
        const missed = expired.missed.join(',')
        // the first missed check only: a label per combination would multiply the series
        metrics.healthTransitions.inc({ outcome: 'quarantined', check: expired.missed[0] ?? '' })
        audit.write('device.quarantined', { deviceId, check: missed, reason: `health check not passed within its window: missed ${missed}` }, 'warn')
      }
    }
    const timer = setInterval(function sweepHealthWindows () {
      if (sweeping) return
      sweeping = true
      sweep().catch((err: Error) => log.warn({ err: err.message }, 'health: window sweep failed')).finally(() => { sweeping = false })
    }, options.sweepIntervalMs ?? DEFAULT_SWEEP_MS)
    timer.unref()

    return {
      name: 'health',
      ready (client, state) {
        const identity = state.identity
        if (identity?.role !== 'device' || identity.provisioned !== true || identity.name === null) return
        // the certificate authenticated this connection (identity.ts): that is the `connect` check
        const w: Watch = { client, deviceId: identity.name, prefix: `devices/${identity.name}/`, outstanding: null, early: new Set([CONNECT]) }
        watches.set(client, w)
        byDevice.set(w.deviceId, w)
        load(w).catch((err: Error) => {
          unwatch(w)
          log.warn({ deviceId: w.deviceId, err: err.message }, 'health: could not read the window; its checks count from the next connect')
        })
      },
      published ({ client, identity, packet }) {
        // every routed publish passes here: one property read for a device that is not provisioned
        if (identity?.provisioned !== true || client === null) return
        const w = watches.get(client)
        if (w === undefined || !packet.topic.startsWith(w.prefix)) return
        for (const check of topicChecks(packet.topic.slice(w.prefix.length))) {
          if (w.outstanding === null || w.outstanding.has(check)) meet(w, check)
        }
      },
      configApplied (deviceId) {
        const w = byDevice.get(deviceId)
        if (w !== undefined) meet(w, CONFIG)
      },
      disconnected (client) {
        const w = watches.get(client)
        if (w !== undefined) unwatch(w)
      },
      async close () {
        closed = true
        clearInterval(timer)
      }
    }
  }
} satisfies Plugin<HealthOptions>
