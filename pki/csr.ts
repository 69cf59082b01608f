/**
 * PKCS#10 parsing and verification for device-supplied CSRs. Input is hostile: every
 * failure, whatever its cause, surfaces as a CsrError whose message is safe to send
 * back to the device (it never echoes the request).
 */
import { createPublicKey, verify, type KeyObject } from 'node:crypto'
import {
  asString, children, Class, firstChildRaw, fromPem, OID, oidOf, parseDer, SCHEMES, spkiOf, toDerBuffer, Type, type Asn1, type Asn1Type
} from './der.js'

export type CsrErrorReason =
  | 'too-large' | 'not-pem' | 'malformed' | 'unsupported-key' | 'weak-key'
  | 'unsupported-signature-algorithm' | 'bad-signature'

export class CsrError extends Error {
  readonly reason: CsrErrorReason
  constructor (reason: CsrErrorReason, message: string) {
    super(message)
    this.name = 'CsrError'
    this.reason = reason
  }
}

export interface ParsedCsr {
  publicKey: KeyObject
  /** SubjectPublicKeyInfo DER to put in a certificate (EC points uncompressed) */
  spki: Buffer
  commonName: string | null
  keyType: 'ec-p256' | 'rsa'
  keyBits: number
}

export const MAX_CSR_BYTES = 16 * 1024
const MIN_RSA_BITS = 2048
// larger moduli buy nothing and make every later verification slower
const MAX_RSA_BITS = 8192

export function parseCsr (pem: string): ParsedCsr {
  try {
    return parse(pem)
  } catch (err) {
    if (err instanceof CsrError) throw err
    // forge and node:crypto throw plain Errors whose text may quote input bytes
    throw new CsrError('malformed', 'the CSR is not a well-formed PKCS#10 request')
  }
}

function parse (pem: string): ParsedCsr {
  if (typeof pem !== 'string') throw new CsrError('not-pem', 'the CSR must be a PEM string')
  if (Buffer.byteLength(pem, 'utf8') > MAX_CSR_BYTES) throw new CsrError('too-large', `the CSR exceeds ${MAX_CSR_BYTES} bytes`)
  const der = fromPem(pem, ['CERTIFICATE REQUEST', 'NEW CERTIFICATE REQUEST'])
  if (der === null) throw new CsrError('not-pem', 'expected a PEM "CERTIFICATE REQUEST" block')

  const root = parseDer(der)
  const [info, algorithm, signatureBits] = expectSequence(root, 3)
  const [version, subject, spki] = expectSequence(info, 3, 4)
  if (!isUniversal(version, Type.INTEGER) || asString(version) !== '\x00') throw new CsrError('malformed', 'unsupported CSR version')
  // the signature covers the request info exactly as sent; forge's re-encoding need not match it
  const signed = firstChildRaw(der)
  if (signed === null || !signed.equals(toDerBuffer(info))) throw new CsrError('malformed', 'the CSR is not DER-encoded')

  const spkiDer = toDerBuffer(spki)
  const { publicKey, keyType, keyBits } = checkKey(spkiDer)
  checkSignature(algorithm, signatureBits, signed, publicKey)
  return { publicKey, spki: certificateSpki(spkiDer, keyType, publicKey), commonName: commonNameOf(subject), keyType, keyBits }
}

function expectSequence (node: Asn1, min: number, max = min): Asn1[] & { 0: Asn1, 1: Asn1, 2: Asn1 } {
  const items = children(node)
  if (!isUniversal(node, Type.SEQUENCE) || items === null || items.length < min || items.length > max) {
    throw new CsrError('malformed', 'the CSR does not have the PKCS#10 structure')
  }
  return items as Asn1[] & { 0: Asn1, 1: Asn1, 2: Asn1 }
}

function isUniversal (node: Asn1, type: Asn1Type): boolean {
  return node.tagClass === Class.UNIVERSAL && node.type === type
}

/** a P-256 SubjectPublicKeyInfo with an uncompressed point is 91 bytes, the point at its end */
const P256_SPKI_BYTES = 91

/**
 * The request's own bytes when they are already the form certificates carry;
 * otherwise (a compressed EC point, which some TLS stacks cannot read) re-encoded.
 */
function certificateSpki (der: Buffer, keyType: ParsedCsr['keyType'], publicKey: KeyObject): Buffer {
  if (keyType === 'rsa' || (der.length === P256_SPKI_BYTES && der[P256_SPKI_BYTES - 65] === 0x04)) return der
  return toDerBuffer(spkiOf(publicKey))
}

/** what every P-256 SubjectPublicKeyInfo with an uncompressed point starts with: id-ecPublicKey, prime256v1, BIT STRING 0x00 0x04 */
const P256_SPKI_PREFIX = Buffer.from('3059301306072a8648ce3d020106082a8648ce3d03010703420004', 'hex')

