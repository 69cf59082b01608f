/**
 * X.509 v3 certificate issuance. The TBSCertificate is assembled with node-forge's
 * ASN.1 layer (forge cannot handle EC keys itself) and signed by node:crypto, which
 * is two orders of magnitude faster than forge's JS RSA. Everything that is constant
 * for one CA is computed once in `loadIssuer`, so issuing costs one SPKI parse, one
 * DER serialisation and one native signature.
 */
import { createHash, createPrivateKey, createPublicKey, randomBytes, sign, X509Certificate, type KeyObject } from 'node:crypto'
import { isIP } from 'node:net'
import forge from 'node-forge'
import {
  bitString, children, Class, fromPem, keyIdentifier, octets, OID, oid, oidOf, parseDer, schemeForKey, seq, set,
  signedEnvelope, smallInteger, spkiOf, toDerBuffer, toPem, Type, unsignedInteger, utf8, type Asn1, type SignatureScheme
} from './der.js'

export interface Issuer {
  readonly certPem: string
  /** the CA private key PEM; non-enumerable so that logging an Issuer cannot leak it */
  readonly keyPem: string
  readonly certificate: X509Certificate
  /** hex sha256 of the CA certificate DER, lowercase */
  readonly certificateId: string
  /** precomputed parts of every certificate this CA signs; internal to pki/ */
  readonly signer: IssuerSigner
}

export interface IssuerSigner {
  readonly key: KeyObject
  readonly scheme: SignatureScheme
  readonly algorithm: Asn1
  readonly name: Asn1
  readonly authorityKeyId: Asn1
  readonly notAfter: Date
}

export type ExtendedKeyUsage = 'serverAuth' | 'clientAuth'

export interface IssueOptions {
  commonName: string
  /** the subject's key, or its SubjectPublicKeyInfo DER as already validated (a CSR's, say) */
  publicKey: KeyObject | Buffer
  issuer: Issuer | 'self'
  /** the key that signs a self-signed certificate; must match publicKey */
  signingKey?: KeyObject
  validityDays: number
  /** hex; default 16 random bytes with the top bit cleared */
  serialNumber?: string
  isCa?: boolean
  pathLength?: number
  extKeyUsage?: ExtendedKeyUsage[]
  dnsNames?: string[]
  ipAddresses?: string[]
  organization?: string
  /** default: now - 5 minutes, so a device whose clock lags a little accepts it */
  notBefore?: Date
}

export interface IssuedCertificate {
  pem: string
  der: Buffer
  /** hex sha256 of the DER, lowercase */
  certificateId: string
  /** lowercase hex, no leading zero octet (the form X509Certificate.serialNumber has, lowercased) */
  serialNumber: string
  notAfter: Date
  /** hex sha256 of the signing CA's certificate DER (its certificateId); a self-signed one's own */
  issuerCertificateId: string
  /** the subject's common name, as issued */
  commonName: string
}

const CLOCK_SKEW_MS = 5 * 60 * 1000
const DAY_MS = 24 * 60 * 60 * 1000
const MAX_NAME_LENGTH = 64 // ub-common-name / ub-organization-name (RFC 5280 appendix A)

export function certificateIdOf (pemOrDer: string | Buffer): string {
  const der = typeof pemOrDer === 'string' ? fromPem(pemOrDer, ['CERTIFICATE']) : pemOrDer
  if (der === null) throw new Error('not a PEM certificate')
  return createHash('sha256').update(der).digest('hex')
}

