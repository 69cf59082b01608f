/**
 * Secure broker core over real TLS sockets and MQTT.js clients, once with the
 * in-memory store and once against a real redis-server.
 */
import t from 'tap'
import { issueCertificate, loadIssuer } from '../../pki/certificate.js'
import { generateKeyPair, privateKeyToPem } from '../../pki/keys.js'
import {
  STORES, collect, connect, connectCollecting, credentials, endClient, publish, registerDevice, sleep, startBroker,
  subscribe, unregisteredDevice, waitFor, type TestBroker
} from '../helpers/broker.js'

function untrustedCredentials (): { cert: string, key: string } {
  const caKeys = generateKeyPair('ec')
  const ca = issueCertificate({ commonName: 'Rogue CA', publicKey: caKeys.publicKey, issuer: 'self', signingKey: caKeys.privateKey, validityDays: 30, isCa: true })
  const leafKeys = generateKeyPair('ec')
  // same CN as the real service: names must not matter
  const leaf = issueCertificate({ commonName: 'backend-dev', publicKey: leafKeys.publicKey, issuer: loadIssuer(ca.pem, privateKeyToPem(caKeys.privateKey)), validityDays: 30, extKeyUsage: ['clientAuth'] })
  return { cert: leaf.pem + ca.pem, key: privateKeyToPem(leafKeys.privateKey) }
}

async function expectRefused (tb: TestBroker, creds: { cert: string, key: string } | null, clientId?: string): Promise<Error & { code?: number | string }> {
  try {
    const c = await connect(tb, creds, clientId ? { clientId } : {})
    await endClient(c)
  } catch (err) {
    return err as Error & { code?: number }
  }
  throw new Error('connection was accepted')
}

