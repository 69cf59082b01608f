/**
 * X.509 CRLs (RFC 5280 §5): a generator, for tests and operators without an
 * openssl CA setup, and a parser whose signature check is done natively by
 * node:crypto against the issuing CA's public key (EC and RSA alike). The signed
 * TBSCertList is verified exactly as it arrived, never as forge re-encodes it.
 */
import { sign, verify, type KeyObject } from 'node:crypto'
import forge from 'node-forge'
import type { Issuer } from './certificate.js'
import {
  asString, children, Class, firstChildRaw, fromPem, octets, oid, oidOf, parseDer, SCHEMES, seq,
  signedEnvelope, smallInteger, toDerBuffer, toPem, Type, unsignedInteger, type Asn1
} from './der.js'

const CRL_NUMBER = '2.5.29.20'

export interface CrlEntry {
  /** lowercase hex, no leading zero octets (the form of PeerCertificate.serialNumber) */
  readonly serialNumber: string
  readonly revokedAt: number
}

export interface ParsedCrl {
  /** the signed bytes as they arrived */
  readonly tbs: Buffer
  readonly signatureOid: string
  readonly signature: Buffer
  /** DER of the issuer Name */
  readonly issuer: Buffer
  readonly thisUpdate: number
  readonly nextUpdate: number | null
  readonly entries: readonly CrlEntry[]
}

export interface CreateCrlOptions {
  issuer: Issuer
  revoked: ReadonlyArray<{ serialNumber: string, revokedAt?: Date }>
  /** default now */
  thisUpdate?: Date
  /** default thisUpdate + 7 days */
  nextUpdate?: Date
  /** CRL number extension; default 1 */
  number?: number
}

const DAY_MS = 24 * 60 * 60 * 1000

/** RFC 5280 §5.1.2.4: UTCTime through 2049, GeneralizedTime from 2050 (seconds, Z) */
function crlTime (ms: number): Asn1 {
  const d = new Date(Math.floor(ms / 1000) * 1000)
  if (d.getUTCFullYear() >= 2050) return forge.asn1.create(Class.UNIVERSAL, Type.GENERALIZEDTIME, false, forge.asn1.dateToGeneralizedTime(d))
  return forge.asn1.create(Class.UNIVERSAL, Type.UTCTIME, false, forge.asn1.dateToUtcTime(d))
}

function hexMagnitude (hex: string): Buffer {
  const digits = hex.replaceAll(':', '').toLowerCase().replace(/^0+/, '')
  return Buffer.from(digits.length % 2 === 1 ? '0' + digits : digits, 'hex')
}

/** A CRL signed by `issuer`, as PEM (`-----BEGIN X509 CRL-----`). */
export function createCrl (opts: CreateCrlOptions): string {
  const { signer } = opts.issuer
  const thisUpdate = opts.thisUpdate?.getTime() ?? Date.now()
  const nextUpdate = opts.nextUpdate?.getTime() ?? thisUpdate + 7 * DAY_MS
  const tbsItems: Asn1[] = [smallInteger(1), signer.algorithm, signer.name, crlTime(thisUpdate), crlTime(nextUpdate)]
  if (opts.revoked.length > 0) {
    tbsItems.push(seq(opts.revoked.map((r) => seq([unsignedInteger(hexMagnitude(r.serialNumber)), crlTime(r.revokedAt?.getTime() ?? thisUpdate)]))))
  }
  const crlNumber = seq([oid(CRL_NUMBER), octets(toDerBuffer(smallInteger(opts.number ?? 1)))])
  tbsItems.push(forge.asn1.create(Class.CONTEXT_SPECIFIC, 0, true, [seq([signer.authorityKeyId, crlNumber])]))
  const tbs = toDerBuffer(seq(tbsItems))
  const signature = sign(signer.scheme.hash, tbs, signer.key)
  return toPem('X509 CRL', signedEnvelope(tbs, signer.scheme.algorithmId, signature))
}

