/**
 * Certificate rotation asked by the device (CONTRACT §3.4), over real mutual TLS
 * with MQTT.js, in memory and against a real redis-server: the new certificate
 * names the same device; the old one is revoked at the new one's first use (on
 * every broker process), or when the grace period ends (injected clock); bad
 * CSRs and other roles are refused and nothing is issued.
 */
import { generateKeyPairSync, X509Certificate } from 'node:crypto'
import t from 'tap'
import type { MqttClient } from 'mqtt'
import { createCsr } from '../../pki/keys.js'
import { STORES, connect, credentials, endClient, publish, registerDevice, startBroker, waitFor, type TestBroker } from '../helpers/broker.js'
import { startBrokerProcess } from '../helpers/broker-process.js'
import { newCsr, request, type Reply } from '../helpers/provisioning.js'
import { connackOf } from '../helpers/revocation.js'

const ROTATE = '$provision/certificates/rotate/json'
const DAY_MS = 86_400_000

/** the audit lines of one event about one certificate */
function linesOf (tb: TestBroker, event: string, certificateId: string): Array<Record<string, unknown>> {
  return tb.events(event).filter((l) => l.certificateId === certificateId)
}

async function rotate (device: MqttClient): Promise<{ reply: Reply, keyPem: string }> {
  const { csr, keyPem } = newCsr('ec')
  return { reply: await request(device, ROTATE, { certificateSigningRequest: csr }), keyPem }
}

