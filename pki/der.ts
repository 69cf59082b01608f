/**
 * The small ASN.1/DER toolkit shared by certificate.ts, csr.ts and keys.ts.
 * Structures are built with node-forge's generic ASN.1 (it has no EC support,
 * but its ASN.1 layer is algorithm-agnostic); signatures are made and checked
 * natively by node:crypto.
 */
import { createHash, type KeyObject } from 'node:crypto'
import forge from 'node-forge'

export type Asn1 = forge.asn1.Asn1
export type Asn1Type = forge.asn1.Type
export const { Class, Type } = forge.asn1

interface FromDerOptions { strict?: boolean, parseAllBytes?: boolean, decodeBitStrings?: boolean }
// @types/node-forge only declares the boolean form of the options
const forgeFromDer = forge.asn1.fromDer as unknown as (bytes: string, opts: FromDerOptions) => Asn1

export const OID = Object.freeze({
  commonName: '2.5.4.3',
  organization: '2.5.4.10',
  subjectKeyIdentifier: '2.5.29.14',
  keyUsage: '2.5.29.15',
  subjectAltName: '2.5.29.17',
  basicConstraints: '2.5.29.19',
  authorityKeyIdentifier: '2.5.29.35',
  extKeyUsage: '2.5.29.37',
  serverAuth: '1.3.6.1.5.5.7.3.1',
  clientAuth: '1.3.6.1.5.5.7.3.2',
  ecdsaWithSha256: '1.2.840.10045.4.3.2',
  ecdsaWithSha384: '1.2.840.10045.4.3.3',
  sha256WithRsa: '1.2.840.113549.1.1.11',
  sha384WithRsa: '1.2.840.113549.1.1.12',
  sha512WithRsa: '1.2.840.113549.1.1.13',
  ed25519: '1.3.101.112',
  rsaEncryption: '1.2.840.113549.1.1.1'
})

/** DER bytes → forge tree; BIT STRING contents are kept opaque (no guessing at nested ASN.1) */
export function parseDer (der: Buffer): Asn1 {
  return forgeFromDer(der.toString('latin1'), { strict: true, parseAllBytes: true, decodeBitStrings: false })
}

export function toDerBuffer (node: Asn1): Buffer {
  return Buffer.from(forge.asn1.toDer(node).getBytes(), 'latin1')
}

export function seq (items: Asn1[]): Asn1 {
  return forge.asn1.create(Class.UNIVERSAL, Type.SEQUENCE, true, items)
}

export function set (items: Asn1[]): Asn1 {
  return forge.asn1.create(Class.UNIVERSAL, Type.SET, true, items)
}

export function oid (dotted: string): Asn1 {
  return forge.asn1.create(Class.UNIVERSAL, Type.OID, false, forge.asn1.oidToDer(dotted).getBytes())
}

export function octets (bytes: Buffer): Asn1 {
  return forge.asn1.create(Class.UNIVERSAL, Type.OCTETSTRING, false, bytes.toString('latin1'))
}

export function utf8 (text: string): Asn1 {
  return forge.asn1.create(Class.UNIVERSAL, Type.UTF8, false, Buffer.from(text, 'utf8').toString('latin1'))
}

/** an unsigned big-endian magnitude as a DER INTEGER: a set top bit needs a 0x00 to stay positive */
export function unsignedInteger (magnitude: Buffer): Asn1 {
  const bytes = magnitude.length > 0 && (magnitude[0]! & 0x80) !== 0 ? Buffer.concat([Buffer.of(0), magnitude]) : magnitude
  return forge.asn1.create(Class.UNIVERSAL, Type.INTEGER, false, bytes.toString('latin1'))
}

export function smallInteger (n: number): Asn1 {
  return forge.asn1.create(Class.UNIVERSAL, Type.INTEGER, false, forge.asn1.integerToDer(n).getBytes())
}

function nullValue (): Asn1 {
  return forge.asn1.create(Class.UNIVERSAL, Type.NULL, false, '')
}

