/**
 * Certificates (CONTRACT §2, §8): the registered certificates with an expiry
 * filter, the revocation list, and revocation of any certificate of any role by
 * id, by issuer + serial, or a whole CA. Audited once, here, with the operator.
 */
import type { FastifyPluginAsync } from 'fastify'
import type { AuditEvent, AuditFields } from '../../audit.js'
import { normalizeTarget, type RevocationTarget } from '../../store/registry.js'
import type { AdminDeps } from '../server.js'
import { noQuery, certificateItem, errorResponses, HEX_256, pageOf, pageQuery } from '../schemas.js'

const DAY_MS = 86_400_000
const hex256 = { type: 'string', pattern: HEX_256 } as const

const revokeBody = {
  oneOf: [
    { type: 'object', additionalProperties: false, required: ['certificateId'], properties: { certificateId: { ...hex256, description: 'hex SHA-256 of the certificate DER' } } },
    {
      type: 'object',
      additionalProperties: false,
      required: ['issuer', 'serial'],
      properties: { issuer: { ...hex256, description: 'SHA-256 fingerprint of the issuing CA' }, serial: { type: 'string', pattern: '^(?:[0-9a-fA-F]{2}:?){0,40}[0-9a-fA-F]{1,2}$' } }
    },
    { type: 'object', additionalProperties: false, required: ['caFingerprint'], properties: { caFingerprint: { ...hex256, description: 'every certificate this CA issued' } } }
  ]
} as const

type RevokeBody = { certificateId: string } | { issuer: string, serial: string } | { caFingerprint: string }

const revocationItem = {
  type: 'object',
  required: ['kind', 'revokedAt'],
  properties: {
    kind: { type: 'string', enum: ['certificate', 'serial', 'ca'] },
    certificateId: { type: 'string' },
    issuerFingerprint: { type: 'string' },
    serialNumber: { type: 'string' },
    caFingerprint: { type: 'string' },
    revokedAt: { type: 'integer' }
  }
} as const

function targetOf (body: RevokeBody): RevocationTarget {
  if ('certificateId' in body) return normalizeTarget({ certificateId: body.certificateId })
  if ('caFingerprint' in body) return normalizeTarget({ caFingerprint: body.caFingerprint })
  return normalizeTarget({ issuerFingerprint: body.issuer, serialNumber: body.serial })
}

function describe (t: RevocationTarget): { event: AuditEvent, fields: AuditFields } {
  if ('certificateId' in t) return { event: 'certificate.revoked', fields: { certificateId: t.certificateId } }
  if ('caFingerprint' in t) return { event: 'ca.revoked', fields: { issuer: t.caFingerprint } }
  return { event: 'certificate.revoked', fields: { issuer: t.issuerFingerprint, serialNumber: t.serialNumber } }
}

export function certificateRoutes (deps: AdminDeps): FastifyPluginAsync {
  const { registry, audit } = deps
  return async (app) => {
    app.get<{ Querystring: { deviceId?: string, role?: string, status?: 'pending' | 'active' | 'revoked', expiringWithinDays?: number, limit: number, cursor?: string } }>('/v1/certificates', {
      schema: {
        tags: ['certificates'],
        summary: 'Registered certificates (bound to devices); with expiringWithinDays, those expiring within that many days, soonest first',
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: {
            deviceId: { type: 'string', pattern: '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$' },
            role: { type: 'string', enum: ['device', 'claim', 'service', 'manufacturer', 'admin'], description: 'only device certificates are registered; other roles list nothing (revoke them by id, issuer+serial or CA)' },
            status: { type: 'string', enum: ['pending', 'active', 'revoked'] },
            expiringWithinDays: { type: 'integer', minimum: 0, maximum: 36500 },
            ...pageQuery
          }
        },
        response: { 200: pageOf(certificateItem), ...errorResponses }
      }
    }, async (req) => {
      const { deviceId, role, status, expiringWithinDays, limit, cursor } = req.query
      if (role !== undefined && role !== 'device') return { items: [], nextCursor: null }
      const expiringBefore = expiringWithinDays === undefined ? undefined : deps.now() + expiringWithinDays * DAY_MS
      const page = await registry.listCertificatesPage({ deviceId, status, expiringBefore, limit, cursor })
      return { items: page.items.map((c) => ({ ...c, role: 'device' })), nextCursor: page.nextCursor }
    })

    app.get('/v1/revocations', {
      schema: {
        tags: ['certificates'],
        summary: 'The revocation list shared by every broker process (CRL files are not included)',
        querystring: noQuery,
        response: { 200: { type: 'object', required: ['items'], properties: { items: { type: 'array', items: revocationItem } } }, ...errorResponses }
      }
    }, async () => ({ items: (await registry.listRevocations()).sort((a, b) => a.revokedAt - b.revokedAt) }))

    app.post<{ Body: RevokeBody }>('/v1/certificates/revoke', {
      schema: {
        tags: ['certificates'],
        summary: 'Revoke a certificate of any role by id, by issuer and serial, or every certificate of a CA; live sessions close on every broker process within 1 s',
        querystring: noQuery,
        body: revokeBody,
        response: {
          200: {
            type: 'object',
            required: ['revoked', 'alreadyRevoked'],
            properties: { revoked: revocationItem, alreadyRevoked: { type: 'boolean' } }
          },
          ...errorResponses
        }
      }
    }, async (req) => {
      const target = targetOf(req.body)
      const added = await registry.revoke(target)
      const { event, fields } = describe(target)
      audit.write(event, { ...fields, actor: req.admin?.commonName, reason: added ? 'revoked' : 'already revoked; notice sent again' }, 'warn')
      const kind = 'certificateId' in target ? 'certificate' : 'caFingerprint' in target ? 'ca' : 'serial'
      return { revoked: { kind, ...target, revokedAt: deps.now() }, alreadyRevoked: !added }
    })
  }
}
