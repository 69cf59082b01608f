/**
 * Trust material read from CERTS_DIR, and the one function that maps a verified
 * client certificate to the role of its issuing CA. Roles are decided by the
 * issuer certificate's fingerprint and signature, never by names.
 *
 * A `Trust` is one immutable reading of the directory. `createTrustHolder` keeps
 * the current one and swaps it on `reload()` (broker/cert-reload.ts): whoever
 * holds the holder (classify on connect, the device certificate issuer) sees the
 * new material from the next call on, while connections already classified keep
 * the answer they got.
 */
import { createPrivateKey, hash, X509Certificate } from 'node:crypto'
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { createSecureContext, type TLSSocket } from 'node:tls'
import { loadIssuer, type IssuedCertificate, type Issuer } from '../pki/certificate.js'
import { JitpError } from './errors.js'
import { peerCertificateDer } from './peer-der.js'
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
  /** the FIRST CA of device-ca.pem: the one that signs new device certificates (CONTRACT §2) */
  readonly deviceCaCertPem: string
  /** device-ca.key, the private key of deviceCaCertPem (checked when read) */
  readonly deviceCaKeyPem: string
  /** the issuer of new device certificates, built from the two above on first use */
  readonly deviceIssuer: Issuer
  /** manufacturer CAs by fingerprint, for templates that name one */
  readonly manufacturerFingerprints: readonly string[]
  classify (socket: TLSSocket): PeerCertificate | null
  /**
   * A certificate the device CA just issued (provisioning's final one, a rotation's):
   * what classify would answer for it is known without parsing it, so it is put in
   * classify's cache and the device's next connect is a lookup, not an X.509 parse
   * and a signature check. Returns the answer recorded, or null when this reading
   * of CERTS_DIR did not sign it (a reload in between) or the name is one whose
   * printed form could differ from what classify would read (then classify parses
   * it as for any other certificate).
   */
  noteIssued (issued: IssuedCertificate): PeerCertificate | null
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

/**
 * A common name that X509Certificate.subject prints as it is (no escaping, no
 * multi-valued RDN, no UTF-8 question): only for these is noteIssued's answer
 * the one commonNameOf would read back. Device ids are of this form.
 */
const PLAIN_NAME = /^[A-Za-z0-9._:-]{1,64}$/

/** the one shape of classify's answer, whether parsed or noted at issuance */
function peerOf (ca: RoleCa, certificateId: string, commonName: string | null, serialNumber: string, notAfter: number): PeerCertificate {
  return Object.freeze({ issuerRole: ca.role, issuerFingerprint: ca.fingerprint, certificateId, commonName, serialNumber, notAfter })
}

/** certificates whose classification is remembered (see classify) */
const MAX_CLASSIFIED = 10_000

function readRequired (dir: string, file: string): string {
  const path = join(dir, file)
  if (!existsSync(path)) throw new JitpError('InvalidConfig', `CERTS_DIR: missing ${path}`)
  return readFileSync(path, 'utf8')
}

/** runs `parse` over one file's content; whatever it throws names the file (reload audits it) */
function parsing<T> (dir: string, file: string, parse: () => T): T {
  try {
    return parse()
  } catch (err) {
    if (err instanceof JitpError) throw err
    throw new JitpError('InvalidConfig', `CERTS_DIR: ${join(dir, file)}: ${(err as Error).message}`)
  }
}

