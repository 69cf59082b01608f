/**
 * Builds a whole broker from a validated config: stores, Aedes, the plugin chain,
 * the mutual-TLS listener and the operations HTTP server. `close()` releases all
 * of it in reverse order.
 */
import { Aedes, type AedesPublishPacket } from 'aedes'
import type { AddressInfo } from 'node:net'
import type { Server as HttpServer } from 'node:http'
import type { Server as TlsServer } from 'node:tls'
import { devPkiComplete, generateDevPki } from '../certs-dev/generate.js'
import { activityPlugin } from '../plugins/activity.js'
import { authorizationPlugin } from '../plugins/authorization.js'
import { certExpiryPlugin, requestRotation } from '../plugins/cert-expiry.js'
import { configAckPlugin } from '../plugins/config-ack.js'
import { healthPlugin } from '../plugins/health.js'
import { identityPlugin } from '../plugins/identity.js'
import { tokenIdentityPlugin } from '../plugins/token-identity.js'
import { loadPolicy } from '../plugins/policy.js'
import { provisioningPlugin } from '../plugins/provisioning.js'
import { rotationPlugin } from '../plugins/rotation.js'
import { revocationPlugin } from '../plugins/revocation.js'
import { loadTemplates } from '../plugins/provisioning/templates.js'
import { loadEnrollmentGroups } from '../plugins/token/enrollment-groups.js'
import { loadSchemaCatalogue } from '../plugins/schema-catalogue.js'
import { validationPlugin } from '../plugins/validation.js'
import { createPiiCipher, piiKeyFrom } from './pii-crypto.js'
import { createPersonalData, personalDataWrapper } from './store/personal-data.js'
import { createAdminServer } from './admin/server.js'
import { createAudit, type Audit } from './audit.js'
import { createConfigService, type ConfigService } from './config-service.js'
import { createRollouts, type Rollouts } from './rollouts.js'
import { installChain, type Chain } from './chain.js'
import type { Config } from './config.js'
import { Errors } from './errors.js'
import { createFlowControl } from './flow-control.js'
import { createHttpServer } from './http.js'
import { createRefusalLog } from './listener/refusal-log.js'
import { createTokenEndpoint } from './token-endpoint.js'
import { loadTokenKeys, type TokenKeys } from './token-keys.js'
import { createOAuthClients, type OAuthClients } from './store/oauth-clients.js'
import { createAdmission, createListener } from './listener.js'
import { createAppLogger, type AppLogger } from './logger.js'
import { createMetrics, type Metrics } from './metrics.js'
import type { PluginContext, PluginHooks } from './plugin.js'
import { createRegistry } from './store/create-registry.js'
import type { Registry } from './store/registry.js'
import { within } from './store/redis.js'
import { indexRetained } from './store/retained-index.js'
import { createDeviceConfigStore } from './store/create-device-configs.js'
import type { DeviceConfigStore } from './store/device-configs.js'
import { createSessionStore } from './store/session-store.js'
import { undeliverableFilter } from './store/undeliverable.js'
import { liveClients } from './session.js'
import { queueGate } from './store/queue-gate.js'
import { auditPublishNotStored, dropQueuedPacketsOnClean, failEmitVisibly, failPublishVisibly, wrapPersistence, type AedesPersistence } from './store/wrappers.js'
import { adminTlsMaterial, createTrustHolder } from './trust.js'
import { watchCertsDir, type CertsWatcher } from './cert-reload.js'

export interface BuildOptions {
  /** audit destination override (tests write to an in-memory stream) */
  auditStream?: NodeJS.WritableStream
  /** clock override for expiry tests */
  now?: () => number
  /** logger override */
  log?: AppLogger
  /** what /metrics answers instead of this broker's registry (a cluster worker: every worker's, broker/cluster.ts) */
  metricsText?: () => Promise<string>
}