export function bitString (bytes: Buffer, unusedBits = 0): Asn1 {
  return forge.asn1.create(Class.UNIVERSAL, Type.BITSTRING, false, String.fromCharCode(unusedBits) + bytes.toString('latin1'))
}

export function asString (node: Asn1 | undefined): string | null {
  return node !== undefined && typeof node.value === 'string' ? node.value : null
}

export function children (node: Asn1 | undefined): Asn1[] | null {
  return node !== undefined && Array.isArray(node.value) ? node.value : null
}

export function oidOf (node: Asn1 | undefined): string | null {
  if (node?.tagClass !== Class.UNIVERSAL || node.type !== Type.OID) return null
  const v = asString(node)
  return v === null ? null : forge.asn1.derToOid(v)
}

/** DER length octets */
function derLength (n: number): Buffer {
  if (n < 0x80) return Buffer.of(n)
  const bytes: number[] = []
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff)
  return Buffer.from([0x80 | bytes.length, ...bytes])
}

/**
 * SEQUENCE { tbs, algorithm, BIT STRING signature } assembled from ready DER, so the
 * signed bytes are embedded verbatim instead of being re-encoded by a second pass.
 */
export function signedEnvelope (tbs: Buffer, algorithmId: Buffer, signature: Buffer): Buffer {
  const bits = Buffer.concat([Buffer.of(0x03), derLength(signature.length + 1), Buffer.of(0), signature])
  return Buffer.concat([Buffer.of(0x30), derLength(tbs.length + algorithmId.length + bits.length), tbs, algorithmId, bits])
}

/**
 * The raw bytes of the first element inside a top-level constructed TLV: the signed
 * part of a CSR has to be verified exactly as it arrived, not as forge re-encodes it.
 */
export function firstChildRaw (der: Buffer): Buffer | null {
  const outer = readHeader(der, 0)
  if (outer === null || (der[0]! & 0x20) === 0) return null
  const inner = readHeader(der, outer.headerLength)
  if (inner === null) return null
  const end = outer.headerLength + inner.headerLength + inner.length
  return end <= der.length ? der.subarray(outer.headerLength, end) : null
}

function readHeader (der: Buffer, at: number): { headerLength: number, length: number } | null {
  const first = der[at + 1]
  if (der[at] === undefined || first === undefined) return null
  if (first < 0x80) return { headerLength: 2, length: first }
  const count = first & 0x7f
  if (count === 0 || count > 4) return null // indefinite or absurd lengths are not DER
  let length = 0
  for (let i = 0; i < count; i++) {
    const b = der[at + 2 + i]
    if (b === undefined) return null
    length = length * 256 + b
  }
  return { headerLength: 2 + count, length }
}

export interface SignatureScheme {
  /** digest for crypto.sign/verify; null for Ed25519 (the algorithm hashes itself) */
  readonly hash: 'sha256' | 'sha384' | 'sha512' | null
  readonly algorithmOid: string
  /** AlgorithmIdentifier DER; RSA carries an explicit NULL, ECDSA/EdDSA carry no parameters */
  readonly algorithmId: Buffer
}

function scheme (hash: SignatureScheme['hash'], algorithmOid: string, withNull: boolean): SignatureScheme {
  const items = [oid(algorithmOid)]
  if (withNull) items.push(nullValue())
  return Object.freeze({ hash, algorithmOid, algorithmId: toDerBuffer(seq(items)) })
}

export const SCHEMES: Readonly<Record<string, SignatureScheme>> = Object.freeze({
  [OID.ecdsaWithSha256]: scheme('sha256', OID.ecdsaWithSha256, false),
  [OID.ecdsaWithSha384]: scheme('sha384', OID.ecdsaWithSha384, false),
  [OID.sha256WithRsa]: scheme('sha256', OID.sha256WithRsa, true),
  [OID.sha384WithRsa]: scheme('sha384', OID.sha384WithRsa, true),
  [OID.sha512WithRsa]: scheme('sha512', OID.sha512WithRsa, true),
  [OID.ed25519]: scheme(null, OID.ed25519, false)
})