export function loadIssuer (certPem: string, keyPem: string): Issuer {
  const certificate = new X509Certificate(certPem)
  if (!certificate.ca) throw new Error(`issuer certificate ${certificate.subject} is not a CA`)
  const key = createPrivateKey(keyPem)
  if (!certificate.checkPrivateKey(key)) throw new Error('issuer private key does not match the issuer certificate')

  const der = certificate.raw
  const root = parseDer(der)
  // the issuer Name is copied from the forge tree, so that tree must re-encode byte for byte
  if (!toDerBuffer(root).equals(der)) throw new Error('issuer certificate is not canonical DER')
  const tbs = children(children(root)?.[0])
  if (tbs === null) throw new Error('issuer certificate has no TBSCertificate')
  const first = tbs[0]
  const at = first?.tagClass === Class.CONTEXT_SPECIFIC && first.type === 0 ? 1 : 0
  const name = tbs[at + 4]
  const spki = tbs[at + 5]
  if (name === undefined || spki === undefined) throw new Error('issuer certificate is truncated')
  const keyId = subjectKeyIdOf(tbs) ?? keyIdentifier(spki)
  const scheme = schemeForKey(key)

  const signer: IssuerSigner = Object.freeze({
    key,
    scheme,
    algorithm: parseDer(scheme.algorithmId),
    name,
    authorityKeyId: authorityKeyIdExtension(keyId),
    notAfter: new Date(certificate.validTo)
  })
  const issuer = { certPem, certificate, certificateId: certificateIdOf(der), signer } as Issuer
  Object.defineProperty(issuer, 'keyPem', { value: keyPem, enumerable: false })
  return Object.freeze(issuer)
}

/** the SKI extension of a parsed TBSCertificate, so AKI matches what the CA claims */
function subjectKeyIdOf (tbs: Asn1[]): Buffer | null {
  const wrapper = tbs.find((n) => n.tagClass === Class.CONTEXT_SPECIFIC && n.type === 3)
  for (const ext of children(children(wrapper)?.[0]) ?? []) {
    const parts = children(ext)
    if (parts === null || oidOf(parts[0]) !== OID.subjectKeyIdentifier) continue
    const value = parts[parts.length - 1]?.value
    if (typeof value !== 'string') return null
    const inner = parseDer(Buffer.from(value, 'latin1'))
    return typeof inner.value === 'string' ? Buffer.from(inner.value, 'latin1') : null
  }
  return null
}

export function issueCertificate (opts: IssueOptions): IssuedCertificate {
  checkName('commonName', opts.commonName)
  if (opts.organization !== undefined) checkName('organization', opts.organization)
  if (!Number.isFinite(opts.validityDays) || opts.validityDays <= 0) throw new RangeError('validityDays must be a positive number')

  const spki = subjectPublicKeyInfo(opts.publicKey)
  const subjectKeyId = keyIdentifier(spki)
  const subject = distinguishedName(opts.commonName, opts.organization)
  const signer = opts.issuer === 'self' ? selfSigner(opts, spki, subject, subjectKeyId) : opts.issuer.signer

  const { magnitude, hex } = serialOf(opts.serialNumber)
  const now = Date.now()
  const notBefore = floorToSecond(opts.notBefore?.getTime() ?? now - CLOCK_SKEW_MS)
  // a certificate cannot usefully outlive the CA that vouches for it
  const notAfter = floorToSecond(Math.min((opts.notBefore?.getTime() ?? now) + opts.validityDays * DAY_MS, signer.notAfter.getTime()))
  if (notAfter <= notBefore) throw new RangeError('the certificate would expire before it becomes valid (issuer expired?)')

  const tbs = seq([
    forge.asn1.create(Class.CONTEXT_SPECIFIC, 0, true, [smallInteger(2)]),
    unsignedInteger(magnitude),
    signer.algorithm,
    signer.name,
    seq([x509Time(notBefore), x509Time(notAfter)]),
    subject,
    spki,
    forge.asn1.create(Class.CONTEXT_SPECIFIC, 3, true, [seq(extensions(opts, isRsa(spki), subjectKeyId, signer))])
  ])
  const tbsDer = toDerBuffer(tbs)
  // ECDSA signatures come out DER-encoded (dsaEncoding 'der'), the form X.509 carries
  const signature = sign(signer.scheme.hash, tbsDer, signer.key)
  const der = signedEnvelope(tbsDer, signer.scheme.algorithmId, signature)
  const certificateId = createHash('sha256').update(der).digest('hex')
  return {
    pem: toPem('CERTIFICATE', der),
    der,
    certificateId,
    serialNumber: hex,
    notAfter: new Date(notAfter),
    issuerCertificateId: opts.issuer === 'self' ? certificateId : opts.issuer.certificateId,
    commonName: opts.commonName
  }
}

