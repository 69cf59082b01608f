/**
 * Key pairs the broker may generate (EC P-256, RSA-2048) and a native PKCS#10
 * writer for tests, the benchmark and simple clients. createCsr deliberately signs
 * whatever key it is given, so tests can build requests the policy must refuse.
 */
import { createPrivateKey, createPublicKey, generateKeyPair as generateKeyPairCb, generateKeyPairSync, sign, type KeyObject } from 'node:crypto'
import { promisify } from 'node:util'
import forge from 'node-forge'
import { Class, OID, oid, parseDer, schemeForKey, seq, set, signedEnvelope, smallInteger, spkiOf, toDerBuffer, toPem, utf8 } from './der.js'

export type KeyAlgorithm = 'ec' | 'rsa'

export interface KeyPair { privateKey: KeyObject, publicKey: KeyObject }

const generateAsync = promisify(generateKeyPairCb)

/** A freshly generated key pair, already encoded: SPKI DER and PKCS#8 PEM. */
export interface EncodedKeyPair { spki: Buffer, privateKeyPem: string }

const SPKI_DER = { type: 'spki', format: 'der' } as const
const PKCS8_PEM = { type: 'pkcs8', format: 'pem' } as const

/**
 * Generates and encodes in one native call. Node 20 can deadlock when a KeyObject
 * returned by generateKeyPairSync is exported as JWK while the garbage collector
 * finalizes the generation job (both take the key's mutex; seen here as a hung
 * process), so generated keys only ever leave the job encoded.
 */
export function generateEncodedKeyPair (alg: KeyAlgorithm): EncodedKeyPair {
  const { publicKey, privateKey } = alg === 'rsa'
    ? generateKeyPairSync('rsa', { modulusLength: 2048, publicKeyEncoding: SPKI_DER, privateKeyEncoding: PKCS8_PEM })
    : generateKeyPairSync('ec', { namedCurve: 'prime256v1', publicKeyEncoding: SPKI_DER, privateKeyEncoding: PKCS8_PEM })
  return { spki: publicKey, privateKeyPem: privateKey }
}

/** fresh KeyObjects, not shared with the generation job (see generateEncodedKeyPair) */
function decoded (spki: Buffer, privateKeyPem: string): KeyPair {
  return {
    privateKey: createPrivateKey(privateKeyPem),
    publicKey: createPublicKey({ key: spki, format: 'der', type: 'spki' })
  }
}

export function generateKeyPair (alg: KeyAlgorithm): KeyPair {
  const { spki, privateKeyPem } = generateEncodedKeyPair(alg)
  return decoded(spki, privateKeyPem)
}

/** same keys as generateKeyPair, off the event loop (RSA generation takes 50-500 ms) */
export async function generateKeyPairAsync (alg: KeyAlgorithm): Promise<KeyPair> {
  const { publicKey, privateKey } = alg === 'rsa'
    ? await generateAsync('rsa', { modulusLength: 2048, publicKeyEncoding: SPKI_DER, privateKeyEncoding: PKCS8_PEM })
    : await generateAsync('ec', { namedCurve: 'prime256v1', publicKeyEncoding: SPKI_DER, privateKeyEncoding: PKCS8_PEM })
  return decoded(publicKey, privateKey)
}

/** PKCS#8, PEM-encoded */
export function privateKeyToPem (k: KeyObject): string {
  if (k.type !== 'private') throw new TypeError('privateKeyToPem needs a private key')
  return k.export({ type: 'pkcs8', format: 'pem' }).toString()
}

/** `spki` replaces the encoding of `publicKey` (tests: other encodings of the same key) */
export function createCsr (opts: { commonName: string, privateKey: KeyObject, publicKey: KeyObject, spki?: Buffer }): string {
  const info = toDerBuffer(seq([
    smallInteger(0),
    seq([set([seq([oid(OID.commonName), utf8(opts.commonName)])])]),
    opts.spki === undefined ? spkiOf(opts.publicKey) : parseDer(opts.spki),
    forge.asn1.create(Class.CONTEXT_SPECIFIC, 0, true, []) // attributes: none
  ]))
  const scheme = schemeForKey(opts.privateKey)
  const signature = sign(scheme.hash, info, opts.privateKey)
  return toPem('CERTIFICATE REQUEST', signedEnvelope(info, scheme.algorithmId, signature))
}