for (const store of STORES) {
  t.test(`rotation (${store})`, async (t) => {
    let clock = Date.now()
    // a sweep every second (SESSION_REVALIDATE_SECONDS bounds it), so the injected clock's grace end is seen at once
    const tb = await startBroker({ store, now: () => clock, overrides: { SESSION_REVALIDATE_SECONDS: 1 } })
    t.teardown(() => tb.close())
    const registry = tb.handle.registry

    await t.test('rotate, reconnect with the new certificate: the old one is refused, on every broker process', async (t) => {
      const old = await registerDevice(tb, 'rot-1')
      const device = await connect(tb, old, { clientId: 'rot-1' })
      const { reply, keyPem } = await rotate(device)
      t.equal(reply.outcome, 'accepted', JSON.stringify(reply.body))
      const certificateId = String(reply.body.certificateId)
      const pem = String(reply.body.certificatePem)
      const x509 = new X509Certificate(pem)
      t.equal(x509.subject, 'CN=rot-1', 'the same device id, whatever the CSR asked for')
      t.ok(x509.checkIssued(new X509Certificate(tb.pki.read('device-ca.pem'))), 'signed by the device CA')
      t.equal(x509.fingerprint256.replaceAll(':', '').toLowerCase(), certificateId, 'certificateId is the SHA-256 of the DER')
      const certs = await registry.certificatesOfDevice('rot-1')
      t.same(certs.map((c) => c.status).sort(), ['active', 'active'], 'both certificates active until the new one is used')
      t.equal(linesOf(tb, 'certificate.rotated', certificateId).length, 1, 'certificate.rotated at issue')
      t.equal(linesOf(tb, 'certificate.rotated', certificateId)[0]!.deviceId, 'rot-1')
      await endClient(device)

      // a second broker process on the same Redis: the revocation reaches it through the registry
      const other = store === 'redis' ? await startBrokerProcess({ redisUrl: tb.redis!.url, pki: tb.pki }) : null
      if (other) t.teardown(() => other.stop())
      if (other) t.equal(await connackOf(other, old, 'rot-1'), 0, 'the old certificate still works on the other process before the new one is used')

      const fresh = await connect(tb, { cert: pem, key: keyPem }, { clientId: 'rot-1' })
      await waitFor(() => linesOf(tb, 'certificate.revoked', old.certificateId).length > 0, 5000, 'the old certificate revoked at first use')
      const revoked = linesOf(tb, 'certificate.revoked', old.certificateId)
      t.equal(revoked.length, 1, 'certificate.revoked once')
      t.equal(revoked[0]!.reason, 'rotated')
      t.equal(revoked[0]!.deviceId, 'rot-1')
      t.equal(await connackOf(tb, old, 'rot-1'), 5, 'the old certificate: CONNACK 5')
      if (other) t.equal(await connackOf(other, old, 'rot-1'), 5, 'refused on the other broker process too')
      t.ok(!fresh.disconnecting && fresh.connected, 'the new certificate stays connected')
      await endClient(fresh)
      t.equal(await connackOf(tb, { cert: pem, key: keyPem }, 'rot-1'), 0, 'the new certificate connects again')
      t.equal(linesOf(tb, 'certificate.revoked', old.certificateId).length, 1, 'still once after more connects')
      t.equal(linesOf(tb, 'certificate.rotated', certificateId).length, 1)
      if (other) {
        t.equal(other.auditLines().filter((l) => l.event === 'certificate.revoked' && l.certificateId === old.certificateId).length, 0, 'the other process wrote no second revocation line')
      }
      const after = await registry.certificatesOfDevice('rot-1')
      t.same(after.map((c) => [c.certificateId, c.status]).sort(), [[old.certificateId, 'revoked'], [certificateId, 'active']].sort())
      t.equal(after.find((c) => c.certificateId === certificateId)?.replaces, undefined, 'the rotation is settled')
    })

    await t.test('a third rotation before the second certificate is used revokes the unused one', async (t) => {
      const old = await registerDevice(tb, 'rot-3')
      const device = await connect(tb, old, { clientId: 'rot-3' })
      const second = await rotate(device)
      const third = await rotate(device)
      t.equal(second.reply.outcome, 'accepted')
      t.equal(third.reply.outcome, 'accepted')
      const unused = String(second.reply.body.certificateId)
      await waitFor(() => linesOf(tb, 'certificate.revoked', unused).length > 0, 5000, 'the unused certificate revoked')
      const active = (await registry.certificatesOfDevice('rot-3')).filter((c) => c.status === 'active').map((c) => c.certificateId)
      t.same(active.sort(), [old.certificateId, String(third.reply.body.certificateId)].sort(), 'at most two active: the old one and the newest')
      t.equal(await connackOf(tb, { cert: String(second.reply.body.certificatePem), key: second.keyPem }, 'rot-3'), 5, 'the superseded certificate is refused')
      await endClient(device)
    })

    await t.test('refused requests issue nothing', async (t) => {
      const creds = await registerDevice(tb, 'rot-4')
      const device = await connect(tb, creds, { clientId: 'rot-4' })
      const rotatedBefore = tb.events('certificate.rotated').length
      const expect = async (what: string, client: MqttClient, payload: unknown, statusCode: number, errorCode: string): Promise<void> => {
        const reply = await request(client, ROTATE, payload)
        t.equal(reply.outcome, 'rejected', `${what}: rejected`)
        t.match(reply.body, { statusCode, errorCode }, `${what}: ${statusCode} ${errorCode}`)
      }
      const rsa1024 = generateKeyPairSync('rsa', { modulusLength: 1024 })
      const p384 = generateKeyPairSync('ec', { namedCurve: 'P-384' })
      await expect('garbage CSR', device, { certificateSigningRequest: 'not a csr' }, 400, 'InvalidCsr')
      await expect('RSA-1024 CSR', device, { certificateSigningRequest: createCsr({ commonName: 'x', ...rsa1024 }) }, 400, 'InvalidCsr')
      await expect('P-384 CSR', device, { certificateSigningRequest: createCsr({ commonName: 'x', ...p384 }) }, 400, 'InvalidCsr')
      await expect('no CSR', device, {}, 400, 'InvalidRequest')
      const claim = await connect(tb, credentials(tb.pki, 'claim'), { clientId: 'rot-claim' })
      await expect('a claim connection', claim, { certificateSigningRequest: newCsr('ec').csr }, 403, 'RotationNotAllowed')
      const service = await connect(tb, credentials(tb.pki, 'service'), { clientId: 'rot-service' })
      await expect('a service connection', service, { certificateSigningRequest: newCsr('ec').csr }, 403, 'RotationNotAllowed')
      t.equal(tb.events('certificate.rotated').length, rotatedBefore, 'no certificate.rotated')
      t.same((await registry.certificatesOfDevice('rot-4')).map((c) => c.certificateId), [creds.certificateId], 'nothing issued for the device')

      // per device and hour: 3 CSRs counted above (the schema refusal never reached the plugin), 7 more, then 429
      for (let i = 0; i < 7; i++) await expect(`garbage CSR ${i + 4}`, device, { certificateSigningRequest: 'x' }, 400, 'InvalidCsr')
      await expect('the 11th request in the hour', device, { certificateSigningRequest: newCsr('ec').csr }, 429, 'Throttled')
      t.equal((await registry.certificatesOfDevice('rot-4')).length, 1, 'still nothing issued')
      await Promise.all([endClient(device), endClient(claim), endClient(service)])
    })

    // last: it moves the clock a week on
    await t.test('a device that never uses the new certificate keeps the old one until the grace period ends', async (t) => {
      const old = await registerDevice(tb, 'rot-2')
      const device = await connect(tb, old, { clientId: 'rot-2' })
      const { reply, keyPem } = await rotate(device)
      t.equal(reply.outcome, 'accepted')
      await endClient(device)
      clock += 6 * DAY_MS
      const again = await connect(tb, old, { clientId: 'rot-2' })
      await publish(again, 'devices/rot-2/telemetry', JSON.stringify({ ts: 1763769600000, seq: 1, values: { temperature: 21.5 } }))
      t.ok(again.connected, 'six days on: the old certificate still connects and publishes')
      t.equal(linesOf(tb, 'certificate.revoked', old.certificateId).length, 0)

      clock += DAY_MS + 1000
      await waitFor(() => linesOf(tb, 'certificate.revoked', old.certificateId).length > 0, 5000, 'the old certificate revoked at the end of the grace period')
      await waitFor(() => !again.connected, 5000, 'its live session closed')
      t.equal(linesOf(tb, 'certificate.revoked', old.certificateId)[0]!.reason, 'rotated')
      t.equal(await connackOf(tb, old, 'rot-2'), 5, 'then refused: CONNACK 5')
      t.equal(await connackOf(tb, { cert: String(reply.body.certificatePem), key: keyPem }, 'rot-2'), 0, 'the new certificate connects')
      t.equal(linesOf(tb, 'certificate.revoked', old.certificateId).length, 1, 'revoked once')
      t.equal(tb.events('certificate.rotated').filter((l) => l.deviceId === 'rot-2').length, 1, 'rotated once')
      again.end(true)
    })
  })
}