export interface BrokerHandle {
  readonly config: Config
  readonly broker: Aedes
  readonly registry: Registry
  readonly audit: Audit
  readonly metrics: Metrics
  readonly chain: Chain
  readonly ctx: PluginContext
  readonly mqttsPort: number
  /** the token listener's port (CONTRACT §10); null when MQTTS_TOKEN_PORT is unset */
  readonly mqttsTokenPort: number | null
  readonly httpPort: number
  /** null when the admin API is off (no admin CA) */
  readonly adminPort: number | null
  readonly configs: ConfigService
  readonly configStore: DeviceConfigStore
  readonly rollouts: Rollouts
  /** the broker's own token-signing keys (CONTRACT §10), loaded once from TOKEN_KEYS_DIR */
  readonly tokenKeys: TokenKeys
  /** OAuth2 clients of POST /oauth/token, made through the admin API */
  readonly oauthClients: OAuthClients
  ready (): Promise<{ ready: boolean, checks: Record<string, boolean> }>
  /** reads CERTS_DIR again now (SIGHUP); true when new material is in use */
  reloadCerts (): boolean
  close (): Promise<void>
}

function listen (server: TlsServer | HttpServer, port: number, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, host, () => {
      server.off('error', reject)
      resolve((server.address() as AddressInfo).port)
    })
  })
}

function closeServer (server: TlsServer | HttpServer): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()))
}

/**
 * How long one release step of close() may take before the next one starts
 * anyway: a component that cannot finish (a Redis connection that never ends,
 * a client whose close waits on a store that is gone) must not keep the others,
 * above all the audit log's flush, from being released. Aedes closing every
 * client gets longer; a clean shutdown takes a fraction of either.
 */
const RELEASE_STEP_MS = 2000
const RELEASE_BROKER_MS = 5000