/**
 * Given bytes are embedded as they are: decoding them with OpenSSL 3 would cost
 * more than signing the certificate, and the caller has already vetted them.
 */
function subjectPublicKeyInfo (key: KeyObject | Buffer): Asn1 {
  if (Buffer.isBuffer(key)) return parseDer(key)
  return spkiOf(key.type === 'public' ? key : createPublicKey(key))
}

function isRsa (spki: Asn1): boolean {
  return oidOf(children(children(spki)?.[0])?.[0]) === OID.rsaEncryption
}

function selfSigner (opts: IssueOptions, spki: Asn1, subject: Asn1, keyId: Buffer): IssuerSigner {
  const key = opts.signingKey
  if (key === undefined) throw new TypeError("issuer 'self' needs signingKey")
  if (!createPublicKey(key).export({ type: 'spki', format: 'der' }).equals(toDerBuffer(spki))) {
    throw new Error('signingKey does not match publicKey')
  }
  const scheme = schemeForKey(key)
  return {
    key,
    scheme,
    algorithm: parseDer(scheme.algorithmId),
    name: subject,
    authorityKeyId: authorityKeyIdExtension(keyId),
    notAfter: new Date(8.64e15) // no issuer to be bounded by
  }
}

function checkName (field: string, value: string): void {
  if (typeof value !== 'string' || value.length === 0 || [...value].length > MAX_NAME_LENGTH) {
    throw new RangeError(`${field} must be 1 to ${MAX_NAME_LENGTH} characters`)
  }
}

function distinguishedName (commonName: string, organization: string | undefined): Asn1 {
  const rdns: Asn1[] = []
  if (organization !== undefined) rdns.push(set([seq([oid(OID.organization), utf8(organization)])]))
  rdns.push(set([seq([oid(OID.commonName), utf8(commonName)])]))
  return seq(rdns)
}

function serialOf (requested: string | undefined): { magnitude: Buffer, hex: string } {
  let magnitude: Buffer
  if (requested === undefined) {
    magnitude = randomSerialBytes()
    // positive, and a non-zero first octet keeps the INTEGER minimally encoded at 16 octets
    magnitude[0] = (magnitude[0]! & 0x7f) || 0x01
  } else {
    if (!/^[0-9a-fA-F]{1,40}$/.test(requested)) throw new RangeError('serialNumber must be 1 to 40 hex digits')
    const digits = requested.replace(/^0+/, '')
    if (digits.length === 0) throw new RangeError('serialNumber must be positive')
    magnitude = Buffer.from(digits.length % 2 === 1 ? `0${digits}` : digits, 'hex')
  }
  return { magnitude, hex: magnitude.toString('hex') }
}

// one randomBytes call per 256 serials: a synchronous call costs ~10 µs, a slice nothing
let randomPool = Buffer.alloc(0)
let randomAt = 0
function randomSerialBytes (): Buffer {
  if (randomAt + 16 > randomPool.length) {
    randomPool = randomBytes(4096)
    randomAt = 0
  }
  randomAt += 16
  return Buffer.from(randomPool.subarray(randomAt - 16, randomAt))
}

function floorToSecond (ms: number): number {
  return Math.floor(ms / 1000) * 1000
}

/** RFC 5280 §4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050 */
function x509Time (ms: number): Asn1 {
  const iso = new Date(ms).toISOString() // YYYY-MM-DDTHH:MM:SS.sssZ
  const digits = iso.slice(0, 19).replace(/[-T:]/g, '') + 'Z'
  const year = Number(iso.slice(0, 4))
  return year >= 1950 && year < 2050
    ? forge.asn1.create(Class.UNIVERSAL, Type.UTCTIME, false, digits.slice(2))
    : forge.asn1.create(Class.UNIVERSAL, Type.GENERALIZEDTIME, false, digits)
}

