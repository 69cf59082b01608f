/** Helpers of the revocation tests: fresh client certificates of any role, CONNACK codes, metric reads. */
import { X509Certificate } from 'node:crypto'
import { issueCertificate, loadIssuer } from '../../pki/certificate.js'
import { generateKeyPair, privateKeyToPem } from '../../pki/keys.js'
import { fingerprintHex } from '../../broker/trust.js'
import { connect, type ClientCredentials, type Pki } from './broker.js'

export interface IssuedClient extends ClientCredentials {
  certificateId: string
  serialNumber: string
  /** fingerprint of the issuing CA (what --issuer / --ca take) */
  issuerFingerprint: string
}

/** A fresh client certificate from `<role>-ca` of the test PKI, so revoking it touches no other test. */
export function issueClient (pki: Pki, role: 'service' | 'claim' | 'device', commonName: string): IssuedClient {
  const caPem = pki.read(`${role}-ca.pem`)
  const issuer = loadIssuer(caPem, pki.read(`${role}-ca.key`))
  const keys = generateKeyPair('ec')
  const issued = issueCertificate({ commonName, publicKey: keys.publicKey, issuer, validityDays: 30, extKeyUsage: ['clientAuth'] })
  return {
    cert: issued.pem + caPem,
    key: privateKeyToPem(keys.privateKey),
    certificateId: issued.certificateId,
    serialNumber: issued.serialNumber,
    issuerFingerprint: fingerprintHex(new X509Certificate(caPem))
  }
}

/** 0 when accepted (and the client is closed again), else the CONNACK code or -1 for another failure */
export async function connackOf (tb: { port: number, pki: Pki }, creds: ClientCredentials, clientId: string): Promise<number> {
  try {
    const client = await connect(tb, creds, { clientId })
    client.end(true)
    return 0
  } catch (err) {
    const code = (err as { code?: unknown }).code
    return typeof code === 'number' ? code : -1
  }
}

export async function counterValue (metric: { get (): Promise<{ values: Array<{ value: number }> }> }): Promise<number> {
  return (await metric.get()).values.reduce((sum, v) => sum + v.value, 0)
}