export async function buildBroker (config: Config, opts: BuildOptions = {}): Promise<BrokerHandle> {
  const log = opts.log ?? createAppLogger(config.logLevel)
  const now = opts.now ?? Date.now
  // every line also to the shared Redis stream (the admin API's cluster-wide audit query), or an in-process ring
  const audit = createAudit(opts.auditStream ?? config.auditLog, {
    refusalIntervalMs: config.auditAggregateSeconds * 1000,
    redisUrl: config.redisUrl,
    streamMaxLen: config.auditStreamMaxLen,
    memoryLines: config.auditMemoryLines,
    log
  })
  const metrics = createMetrics({ auditStream: () => audit.stats() })
  const releases: Array<[step: string, release: () => Promise<void>, boundMs?: number]> = [['audit', () => audit.close()]]
  async function releaseAll (): Promise<void> {
    for (const [step, release, boundMs = RELEASE_STEP_MS] of releases.reverse()) {
      const done = await within(release().then(() => true, (err: unknown) => {
        log.warn({ err, step }, 'error while closing')
        return true
      }), boundMs)
      if (done === undefined) log.warn({ step, ms: boundMs }, 'close: step did not finish in time, releasing the rest')
    }
    releases.length = 0
  }

  try {
    if (config.generateDevCerts && !devPkiComplete(config.certsDir)) {
      log.warn({ dir: config.certsDir }, 'no PKI found: generating a development PKI (never use it in production)')
      await generateDevPki({ outDir: config.certsDir })
    }
    // one holder: classify, the device certificate issuer and the TLS servers follow CERTS_DIR (broker/cert-reload.ts)
    const trust = createTrustHolder(config.certsDir)
    const policy = loadPolicy(config.policyFile, { awsTopics: config.provisioningAwsTopics })
    // loaded once: provisioning uses them, the admin API shows them
    const templates = await loadTemplates(config.templatesDir)
    // once, for two readers: the token listener admits enrollments by them, and provisioning keeps
    // their templates for enrollments alone (a claim certificate must not register through one)
    const enrollmentGroups = loadEnrollmentGroups(config.enrollmentDir, templates)
    // one catalogue and one personal-data key for the validation plugin and the store wrapper
    const catalogue = loadSchemaCatalogue(config.schemasDir)
    // derived from the device CA key when unset: a device CA rollover would change it, and sealed x-pii
    // values already stored could no longer be opened after the next restart (docs/PKI.md: pin it first)
    if (config.piiKey === undefined && !config.generateDevCerts) log.warn('PII_KEY is not set: the key sealing personal data is derived from device-ca.key and changes with a device CA rollover; pin PII_KEY (docs/PKI.md)')
    const personalData = createPersonalData(catalogue, createPiiCipher(piiKeyFrom(config.piiKey, trust.deviceCaKeyPem)))

    let storeDown = false
    const onStoreError = (err: Error): void => {
      if (!storeDown) log.warn({ err: err.message }, 'store connection error')
      storeDown = true
    }
    if (!config.redisUrl) log.warn('REDIS_URL is not set: in-memory store, nothing survives a restart')
    const registry = createRegistry({ redisUrl: config.redisUrl, now, onError: onStoreError })
    releases.push(['registry', () => registry.close()])
    // the configuration store (CONTRACT §9): versions, acks, rollouts; Redis when set
    const configStore = createDeviceConfigStore({ redisUrl: config.redisUrl, onError: onStoreError, now })
    releases.push(['config store', () => configStore.close()])
    // the token listener's services (CONTRACT §10): the broker's signing keys (generated on first start) and its OAuth2 clients
    const tokenKeys = await loadTokenKeys(config.tokenKeysDir)
    const oauthClients = createOAuthClients({ redisUrl: config.redisUrl, onError: onStoreError, now })
    releases.push(['oauth clients', () => oauthClients.close()])
    const sessionStore = createSessionStore(config.redisUrl, onStoreError, {
      packetTtlSeconds: config.packetTtlSeconds,
      // a reconnecting session gets its whole bounded queue, not the store's default 1000
      maxSessionDelivery: config.sessionQueueLimit
    })
    releases.push(['session store', () => sessionStore.close()])

    // flow control (broker/flow-control.ts): bounded session queues, slow consumers, drain timeout
    const flow = createFlowControl(config, { audit, metrics, redis: sessionStore.redis })
    releases.push(['flow control', () => flow.close()])
    // the persistence wrappers (broker/store/wrappers.ts), closest to the store first
    // a message is not stored for a live subscriber that may not receive it (a wide filter such as devices/<id>/#)
    const undeliverable = undeliverableFilter()
    // a reconnecting session's queue goes out once the chain agrees (a revocation during the connect)
    const queue = queueGate()
    const persistence = wrapPersistence(sessionStore.aedesOptions.persistence, [
      sessionStore.kind === 'memory' ? indexRetained : null,
      sessionStore.redis !== null ? dropQueuedPacketsOnClean(sessionStore.redis) : null,
      // personal data (broker/store/personal-data.ts): no x-pii value in clear in any stored copy
      personalDataWrapper(personalData),
      flow.boundSessionQueues,
      undeliverable.skipUndeliverable,
      failPublishVisibly,
      queue.gateQueue
    ])
    const broker = await Aedes.createBroker({
      // one id for the broker and its audit chain (every audit line carries it)
      id: audit.brokerId,
      ...sessionStore.aedesOptions,
      ...(sessionStore.aedesOptions.mq ? { mq: failEmitVisibly(sessionStore.aedesOptions.mq) } : {}),
      persistence,
      ...flow.aedesOptions,
      queueLimit: config.queueLimit,
      heartbeatInterval: 1000,
      // [CONTRACT §11] a connection that has not sent CONNECT in time is closed (audited by the listener)
      connectTimeout: config.connectTimeoutMs
    })
    flow.attach(broker)
    // end flow control
    const brokerEvents: NodeJS.EventEmitter = broker
    brokerEvents.on('error', (err: Error) => log.warn({ err: err.message }, 'broker error'))
    brokerEvents.on('clientError', auditPublishNotStored(audit, metrics))
    // for a build that fails before the listener exists; closing twice is a no-op
    releases.push(['aedes', () => new Promise<void>((resolve) => broker.close(() => resolve())), RELEASE_BROKER_MS])

    const ctx: PluginContext = Object.freeze({ config, broker, registry, trust, audit, log, metrics, now })
    // the configuration lifecycle (broker/config-service.ts, broker/rollouts.ts): one service for registration, acks, the admin API and rollouts
    const configs = createConfigService({ ctx, store: configStore, templates, catalogue })
    releases.push(['config service', () => configs.close()])
    // health verification (CONTRACT §3.7, plugins/health.ts): an observer of provisioned devices; config acks reach it through config-ack
    const health = healthPlugin.setup(ctx, { templates, catalogue, configs })
    // the fixed order of the chain: revocation → identity → authorization → validation → provisioning → observers
    const hooks: PluginHooks[] = [
      // first: a revoked certificate (any role, registry list or CRL) is denied before anyone looks it up
      await revocationPlugin.setup(ctx, undefined),
      await identityPlugin.setup(ctx, { policy }),
      // the token listener's connections (CONTRACT §10): OAuth2 JWTs (external issuer or the broker's own) and
      // symmetric-key enrollments; a certificate connection is answered by identity and never gets here
      await tokenIdentityPlugin.setup(ctx, { policy, templates, enrollmentGroups, brokerTokens: { keys: tokenKeys, clients: oauthClients } }),
      await authorizationPlugin.setup(ctx, { policy }),
      await validationPlugin.setup(ctx, { catalogue, personalData }),
      await provisioningPlugin.setup(ctx, { policy, templates, enrollmentGroups, configs }),
      // device-initiated certificate rotation (CONTRACT §3.4): $provision/certificates/rotate/json, grace, first use
      await rotationPlugin.setup(ctx, undefined),
      await configAckPlugin.setup(ctx, { service: configs, store: configStore, onApplied: health.configApplied }),
      // after config-ack: a provisioned device's connect, config ack and first valid message per required topic
      health,
      // an observer: device activity (first/last seen, counters) for the admin API, batched to the registry
      await activityPlugin.setup(ctx, undefined),
      // an observer: the rotate-certificate reminder for certificates close to expiry, and the expiry gauge
      await certExpiryPlugin.setup(ctx, undefined)
    ]
    for (const h of hooks) if (h.close) releases.push([`plugin ${h.name}`, () => h.close!()])
    const chain = installChain(ctx, hooks)
    queue.bind(function queueMayGoOut (client) { return chain.beforeQueue(client) })
    undeliverable.bind(function mayReceiveStored (clientId, packet) {
      const client = liveClients(broker)[clientId]
      return client ? chain.mayReceive(client, packet as unknown as AedesPublishPacket) : undefined
    })

    // the listener (broker/listener.ts): handshake and CONNECT deadlines, limits at accept, packet-size guard, pre-auth audit
    // the token listener (CONTRACT §10) is the same code with no client certificate asked; the limits at accept are shared
    const admission = createAdmission(config)
    const listener = createListener({ config, trust, broker, audit, metrics, log }, { admission })
    const tlsServer = listener.server
    const tokenListener = config.mqttsTokenPort === undefined ? null : createListener({ config, trust, broker, audit, metrics, log }, { auth: 'token', admission })
    releases.push(['listener and aedes', async () => {
      const closing = Promise.all([listener.close(), tokenListener?.close()])
      await new Promise<void>((resolve) => broker.close(() => resolve()))
      await closing
    }, RELEASE_BROKER_MS])
    const mqttsPort = await listener.listen(config.mqttsPort, config.host)
    const mqttsTokenPort = tokenListener === null ? null : await tokenListener.listen(config.mqttsTokenPort!, config.host)

    async function ready () {
      const [store, reg] = await Promise.all([sessionStore.ping(), registry.ping()])
      const checks: Record<string, boolean> = { mqtts: tlsServer.listening, ...(tokenListener ? { mqttsToken: tokenListener.server.listening } : {}), sessionStore: store, registry: reg }
      const ok = checks.mqtts! && (checks.mqttsToken ?? true) && store && reg
      if (ok) storeDown = false
      metrics.storeUp.set(store && reg ? 1 : 0)
      return { ready: ok, checks }
    }

    // POST /oauth/token on HTTP_PORT (broker/token-endpoint.ts): client credentials → a token signed by tokenKeys
    const tokenEndpoint = createTokenEndpoint({ config, clients: oauthClients, keys: tokenKeys, audit, metrics, log, now, onStoreError })
    releases.push(['token endpoint', () => tokenEndpoint.close()])
    // connections refused at accept on HTTP_PORT, audited like the MQTT listener's: aggregated per address (CONTRACT §6)
    const httpRefusals = createRefusalLog(audit, metrics)
    releases.push(['http refusals', () => { httpRefusals.close(); return Promise.resolve() }])
    const httpServer = createHttpServer({
      metrics, ready, tokenEndpoint, metricsText: opts.metricsText,
      admission: createAdmission(config, config.httpMaxConnections),
      refused: (remoteAddress, code) => httpRefusals.refuse(remoteAddress, code, `HTTP_PORT: ${Errors[code].message}`)
    })
    const httpPort = await listen(httpServer, config.httpPort, config.host)
    releases.push(['http', () => closeServer(httpServer)])
    httpServer.unref()

    // staged rollouts (broker/rollouts.ts): every process ticks, the holder of the store lease `rollouts` drives;
    // released before the listener and Aedes, so a step in progress stops while it can still publish
    const rollouts = createRollouts({ store: configStore, registry, service: configs, audit, metrics, log, now, owner: broker.id })
    releases.push(['rollouts', () => rollouts.close()])

    // the admin API (broker/admin/server.ts): operators only, mutual TLS with the admin CA
    let adminPort: number | null = null
    // its HTTPS server, for a certificate reload (Fastify's https option makes app.server a tls.Server)
    let adminTls: TlsServer | null = null
    if (trust.admin) {
      const admin = await createAdminServer({
        config, trust: trust.admin, serverCertPem: trust.serverCertPem, serverKeyPem: trust.serverKeyPem,
        registry, audit, auditSource: audit, templates, persistence: persistence as AedesPersistence, log, now, configs, rollouts,
        rotate: (deviceId, actor) => requestRotation(ctx, deviceId, actor),
        oauthClients
      })
      releases.push(['admin API', () => admin.close()])
      adminPort = await admin.listen(config.adminPort, config.host)
      adminTls = admin.app.server as unknown as TlsServer
    } else {
      log.warn({ dir: config.certsDir }, 'no admin-ca.pem in CERTS_DIR: the admin API is off')
    }

    // certificate hot reload: new connections get the new server certificate, CAs and device CA; none is dropped
    const certsWatcher: CertsWatcher = watchCertsDir({
      dir: config.certsDir, trust, audit, log,
      onReload (next) {
        listener.reloadTls()
        tokenListener?.reloadTls()
        const material = adminTlsMaterial(next)
        if (adminTls && material) adminTls.setSecureContext(material)
      }
    })
    releases.push(['certs watcher', async () => certsWatcher.close()])

    audit.write('broker.started', { brokerId: broker.id, reason: `mqtts ${mqttsPort}, mqtts token ${mqttsTokenPort ?? 'off'}, http ${httpPort}, admin ${adminPort ?? 'off'}, store ${sessionStore.kind}` })
    log.info({ mqttsPort, mqttsTokenPort, httpPort, adminPort, store: sessionStore.kind }, 'aedes-jitp listening')

    let closed: Promise<void> | undefined
    return {
      config,
      broker,
      registry,
      audit,
      metrics,
      chain,
      ctx,
      mqttsPort,
      mqttsTokenPort,
      httpPort,
      adminPort,
      configs,
      configStore,
      rollouts,
      tokenKeys,
      oauthClients,
      ready,
      reloadCerts: () => certsWatcher.reload({ force: true }),
      close () {
        closed ??= (async () => {
          audit.write('broker.stopped', { brokerId: broker.id })
          await releaseAll()
        })()
        return closed
      }
    }
  } catch (err) {
    await releaseAll()
    throw err
  }
}
