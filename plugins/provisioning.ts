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
import { liveClients, stateOf, type ConnectionState, type Identity } from '../broker/session.js'
import { configTopic } from '../broker/config-store.js'
import { loadIssuer } from '../pki/certificate.js'
import { CsrError } from '../pki/csr.js'
import { permissionsFor, type Policy } from './policy.js'
import { issueFor, issueFromCsr, issueWithGeneratedKey, newOwnershipToken, storedPublicKey, type Issued } from './provisioning/issuance.js'
import { commitRegistration, decideDeviceId } from './provisioning/register.js'
import { parseRequestTopic, type ProvisioningRequest } from './provisioning/requests.js'
import { loadTemplates, type Template } from './provisioning/templates.js'
import { createThrottle } from './provisioning/throttle.js'

export interface ProvisioningOptions {
  readonly policy: Policy
  readonly templates?: ReadonlyMap<string, Template>
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
    const issuer = loadIssuer(ctx.trust.deviceCaCertPem, ctx.trust.deviceCaKeyPem)
    const perCert = createThrottle(config.provisionRatePerClaimCert, ctx.now)
    const perAddress = createThrottle(config.provisionRatePerAddress, ctx.now)
    const claimTimers = new WeakMap<Client, NodeJS.Timeout>()
    const deps = { registry, broker, audit, now: ctx.now }

    /**
     * Opt-in (PROVISION_REPLY_COMPANION): also deliver to the claim connection named
     * `<client id>-replies` on the same claim certificate, for MQTT 3.1.1 tools that
     * cannot publish and receive on one connection (mosquitto_pub + mosquitto_sub).
     */
    function companionOf (rc: RequestContext): Client | null {
      if (!config.provisionReplyCompanion) return null
      const companion = liveClients(broker)[`${rc.client.id}-replies`]
      const identity = stateOf(companion)?.identity
      return companion && identity?.role === 'claim' && identity.certificateId === rc.identity.certificateId ? companion : null
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
        certificateId: rc.identity.certificateId,
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
      await registry.putCertificate({ certificateId: certificate.certificateId, deviceId: null, status: 'pending', serialNumber: certificate.serialNumber, notAfter: certificate.notAfter.getTime(), createdAt: now, updatedAt: now })
      const token = newOwnershipToken()
      const ttlMs = config.tokenTtlSeconds * 1000
      await registry.putToken(token, { certificateId: certificate.certificateId, clientId: rc.client.id, claimFingerprint: rc.identity.certificateId, expiresAt: now + ttlMs, publicKeyPem: issued.publicKeyPem }, ttlMs)
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
      const template = templates.get(rc.request.template ?? '')
      if (!template || template.manufacturerCas !== null) throw new JitpError('TemplateNotFound', `no template '${rc.request.template ?? ''}'`)
      const parameters = (payload.parameters ?? {}) as Record<string, string>
      // atomic get-and-delete: a token works once, on any broker sharing the store
      const token = await registry.takeToken(String(payload.certificateOwnershipToken))
      if (!token || token.expiresAt <= ctx.now() || !token.publicKeyPem) throw new JitpError('InvalidCertificateOwnershipToken')
      if (token.clientId !== rc.client.id || token.claimFingerprint !== rc.identity.certificateId) {
        throw new JitpError('InvalidCertificateOwnershipToken', 'token belongs to another connection')
      }
      const { deviceId, parameters: finalParameters } = await decideDeviceId(template, parameters, {
        clientId: rc.client.id, certificateId: token.certificateId, remoteAddress: rc.state.remoteAddress
      })
      const provisional = await registry.getCertificate(token.certificateId)
      // the certificate the device keeps must name it: issue the final one now that the id is known
      const final = issueFor(issuer, storedPublicKey(token.publicKeyPem), deviceId, config.certValidityDays)
      const certificates = [{ certificateId: final.certificateId, serialNumber: final.serialNumber, notAfter: final.notAfter.getTime() }]
      // firmware written for AWS keeps the certificate from the create step: it works too
      if (provisional) certificates.push({ certificateId: provisional.certificateId, serialNumber: provisional.serialNumber, notAfter: provisional.notAfter })
      await commitRegistration(deps, { deviceId, template, parameters: finalParameters, certificates })
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
        if (!perCert.take(`cert:${rc.identity.certificateId}`) || !perAddress.take(`addr:${rc.state.remoteAddress}`)) {
          throw new JitpError('Throttled')
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

    async function registerOnFirstConnect (ev: AuthenticateEvent): Promise<AuthenticateAnswer> {
      const { peer } = ev
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
          await commitRegistration(deps, { deviceId, template, parameters: finalParameters, certificates: [{ certificateId: peer.certificateId, serialNumber: peer.serialNumber, notAfter: peer.notAfter }] })
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
          identity: { role: 'device', clientId: ev.clientId, certificateId: peer.certificateId, name: deviceId, permissions: permissionsFor(options.policy, 'device'), registeredOnConnect: true }
        }
      } catch (err) {
        if (err instanceof JitpError) return fail(err.code, err.message)
        throw err
      }
    }

    return {
      name: 'provisioning',
      async authenticate (ev) {
        // reached only when identity deferred: an unregistered manufacturer certificate
        if (ev.peer.issuerRole !== 'manufacturer') return { verdict: 'defer' }
        return registerOnFirstConnect(ev)
      },
      connected (client, state) {
        if (state.identity?.role !== 'claim') return
        const timer = setTimeout(function claimSessionExpired () {
          audit.write('claim.session.expired', { clientId: client.id, role: 'claim', certificateId: state.peer.certificateId, remoteAddress: state.remoteAddress, reason: `claim sessions live at most ${config.claimSessionMaxSeconds} s` })
          client.close()
        }, config.claimSessionMaxSeconds * 1000)
        timer.unref()
        claimTimers.set(client, timer)
      },
      disconnected (client) {
        clearTimeout(claimTimers.get(client))
        claimTimers.delete(client)
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