for (const store of STORES) {
  t.test(`core (${store} store)`, async (t) => {
    const tb = await startBroker({ store })
    t.teardown(() => tb.close())

    t.test('TLS: no client certificate and an untrusted CA fail the handshake, one audit line each', async (t) => {
      const before = tb.events('connect.refused').length
      const noCert = await expectRefused(tb, null)
      t.notOk(typeof noCert.code === 'number', `no CONNACK code: ${noCert.message}`)
      const rogue = await expectRefused(tb, untrustedCredentials())
      t.notOk(typeof rogue.code === 'number', `no CONNACK code: ${rogue.message}`)
      await waitFor(() => tb.events('connect.refused').length >= before + 2)
      await sleep(100)
      const lines = tb.events('connect.refused').slice(before)
      t.equal(lines.length, 2, 'exactly one line per refusal')
      // told apart (CONTRACT §6): no certificate, unknown CA
      t.same(lines.map((l) => l.errorCode), ['NoClientCertificate', 'UnknownIssuer'])
    })

    t.test('the service certificate connects, username and password ignored', async (t) => {
      const c = await connect(tb, credentials(tb.pki, 'service'), { username: '?SDK=Test&Version=1', password: 'secret-password' })
      t.ok(c.connected)
      await endClient(c)
      // Aedes emits clientReady (which writes the line) independently of the CONNACK the client already has
      await waitFor(() => tb.events('connect.accepted').some((l) => l.role === 'service'), 5000, 'connect.accepted').catch(() => undefined)
      const accepted = tb.events('connect.accepted').find((l) => l.role === 'service')
      t.ok(accepted, 'connect.accepted audited')
      t.notOk(tb.audit.raw.some((l) => l.includes('secret-password')), 'password never logged')
    })

    t.test('unregistered, revoked and wrong-client-id devices are refused with one audit line each', async (t) => {
      const unknown = await expectRefused(tb, unregisteredDevice(tb, 'ghost-1'), 'ghost-1')
      t.equal(unknown.code, 5, 'unregistered device: CONNACK 5')

      const revoked = await registerDevice(tb, 'revoked-1')
      await tb.handle.registry.revokeDevice('revoked-1')
      const r = await expectRefused(tb, revoked, 'revoked-1')
      t.equal(r.code, 5, 'revoked device: CONNACK 5')

      const good = await registerDevice(tb, 'dev-wrongid')
      const w = await expectRefused(tb, good, 'not-my-id')
      t.ok(w.code === 2 || w.code === 5, `wrong client id refused with CONNACK ${String(w.code)}`)

      // the MQTT refusals, not the handshake failures of the first test
      const refused = tb.events('connect.refused').filter((l) => l.clientId !== undefined)
      t.same(refused.map((l) => l.errorCode), ['UnknownCertificate', 'DeviceRevoked', 'ClientIdMismatch'])
      t.same(refused.map((l) => l.clientId), ['ghost-1', 'revoked-1', 'not-my-id'])
    })

    t.test('a device only touches its own topics', async (t) => {
      const x = await registerDevice(tb, 'dev-x')
      await registerDevice(tb, 'dev-y')
      const service = await connect(tb, credentials(tb.pki, 'service'))
      t.same(await subscribe(service, ['devices/+/telemetry', 'devices/+/config']), [1, 1], 'service may read telemetry and config')
      const seen = collect(service)
      const dx = await connect(tb, x, { clientId: 'dev-x' })

      t.same(await subscribe(dx, 'devices/dev-y/config'), [128], 'other device config refused')
      t.same(await subscribe(dx, 'devices/#'), [128], 'devices/# refused')
      t.same(await subscribe(dx, '#'), [128], '# refused')
      t.same(await subscribe(dx, 'devices/+/commands/+'), [128], 'a wildcard reaching other devices refused')
      t.same(await subscribe(dx, 'devices/dev-x/commands/+'), [1], 'own commands granted')

      await publish(dx, 'devices/dev-y/telemetry', '{"ts":1,"seq":1,"values":{}}')
      await publish(dx, 'devices/dev-x/telemetry', '{"ts":1,"seq":2,"values":{}}')
      await waitFor(() => seen.length >= 1)
      await sleep(200)
      t.same(seen.map((m) => m.topic), ['devices/dev-x/telemetry'], 'only the own-topic publish was routed')
      t.ok(dx.connected, 'a refused publish does not disconnect')
      t.ok(tb.events('publish.denied').some((l) => l.topic === 'devices/dev-y/telemetry' && l.deviceId === 'dev-x'), 'publish.denied audited')
      t.equal(tb.events('subscribe.denied').filter((l) => l.clientId === 'dev-x').length, 4, 'subscribe.denied audited once per refusal')
      await endClient(dx)
      await endClient(service)
    })

    t.test('a claim connection can touch nothing outside $provision/', async (t) => {
      const service = await connect(tb, credentials(tb.pki, 'service'))
      await subscribe(service, 'devices/+/telemetry')
      const seen = collect(service)
      const claim = await connect(tb, credentials(tb.pki, 'claim'))
      t.same(await subscribe(claim, 'devices/+/telemetry'), [128])
      t.same(await subscribe(claim, '$provision/#'), [128])
      t.same(await subscribe(claim, '#'), [128])
      t.same(await subscribe(claim, '$provision/certificates/create/json/accepted'), [1], 'its own reply topic is allowed')
      await publish(claim, 'devices/dev-x/telemetry', '{"ts":1,"seq":1,"values":{}}')
      await sleep(200)
      t.equal(seen.length, 0, 'claim publish to devices/... not routed')
      await endClient(claim)
      await endClient(service)
    })

    t.test('a config acknowledgement is audited', async (t) => {
      const creds = await registerDevice(tb, 'dev-ack')
      // version 1, as registration would commit it: an ack of a version the broker never made is stale
      await tb.handle.configs.apply('dev-ack', { template: 'sensor', config: { telemetryIntervalSeconds: 60 }, author: 'registration' })
      const d = await connect(tb, creds, { clientId: 'dev-ack' })
      await publish(d, 'devices/dev-ack/config/ack', JSON.stringify({ version: 1, status: 'applied' }))
      await waitFor(() => tb.events('config.acknowledged').some((l) => l.deviceId === 'dev-ack'))
      const line = tb.events('config.acknowledged').find((l) => l.deviceId === 'dev-ack')
      t.equal(line?.version, 1)
      t.equal(line?.reason, 'applied')
      await endClient(d)
    })

    t.test('$SYS stays reserved', async (t) => {
      const service = await connect(tb, credentials(tb.pki, 'service'))
      t.same(await subscribe(service, '$SYS/#'), [128])
      await endClient(service)
    })

    t.test('a refused subscription kept in a persistent session never delivers', async (t) => {
      const p = await registerDevice(tb, 'dev-p')
      let dp = await connect(tb, p, { clientId: 'dev-p', clean: false })
      t.same(await subscribe(dp, ['devices/dev-p/commands/+', 'devices/dev-q/commands/+']), [1, 128])
      await endClient(dp)
      const service = await connect(tb, credentials(tb.pki, 'service'))
      await publish(service, 'devices/dev-q/commands/reboot', '{"name":"reboot","args":{}}')
      await publish(service, 'devices/dev-p/commands/reboot', '{"name":"reboot","args":{}}')
      await endClient(service)
      const back = await connectCollecting(tb, p, { clientId: 'dev-p', clean: false })
      dp = back.client
      const got = back.got
      await waitFor(() => got.length >= 1)
      await sleep(300)
      t.same(got.map((m) => m.topic), ['devices/dev-p/commands/reboot'])
      await endClient(dp)
    })

    t.test('HTTP: healthz, readyz, metrics', async (t) => {
      const base = `http://127.0.0.1:${tb.httpPort}`
      t.equal((await fetch(`${base}/healthz`)).status, 200)
      t.equal((await fetch(`${base}/readyz`)).status, 200)
      const metrics = await (await fetch(`${base}/metrics`)).text()
      t.match(metrics, /jitp_connect_refusals_total\{reason="UnknownCertificate"\} [1-9]/)
      t.match(metrics, /jitp_denials_total\{action="subscribe",rule="default-deny"\} [1-9]/)
      t.match(metrics, /jitp_publishes_total\{role="device"\} [1-9]/)
    })

    t.test('audit lines carry no secrets', async (t) => {
      t.notOk(tb.audit.raw.some((l) => l.includes('PRIVATE KEY') || l.includes('BEGIN CERTIFICATE')))
      for (const line of tb.audit.lines) {
        t.type(line.time, 'number')
        t.type(line.event, 'string')
      }
    })
  })
}
