/**
 * Expiry-driven renewal (CONTRACT §3.4, issue 12 item 2), both stores, real
 * MQTT.js devices over mutual TLS, the real admin API and CLI: a device whose
 * certificate expires within ROTATE_BEFORE_DAYS receives the rotate-certificate
 * command once a day; one valid for a year does not; an operator's request waits
 * in an offline persistent session; `certificates expiring --days 30` lists the
 * first and not the second; the gauge counts active certificates by expiry.
 */
import t from 'tap'
import { certExpiryOf, rotateCommandTopic, type CertExpiry } from '../../plugins/cert-expiry.js'
import { issueCertificate, loadIssuer } from '../../pki/certificate.js'
import { generateKeyPair, privateKeyToPem } from '../../pki/keys.js'
import { adminRequest } from '../helpers/admin.js'
import { collect, connect, connectCollecting, endClient, startBroker, STORES, subscribe, waitFor, type ClientCredentials, type TestBroker } from '../helpers/broker.js'
import { cli } from '../helpers/cli.js'

interface Device extends ClientCredentials { deviceId: string, certificateId: string, notAfter: number }

/** a device certificate valid `days` from now, registered as provisioning would (registerDeviceIn issues 30 days) */
async function deviceValidFor (tb: TestBroker, deviceId: string, days: number): Promise<Device> {
  const issuer = loadIssuer(tb.pki.read('device-ca.pem'), tb.pki.read('device-ca.key'))
  const keys = generateKeyPair('ec')
  const issued = issueCertificate({ commonName: deviceId, publicKey: keys.publicKey, issuer, validityDays: days, extKeyUsage: ['clientAuth'] })
  const now = Date.now()
  const registry = tb.handle.registry
  await registry.putDevice({ deviceId, status: 'active', template: 'test', createdAt: now, updatedAt: now, attributes: {} })
  await registry.putCertificate({
    certificateId: issued.certificateId, deviceId, status: 'active', serialNumber: issued.serialNumber,
    notAfter: issued.notAfter.getTime(), createdAt: now, updatedAt: now
  })
  return { deviceId, cert: issued.pem + tb.pki.read('device-ca.pem'), key: privateKeyToPem(keys.privateKey), certificateId: issued.certificateId, notAfter: issued.notAfter.getTime() }
}

const command = (d: Device): { name: string, args: { notAfter: number } } => ({ name: 'rotate-certificate', args: { notAfter: d.notAfter } })