/** the server certificate (first block of server.pem) and its key: both must parse and belong together */
function readServer (dir: string): { certPem: string, keyPem: string } {
  const certPem = readRequired(dir, TRUST_FILES.serverCert)
  const keyPem = readRequired(dir, TRUST_FILES.serverKey)
  const cert = parsing(dir, TRUST_FILES.serverCert, () => {
    const first = splitPem(certPem)[0]
    if (first === undefined) throw new Error('holds no certificate')
    return new X509Certificate(first)
  })
  const key = parsing(dir, TRUST_FILES.serverKey, () => createPrivateKey(keyPem))
  if (!cert.checkPrivateKey(key)) throw new JitpError('InvalidConfig', `CERTS_DIR: ${join(dir, TRUST_FILES.serverKey)} is not the key of ${TRUST_FILES.serverCert}`)
  return { certPem, keyPem }
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
    const cert = parsing(dir, file, () => new X509Certificate(pem))
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
  for (const pem of roots) parsing(dir, TRUST_FILES.rootCa, () => new X509Certificate(pem))
  const server = readServer(dir)
  // several device CAs may be trusted (a rollover in progress); the first one signs, with device-ca.key
  const signingCa = cas[0]!
  const deviceCaCertPem = signingCa.cert.toString()
  const deviceCaKeyPem = readRequired(dir, TRUST_FILES.deviceCaKey)
  const deviceCaKey = parsing(dir, TRUST_FILES.deviceCaKey, () => createPrivateKey(deviceCaKeyPem))
  if (!signingCa.cert.checkPrivateKey(deviceCaKey)) {
    throw new JitpError('InvalidConfig', `CERTS_DIR: ${join(dir, TRUST_FILES.deviceCaKey)} is not the key of the first CA in ${TRUST_FILES.deviceCa}`)
  }
  let deviceIssuer: Issuer | undefined
  const classified = new Map<string, PeerCertificate | null>()
  const adminCas = readCas(dir, TRUST_FILES.adminCa, 'admin' as const, false)
  for (const ca of adminCas) {
    // an admin CA that also issues an MQTT role would let a device certificate administer the fleet
    const other = seen.get(ca.fingerprint)
    if (other) throw new JitpError('InvalidConfig', `CERTS_DIR: the same CA is configured as ${other} and admin`)
  }

  return Object.freeze({
    serverCertPem: server.certPem,
    serverKeyPem: server.keyPem,
    caPems: [...roots, ...cas.map((c) => c.cert.toString())],
    deviceCaCertPem,
    deviceCaKeyPem,
    get deviceIssuer (): Issuer {
      // the broker that never provisions (bench, tls tests) never pays for the issuer's DER work
      deviceIssuer ??= loadIssuer(deviceCaCertPem, deviceCaKeyPem)
      return deviceIssuer
    },
    manufacturerFingerprints: cas.filter((c) => c.role === 'manufacturer').map((c) => c.fingerprint),
    admin: adminCas.length === 0
      ? null
      : Object.freeze({
        // the root is needed to complete an intermediate admin CA's chain; the role is still decided
        // by the issuing CA below, so a device certificate under the same root gets no further
        caPems: [...roots, ...adminCas.map((c) => c.cert.toString())],
        classify (socket: TLSSocket): AdminPeer | null {
          if (!socket.authorized) return null
          const der = peerCertificateDer(socket)
          if (der === null) return null
          // admin connections are few: parsed each time, never cached
          const leaf = new X509Certificate(der)
          const now = Date.now()
          if (Date.parse(leaf.validFrom) > now || Date.parse(leaf.validTo) < now) return null
          const ca = adminCas.find((c) => leaf.checkIssued(c.cert) && leaf.verify(c.cert.publicKey))
          const commonName = commonNameOf(leaf)
          if (!ca || !commonName) return null
          return Object.freeze({
            issuerFingerprint: ca.fingerprint,
            certificateId: hash('sha256', der),
            serialNumber: leaf.serialNumber.toLowerCase(),
            commonName
          })
        }
      }),
    classify (socket: TLSSocket): PeerCertificate | null {
      if (!socket.authorized) return null
      // the DER is all the cache lookup needs, read without building Node's certificate
      // object (broker/peer-der.ts says why)
      const der = peerCertificateDer(socket)
      if (der === null) return null
      const certificateId = hash('sha256', der)
      // the same certificate always gets the same answer (the CAs are fixed at start):
      // a device that reconnects is not verified again (a signature check per connect)
      const known = classified.get(certificateId)
      if (known !== undefined) {
        // least recently used first: a hit moves to the back
        classified.delete(certificateId)
        classified.set(certificateId, known)
        return known
      }
      // a certificate not seen before: parse it once, keep only the small frozen answer
      const leaf = new X509Certificate(der)
      let peer: PeerCertificate | null = null
      for (const ca of cas) {
        // name/key-id match first (cheap), then the signature proves it
        if (leaf.checkIssued(ca.cert) && leaf.verify(ca.cert.publicKey)) {
          peer = peerOf(ca, certificateId, commonNameOf(leaf), leaf.serialNumber.toLowerCase(), Date.parse(leaf.validTo))
          break
        }
      }
      remember(certificateId, peer)
      return peer
    },
    noteIssued (issued: IssuedCertificate): PeerCertificate | null {
      // the name is the one the certificate was issued with, never a caller's word for it
      const commonName = issued.commonName
      if (issued.issuerCertificateId !== signingCa.fingerprint || !PLAIN_NAME.test(commonName)) return null
      const peer = peerOf(signingCa, issued.certificateId, commonName, issued.serialNumber, issued.notAfter.getTime())
      remember(issued.certificateId, peer)
      return peer
    }
  })

  function remember (certificateId: string, peer: PeerCertificate | null): void {
    // bounded LRU: a fleet larger than the cache only loses the shortcut for its least recent devices
    if (classified.size >= MAX_CLASSIFIED) classified.delete(classified.keys().next().value!)
    classified.set(certificateId, peer)
  }
}

