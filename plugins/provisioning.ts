/**
 * Just-in-time provisioning (CONTRACT §3). A claim connection asks for a
 * certificate (from its CSR, or with a broker-generated key), then registers
 * against a template; a device with a factory certificate from a registered
 * manufacturer CA is registered on its first connect.
 *
 * Requests are intercepted (acknowledged, never routed) and answered with
 * `client.publish` on `<request>/accepted` or `<request>/rejected`: the reply
 * goes to the requesting connection only, whoever else subscribes to those
 * topics (and no one may publish on them).
 */
import type { Client } from 'aedes'
import { Errors, JitpError, type ErrorCode } from '../broker/errors.js'
import type { AuthenticateAnswer, AuthenticateEvent, Plugin, PluginHooks } from '../broker/plugin.js'
import { liveClients, stateOf, type ConnectionState, type Identity, type PeerCertificate } from '../broker/session.js'
import { configTopic } from '../broker/config-store.js'
import { CsrError } from '../pki/csr.js'
import { permissionsFor, type Policy } from './policy.js'
import { issueFromCsr, issueWithGeneratedKey, newOwnershipToken, type Issued } from './provisioning/issuance.js'
import { boundParameters, claimCredentialOf, claimThrottleKeyOf, enrollmentOnlyTemplates } from './provisioning/enrollment.js'
import { commitRegistration, decideDeviceId, registerClaimed } from './provisioning/register.js'
import { parseRequestTopic, type ProvisioningRequest } from './provisioning/requests.js'
import type { InitialConfigPublisher } from '../broker/config-store.js'
import { loadTemplates, type Template } from './provisioning/templates.js'
import { createThrottle } from './provisioning/throttle.js'
import type { EnrollmentGroup } from './token/enrollment-groups.js'

/** claim-session timers armed in this process (all brokers): for tests, nothing else */
let armedClaimTimers = 0
export function claimTimersArmed (): number {
  return armedClaimTimers
}

export interface ProvisioningOptions {
  readonly policy: Policy
  readonly templates?: ReadonlyMap<string, Template>
  /** the enrollment groups (CONTRACT §3.6): the templates they name register their enrollments only */
  readonly enrollmentGroups?: ReadonlyMap<string, EnrollmentGroup>
  /** the configuration service: a new device's version 1 is committed and published through it (CONTRACT §9) */
  readonly configs: InitialConfigPublisher
}

interface RequestContext {
  readonly client: Client
  readonly identity: Identity
  readonly state: ConnectionState
  readonly request: ProvisioningRequest
  readonly qos: 0 | 1
}

