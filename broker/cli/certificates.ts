/**
 * `aedes-jitp certificates revoke <certificateId> | --issuer <fingerprint> --serial <hex> | --ca-fingerprint <fingerprint>`
 * `aedes-jitp certificates list [--device ID] [--status S] [--expiring-within-days N]` and
 * `aedes-jitp certificates expiring --days N` (active device certificates expiring within N days, soonest first): the
 * certificates and revocation list of CONTRACT §2 through the admin API, for every
 * role (device, claim, service, manufacturer, admin). The broker that takes the
 * request writes the one `certificate.revoked` / `ca.revoked` line, with the operator.
 */
import { parseArgs } from 'node:util'
import { normalizeFingerprint, normalizeSerial } from '../store/registry.js'
import { ADMIN_OPTIONS, adminCall, adminTarget, allPages, iso, table } from './admin-client.js'

const USAGE = 'usage: aedes-jitp certificates revoke <certificateId> | revoke --issuer <fingerprint> --serial <hex> | revoke --ca-fingerprint <fingerprint> | list [--device ID] [--status S] [--expiring-within-days N] | expiring --days N [--json] [--admin-url URL]'
const HEX_256 = /^[0-9a-f]{64}$/
const HEX = /^[0-9a-f]+$/

type RevokeBody = { certificateId: string } | { issuer: string, serial: string } | { caFingerprint: string }

/** checked here too, so a typo gets a precise message before any request */
function bodyOf (id: string | undefined, values: { issuer?: string | undefined, serial?: string | undefined, ca?: string | undefined }): RevokeBody {
  const forms = [id !== undefined, values.issuer !== undefined || values.serial !== undefined, values.ca !== undefined].filter(Boolean).length
  if (forms !== 1) throw new Error(USAGE)
  if (id !== undefined) {
    const certificateId = normalizeFingerprint(id)
    if (!HEX_256.test(certificateId)) throw new Error('certificates: a certificate id is the hex SHA-256 of the certificate DER (64 hex digits)')
    return { certificateId }
  }
  if (values.ca !== undefined) {
    const caFingerprint = normalizeFingerprint(values.ca)
    if (!HEX_256.test(caFingerprint)) throw new Error('certificates: --ca-fingerprint takes the CA certificate\'s SHA-256 fingerprint (64 hex digits)')
    return { caFingerprint }
  }
  const issuer = normalizeFingerprint(values.issuer ?? '')
  if (!HEX_256.test(issuer)) throw new Error('certificates: --issuer takes the issuing CA\'s SHA-256 fingerprint (64 hex digits)')
  const serial = normalizeSerial(values.serial ?? '')
  if (values.serial === undefined || !HEX.test(serial)) throw new Error('certificates: --serial takes the serial number in hex')
  return { issuer, serial }
}

function describe (body: RevokeBody): string {
  if ('certificateId' in body) return `certificate ${body.certificateId}`
  if ('caFingerprint' in body) return `every certificate of CA ${body.caFingerprint}`
  return `serial ${body.serial} of CA ${body.issuer}`
}

interface Revocation { kind: string, certificateId?: string, issuerFingerprint?: string, serialNumber?: string, caFingerprint?: string, revokedAt: number }
interface Certificate { certificateId: string, deviceId: string | null, status: string, notAfter: number }

export async function certificatesCommand (args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      ...ADMIN_OPTIONS,
      issuer: { type: 'string' },
      serial: { type: 'string' },
      'ca-fingerprint': { type: 'string' },
      device: { type: 'string' },
      status: { type: 'string' },
      'expiring-within-days': { type: 'string' },
      days: { type: 'string' }
    }
  })
  const [action, id, ...extra] = positionals
  if (extra.length > 0) throw new Error(USAGE)
  switch (action) {
    case 'revoke': {
      // `--ca <fingerprint>` (as before the admin API) names the CA to revoke; `--ca <file>` is the TLS trust anchor
      const caIsFingerprint = values.ca !== undefined && HEX_256.test(normalizeFingerprint(values.ca))
      const revokeCa = values['ca-fingerprint'] ?? (caIsFingerprint ? values.ca : undefined)
      const body = bodyOf(id, { issuer: values.issuer, serial: values.serial, ca: revokeCa })
      const target = adminTarget({ ...values, ca: caIsFingerprint ? undefined : values.ca })
      const r = await adminCall<{ alreadyRevoked: boolean }>(target, 'POST', '/v1/certificates/revoke', body)
      process.stdout.write(values.json ? JSON.stringify(r) + '\n' : `${r.alreadyRevoked ? 'already revoked' : 'revoked'}: ${describe(body)}\n`)
      return 0
    }
    case 'list': {
      if (id !== undefined) throw new Error(USAGE)
      const target = adminTarget(values)
      const days = values['expiring-within-days']
      if (days !== undefined && !/^\d+$/.test(days)) throw new Error('certificates: --expiring-within-days takes a number of days')
      const [certificates, revocations] = await Promise.all([
        allPages<Certificate>(target, '/v1/certificates', { deviceId: values.device, status: values.status, expiringWithinDays: days }),
        adminCall<{ items: Revocation[] }>(target, 'GET', '/v1/revocations').then((r) => r.items)
      ])
      if (values.json) {
        process.stdout.write(JSON.stringify({ revocations, certificates }) + '\n')
        return 0
      }
      process.stdout.write(table(['CERTIFICATE', 'DEVICE', 'STATUS', 'NOT AFTER'], certificates.map((c) => [c.certificateId, c.deviceId ?? '-', c.status, iso(c.notAfter)])))
      process.stdout.write('\n' + table(['REVOKED', 'KIND', 'TARGET'], revocations.map((r) => [
        iso(r.revokedAt), r.kind,
        r.kind === 'certificate' ? r.certificateId ?? '' : r.kind === 'ca' ? r.caFingerprint ?? '' : `${r.issuerFingerprint ?? ''}:${r.serialNumber ?? ''}`
      ])))
      return 0
    }
    case 'expiring': {
      if (id !== undefined) throw new Error(USAGE)
      const days = values.days
      if (days === undefined || !/^\d+$/.test(days)) throw new Error('certificates: expiring takes --days N (a number of days)')
      const certificates = await allPages<Certificate>(adminTarget(values), '/v1/certificates', { status: 'active', expiringWithinDays: days })
      if (values.json) {
        process.stdout.write(JSON.stringify(certificates) + '\n')
        return 0
      }
      process.stdout.write(table(['CERTIFICATE', 'DEVICE', 'NOT AFTER'], certificates.map((c) => [c.certificateId, c.deviceId ?? '-', iso(c.notAfter)])))
      return 0
    }
    default:
      throw new Error(USAGE)
  }
}
