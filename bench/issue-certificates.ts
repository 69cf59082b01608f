/**
 * Micro-benchmark of certificate issuance alone: EC P-256 device keys signed by an
 * EC P-256 CA, the broker's hot path during a provisioning burst.
 * Run: npm run build && node dist/bench/issue-certificates.js [durationMs]
 */
import { pathToFileURL } from 'node:url'
import { issueCertificate, loadIssuer } from '../pki/certificate.js'
import { generateKeyPair, privateKeyToPem } from '../pki/keys.js'

const MAX_COUNT = 200_000
const DEVICE_KEYS = 64 // distinct keys, so no per-key caching can flatter the result

export async function benchIssuance (durationMs: number): Promise<{ perSecond: number, count: number }> {
  const caKeys = generateKeyPair('ec')
  const ca = issueCertificate({
    commonName: 'bench-ca', publicKey: caKeys.publicKey, issuer: 'self', signingKey: caKeys.privateKey, validityDays: 30, isCa: true
  })
  const issuer = loadIssuer(ca.pem, privateKeyToPem(caKeys.privateKey))
  const deviceKeys = Array.from({ length: DEVICE_KEYS }, () => generateKeyPair('ec').publicKey)

  let count = 0
  const start = performance.now()
  const deadline = start + durationMs
  while (count < MAX_COUNT) {
    issueCertificate({
      commonName: `device-${count}`,
      publicKey: deviceKeys[count % DEVICE_KEYS]!,
      issuer,
      validityDays: 365,
      extKeyUsage: ['clientAuth']
    })
    count++
    // a clock read per issuance is noise next to a signature, but check every 16 anyway
    if ((count & 15) === 0 && performance.now() >= deadline) break
  }
  const elapsed = performance.now() - start
  return { perSecond: Math.round(count / (elapsed / 1000)), count }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const durationMs = Number(process.argv[2] ?? 5000)
  const { perSecond, count } = await benchIssuance(durationMs)
  console.log(`issued ${count} EC P-256 certificates: ${perSecond} certificates/s (${(1000 / perSecond).toFixed(3)} ms each)`)
}
