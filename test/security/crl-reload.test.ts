/**
 * Attack: a leaked service certificate; the operator's PKI publishes a CRL for it
 * and drops it next to the service CA (`service-ca.crl.pem` in CERTS_DIR). Without
 * a restart, the live session is closed and a reconnect refused (CONNACK 5). A CRL
 * whose signature does not verify against the service CA is ignored and audited:
 * it neither revokes what it lists nor un-revokes what the last good CRL listed,
 * and a bad CRL appended to a good file does not void the good one at the next
 * start. CRLs live in files, not in the store, so one store suffices here.
 */
import { cpSync, mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { loadIssuer } from '../../pki/certificate.js'
import { createCrl } from '../../pki/crl.js'
import { fromPem, toPem } from '../../pki/der.js'
import { collect, connect, devPki, publish, registerDevice, sleep, startBroker, subscribe, waitFor } from '../helpers/broker.js'
import { connackOf, issueClient } from '../helpers/revocation.js'

t.test('a CRL dropped next to the service CA takes effect without restart', async (t) => {
  const pki = await devPki()
  // a private CERTS_DIR: the shared test PKI must not get a CRL
  const certsDir = mkdtempSync(join(tmpdir(), 'jitp-crl-certs-'))
  t.teardown(() => rmSync(certsDir, { recursive: true, force: true }))
  cpSync(pki.dir, certsDir, { recursive: true })
  const tb = await startBroker({ store: 'memory', overrides: { CERTS_DIR: certsDir } })
  t.teardown(() => tb.close())
  const serviceCa = loadIssuer(pki.read('service-ca.pem'), pki.read('service-ca.key'))
  /** as an operator should: write aside, then rename into place */
  function dropCrl (pem: string): void {
    const aside = join(certsDir, '.service-ca.crl.pem.tmp')
    writeFileSync(aside, pem)
    renameSync(aside, join(certsDir, 'service-ca.crl.pem'))
  }

  const leaked = issueClient(pki, 'service', 'crl-leaky')
  const bystander = issueClient(pki, 'service', 'crl-bystander')
  const thief = await connect(tb, leaked, { clientId: 'crl-thief' })
  const stolen = collect(thief)
  await subscribe(thief, 'devices/+/telemetry')
  const creds = await registerDevice(tb, 'crl-meter-1')
  const device = await connect(tb, creds, { clientId: 'crl-meter-1' })
  t.teardown(() => device.end(true))
  await publish(device, 'devices/crl-meter-1/telemetry', JSON.stringify({ ts: 1, seq: 1, values: { t: 1 } }))
  await waitFor(() => stolen.length === 1, 5000, 'telemetry on the leaked session')
  const closed = new Promise<number>((resolve) => thief.once('close', () => resolve(Date.now())))

  const droppedAt = Date.now()
  dropCrl(createCrl({ issuer: serviceCa, revoked: [{ serialNumber: leaked.serialNumber }] }))
  const closedAt = await Promise.race([closed, sleep(10_000).then(() => Infinity)])
  t.ok(closedAt !== Infinity, `the live session was closed ${closedAt - droppedAt} ms after the CRL was dropped`)
  // what it gets from now on: nothing, because its reconnect is refused (below)
  thief.end(true)
  t.match(tb.events('crl.loaded'), [{ role: 'service', count: 1, reason: 'service-ca.crl.pem' }], 'crl.loaded audited with the count')
  await waitFor(() => tb.events('disconnect').some((l) => l.clientId === 'crl-thief'), 5000, 'the disconnect line')
  t.match(tb.events('disconnect').find((l) => l.clientId === 'crl-thief'), { role: 'service', certificateId: leaked.certificateId, errorCode: 'CertificateRevoked', reason: 'CRL' })
  t.equal(await connackOf(tb, leaked, 'crl-thief'), 5, 'a reconnect: CONNACK 5')
  t.match(tb.events('connect.refused').find((l) => l.clientId === 'crl-thief'), { errorCode: 'CertificateRevoked' })
  t.equal(await connackOf(tb, bystander, 'crl-bystander'), 0, 'a certificate the CRL does not list still connects')

  t.test('a CRL with a bad signature is ignored and audited', async (t) => {
    const forged = fromPem(createCrl({ issuer: serviceCa, revoked: [{ serialNumber: bystander.serialNumber }], number: 2 }), ['X509 CRL'])!
    forged[forged.length - 10] = forged[forged.length - 10]! ^ 0x5a // inside the signature
    const refusedBefore = tb.events('crl.rejected').length
    dropCrl(toPem('X509 CRL', forged))
    await waitFor(() => tb.events('crl.rejected').length > refusedBefore, 10_000, 'the rejection audit line')
    t.match(tb.events('crl.rejected').at(-1), { level: 'warn', role: 'service', errorCode: 'CrlInvalid', reason: /service-ca\.crl\.pem: signature/ })
    t.equal(await connackOf(tb, bystander, 'crl-bystander'), 0, 'what the forged CRL lists is not revoked')
    t.equal(await connackOf(tb, leaked, 'crl-thief'), 5, 'what the last good CRL listed stays revoked')
    t.equal(tb.events('crl.loaded').length, 1, 'nothing was loaded from it')
  })

  t.test('a CRL signed by another role\'s CA is ignored too', async (t) => {
    const claimCa = loadIssuer(pki.read('claim-ca.pem'), pki.read('claim-ca.key'))
    const refusedBefore = tb.events('crl.rejected').length
    dropCrl(createCrl({ issuer: claimCa, revoked: [{ serialNumber: bystander.serialNumber }], number: 3 }))
    await waitFor(() => tb.events('crl.rejected').length > refusedBefore, 10_000, 'the rejection audit line')
    t.equal(await connackOf(tb, bystander, 'crl-bystander'), 0, 'still connects')
  })
})

t.test('a bad CRL appended to a good file: at the next start the good one still revokes', async (t) => {
  // the file as a broker finds it after a restart: the valid CRL, then a block signed by another role's CA
  const pki = await devPki()
  const certsDir = mkdtempSync(join(tmpdir(), 'jitp-crl-restart-'))
  t.teardown(() => rmSync(certsDir, { recursive: true, force: true }))
  cpSync(pki.dir, certsDir, { recursive: true })
  const serviceCa = loadIssuer(pki.read('service-ca.pem'), pki.read('service-ca.key'))
  const claimCa = loadIssuer(pki.read('claim-ca.pem'), pki.read('claim-ca.key'))
  const leaked = issueClient(pki, 'service', 'crl-restart-leaky')
  const bystander = issueClient(pki, 'service', 'crl-restart-bystander')
  writeFileSync(join(certsDir, 'service-ca.crl.pem'),
    createCrl({ issuer: serviceCa, revoked: [{ serialNumber: leaked.serialNumber }] }) +
    createCrl({ issuer: claimCa, revoked: [{ serialNumber: bystander.serialNumber }], number: 2 }))

  const tb = await startBroker({ store: 'memory', overrides: { CERTS_DIR: certsDir } })
  t.teardown(() => tb.close())
  t.equal(await connackOf(tb, leaked, 'crl-restart-1'), 5, 'what the valid CRL lists is revoked')
  t.equal(await connackOf(tb, bystander, 'crl-restart-2'), 0, 'what the bad one lists is not')
  t.match(tb.events('crl.rejected'), [{ role: 'service', errorCode: 'CrlInvalid', reason: /service-ca\.crl\.pem: CRL 2 of 2: signature/ }], 'the bad CRL audited, by its place in the file')
  t.match(tb.events('crl.loaded'), [{ role: 'service', count: 1 }], 'the good one loaded')
})
