/**
 * `aedes-jitp certificates revoke <certificateId> | --issuer <fingerprint> --serial <hex> | --ca <fingerprint>`
 * and `aedes-jitp certificates list [--json]`: the revocation list of CONTRACT §2,
 * for every role (device, claim, service, manufacturer, admin). Works on the same
 * store as the brokers, so it needs REDIS_URL (until the admin API carries it).
 * The `certificate.revoked` / `ca.revoked` line is written here, once, with the
 * actor; the brokers only audit the sessions they close.
 */
import { parseArgs } from 'node:util'
import { createAudit, type AuditEvent, type AuditFields } from '../audit.js'
import { loadConfig, type Config } from '../config.js'
import { createRegistry } from '../store/create-registry.js'
import { normalizeFingerprint, normalizeSerial, type Registry, type RevocationTarget } from '../store/registry.js'

const USAGE = 'usage: aedes-jitp certificates revoke <certificateId> | revoke --issuer <fingerprint> --serial <hex> | revoke --ca <fingerprint> | list [--json]'
const HEX_256 = /^[0-9a-f]{64}$/
const HEX = /^[0-9a-f]+$/

/** who did it: the operator's login, or 'cli' */
export function cliActor (): string {
  return process.env.USER ?? process.env.LOGNAME ?? 'cli'
}

/** The registry the brokers share; refuses clearly without REDIS_URL. */
export async function withSharedRegistry<T> (command: string, config: Config, run: (registry: Registry) => Promise<T>): Promise<T> {
  if (!config.redisUrl) {
    throw new Error(`${command}: needs REDIS_URL (the registry shared by the brokers); the in-memory store of a running broker cannot be reached from another process`)
  }
  const registry = createRegistry({ redisUrl: config.redisUrl })
  try {
    if (!(await registry.ping())) throw new Error(`${command}: cannot reach Redis at ${config.redisUrl}`)
    return await run(registry)
  } finally {
    await registry.close()
  }
}

/** the one audit line of an operator action, flushed before the command returns */
export async function auditAction (config: Config, event: AuditEvent, fields: AuditFields): Promise<void> {
  const audit = createAudit(config.auditLog)
  audit.write(event, { ...fields, actor: cliActor() }, 'warn')
  await audit.close()
}

function targetOf (id: string | undefined, values: { issuer?: string, serial?: string, ca?: string }): RevocationTarget {
  const forms = [id !== undefined, values.issuer !== undefined || values.serial !== undefined, values.ca !== undefined].filter(Boolean).length
  if (forms !== 1) throw new Error(USAGE)
  if (id !== undefined) {
    const certificateId = normalizeFingerprint(id)
    if (!HEX_256.test(certificateId)) throw new Error('certificates: a certificate id is the hex SHA-256 of the certificate DER (64 hex digits)')
    return { certificateId }
  }
  if (values.ca !== undefined) {
    const caFingerprint = normalizeFingerprint(values.ca)
    if (!HEX_256.test(caFingerprint)) throw new Error('certificates: --ca takes the CA certificate\'s SHA-256 fingerprint (64 hex digits)')
    return { caFingerprint }
  }
  const issuerFingerprint = normalizeFingerprint(values.issuer ?? '')
  if (!HEX_256.test(issuerFingerprint)) throw new Error('certificates: --issuer takes the issuing CA\'s SHA-256 fingerprint (64 hex digits)')
  const serialNumber = normalizeSerial(values.serial ?? '')
  if (values.serial === undefined || !HEX.test(serialNumber)) throw new Error('certificates: --serial takes the serial number in hex')
  return { issuerFingerprint, serialNumber }
}

function describe (target: RevocationTarget): { event: AuditEvent, fields: AuditFields, text: string } {
  if ('certificateId' in target) return { event: 'certificate.revoked', fields: { certificateId: target.certificateId }, text: `certificate ${target.certificateId}` }
  if ('caFingerprint' in target) return { event: 'ca.revoked', fields: { issuer: target.caFingerprint }, text: `every certificate of CA ${target.caFingerprint}` }
  return {
    event: 'certificate.revoked',
    fields: { issuer: target.issuerFingerprint, serialNumber: target.serialNumber },
    text: `serial ${target.serialNumber} of CA ${target.issuerFingerprint}`
  }
}

export async function certificatesCommand (args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      config: { type: 'string' },
      json: { type: 'boolean', default: false },
      issuer: { type: 'string' },
      serial: { type: 'string' },
      ca: { type: 'string' }
    }
  })
  const [action, id, ...extra] = positionals
  if (extra.length > 0) throw new Error(USAGE)
  const config = loadConfig({ file: values.config })
  switch (action) {
    case 'revoke': {
      const target = targetOf(id, values)
      const { event, fields, text } = describe(target)
      const added = await withSharedRegistry('certificates', config, (registry) => registry.revoke(target))
      await auditAction(config, event, { ...fields, reason: added ? 'revoked' : 'already revoked; notice sent again' })
      process.stdout.write(`${added ? 'revoked' : 'already revoked'}: ${text}\n`)
      return 0
    }
    case 'list': {
      const { revocations, certificates } = await withSharedRegistry('certificates', config, async (registry) => {
        const devices = await registry.listDevices()
        const certificates = (await Promise.all(devices.map((d) => registry.certificatesOfDevice(d.deviceId)))).flat()
        return { revocations: await registry.listRevocations(), certificates }
      })
      if (values.json) {
        process.stdout.write(JSON.stringify({ revocations, certificates }) + '\n')
        return 0
      }
      process.stdout.write('# revocation list (kind, target, revoked at)\n')
      for (const r of revocations.sort((a, b) => a.revokedAt - b.revokedAt)) {
        const what = r.kind === 'certificate' ? r.certificateId : r.kind === 'ca' ? r.caFingerprint : `${r.issuerFingerprint}:${r.serialNumber}`
        process.stdout.write(`${r.kind}\t${what}\t${new Date(r.revokedAt).toISOString()}\n`)
      }
      process.stdout.write('# device certificates (certificate id, device, status, not after)\n')
      for (const c of certificates.sort((a, b) => (a.deviceId ?? '').localeCompare(b.deviceId ?? ''))) {
        process.stdout.write(`${c.certificateId}\t${c.deviceId ?? '-'}\t${c.status}\t${new Date(c.notAfter).toISOString()}\n`)
      }
      return 0
    }
    default:
      throw new Error(USAGE)
  }
}