for (const store of STORES) {
  t.test(`rotate-certificate reminders and requests (${store} store)`, async (t) => {
    const tb = await startBroker({ store })
    t.teardown(() => tb.close())
    const expiry: CertExpiry | undefined = certExpiryOf(tb.handle.broker)
    if (!expiry) throw new Error('the cert-expiry plugin is not in the broker chain (broker/build.ts)')
    const requested = (deviceId: string): Array<Record<string, unknown>> =>
      tb.events('certificate.rotation.requested').filter((l) => l.deviceId === deviceId)

    const soon = await deviceValidFor(tb, 'exp-soon', 10)
    const year = await deviceValidFor(tb, 'exp-year', 365)
    const offline = await deviceValidFor(tb, 'exp-offline', 365)

    await t.test('a certificate valid 10 more days: the command arrives, once a day', async (t) => {
      const first = await connect(tb, soon, { clientId: soon.deviceId })
      const got = collect(first)
      // a clean session: the reminder waits for the subscription that can receive it
      t.same(await subscribe(first, `devices/${soon.deviceId}/commands/#`), [1])
      await waitFor(() => got.length > 0, 5000, 'the rotate command')
      t.same(got.map((m) => m.topic), [rotateCommandTopic(soon.deviceId)])
      t.same(JSON.parse(got[0]!.payload), command(soon))
      t.equal(got[0]!.retain, false, 'not retained')
      t.match(requested(soon.deviceId), [{ certificateId: soon.certificateId, reason: `expires ${new Date(soon.notAfter).toISOString()}` }])
      await endClient(first)

      const second = await connect(tb, soon, { clientId: soon.deviceId })
      const again = collect(second)
      await subscribe(second, `devices/${soon.deviceId}/commands/#`)
      await expiry.settled()
      t.equal(requested(soon.deviceId).length, 1, 'not sent again within the day')
      t.same(again, [])
      await endClient(second)
    })

    await t.test('a certificate valid for a year: nothing', async (t) => {
      const client = await connect(tb, year, { clientId: year.deviceId })
      const got = collect(client)
      await subscribe(client, `devices/${year.deviceId}/commands/#`)
      await expiry.settled()
      t.same(requested(year.deviceId), [])
      t.same(got, [])
      await endClient(client)
    })

    await t.test('POST /v1/devices/{id}/rotate while the device is offline: its persistent session gets it at reconnect', async (t) => {
      const { client } = await connectCollecting(tb, offline, { clientId: offline.deviceId, clean: false })
      await subscribe(client, `devices/${offline.deviceId}/commands/#`)
      await endClient(client)
      const r = await adminRequest(tb.adminPort!, tb.pki, 'POST', `/v1/devices/${offline.deviceId}/rotate`)
      t.equal(r.status, 200, r.raw)
      t.same(r.body, { deviceId: offline.deviceId, status: 'active' })
      t.match(requested(offline.deviceId), [{ reason: 'operator', actor: String }])
      const back = await connectCollecting(tb, offline, { clientId: offline.deviceId, clean: false })
      await waitFor(() => back.got.length > 0, 5000, 'the queued command')
      t.same(back.got.map((m) => m.topic), [rotateCommandTopic(offline.deviceId)])
      t.same(JSON.parse(back.got[0]!.payload), command(offline))
      await endClient(back.client)
    })

    await t.test('rotate refuses an unknown device (404) and a revoked one (409)', async (t) => {
      const unknown = await adminRequest(tb.adminPort!, tb.pki, 'POST', '/v1/devices/no-such-device/rotate')
      t.match(unknown, { status: 404, body: { errorCode: 'DeviceNotFound' } })
      const gone = await deviceValidFor(tb, 'exp-revoked', 10)
      await tb.handle.registry.revokeDevice(gone.deviceId)
      const revoked = await adminRequest(tb.adminPort!, tb.pki, 'POST', `/v1/devices/${gone.deviceId}/rotate`)
      t.match(revoked, { status: 409, body: { errorCode: 'DeviceRevoked' } })
      t.same(requested(gone.deviceId), [])
    })

    await t.test('the gauge counts active device certificates by time to expiry', async (t) => {
      await expiry.refreshGauge()
      const values = (await tb.handle.metrics.certificatesByExpiry.get()).values
      const of = (within: string): number | undefined => values.find((v) => v.labels.within === within)?.value
      // soon (10 d) ≤ 30 d; year and offline later; the revoked device's certificate is not active
      t.same([of('7d'), of('30d'), of('90d'), of('later')], [0, 1, 0, 2])
    })

    await t.test('the CLI: certificates expiring --days 30, devices rotate <id>', async (t) => {
      const env = { CERTS_DIR: tb.pki.dir, ADMIN_PORT: String(tb.adminPort) }
      const expiring = await cli(['certificates', 'expiring', '--days', '30', '--json'], env)
      t.equal(expiring.code, 0, expiring.stderr)
      const ids = (JSON.parse(expiring.stdout) as Array<{ certificateId: string }>).map((c) => c.certificateId)
      t.ok(ids.includes(soon.certificateId), 'the 10-day certificate is listed')
      t.notOk(ids.includes(year.certificateId), 'the one-year certificate is not')

      const live = await connect(tb, year, { clientId: year.deviceId })
      const got = collect(live)
      await subscribe(live, `devices/${year.deviceId}/commands/#`)
      const rotate = await cli(['devices', 'rotate', year.deviceId], env)
      t.equal(rotate.code, 0, rotate.stderr)
      t.match(rotate.stdout, `${year.deviceId}: rotate-certificate command sent`)
      await waitFor(() => got.length > 0, 5000, 'the command sent on demand')
      t.same(JSON.parse(got[0]!.payload), command(year))
      t.match(requested(year.deviceId), [{ reason: 'operator', actor: 'admin-dev' }])
      await endClient(live)
    })
  })
}
