/**
 * The configuration lifecycle's one writer (CONTRACT §9): every new version of a
 * device's configuration — an operator's overrides, a template's change applied
 * at once or by a rollout, a registration, a rollback — is validated, committed
 * to the store (the version number is the store's), then published retained on
 * `devices/<id>/config` as `{"version", "config"}` and audited with its author.
 * The admin API, rollouts, provisioning and the ack plugin all come through here.
 */
import type { ValidateFunction } from 'ajv'
import { configTopic, publishRetainedConfig } from './config-store.js'
import { JitpError } from './errors.js'
import type { PluginContext } from './plugin.js'
import { configHash, type ConfigVersion, type DeviceConfigState, type DeviceConfigStore, type JsonObject } from './store/device-configs.js'
import type { Template } from '../plugins/provisioning/templates.js'
import { loadSchemaCatalogue, type SchemaCatalogue } from '../plugins/schema-catalogue.js'

/** what the service reads of a template */
export type ConfigTemplate = Pick<Template, 'name' | 'configuration' | 'validateConfig' | 'configAckTimeoutSeconds'>

export type ConfigServiceContext = Pick<PluginContext, 'config' | 'broker' | 'registry' | 'audit' | 'log' | 'metrics' | 'now'>

export interface ConfigServiceDeps {
  readonly ctx: ConfigServiceContext
  readonly store: DeviceConfigStore
  readonly templates: ReadonlyMap<string, ConfigTemplate>
  /** the topic map whose `devices/+/config` schema every published document must meet; loaded from SCHEMAS_DIR when not given */
  readonly catalogue?: SchemaCatalogue
}

export interface ApplyInput {
  readonly template: string
  /** the effective configuration (see effective()) */
  readonly config: JsonObject
  /** replaces the device's overrides when given */
  readonly overrides?: JsonObject
  readonly author: string
  readonly reason?: string
  /** compare-and-set on the current version (null: the device has none yet); omitted: unconditional */
  readonly expectedVersion?: number | null
}

/** why a rollback happened, as counted in jitp_config_rollbacks_total */
export type RollbackKind = 'failed' | 'timeout' | 'operator' | 'rollout'

export interface RollbackOptions {
  /** a version of the history; default: the last known good */
  readonly toVersion?: number
  readonly author: string
  readonly reason: string
  /** default: `rollout` for an author `rollout <id>`, `operator` otherwise */
  readonly kind?: RollbackKind
}

export interface ConfigService {
  /** the device's template configuration (the store's if set, else the template file's) deep-merged with its overrides */
  effective (template: string, overrides: JsonObject): Promise<JsonObject>
  /** throws InvalidConfiguration ('<JSON pointer>: <message>') when the config breaks the `config` topic schema or the template's configSchema */
  validate (template: string, config: JsonObject): void
  /** validates, commits a new version and publishes it retained, audited config.published; null when `expectedVersion` did not match */
  apply (deviceId: string, input: ApplyInput): Promise<ConfigVersion | null>
  /** replaces the device's overrides and applies the new effective configuration; DeviceNotFound for an unknown device */
  setOverrides (deviceId: string, overrides: JsonObject, author: string): Promise<ConfigVersion>
  /**
   * `toVersion`'s content and overrides (default: the last known good) as a new
   * version, audited config.rolledback (the current overrides kept when that version
   * predates versions recording them). NoLastKnownGood / VersionNotFound when there is nothing to go
   * back to. With `expectedVersion`: only if that is still the current version, else null.
   */
  rollback (deviceId: string, opts: RollbackOptions & { readonly expectedVersion: number }): Promise<ConfigVersion | null>
  rollback (deviceId: string, opts: RollbackOptions): Promise<ConfigVersion>
  state (deviceId: string): Promise<DeviceConfigState | null>
  /** newest first */
  history (deviceId: string, limit: number): Promise<ConfigVersion[]>
  /** the template's fleet configuration as stored (null: the template file's applies) */
  templateConfig (template: string): Promise<{ config: JsonObject, author: string, at: number } | null>
  /** validates and stores a template's fleet configuration; no device changes (a rollout or applyTemplateNow does that) */
  setTemplateConfig (template: string, config: JsonObject, author: string): Promise<void>
  /** every device of the template gets its new effective configuration now; returns how many got a new version */
  applyTemplateNow (template: string, author: string): Promise<number>
  /** the ack timeout of a template's devices (ms); without a template, the shortest of any */
  ackTimeoutMs (template?: string): number
  close (): Promise<void>
}

