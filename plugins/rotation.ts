/**
 * Certificate rotation, asked by the device itself (CONTRACT §3.4).
 *
 * A connected `device` publishes a CSR on `$provision/certificates/rotate/json`;
 * the broker signs a certificate for the same device id (the CSR's subject is
 * ignored) with the device CA and answers on `<request>/accepted` or
 * `/rejected`, to the requesting connection only. The new certificate is active
 * at once; the one the requesting connection presented stays valid until the new
 * one is first used to connect (`ready`), or until ROTATION_GRACE_SECONDS after
 * issue (the sweep), whichever comes first, and is then revoked. The registry's
 * settleRotation decides which process revokes it, so `certificate.revoked`
 * (reason `rotated`) is written once in the whole cluster; `certificate.rotated`
 * is written by the process that issued.
 *
 * A device holds at most two active certificates: a rotation made while an
 * earlier rotated certificate is still unused revokes that unused one.
 */
import type { Client } from 'aedes'
import { Errors, JitpError, type ErrorCode } from '../broker/errors.js'
import type { Plugin, PluginHooks } from '../broker/plugin.js'
import { ROTATION_REQUESTS } from '../broker/reserved-topics.js'
import { stateOf, type ConnectionState, type Identity } from '../broker/session.js'
import { CsrError, parseCsr } from '../pki/csr.js'
import { issueFor } from './provisioning/issuance.js'
import { createRateLimit } from './provisioning/throttle.js'

export const ROTATE_TOPIC = ROTATION_REQUESTS[0]!

/** rotations per device and hour, across every broker process sharing Redis: firmware rotates a few times a year */
export const ROTATIONS_PER_HOUR = 10
const HOUR_MS = 3_600_000
/** unsettled rotations settled per sweep; the next sweep takes the rest */
const SWEEP_BATCH = 200
/** the sweep's period in production; a shorter SESSION_REVALIDATE_SECONDS shortens it (tests) */
const MAX_SWEEP_MS = 30_000

/** payload refusals (CONTRACT §5) of a device's request: the request is malformed, not forbidden */
const PAYLOAD_CODES: ReadonlySet<ErrorCode> = new Set<ErrorCode>(['SchemaViolation', 'InvalidJson', 'PayloadTooLarge', 'NoSchema', 'MalformedUtf8'])

export interface RotationOptions {
  /** how often unsettled rotations past their grace period are looked for (ms) */
  readonly sweepMs?: number
}

interface RequestContext {
  readonly client: Client
  readonly identity: Identity | null
  readonly remoteAddress: string | undefined
  readonly qos: 0 | 1
}