/** the x (0) or y (1) coordinate of a P-256 point after P256_SPKI_PREFIX, base64url as JWK has it */
function coordinate (spki: Buffer, which: 0 | 1): string {
  const at = P256_SPKI_PREFIX.length + 32 * which
  return spki.subarray(at, at + 32).toString('base64url')
}

function checkKey (spki: Buffer): { publicKey: KeyObject, keyType: ParsedCsr['keyType'], keyBits: number } {
  let publicKey: KeyObject
  // nearly every device key: imported from its two coordinates, which takes OpenSSL 3.0
  // about half the time of decoding the DER through its decoder framework (60 against
  // 130 µs here), the point still checked to lie on the curve. The prefix fixes the curve
  if (spki.length === P256_SPKI_BYTES && spki.subarray(0, P256_SPKI_PREFIX.length).equals(P256_SPKI_PREFIX)) {
    try {
      publicKey = createPublicKey({
        key: { kty: 'EC', crv: 'P-256', x: coordinate(spki, 0), y: coordinate(spki, 1) },
        format: 'jwk'
      })
    } catch {
      throw new CsrError('unsupported-key', 'the CSR public key is not a point on curve P-256')
    }
    return { publicKey, keyType: 'ec-p256', keyBits: 256 }
  }
  try {
    publicKey = createPublicKey({ key: spki, format: 'der', type: 'spki' })
  } catch {
    throw new CsrError('unsupported-key', 'the CSR public key is not a supported key')
  }
  const type = publicKey.asymmetricKeyType
  const details = publicKey.asymmetricKeyDetails
  if (type === 'ec') {
    if (details?.namedCurve !== 'prime256v1') {
      throw new CsrError('unsupported-key', `EC keys must use curve P-256 (got ${details?.namedCurve ?? 'unknown'})`)
    }
    return { publicKey, keyType: 'ec-p256', keyBits: 256 }
  }
  if (type === 'rsa') {
    const bits = details?.modulusLength ?? 0
    if (bits < MIN_RSA_BITS) throw new CsrError('weak-key', `RSA keys must have at least ${MIN_RSA_BITS} bits (got ${bits})`)
    if (bits > MAX_RSA_BITS) throw new CsrError('unsupported-key', `RSA keys may have at most ${MAX_RSA_BITS} bits (got ${bits})`)
    return { publicKey, keyType: 'rsa', keyBits: bits }
  }
  throw new CsrError('unsupported-key', `unsupported key type ${type ?? 'unknown'}: use EC P-256 or RSA >= ${MIN_RSA_BITS} bits`)
}

function checkSignature (algorithm: Asn1, signatureBits: Asn1, signed: Buffer, publicKey: KeyObject): void {
  const algorithmOid = isUniversal(algorithm, Type.SEQUENCE) ? oidOf(children(algorithm)?.[0]) : null
  const scheme = algorithmOid === null ? undefined : SCHEMES[algorithmOid]
  const family = algorithmOid?.startsWith('1.2.840.10045.4.3.') === true ? 'ec' : 'rsa'
  if (scheme === undefined || scheme.hash === null) {
    throw new CsrError('unsupported-signature-algorithm', 'unsupported CSR signature algorithm: use ecdsa-with-SHA256 or sha256WithRSAEncryption')
  }
  if (family !== publicKey.asymmetricKeyType) {
    throw new CsrError('bad-signature', 'the CSR signature algorithm does not match its key')
  }
  const bits = asString(signatureBits)
  if (!isUniversal(signatureBits, Type.BITSTRING) || bits === null || bits.length < 2 || bits.charCodeAt(0) !== 0) {
    throw new CsrError('malformed', 'the CSR signature is not a BIT STRING')
  }
  if (!verify(scheme.hash, signed, publicKey, Buffer.from(bits.slice(1), 'latin1'))) {
    throw new CsrError('bad-signature', 'the CSR signature does not verify (the request was altered or not signed by its key)')
  }
}

function commonNameOf (subject: Asn1): string | null {
  let found: string | null = null
  for (const rdn of children(subject) ?? []) {
    for (const atv of children(rdn) ?? []) {
      const [type, value] = children(atv) ?? []
      if (oidOf(type) !== OID.commonName) continue
      // a second CN would let the device choose which one a consumer reads
      if (found !== null) throw new CsrError('malformed', 'the CSR subject has more than one CN')
      found = decodeString(value)
    }
  }
  return found
}

function decodeString (node: Asn1 | undefined): string {
  const raw = asString(node)
  if (node === undefined || raw === null) throw new CsrError('malformed', 'the CSR subject CN is not a string')
  switch (node.type) {
    case Type.UTF8:
      return new TextDecoder('utf-8', { fatal: true }).decode(Buffer.from(raw, 'latin1'))
    case Type.PRINTABLESTRING:
    case Type.IA5STRING:
    case Type.BMPSTRING: // forge has already decoded UCS-2 into the JS string
      return raw
    default:
      throw new CsrError('malformed', 'the CSR subject CN has an unsupported string type')
  }
}