const MAX_PROBLEM = 200
const APPLY_TEMPLATE_PAGE = 500
const APPLY_TEMPLATE_PARALLEL = 16
/** how long after a publish the shared store is asked whether a newer version was committed meanwhile */
const VERIFY_MS = 100

function isPlainObject (v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v)
}

/** plain objects merged recursively; arrays, scalars and null in `over` replace what `base` has */
export function deepMerge (base: JsonObject, over: JsonObject): JsonObject {
  const out: Record<string, unknown> = { ...base }
  for (const [key, value] of Object.entries(over)) {
    const under = out[key]
    out[key] = isPlainObject(value) && isPlainObject(under) ? deepMerge(under, value) : value
  }
  return out
}

/** one Ajv error as `<JSON pointer into the published document>: <message>` (allErrors is off: the first one) */
function problem (validate: ValidateFunction, prefix: string): string {
  const e = validate.errors?.[0]
  if (!e) return `${prefix || '/'}: is invalid`
  const extra = e.keyword === 'required' ? `/${String(e.params.missingProperty)}` : e.keyword === 'additionalProperties' ? `/${String(e.params.additionalProperty)}` : ''
  const path = prefix + e.instancePath + extra
  return `${path || '/'}: ${(e.message ?? 'is invalid').slice(0, MAX_PROBLEM)}`
}

function rollbackKind (author: string): RollbackKind {
  return author.startsWith('rollout ') ? 'rollout' : 'operator'
}

function rolloutOf (author: string): string | undefined {
  return author.startsWith('rollout ') ? author.slice('rollout '.length) : undefined
}