export const rotationPlugin: Plugin<RotationOptions | undefined> = {
  name: 'rotation',
  setup (ctx, options): PluginHooks {
    const { config, registry, audit, metrics } = ctx
    // follows a device CA rollover: the trust holder's issuer is always the first CA of device-ca.pem
    const issuer = ctx.trust.deviceIssuer
    const limit = createRateLimit({
      name: 'rotate',
      limit: ROTATIONS_PER_HOUR,
      windowMs: HOUR_MS,
      now: ctx.now,
      redisUrl: config.redisUrl,
      onError: (err) => ctx.log.debug({ err: err.message }, 'rotation throttle: Redis error, refusing (fail closed)')
    })

    function reply (rc: RequestContext, outcome: 'accepted' | 'rejected', body: unknown): void {
      if (rc.client.closed) return
      rc.client.publish({
        cmd: 'publish',
        topic: `${ROTATE_TOPIC}/${outcome}`,
        payload: Buffer.from(JSON.stringify(body)),
        qos: rc.qos,
        retain: false,
        dup: false
      }, function rotationReplySent () {})
    }

    function reject (rc: RequestContext, code: ErrorCode, message?: string): void {
      const statusCode = Errors[code].statusCode ?? 500
      metrics.rotations.inc({ outcome: 'rejected' })
      metrics.provisioningRejections.inc({ errorCode: code })
      audit.write('provision.rejected', {
        clientId: rc.client.id,
        deviceId: rc.identity?.role === 'device' ? rc.identity.name ?? undefined : undefined,
        role: rc.identity?.role,
        certificateId: rc.identity?.certificateId ?? undefined,
        remoteAddress: rc.remoteAddress,
        topic: ROTATE_TOPIC,
        statusCode,
        errorCode: code,
        reason: message ?? Errors[code].message
      }, 'warn')
      reply(rc, 'rejected', { statusCode, errorCode: code, errorMessage: message ?? Errors[code].message })
    }

    async function rotate (rc: RequestContext, identity: Identity, deviceId: string, raw: Buffer): Promise<void> {
      try {
        // a device always presents a certificate; an identity without one has nothing to rotate
        const replaces = identity.certificateId
        const peer = stateOf(rc.client)?.peer ?? null
        if (replaces === null || peer === null) throw new JitpError('RotationNotAllowed')
        // the presented certificate, as the revocation list names it (by id, by issuer and serial, by CA)
        const presented = { certificateId: peer.certificateId, issuerFingerprint: peer.issuerFingerprint, serialNumber: peer.serialNumber }
        // before the CSR is parsed and signed (the expensive part): a bad CSR counts too
        if (!await limit.take(deviceId)) throw new JitpError('Throttled', `at most ${ROTATIONS_PER_HOUR} rotations per device and hour`)
        let payload: { certificateSigningRequest?: unknown }
        try {
          payload = JSON.parse(raw.toString('utf8')) as typeof payload
        } catch {
          throw new JitpError('InvalidRequest', 'payload is not JSON')
        }
        if (typeof payload?.certificateSigningRequest !== 'string') throw new JitpError('InvalidRequest', 'certificateSigningRequest is required')
        const { spki } = parseCsr(payload.certificateSigningRequest)
        // the subject is the device id, whatever the CSR asked for
        const certificate = issueFor(issuer, spki, deviceId, config.certValidityDays)
        const now = ctx.now()
        const outcome = await registry.rotateCertificate({
          certificateId: certificate.certificateId,
          deviceId,
          status: 'active',
          serialNumber: certificate.serialNumber,
          notAfter: certificate.notAfter.getTime(),
          createdAt: now,
          updatedAt: now,
          replaces,
          graceUntil: now + config.rotationGraceSeconds * 1000
        }, presented)
        // revoked before the request got here, in any form (a notice this process missed included):
        // its session is closing or will be at the next re-validation, and nothing is issued
        if (outcome.result === 'refused') throw new JitpError('RotationNotAllowed', 'the presented certificate is no longer active')
        // revoked while the rotation was being stored: the new certificate goes with it, unsent
        if ((await registry.areRevoked([presented]))[0] === true) {
          await registry.revokeCertificate(certificate.certificateId)
          audit.write('certificate.revoked', { clientId: rc.client.id, deviceId, role: 'device', remoteAddress: rc.remoteAddress, certificateId: certificate.certificateId, reason: 'issued by a rotation whose presented certificate was revoked meanwhile' })
          throw new JitpError('RotationNotAllowed', 'the presented certificate was revoked during the rotation')
        }
        // the device reconnects with it next: a cache hit in classify, not a parse
        ctx.trust.noteIssued(certificate)
        metrics.rotations.inc({ outcome: 'issued' })
        metrics.certificatesIssued.inc({ flow: 'rotation' })
        const fields = { clientId: rc.client.id, deviceId, role: 'device', remoteAddress: rc.remoteAddress }
        audit.write('certificate.rotated', { ...fields, certificateId: certificate.certificateId, topic: ROTATE_TOPIC, reason: `replaces ${identity.certificateId}` })
        for (const id of outcome.superseded) {
          audit.write('certificate.revoked', { ...fields, certificateId: id, reason: 'superseded: rotated again before it was used' })
        }
        reply(rc, 'accepted', { certificateId: certificate.certificateId, certificatePem: certificate.pem })
      } catch (err) {
        if (err instanceof JitpError) return reject(rc, err.code, err.message)
        if (err instanceof CsrError) return reject(rc, 'InvalidCsr', err.message)
        ctx.log.error({ err }, 'rotation request failed')
        reject(rc, 'InternalError')
      }
    }

    /** revokes the certificate this one replaces and the device's other old ones, if this call is the one that settles it */
    async function settle (certificateId: string, how: 'completed' | 'expired', fields: { clientId?: string, deviceId?: string, remoteAddress?: string }): Promise<void> {
      const revoked = await registry.settleRotation(certificateId)
      if (revoked.length === 0) return
      metrics.rotations.inc({ outcome: how })
      const deviceId = fields.deviceId ?? (await registry.getCertificate(certificateId).catch(() => null))?.deviceId ?? undefined
      revoked.forEach((id, i) => {
        audit.write('certificate.revoked', { ...fields, deviceId, role: 'device', certificateId: id, reason: i === 0 ? 'rotated' : 'rotated: another certificate of the device from before the rotation' })
      })
    }

    let sweeping = false
    async function sweep (): Promise<void> {
      if (sweeping) return
      sweeping = true
      try {
        for (const id of await registry.rotationsDue(ctx.now(), SWEEP_BATCH)) await settle(id, 'expired', {})
      } catch (err) {
        ctx.log.debug({ err: (err as Error).message }, 'rotation sweep failed; the next one retries')
      } finally {
        sweeping = false
      }
    }
    const sweepMs = options?.sweepMs ?? Math.min(MAX_SWEEP_MS, config.sessionRevalidateSeconds * 1000)
    const timer = setInterval(() => { void sweep() }, sweepMs)
    timer.unref()

    return {
      name: 'rotation',
      async close () {
        clearInterval(timer)
        await limit.close()
      },
      ready (client: Client, state: ConnectionState) {
        const identity = state.identity
        // first use of a rotated certificate (identity saw `replaces` on its record): the one it replaces is revoked
        if (identity?.role !== 'device' || identity.rotationPending !== true || identity.certificateId === null) return
        settle(identity.certificateId, 'completed', { clientId: client.id, deviceId: identity.name ?? undefined, remoteAddress: state.remoteAddress })
          .catch((err: unknown) => ctx.log.warn({ err: (err as Error).message }, 'rotation: settling on first use failed; the sweep retries at the end of the grace period'))
      },
      intercept ({ client, identity, state, packet }) {
        if (client === null || packet.topic !== ROTATE_TOPIC) return false
        const raw = typeof packet.payload === 'string' ? Buffer.from(packet.payload) : packet.payload
        const rc: RequestContext = { client, identity, remoteAddress: state?.remoteAddress, qos: packet.qos === 0 ? 0 : 1 }
        // a POLICY_FILE may let other roles publish here: only a device rotates, and only its own certificate
        if (identity?.role !== 'device' || !identity.name) reject(rc, 'RotationNotAllowed')
        else void rotate(rc, identity, identity.name, raw)
        return true
      },
      rejected ({ client, identity, topic, code, errors }) {
        if (topic !== ROTATE_TOPIC) return
        const rc: RequestContext = { client, identity, remoteAddress: stateOf(client)?.remoteAddress, qos: 0 }
        if (identity?.role === 'device' && PAYLOAD_CODES.has(code)) {
          const detail = errors[0] ? `${errors[0].path || 'payload'} ${errors[0].message}` : Errors[code].message
          return reject(rc, 'InvalidRequest', detail)
        }
        // a claim or service connection (or a device the rules do not let rotate, e.g. quarantined)
        reject(rc, 'RotationNotAllowed')
      }
    }
  }
}
