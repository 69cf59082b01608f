/**
 * Certificate issuance for provisioning: from a device CSR, or for a key pair the
 * broker generates. Signing is native (see pki/certificate.ts); the device CA is
 * parsed once, when the plugin starts.
 */
import { randomBytes } from 'node:crypto'
import { issueCertificate, type IssuedCertificate, type Issuer } from '../../pki/certificate.js'
import { parseCsr } from '../../pki/csr.js'
import { fromPem, toPem } from '../../pki/der.js'
import { generateEncodedKeyPair } from '../../pki/keys.js'

/** CN of a certificate issued before its device id is known; registration issues the final one. */
export const PROVISIONAL_CN = 'provisional'

export interface Issued { readonly certificate: IssuedCertificate, readonly publicKeyPem: string, readonly privateKeyPem?: string }

/** `spki`: SubjectPublicKeyInfo DER this broker has vetted (from a verified CSR, or a key it made) */
export function issueFor (issuer: Issuer, spki: Buffer, commonName: string, validityDays: number): IssuedCertificate {
  return issueCertificate({ commonName, publicKey: spki, issuer, validityDays, extKeyUsage: ['clientAuth'] })
}

/** Throws CsrError for anything but a verified EC P-256 or RSA ≥ 2048 CSR. */
export function issueFromCsr (issuer: Issuer, csrPem: string, validityDays: number): Issued {
  const { spki } = parseCsr(csrPem)
  return { certificate: issueFor(issuer, spki, PROVISIONAL_CN, validityDays), publicKeyPem: toPem('PUBLIC KEY', spki) }
}

export function issueWithGeneratedKey (issuer: Issuer, validityDays: number): Issued {
  const { spki, privateKeyPem } = generateEncodedKeyPair('ec')
  return {
    certificate: issueFor(issuer, spki, PROVISIONAL_CN, validityDays),
    publicKeyPem: toPem('PUBLIC KEY', spki),
    privateKeyPem
  }
}

/** the SPKI DER of a key this broker stored with a token (see Issued.publicKeyPem) */
export function storedPublicKey (pem: string): Buffer {
  const der = fromPem(pem, ['PUBLIC KEY'])
  if (der === null) throw new Error('stored public key is not a PEM PUBLIC KEY')
  return der
}

/** 256 random bits: unguessable, opaque to the device. */
export function newOwnershipToken (): string {
  return randomBytes(32).toString('base64url')
}