/** TLS options a listener is served with, from one Trust: the parts a reload replaces */
export interface TrustTlsMaterial { readonly key: string, readonly cert: string, readonly ca: string[] }

export function mqttTlsMaterial (trust: Trust): TrustTlsMaterial {
  return { key: trust.serverKeyPem, cert: trust.serverCertPem, ca: [...trust.caPems] }
}

/** the admin listener's: the same server certificate, only the admin CAs (null when the admin API is off) */
export function adminTlsMaterial (trust: Trust): TrustTlsMaterial | null {
  return trust.admin ? { key: trust.serverKeyPem, cert: trust.serverCertPem, ca: [...trust.admin.caPems] } : null
}

/**
 * A Trust that follows CERTS_DIR: every property reads the current reading, so it
 * can stand wherever a Trust is expected (PluginContext.trust, the listener).
 */
export interface TrustHolder extends Trust {
  current (): Trust
  /**
   * Reads CERTS_DIR again and, when all of it parses and builds a TLS context,
   * makes it current and returns it. Throws (JitpError InvalidConfig naming the
   * file) and keeps the current material otherwise.
   */
  reload (): Trust
}

export function createTrustHolder (dir: string): TrustHolder {
  let trust = loadTrust(dir)
  // stable for the admin server, which keeps the object it was given: the admin API
  // cannot appear by reload (it is off from start), and a removed admin-ca.pem admits nobody
  const admin: Trust['admin'] = trust.admin === null
    ? null
    : Object.freeze({
      get caPems () { return trust.admin?.caPems ?? [] },
      classify: (socket: TLSSocket) => trust.admin?.classify(socket) ?? null
    })
  // stable too, for a provisioning plugin that keeps its issuer: each field reads the current signer
  const deviceIssuer = Object.freeze(Object.defineProperties({}, {
    certPem: { get: () => trust.deviceIssuer.certPem, enumerable: true },
    certificate: { get: () => trust.deviceIssuer.certificate, enumerable: true },
    certificateId: { get: () => trust.deviceIssuer.certificateId, enumerable: true },
    signer: { get: () => trust.deviceIssuer.signer, enumerable: true },
    // non-enumerable, as loadIssuer's: logging the issuer cannot leak the key
    keyPem: { get: () => trust.deviceIssuer.keyPem, enumerable: false }
  }) as Issuer)

  return Object.freeze({
    get serverCertPem () { return trust.serverCertPem },
    get serverKeyPem () { return trust.serverKeyPem },
    get caPems () { return trust.caPems },
    get deviceCaCertPem () { return trust.deviceCaCertPem },
    get deviceCaKeyPem () { return trust.deviceCaKeyPem },
    deviceIssuer,
    get manufacturerFingerprints () { return trust.manufacturerFingerprints },
    admin,
    classify: (socket: TLSSocket) => trust.classify(socket),
    noteIssued: (issued: IssuedCertificate) => trust.noteIssued(issued),
    current: () => trust,
    reload (): Trust {
      const next = loadTrust(dir)
      // what parses may still not make a TLS context (a key type OpenSSL refuses): try both before swapping
      for (const material of [mqttTlsMaterial(next), adminTlsMaterial(next)]) {
        if (material === null) continue
        try {
          createSecureContext({ ...material, minVersion: 'TLSv1.2' })
        } catch (err) {
          throw new JitpError('InvalidConfig', `CERTS_DIR: ${dir}: server.pem, server.key and the CAs make no TLS context: ${(err as Error).message}`)
        }
      }
      trust = next
      return next
    }
  })
}
