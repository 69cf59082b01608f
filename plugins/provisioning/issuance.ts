/**
 * Certificate issuance for provisioning: from a device CSR, or for a key pair the
 * broker generates. Signing is native (see pki/certificate.ts); the device CA is
 * parsed once, when the plugin starts.
 */
import { createPublicKey, randomBytes, type KeyObject } from 'node:crypto'
import { issueCertificate, type IssuedCertificate, type Issuer } from '../../pki/certificate.js'
import { parseCsr } from '../../pki/csr.js'
import { generateKeyPair, privateKeyToPem } from '../../pki/keys.js'

/** CN of a certificate issued before its device id is known; registration issues the final one. */
export const PROVISIONAL_CN = 'provisional'

export interface Issued { readonly certificate: IssuedCertificate, readonly publicKeyPem: string, readonly privateKeyPem?: string }

function publicPem (key: KeyObject): string {
  return key.export({ type: 'spki', format: 'pem' }).toString()
}

export function issueFor (issuer: Issuer, publicKey: KeyObject, commonName: string, validityDays: number): IssuedCertificate {
  return issueCertificate({ commonName, publicKey, issuer, validityDays, extKeyUsage: ['clientAuth'] })
}

/** Throws CsrError for anything but a verified EC P-256 or RSA ≥ 2048 CSR. */
export function issueFromCsr (issuer: Issuer, csrPem: string, validityDays: number): Issued {
  const csr = parseCsr(csrPem)
  return { certificate: issueFor(issuer, csr.publicKey, PROVISIONAL_CN, validityDays), publicKeyPem: publicPem(csr.publicKey) }
}

export function issueWithGeneratedKey (issuer: Issuer, validityDays: number): Issued {
  const keys = generateKeyPair('ec')
  return {
    certificate: issueFor(issuer, keys.publicKey, PROVISIONAL_CN, validityDays),
    publicKeyPem: publicPem(keys.publicKey),
    privateKeyPem: privateKeyToPem(keys.privateKey)
  }
}

export function publicKeyFromPem (pem: string): KeyObject {
  return createPublicKey(pem)
}

/** 256 random bits: unguessable, opaque to the device. */
export function newOwnershipToken (): string {
  return randomBytes(32).toString('base64url')
}
