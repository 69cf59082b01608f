/**
 * Trust material read from CERTS_DIR, and the one function that maps a verified
 * client certificate to the role of its issuing CA. Roles are decided by the
 * issuer certificate's fingerprint and signature, never by names.
 */
import { createHash, X509Certificate } from 'node:crypto'
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import type { TLSSocket } from 'node:tls'
import { JitpError } from './errors.js'
import type { IssuerRole, PeerCertificate } from './session.js'

export const TRUST_FILES = Object.freeze({
  serverCert: 'server.pem',
  serverKey: 'server.key',
  rootCa: 'root-ca.pem',
  deviceCa: 'device-ca.pem',
  deviceCaKey: 'device-ca.key',
  claimCa: 'claim-ca.pem',
  serviceCa: 'service-ca.pem',
  manufacturerCa: 'manufacturer-ca.pem',
  adminCa: 'admin-ca.pem'
})

interface RoleCa<R extends string = IssuerRole> { readonly role: R, readonly cert: X509Certificate, readonly fingerprint: string }

/** who an admin API client is: the admin CA vouched for it; CN = operator name */
export interface AdminPeer {
  readonly issuerFingerprint: string
  readonly certificateId: string
  readonly serialNumber: string
  readonly commonName: string
}

export interface Trust {
  readonly serverCertPem: string
  readonly serverKeyPem: string
  /** every CA a client certificate may chain to, for the TLS server */
  readonly caPems: readonly string[]
  readonly deviceCaCertPem: string
  readonly deviceCaKeyPem: string
  /** manufacturer CAs by fingerprint, for templates that name one */
  readonly manufacturerFingerprints: readonly string[]
  classify (socket: TLSSocket): PeerCertificate | null
  /**
   * The admin listener's trust (CONTRACT §2 `admin`): only the admin CAs, never
   * accepted on MQTT, and no MQTT role's CA here. Null when CERTS_DIR has no
   * `admin-ca.pem` (the admin API is then off).
   */
  readonly admin: { readonly caPems: readonly string[], classify (socket: TLSSocket): AdminPeer | null } | null
}

export function splitPem (bundle: string): string[] {
  return bundle.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? []
}

/** colon-free lowercase hex, the certificateId form of the contract */
export function fingerprintHex (cert: X509Certificate): string {
  return cert.fingerprint256.replaceAll(':', '').toLowerCase()
}

export function commonNameOf (cert: X509Certificate): string | null {
  for (const line of cert.subject.split('\n')) {
    if (line.startsWith('CN=')) return line.slice(3)
  }
  return null
}

/** certificates whose classification is remembered (see classify) */
const MAX_CLASSIFIED = 10_000

function readRequired (dir: string, file: string): string {
  const path = join(dir, file)
  if (!existsSync(path)) throw new JitpError('InvalidConfig', `CERTS_DIR: missing ${path}`)
  return readFileSync(path, 'utf8')
}

function readCas<R extends string> (dir: string, file: string, role: R, required: boolean): Array<RoleCa<R>> {
  const path = join(dir, file)
  if (!existsSync(path)) {
    if (required) throw new JitpError('InvalidConfig', `CERTS_DIR: missing ${path}`)
    return []
  }
  const pems = splitPem(readFileSync(path, 'utf8'))
  if (pems.length === 0) throw new JitpError('InvalidConfig', `CERTS_DIR: ${path} holds no certificate`)
  return pems.map((pem) => {
    const cert = new X509Certificate(pem)
    if (!cert.ca) throw new JitpError('InvalidConfig', `CERTS_DIR: ${path} holds a certificate that is not a CA`)
    return { role, cert, fingerprint: fingerprintHex(cert) }
  })
}