export function createConfigService (deps: ConfigServiceDeps): ConfigService {
  const { ctx, store, templates } = deps
  const { config, audit, log, metrics } = ctx
  // the published document's own schema (the topic map's, as validation would check it if a client published it)
  const catalogue = deps.catalogue ?? loadSchemaCatalogue(config.schemasDir)
  const topicFormat = catalogue.lookup('devices/_/config')?.format
  const validateDocument = topicFormat?.kind === 'json' ? topicFormat.validate : null
  const defaultTimeoutMs = config.configAckTimeoutSeconds * 1000
  let shortestTimeoutMs = defaultTimeoutMs
  for (const t of templates.values()) if (t.configAckTimeoutSeconds !== null) shortestTimeoutMs = Math.min(shortestTimeoutMs, t.configAckTimeoutSeconds * 1000)

  /**
   * One publish at a time per device in this process, in commit order, so an
   * older version can never be published after a newer one from here.
   */
  const publishing = new Map<string, Promise<void>>()
  function inOrder (deviceId: string, step: () => Promise<void>): Promise<void> {
    const before = publishing.get(deviceId) ?? Promise.resolve()
    const mine = before.then(step, step)
    const tail = mine.catch(() => {})
    publishing.set(deviceId, tail)
    void tail.then(() => { if (publishing.get(deviceId) === tail) publishing.delete(deviceId) })
    return mine
  }

  /**
   * Another process may have committed a newer version and published it before
   * this publish landed: with a shared store, look again a moment later and publish
   * the newest once more, so the retained message always ends on the current version
   * (whoever publishes last sees the last commit). Batched off the hot path: a
   * publish costs its commit (one round trip) and Aedes' retained write; the look
   * again is one read per device per VERIFY_MS, all in flight together.
   */
  const toVerify = new Map<string, number>()
  let verifyTimer: NodeJS.Timeout | null = null
  let verifying: Promise<void> = Promise.resolve()
  function verifySoon (v: ConfigVersion): void {
    toVerify.set(v.deviceId, Math.max(toVerify.get(v.deviceId) ?? 0, v.version))
    if (verifyTimer !== null) return
    verifyTimer = setTimeout(function verifyPublished () {
      verifyTimer = null
      const batch = [...toVerify]
      toVerify.clear()
      verifying = Promise.all(batch.map(async ([deviceId, published]) => {
        const now = (await store.getState(deviceId))?.current
        if (!now || now.version <= published) return
        log.debug({ deviceId, published, current: now.version }, 'config: a newer version was committed meanwhile, publishing it again')
        await inOrder(deviceId, () => publishRetainedConfig(ctx.broker, now.deviceId, now.version, now.config))
      }).map((p) => p.catch((err: unknown) => log.warn({ err: (err as Error).message }, 'config: re-checking a published version failed')))).then(() => {})
    }, VERIFY_MS)
    verifyTimer.unref()
  }

  /** Publishes `v` retained, after every earlier publish of this device from this process. */
  function publishVersion (v: ConfigVersion): Promise<void> {
    return inOrder(v.deviceId, async function publishInOrder () {
      await publishRetainedConfig(ctx.broker, v.deviceId, v.version, v.config)
      if (config.redisUrl) verifySoon(v)
    })
  }

  async function commitAndPublish (deviceId: string, input: ApplyInput): Promise<ConfigVersion | null> {
    const v = await store.commit(deviceId, {
      template: input.template,
      config: input.config,
      overrides: input.overrides,
      author: input.author,
      reason: input.reason,
      at: ctx.now(),
      ...(input.expectedVersion !== undefined ? { expectedVersion: input.expectedVersion } : {})
    })
    if (v === null) return null
    await publishVersion(v)
    audit.write('config.published', {
      deviceId, topic: configTopic(deviceId), version: v.version, template: input.template, actor: input.author, rolloutId: rolloutOf(input.author), reason: input.reason
    })
    return v
  }

  async function templateBase (template: string): Promise<JsonObject> {
    const stored = await store.getTemplateConfig(template)
    return stored?.config ?? templates.get(template)?.configuration ?? {}
  }

  /** ConfigService.rollback: null only when `expectedVersion` was given and is no longer current */
  async function rollbackTo (deviceId: string, opts: RollbackOptions & { readonly expectedVersion?: number }): Promise<ConfigVersion | null> {
    const state = await store.getState(deviceId)
    const to = opts.toVersion ?? state?.lastKnownGood ?? null
    if (to === null) throw new JitpError('NoLastKnownGood', deviceId)
    const target = state ? await store.getVersion(deviceId, to) : null
    if (!state || !target) throw new JitpError('VersionNotFound', `${deviceId} version ${to}`)
    const from = state.current?.version
    // the content and the overrides it was made from go back together, or the next template change (merged with the
    // device's overrides) would bring back what failed; a version stored before versions recorded overrides keeps the current ones
    const v = await commitAndPublish(deviceId, {
      template: state.template, config: target.config, author: opts.author, reason: opts.reason,
      ...(target.overrides !== undefined ? { overrides: target.overrides } : {}),
      ...(opts.expectedVersion !== undefined ? { expectedVersion: opts.expectedVersion } : {})
    })
    if (v === null) return null
    metrics.configRollbacks.inc({ reason: opts.kind ?? rollbackKind(opts.author) })
    audit.write('config.rolledback', {
      deviceId, version: v.version, fromVersion: to, template: state.template, actor: opts.author, rolloutId: rolloutOf(opts.author),
      reason: from === undefined ? opts.reason : `${opts.reason} (version ${from} → content of ${to})`
    }, 'warn')
    return v
  }

  const service: ConfigService = {
    async effective (template, overrides) {
      return deepMerge(await templateBase(template), overrides)
    },

    validate (template, cfg) {
      if (!isPlainObject(cfg)) throw new JitpError('InvalidConfiguration', '/config: must be object')
      if (validateDocument && !validateDocument({ version: 1, config: cfg })) throw new JitpError('InvalidConfiguration', problem(validateDocument, ''))
      const own = templates.get(template)?.validateConfig
      if (own && !own(cfg)) throw new JitpError('InvalidConfiguration', problem(own, '/config'))
      // what the broker publishes is bound by what it accepts from anyone
      const bytes = Buffer.byteLength(JSON.stringify({ version: Number.MAX_SAFE_INTEGER, config: cfg }))
      if (bytes > config.maxPayloadBytes) throw new JitpError('InvalidConfiguration', `/config: ${bytes} bytes published, more than MAX_PAYLOAD_BYTES (${config.maxPayloadBytes})`)
    },

    async apply (deviceId, input) {
      service.validate(input.template, input.config)
      return await commitAndPublish(deviceId, input)
    },

    async setOverrides (deviceId, overrides, author) {
      const device = await ctx.registry.getDevice(deviceId)
      if (!device) throw new JitpError('DeviceNotFound', deviceId)
      const cfg = await service.effective(device.template, overrides)
      service.validate(device.template, cfg)
      const v = await commitAndPublish(deviceId, { template: device.template, config: cfg, overrides, author })
      // unconditional commits are never refused
      return v!
    },

    rollback: rollbackTo as ConfigService['rollback'],

    state (deviceId) {
      return store.getState(deviceId)
    },

    history (deviceId, limit) {
      return store.history(deviceId, limit)
    },

    async templateConfig (template) {
      return await store.getTemplateConfig(template)
    },

    async setTemplateConfig (template, cfg, author) {
      if (!templates.has(template)) throw new JitpError('TemplateNotFound', template)
      service.validate(template, cfg)
      await store.setTemplateConfig(template, cfg, author, ctx.now())
    },

    async applyTemplateNow (template, author) {
      if (!templates.has(template)) throw new JitpError('TemplateNotFound', template)
      const base = await templateBase(template)
      let changed = 0
      let cursor: string | undefined
      do {
        const page = await ctx.registry.listDevicesPage({ template, limit: APPLY_TEMPLATE_PAGE, ...(cursor ? { cursor } : {}) })
        const queue = page.items.filter((d) => d.status !== 'revoked').map((d) => d.deviceId)
        async function worker (): Promise<void> {
          for (let id = queue.shift(); id !== undefined; id = queue.shift()) {
            const state = await store.getState(id)
            const cfg = deepMerge(base, state?.overrides ?? {})
            if (state?.current && state.current.hash === configHash(cfg)) continue
            try {
              service.validate(template, cfg)
            } catch (err) {
              // the device's own overrides break the new template configuration: it keeps its version
              log.warn({ deviceId: id, template, err: (err as Error).message }, 'config: not applied to a device whose overrides make it invalid')
              continue
            }
            const v = await commitAndPublish(id, { template, config: cfg, author, reason: 'template configuration applied', expectedVersion: state?.current?.version ?? null })
            if (v) changed++
          }
        }
        await Promise.all(Array.from({ length: Math.min(APPLY_TEMPLATE_PARALLEL, queue.length) }, worker))
        cursor = page.nextCursor ?? undefined
      } while (cursor)
      return changed
    },

    ackTimeoutMs (template) {
      if (template === undefined) return shortestTimeoutMs
      const own = templates.get(template)?.configAckTimeoutSeconds
      return own != null ? own * 1000 : defaultTimeoutMs
    },

    async close () {
      if (verifyTimer !== null) clearTimeout(verifyTimer)
      verifyTimer = null
      await verifying
      await Promise.allSettled([...publishing.values()])
    }
  }
  return service
}