function extension (id: string, critical: boolean, value: Asn1): Asn1 {
  const items = [oid(id)]
  if (critical) items.push(forge.asn1.create(Class.UNIVERSAL, Type.BOOLEAN, false, '\xff'))
  items.push(octets(toDerBuffer(value)))
  return seq(items)
}

function authorityKeyIdExtension (keyId: Buffer): Asn1 {
  return extension(OID.authorityKeyIdentifier, false,
    seq([forge.asn1.create(Class.CONTEXT_SPECIFIC, 0, false, keyId.toString('latin1'))]))
}

// KeyUsage is a named BIT STRING: bit 0 is the MSB of the first octet; DER drops trailing zero bits
const KEY_USAGE = Object.freeze({
  ca: extension(OID.keyUsage, true, bitString(Buffer.of(0x06), 1)), // keyCertSign(5), cRLSign(6)
  ec: extension(OID.keyUsage, true, bitString(Buffer.of(0x80), 7)), // digitalSignature(0)
  rsa: extension(OID.keyUsage, true, bitString(Buffer.of(0xa0), 5)) // + keyEncipherment(2)
})
const NOT_CA = extension(OID.basicConstraints, true, seq([]))

function extensions (opts: IssueOptions, rsaKey: boolean, subjectKeyId: Buffer, signer: IssuerSigner): Asn1[] {
  const exts: Asn1[] = []
  if (opts.isCa === true) {
    const constraints = [forge.asn1.create(Class.UNIVERSAL, Type.BOOLEAN, false, '\xff')]
    if (opts.pathLength !== undefined) {
      if (!Number.isInteger(opts.pathLength) || opts.pathLength < 0) throw new RangeError('pathLength must be a non-negative integer')
      constraints.push(smallInteger(opts.pathLength))
    }
    exts.push(extension(OID.basicConstraints, true, seq(constraints)), KEY_USAGE.ca)
  } else {
    exts.push(NOT_CA, rsaKey ? KEY_USAGE.rsa : KEY_USAGE.ec)
  }
  if (opts.extKeyUsage !== undefined && opts.extKeyUsage.length > 0) {
    exts.push(extension(OID.extKeyUsage, false, seq(opts.extKeyUsage.map((u) => oid(OID[u])))))
  }
  const altNames = [
    ...(opts.dnsNames ?? []).map(dnsName),
    ...(opts.ipAddresses ?? []).map((ip) => forge.asn1.create(Class.CONTEXT_SPECIFIC, 7, false, ipBytes(ip).toString('latin1')))
  ]
  if (altNames.length > 0) exts.push(extension(OID.subjectAltName, false, seq(altNames)))
  exts.push(extension(OID.subjectKeyIdentifier, false, octets(subjectKeyId)), signer.authorityKeyId)
  return exts
}

function dnsName (name: string): Asn1 {
  // dNSName is an IA5String: a name that is not ASCII must arrive already punycoded
  if (!/^[\x21-\x7e]{1,253}$/.test(name)) throw new RangeError(`invalid DNS name: ${JSON.stringify(name)}`)
  return forge.asn1.create(Class.CONTEXT_SPECIFIC, 2, false, name)
}

function ipBytes (ip: string): Buffer {
  const version = isIP(ip)
  if (version === 4) return Buffer.from(ip.split('.').map(Number))
  if (version !== 6) throw new RangeError(`invalid IP address: ${JSON.stringify(ip)}`)
  let text = ip.replace(/%.*$/, '') // zone ids do not belong in a certificate
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text)
  if (v4 !== null) {
    const [a, b, c, d] = v4[1]!.split('.').map(Number) as [number, number, number, number]
    text = text.slice(0, v4.index) + ((a << 8) | b).toString(16) + ':' + ((c << 8) | d).toString(16)
  }
  const [head = '', tail] = text.split('::')
  const left = head === '' ? [] : head.split(':')
  const right = tail === undefined || tail === '' ? [] : tail.split(':')
  const groups = tail === undefined ? left : [...left, ...Array<string>(8 - left.length - right.length).fill('0'), ...right]
  const out = Buffer.alloc(16)
  groups.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), i * 2))
  return out
}