export function loadTrust (dir: string): Trust {
  const cas: RoleCa[] = [
    ...readCas(dir, TRUST_FILES.deviceCa, 'device', true),
    ...readCas(dir, TRUST_FILES.claimCa, 'claim', true),
    ...readCas(dir, TRUST_FILES.serviceCa, 'service', true),
    ...readCas(dir, TRUST_FILES.manufacturerCa, 'manufacturer', false)
  ]
  const seen = new Map<string, IssuerRole>()
  for (const ca of cas) {
    const other = seen.get(ca.fingerprint)
    // one CA in two roles would let a certificate pick its own role
    if (other && other !== ca.role) throw new JitpError('InvalidConfig', `CERTS_DIR: the same CA is configured as ${other} and ${ca.role}`)
    seen.set(ca.fingerprint, ca.role)
  }
  const rootPath = join(dir, TRUST_FILES.rootCa)
  const roots = existsSync(rootPath) ? splitPem(readFileSync(rootPath, 'utf8')) : []
  const deviceCaCertPem = splitPem(readRequired(dir, TRUST_FILES.deviceCa))[0] ?? ''
  const classified = new Map<string, PeerCertificate | null>()
  const adminCas = readCas(dir, TRUST_FILES.adminCa, 'admin' as const, false)
  for (const ca of adminCas) {
    // an admin CA that also issues an MQTT role would let a device certificate administer the fleet
    const other = seen.get(ca.fingerprint)
    if (other) throw new JitpError('InvalidConfig', `CERTS_DIR: the same CA is configured as ${other} and admin`)
  }

  return Object.freeze({
    serverCertPem: readRequired(dir, TRUST_FILES.serverCert),
    serverKeyPem: readRequired(dir, TRUST_FILES.serverKey),
    caPems: [...roots, ...cas.map((c) => c.cert.toString())],
    deviceCaCertPem,
    deviceCaKeyPem: readRequired(dir, TRUST_FILES.deviceCaKey),
    manufacturerFingerprints: cas.filter((c) => c.role === 'manufacturer').map((c) => c.fingerprint),
    admin: adminCas.length === 0
      ? null
      : Object.freeze({
        // the root is needed to complete an intermediate admin CA's chain; the role is still decided
        // by the issuing CA below, so a device certificate under the same root gets no further
        caPems: [...roots, ...adminCas.map((c) => c.cert.toString())],
        classify (socket: TLSSocket): AdminPeer | null {
          if (!socket.authorized) return null
          const der = socket.getPeerCertificate(false).raw as Buffer | undefined
          if (!der || der.length === 0) return null
          // admin connections are few: parsed each time, never cached
          const leaf = new X509Certificate(der)
          const now = Date.now()
          if (Date.parse(leaf.validFrom) > now || Date.parse(leaf.validTo) < now) return null
          const ca = adminCas.find((c) => leaf.checkIssued(c.cert) && leaf.verify(c.cert.publicKey))
          const commonName = commonNameOf(leaf)
          if (!ca || !commonName) return null
          return Object.freeze({
            issuerFingerprint: ca.fingerprint,
            certificateId: createHash('sha256').update(der).digest('hex'),
            serialNumber: leaf.serialNumber.toLowerCase(),
            commonName
          })
        }
      }),
    classify (socket: TLSSocket): PeerCertificate | null {
      if (!socket.authorized) return null
      // the legacy object, not getPeerX509Certificate(): one X509Certificate per connect grew a
      // plain Node 20 TLS server's RSS by ~5 KB per connection without a plateau (see
      // docs/SECURITY.md); the DER is all the cache lookup needs
      const der = socket.getPeerCertificate(false).raw as Buffer | undefined
      if (!der || der.length === 0) return null
      // hashing the DER ourselves is several times cheaper than X509Certificate.fingerprint256
      const certificateId = createHash('sha256').update(der).digest('hex')
      // the same certificate always gets the same answer (the CAs are fixed at start):
      // a device that reconnects is not verified again (a signature check per connect)
      const known = classified.get(certificateId)
      if (known !== undefined) return known
      // a certificate not seen before: parse it once, keep only the small frozen answer
      const leaf = new X509Certificate(der)
      let peer: PeerCertificate | null = null
      for (const ca of cas) {
        // name/key-id match first (cheap), then the signature proves it
        if (leaf.checkIssued(ca.cert) && leaf.verify(ca.cert.publicKey)) {
          peer = Object.freeze({
            issuerRole: ca.role,
            issuerFingerprint: ca.fingerprint,
            certificateId,
            commonName: commonNameOf(leaf),
            serialNumber: leaf.serialNumber.toLowerCase(),
            notAfter: Date.parse(leaf.validTo),
            pem: leaf.toString()
          })
          break
        }
      }
      // bounded: a fleet larger than the cache only loses the shortcut
      if (classified.size >= MAX_CLASSIFIED) classified.clear()
      classified.set(certificateId, peer)
      return peer
    }
  })
}
