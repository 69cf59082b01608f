/**
 * Key pairs the broker may generate (EC P-256, RSA-2048) and a native PKCS#10
 * writer for tests, the benchmark and simple clients. createCsr deliberately signs
 * whatever key it is given, so tests can build requests the policy must refuse.
 */
import { generateKeyPair as generateKeyPairCb, generateKeyPairSync, sign, type KeyObject } from 'node:crypto'
import { promisify } from 'node:util'
import forge from 'node-forge'
import { Class, OID, oid, schemeForKey, seq, set, signedEnvelope, smallInteger, spkiOf, toDerBuffer, toPem, utf8 } from './der.js'

export type KeyAlgorithm = 'ec' | 'rsa'

export interface KeyPair { privateKey: KeyObject, publicKey: KeyObject }

const generateAsync = promisify(generateKeyPairCb)

export function generateKeyPair (alg: KeyAlgorithm): KeyPair {
  return alg === 'rsa'
    ? generateKeyPairSync('rsa', { modulusLength: 2048 })
    : generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
}

/** same keys as generateKeyPair, off the event loop (RSA generation takes 50-500 ms) */
export async function generateKeyPairAsync (alg: KeyAlgorithm): Promise<KeyPair> {
  return alg === 'rsa'
    ? generateAsync('rsa', { modulusLength: 2048 })
    : generateAsync('ec', { namedCurve: 'prime256v1' })
}

/** PKCS#8 PEM ("BEGIN PRIVATE KEY") */
export function privateKeyToPem (k: KeyObject): string {
  if (k.type !== 'private') throw new TypeError('privateKeyToPem needs a private key')
  return k.export({ type: 'pkcs8', format: 'pem' }).toString()
}

export function createCsr (opts: { commonName: string, privateKey: KeyObject, publicKey: KeyObject }): string {
  const info = toDerBuffer(seq([
    smallInteger(0),
    seq([set([seq([oid(OID.commonName), utf8(opts.commonName)])])]),
    spkiOf(opts.publicKey),
    forge.asn1.create(Class.CONTEXT_SPECIFIC, 0, true, []) // attributes: none
  ]))
  const scheme = schemeForKey(opts.privateKey)
  const signature = sign(scheme.hash, info, opts.privateKey)
  return toPem('CERTIFICATE REQUEST', signedEnvelope(info, scheme.algorithmId, signature))
}
