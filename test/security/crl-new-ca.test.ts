/**
 * Fault: a device CA is added by a rollover (docs/PKI.md) while the broker runs,
 * and the operator then publishes that CA's CRL. The CRL index reads the role's
 * CA file again when it (or the CRL) changes, so the new CA's CRL is accepted
 * and its revocations apply without a restart (before: `crl.rejected` until one).
 */
import t from 'tap'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { X509Certificate } from 'node:crypto'
import pino from 'pino'
import { createAudit } from '../../broker/audit.js'
import { watchCrls } from '../../broker/crl.js'
import { fingerprintHex } from '../../broker/trust.js'
import { addDeviceCa } from '../../certs-dev/generate.js'
import { loadIssuer } from '../../pki/certificate.js'
import { createCrl } from '../../pki/crl.js'
import { auditCapture, newDevPki, waitFor } from '../helpers/broker.js'

t.test('a CRL of a device CA added after start is accepted and applies', async (t) => {
  const pki = await newDevPki()
  const capture = auditCapture()
  const audit = createAudit(capture.stream)
  let changes = 0
  const crls = watchCrls({ certsDir: pki.dir, audit, log: pino({ level: 'silent' }), onChange: () => { changes++ }, pollMs: 200, debounceMs: 20 })
  t.teardown(() => crls.close())

  await addDeviceCa({ outDir: pki.dir })
  // the new signing CA is the first of device-ca.pem, its key is device-ca.key
  const newCa = loadIssuer(pki.read('device-ca.pem'), pki.read('device-ca.key'))
  const fp = fingerprintHex(new X509Certificate(pki.read('device-ca.pem')))
  writeFileSync(join(pki.dir, 'device-ca.crl.pem'), createCrl({ issuer: newCa, revoked: [{ serialNumber: '0abc' }] }))

  await waitFor(() => crls.has(fp, '0abc'), 5000, 'the new CA\'s revocation to apply')
  t.ok(crls.has(fp, '0abc'), 'revoked by the CRL of the CA added at run time')
  t.ok(changes >= 1, 'live sessions were re-checked')
  t.notOk(capture.lines.some((l) => l.event === 'crl.rejected'), 'not rejected')
  t.ok(capture.lines.some((l) => l.event === 'crl.loaded' && l.count === 1), 'audited crl.loaded')
})