/** the scheme a private key signs certificates and CSRs with */
export function schemeForKey (key: KeyObject): SignatureScheme {
  const type = key.asymmetricKeyType
  let chosen: SignatureScheme | undefined
  if (type === 'ec') {
    chosen = SCHEMES[key.asymmetricKeyDetails?.namedCurve === 'secp384r1' ? OID.ecdsaWithSha384 : OID.ecdsaWithSha256]
  } else if (type === 'rsa') {
    chosen = SCHEMES[OID.sha256WithRsa]
  } else if (type === 'ed25519') {
    chosen = SCHEMES[OID.ed25519]
  }
  if (chosen === undefined) throw new Error(`unsupported signing key type: ${type ?? 'unknown'}`)
  return chosen
}

// AlgorithmIdentifiers of public keys; forge nodes are immutable once built, so they are shared
const EC_CURVES: Readonly<Record<string, { algorithm: Asn1, size: number }>> = Object.freeze({
  'P-256': { algorithm: seq([oid('1.2.840.10045.2.1'), oid('1.2.840.10045.3.1.7')]), size: 32 },
  'P-384': { algorithm: seq([oid('1.2.840.10045.2.1'), oid('1.3.132.0.34')]), size: 48 }
})
const RSA_ENCRYPTION = seq([oid(OID.rsaEncryption), nullValue()])

/**
 * SubjectPublicKeyInfo of a key, as a forge tree ready to embed. OpenSSL 3's DER
 * encoder costs ~0.3 ms per call, more than signing a certificate, so EC and RSA
 * keys are rebuilt from their JWK / PKCS#1 export (~5 µs) into the exact structure
 * `export({ type: 'spki' })` would produce (named curve, uncompressed point).
 */
export function spkiOf (key: KeyObject): Asn1 {
  if (key.asymmetricKeyType === 'ec') {
    const jwk = key.export({ format: 'jwk' })
    const curve = EC_CURVES[jwk.crv ?? '']
    const x = Buffer.from(jwk.x ?? '', 'base64url')
    const y = Buffer.from(jwk.y ?? '', 'base64url')
    if (curve !== undefined && x.length === curve.size && y.length === curve.size) {
      return seq([curve.algorithm, bitString(Buffer.concat([Buffer.of(4), x, y]))])
    }
  } else if (key.asymmetricKeyType === 'rsa') {
    const pkcs1 = key.export({ type: 'pkcs1', format: 'der' })
    return seq([RSA_ENCRYPTION, bitString(pkcs1)])
  }
  return parseDer(key.export({ type: 'spki', format: 'der' }))
}

/**
 * RFC 5280 §4.2.1.2 method 1: SHA-1 of the subjectPublicKey BIT STRING value.
 * Computed from the same bytes OpenSSL uses, so its AKI/SKI matching agrees.
 */
export function keyIdentifier (spki: Asn1): Buffer {
  const bits = asString(children(spki)?.[1])
  if (bits === null || bits.length < 1) throw new Error('SubjectPublicKeyInfo without a public key')
  return createHash('sha1').update(Buffer.from(bits.slice(1), 'latin1')).digest()
}

export function toPem (label: string, der: Buffer): string {
  const b64 = der.toString('base64')
  const lines: string[] = []
  for (let i = 0; i < b64.length; i += 64) lines.push(b64.slice(i, i + 64))
  return `-----BEGIN ${label}-----\n${lines.join('\n')}\n-----END ${label}-----\n`
}

/** the DER of the first PEM block whose label is one of `labels`, or null */
export function fromPem (text: string, labels: readonly string[]): Buffer | null {
  const re = /-----BEGIN ([A-Z0-9 ]+)-----([A-Za-z0-9+/=\s]*?)-----END \1-----/g
  for (const m of text.matchAll(re)) {
    if (!labels.includes(m[1] ?? '')) continue
    const body = (m[2] ?? '').replace(/\s+/g, '')
    if (body.length === 0 || body.length % 4 !== 0 || !/^[A-Za-z0-9+/]+={0,2}$/.test(body)) return null
    return Buffer.from(body, 'base64')
  }
  return null
}