/** every `X509 CRL` PEM block of a file, as text (a file may hold several CRLs) */
export function crlPemBlocks (text: string): string[] {
  return text.match(/-----BEGIN X509 CRL-----[\s\S]+?-----END X509 CRL-----/g) ?? []
}

/** one `X509 CRL` PEM block as DER; throws on a malformed one */
export function crlDerOf (block: string): Buffer {
  const der = fromPem(block, ['X509 CRL'])
  if (der === null) throw new Error('malformed X509 CRL PEM block')
  return der
}

/** every `X509 CRL` PEM block of a file, as DER; throws when one is malformed */
export function splitCrlPem (text: string): Buffer[] {
  return crlPemBlocks(text).map(crlDerOf)
}

function timeOf (node: Asn1 | undefined): number | null {
  if (node?.tagClass !== Class.UNIVERSAL) return null
  const v = asString(node)
  if (v === null) return null
  if (node.type === Type.UTCTIME) return forge.asn1.utcTimeToDate(v).getTime()
  if (node.type === Type.GENERALIZEDTIME) return forge.asn1.generalizedTimeToDate(v).getTime()
  return null
}

function serialOf (node: Asn1 | undefined): string | null {
  if (node?.tagClass !== Class.UNIVERSAL || node.type !== Type.INTEGER) return null
  const v = asString(node)
  if (v === null || v.length === 0) return null
  const hex = Buffer.from(v, 'latin1').toString('hex').replace(/^(00)+/, '')
  return hex.length === 0 ? '00' : hex
}

/** Parses a DER CRL (structure only: the signature is checked by verifyCrl). Throws on malformed input. */
export function parseCrl (der: Buffer): ParsedCrl {
  const root = children(parseDer(der))
  const tbsRaw = firstChildRaw(der)
  if (root === null || root.length !== 3 || tbsRaw === null) throw new Error('CRL: not a CertificateList')
  const tbs = children(root[0])
  const signatureOid = oidOf(children(root[1])?.[0])
  const bits = asString(root[2])
  if (tbs === null || signatureOid === null || bits === null || bits.length < 2 || bits.charCodeAt(0) !== 0) throw new Error('CRL: malformed envelope')
  let at = 0
  // version is optional (v1 CRLs omit it)
  if (tbs[0]?.tagClass === Class.UNIVERSAL && tbs[0].type === Type.INTEGER) at = 1
  const innerOid = oidOf(children(tbs[at])?.[0])
  if (innerOid !== signatureOid) throw new Error('CRL: signature algorithms disagree')
  const issuerNode = tbs[at + 1]
  const thisUpdate = timeOf(tbs[at + 2])
  if (issuerNode === undefined || thisUpdate === null) throw new Error('CRL: missing issuer or thisUpdate')
  let next = at + 3
  const nextUpdate = timeOf(tbs[next])
  if (nextUpdate !== null) next++
  const entries: CrlEntry[] = []
  const list = tbs[next]
  if (list?.tagClass === Class.UNIVERSAL && list.type === Type.SEQUENCE) {
    for (const item of children(list) ?? []) {
      const parts = children(item)
      const serialNumber = serialOf(parts?.[0])
      const revokedAt = timeOf(parts?.[1])
      if (serialNumber === null || revokedAt === null) throw new Error('CRL: malformed revoked entry')
      entries.push({ serialNumber, revokedAt })
    }
  }
  return {
    tbs: Buffer.from(tbsRaw),
    signatureOid,
    signature: Buffer.from(bits.slice(1), 'latin1'),
    issuer: toDerBuffer(issuerNode),
    thisUpdate,
    nextUpdate,
    entries
  }
}

/** true when `crl` was signed by the holder of `publicKey` with a supported algorithm */
export function verifyCrl (crl: ParsedCrl, publicKey: KeyObject): boolean {
  const scheme = SCHEMES[crl.signatureOid]
  if (scheme === undefined) return false
  try {
    return verify(scheme.hash, crl.tbs, publicKey, crl.signature)
  } catch {
    // a key of another type (an RSA CA for an ECDSA CRL) is a mismatch, not a crash
    return false
  }
}