export const provisioningPlugin: Plugin<ProvisioningOptions> = {
  name: 'provisioning',
  async setup (ctx, options): Promise<PluginHooks> {
    const { config, registry, audit, metrics, broker } = ctx
    const templates = options.templates ?? await loadTemplates(config.templatesDir)
    const enrollmentTemplates = enrollmentOnlyTemplates(options.enrollmentGroups)
    // follows a device CA rollover: the trust holder's issuer is always the first CA of device-ca.pem
    const issuer = ctx.trust.deviceIssuer
    // shared by every broker through Redis when there is one; address first (see throttle.ts)
    const throttle = createThrottle({
      perAddress: config.provisionRatePerAddress,
      perClaimCertificate: config.provisionRatePerClaimCert,
      now: ctx.now,
      redisUrl: config.redisUrl,
      // the session store already reports a Redis outage once, at warn; this connection's
      // retries would repeat it every second
      onError: (err) => ctx.log.debug({ err: err.message }, 'provisioning throttle: Redis error, refusing (fail closed)')
    })
    const claimTimers = new WeakMap<Client, NodeJS.Timeout>()
    function disarmClaimTimer (client: Client): void {
      const timer = claimTimers.get(client)
      if (timer === undefined) return
      clearTimeout(timer)
      claimTimers.delete(client)
      armedClaimTimers--
    }
    const deps = { registry, broker, audit, now: ctx.now, configs: options.configs }
    const claimDeps = { ...deps, templates, certValidityDays: config.certValidityDays, trust: ctx.trust }

    /**
     * Opt-in (PROVISION_REPLY_COMPANION): also deliver to the claim connection named
     * `<client id>-replies` on the same claim certificate, for MQTT 3.1.1 tools that
     * cannot publish and receive on one connection (mosquitto_pub + mosquitto_sub).
     */
    function companionOf (rc: RequestContext): Client | null {
      if (!config.provisionReplyCompanion) return null
      const companion = liveClients(broker)[`${rc.client.id}-replies`]
      const identity = stateOf(companion)?.identity
      // a claim certificate's only: an enrollment's client id is its registration id, which no companion shares
      return companion && identity?.role === 'claim' && identity.certificateId !== null && identity.certificateId === rc.identity.certificateId ? companion : null
    }

    function reply (rc: RequestContext, outcome: 'accepted' | 'rejected', body: unknown): void {
      const packet = {
        cmd: 'publish' as const,
        topic: `${rc.request.topic}/${outcome}`,
        payload: Buffer.from(JSON.stringify(body)),
        qos: rc.qos,
        retain: false,
        dup: false
      }
      if (!rc.client.closed) rc.client.publish(packet, function replySent () {})
      companionOf(rc)?.publish({ ...packet }, function companionReplySent () {})
    }

    function reject (rc: RequestContext, code: ErrorCode, message?: string): void {
      const statusCode = Errors[code].statusCode ?? 500
      metrics.provisioningRejections.inc({ errorCode: code })
      audit.write('provision.rejected', {
        clientId: rc.client.id,
        role: rc.identity.role,
        certificateId: rc.identity.certificateId ?? undefined,
        authMethod: rc.identity.auth?.method,
        remoteAddress: rc.state.remoteAddress,
        topic: rc.request.topic,
        template: rc.request.template ?? undefined,
        statusCode,
        errorCode: code,
        reason: message ?? Errors[code].message
      }, 'warn')
      reply(rc, 'rejected', { statusCode, errorCode: code, errorMessage: message ?? Errors[code].message })
    }

    async function createCertificate (rc: RequestContext, payload: Record<string, unknown>): Promise<void> {
      let issued: Issued
      if (rc.request.kind === 'createFromCsr') {
        issued = issueFromCsr(issuer, String(payload.certificateSigningRequest), config.certValidityDays)
      } else {
        issued = issueWithGeneratedKey(issuer, config.certValidityDays)
      }
      const now = ctx.now()
      const { certificate } = issued
      const token = newOwnershipToken()
      const ttlMs = config.tokenTtlSeconds * 1000
      // pending until a registration binds it; never registered, it expires with its token
      await registry.putPendingCertificate(
        { certificateId: certificate.certificateId, deviceId: null, status: 'pending', serialNumber: certificate.serialNumber, notAfter: certificate.notAfter.getTime(), createdAt: now, updatedAt: now },
        token,
        { certificateId: certificate.certificateId, clientId: rc.client.id, claimFingerprint: claimCredentialOf(rc.identity), expiresAt: now + ttlMs, publicKeyPem: issued.publicKeyPem },
        ttlMs)
      metrics.certificatesIssued.inc({ flow: rc.request.kind === 'createFromCsr' ? 'csr' : 'generated' })
      audit.write('provision.certificate.issued', { clientId: rc.client.id, role: 'claim', certificateId: certificate.certificateId, remoteAddress: rc.state.remoteAddress, topic: rc.request.topic, reason: rc.request.kind === 'createFromCsr' ? 'from CSR' : 'broker-generated key' })
      reply(rc, 'accepted', {
        certificateId: certificate.certificateId,
        certificatePem: certificate.pem,
        certificateOwnershipToken: token,
        ...(issued.privateKeyPem ? { privateKey: issued.privateKeyPem } : {})
      })
    }

    async function register (rc: RequestContext, payload: Record<string, unknown>): Promise<void> {
      const templateName = rc.request.template ?? ''
      const r = await registerClaimed(claimDeps, {
        templateName,
        payloadTemplateName: typeof payload.templateName === 'string' ? payload.templateName : undefined,
        tokenValue: typeof payload.certificateOwnershipToken === 'string' ? payload.certificateOwnershipToken : '',
        // an enrollment (CONTRACT §3.6): its group's template only, its registration id as a parameter
        parameters: boundParameters(rc.identity, templateName, (payload.parameters ?? {}) as Record<string, string>, enrollmentTemplates),
        clientId: rc.client.id,
        claimFingerprint: claimCredentialOf(rc.identity),
        remoteAddress: rc.state.remoteAddress
      })
      const { deviceId, final, template } = r
      metrics.certificatesIssued.inc({ flow: 'registration' })
      metrics.registrations.inc({ template: template.name })
      const fields = { clientId: rc.client.id, deviceId, role: 'claim', certificateId: final.certificateId, remoteAddress: rc.state.remoteAddress, template: template.name }
      audit.write('device.registered', fields)
      audit.write('provision.accepted', { ...fields, topic: rc.request.topic })
      reply(rc, 'accepted', {
        deviceId,
        ...(rc.request.aws ? { thingName: deviceId } : {}),
        deviceConfiguration: template.configuration,
        configTopic: configTopic(deviceId),
        certificateId: final.certificateId,
        certificatePem: final.pem
      })
    }

    async function handle (rc: RequestContext, raw: Buffer): Promise<void> {
      try {
        const verdict = await throttle.take(rc.state.remoteAddress, claimThrottleKeyOf(rc.identity))
        if (verdict !== 'allow') {
          throw new JitpError('Throttled', verdict === 'address' ? 'too many provisioning requests from this address' : 'too many provisioning requests for this claim certificate')
        }
        const payload = (raw.length === 0 ? {} : JSON.parse(raw.toString('utf8'))) as Record<string, unknown>
        if (rc.request.kind === 'register') await register(rc, payload)
        else await createCertificate(rc, payload)
      } catch (err) {
        if (err instanceof JitpError) return reject(rc, err.code, err.message)
        if (err instanceof CsrError) return reject(rc, 'InvalidCsr', err.message)
        ctx.log.error({ err }, 'provisioning request failed')
        reject(rc, 'InternalError')
      }
    }

    async function registerOnFirstConnect (ev: AuthenticateEvent, peer: PeerCertificate): Promise<AuthenticateAnswer> {
      const template = [...templates.values()].find((t) =>
        t.manufacturerCas === 'all' || (Array.isArray(t.manufacturerCas) && t.manufacturerCas.includes(peer.issuerFingerprint)))
      if (!template) return { verdict: 'deny', code: 'UnknownCertificate', detail: 'no template for this manufacturer CA' }
      const fail = (code: ErrorCode, detail: string): AuthenticateAnswer => {
        metrics.provisioningRejections.inc({ errorCode: code })
        audit.write('provision.rejected', { clientId: ev.clientId, role: 'manufacturer', certificateId: peer.certificateId, remoteAddress: ev.remoteAddress, template: template.name, errorCode: code, reason: detail }, 'warn')
        return { verdict: 'deny', code: code === 'DeviceExists' ? 'DeviceExists' : 'UnknownCertificate', detail }
      }
      try {
        const parameters: Record<string, string> = { commonName: peer.commonName ?? '', serialNumber: peer.serialNumber }
        const { deviceId, parameters: finalParameters } = await decideDeviceId(template, parameters, { clientId: ev.clientId, certificateId: peer.certificateId, remoteAddress: ev.remoteAddress })
        if (ev.clientId !== deviceId) return { verdict: 'deny', code: 'ClientIdMismatch', detail: `expected client id ${deviceId}` }
        try {
          await commitRegistration(deps, { deviceId, template, parameters: finalParameters, certificates: [{ certificateId: peer.certificateId, serialNumber: peer.serialNumber, notAfter: peer.notAfter }], token: null })
        } catch (err) {
          // two first connects racing with the same certificate: the loser finds it registered
          const cert = await registry.getCertificate(peer.certificateId)
          if (!(err instanceof JitpError && err.code === 'DeviceExists' && cert?.deviceId === deviceId && cert.status === 'active')) throw err
        }
        metrics.registrations.inc({ template: template.name })
        const fields = { clientId: ev.clientId, deviceId, role: 'manufacturer', certificateId: peer.certificateId, remoteAddress: ev.remoteAddress, template: template.name, reason: 'manufacturer certificate, first connect' }
        audit.write('device.registered', fields)
        audit.write('provision.accepted', fields)
        return {
          verdict: 'allow',
          identity: { role: 'device', clientId: ev.clientId, certificateId: peer.certificateId, name: deviceId, permissions: permissionsFor(options.policy, 'device'), registeredOnConnect: true, provisioned: true }
        }
      } catch (err) {
        if (err instanceof JitpError) return fail(err.code, err.message)
        throw err
      }
    }

    return {
      name: 'provisioning',
      close: () => throttle.close(),
      async authenticate (ev) {
        // reached only when identity deferred: an unregistered manufacturer certificate
        if (ev.peer?.issuerRole !== 'manufacturer') return { verdict: 'defer' }
        return registerOnFirstConnect(ev, ev.peer)
      },
      connected (client, state) {
        if (state.identity?.role !== 'claim') return
        // a socket that closed while its CONNECT was still in flight (a registry or session
        // read pending) is never registered by Aedes, so no `disconnected` would follow:
        // nothing is armed for it, and the socket's own close clears what was armed
        const conn = client.conn
        if (client.closed || conn.destroyed) return
        const timer = setTimeout(function claimSessionExpired () {
          audit.write('claim.session.expired', { clientId: client.id, role: 'claim', certificateId: state.peer?.certificateId, authMethod: state.identity?.auth?.method, remoteAddress: state.remoteAddress, reason: `claim sessions live at most ${config.claimSessionMaxSeconds} s` })
          client.close()
        }, config.claimSessionMaxSeconds * 1000)
        timer.unref()
        claimTimers.set(client, timer)
        armedClaimTimers++
        conn.once('close', function claimSocketClosed () { disarmClaimTimer(client) })
      },
      disconnected (client) {
        disarmClaimTimer(client)
      },
      intercept ({ client, identity, state, packet }) {
        // hot path: every publish passes here, and only `$...` topics can be requests
        if (packet.topic.charCodeAt(0) !== 36 || client === null || identity === null || !state) return false
        const request = parseRequestTopic(packet.topic, config.provisioningAwsTopics)
        if (request === null || identity.role !== 'claim') return false
        const raw = typeof packet.payload === 'string' ? Buffer.from(packet.payload) : packet.payload
        void handle({ client, identity, state, request, qos: packet.qos === 0 ? 0 : 1 }, raw)
        return true
      },
      rejected ({ client, identity, topic, code, errors }) {
        const state = stateOf(client)
        const request = parseRequestTopic(topic, config.provisioningAwsTopics)
        if (request === null || identity?.role !== 'claim' || !state) return
        const detail = errors[0] ? `${errors[0].path || 'payload'} ${errors[0].message}` : Errors[code].message
        reject({ client, identity, state, request, qos: 0 }, 'InvalidRequest', detail)
      }
    }
  }
}
