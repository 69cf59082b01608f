/**
 * Just-in-time provisioning over real TLS sockets with MQTT.js, in memory and
 * against a real redis-server (CONTRACT §3).
 */
import t, { type Test } from 'tap'
import { cpSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { generateKeyPairSync } from 'node:crypto'
import { createCsr, generateKeyPair } from '../../pki/keys.js'
import {
  STORES, collect, connect, credentials, endClient, publish, sleep, startBroker, subscribe, waitFor, type TestBroker
} from '../helpers/broker.js'
import { claimConnect, newCsr, provision, request } from '../helpers/provisioning.js'

const templatesDir = mkdtempSync(join(tmpdir(), 'jitp-templates-'))
cpSync(resolve('templates'), templatesDir, { recursive: true })
const sensor = { parameters: { type: 'object', required: ['serialNumber'], properties: { serialNumber: { type: 'string', pattern: '^[A-Z0-9-]{4,32}$' } } }, configuration: { interval: 5 } }
writeFileSync(join(templatesDir, 'allowlisted.json'), JSON.stringify({ ...sensor, deviceId: 'allow-${serialNumber}', preProvisioningCheck: { allow: { serialNumber: ['AAAA-0001'] } } }))
writeFileSync(join(templatesDir, 'replaceable.json'), JSON.stringify({ ...sensor, deviceId: 'repl-${serialNumber}', reprovision: 'replace' }))
writeFileSync(join(templatesDir, 'hooked.json'), JSON.stringify({ ...sensor, deviceId: 'hook-${serialNumber}', preProvisioningCheck: { module: 'checks/hook.mjs' } }))
writeFileSync(join(templatesDir, 'hung.json'), JSON.stringify({ ...sensor, deviceId: 'hung-${serialNumber}', preProvisioningCheck: { module: 'checks/hang.mjs' } }))
mkdirSync(join(templatesDir, 'checks'), { recursive: true })
writeFileSync(join(templatesDir, 'checks/hook.mjs'), `export default async function check (request) {
  if (request.parameters.serialNumber.startsWith('DENY')) return { allow: false, reason: 'serial on deny list' }
  return { allow: true, parameterOverrides: { serialNumber: request.parameters.serialNumber + '-X' } }
}\n`)
writeFileSync(join(templatesDir, 'checks/hang.mjs'), 'export default function hang () { return new Promise(() => {}) }\n')

const REGISTER = '$provision/templates/sensor/provision/json'
const CSR_TOPIC = '$provision/certificates/create-from-csr/json'

async function deviceCount (tb: TestBroker): Promise<number> {
  return (await tb.handle.registry.listDevices()).length
}

/** First contact as the new device: retained config v1, telemetry reaches a service. */
async function firstContact (t: Test, tb: TestBroker, deviceId: string, creds: { cert: string, key: string }): Promise<void> {
  const service = await connect(tb, credentials(tb.pki, 'service'))
  await subscribe(service, 'devices/+/telemetry')
  const telemetry = collect(service)
  const device = await connect(tb, creds, { clientId: deviceId })
  const inbox = collect(device)
  t.same(await subscribe(device, `devices/${deviceId}/config`), [1], 'the device may read its config')
  await waitFor(() => inbox.length >= 1, 5000, 'retained config')
  t.same(JSON.parse(inbox[0]!.payload), { version: 1, config: { telemetryIntervalSeconds: 60, reportState: true } }, 'retained version 1 of the template config')
  t.equal(inbox[0]!.retain, true)
  await publish(device, `devices/${deviceId}/telemetry`, JSON.stringify({ ts: 1763769600000, seq: 1, values: { temperature: 21.5 } }))
  await waitFor(() => telemetry.length >= 1, 5000, 'telemetry at the service')
  t.equal(telemetry[0]!.topic, `devices/${deviceId}/telemetry`)
  await endClient(device)
  await endClient(service)
}

for (const store of STORES) {
  t.test(`provisioning (${store})`, async (t) => {
    let clock = Date.now()
    const tb = await startBroker({ store, now: () => clock, overrides: { TEMPLATES_DIR: templatesDir } })
    t.teardown(() => tb.close())

    for (const mode of ['ec', 'rsa', 'generated'] as const) {
      t.test(`end to end: ${mode === 'generated' ? 'broker-generated keys' : `${mode.toUpperCase()} CSR`}`, async (t) => {
        const serial = `${mode.toUpperCase()}-${store.toUpperCase()}-1`
        const p = await provision(tb, serial, mode)
        t.equal(p.deviceId, `sensor-${serial}`)
        t.equal(p.register.configTopic, `devices/sensor-${serial}/config`)
        t.same(p.register.deviceConfiguration, { telemetryIntervalSeconds: 60, reportState: true })
        await firstContact(t, tb, p.deviceId, p.creds)
        const device = await tb.handle.registry.getDevice(p.deviceId)
        t.equal(device?.template, 'sensor')
        t.ok(tb.events('device.registered').some((l) => l.deviceId === p.deviceId))
        t.ok(tb.events('provision.certificate.issued').length >= 1)
      })
    }

    t.test('two claim connections on one claim certificate each see only their own replies', async (t) => {
      const a = await claimConnect(tb, 'claim-a')
      const b = await claimConnect(tb, 'claim-b')
      const topics = [`${CSR_TOPIC}/accepted`, `${CSR_TOPIC}/rejected`]
      await subscribe(a, topics)
      await subscribe(b, topics)
      const gotA = collect(a)
      const gotB = collect(b)
      a.publish(CSR_TOPIC, JSON.stringify({ certificateSigningRequest: newCsr('ec').csr }), { qos: 1 })
      b.publish(CSR_TOPIC, JSON.stringify({ certificateSigningRequest: 'garbage' }), { qos: 1 })
      await waitFor(() => gotA.length >= 1 && gotB.length >= 1)
      await sleep(300)
      t.same(gotA.map((m) => m.topic), [`${CSR_TOPIC}/accepted`], 'A: only its accepted reply')
      t.same(gotB.map((m) => m.topic), [`${CSR_TOPIC}/rejected`], 'B: only its rejected reply')
      a.publish(CSR_TOPIC, '{"certificateSigningRequest": 1}', { qos: 1 })
      await waitFor(() => gotA.length >= 2)
      await sleep(300)
      t.equal(gotB.length, 1, 'B never sees A\'s rejection')
      t.equal(JSON.parse(gotA[1]!.payload).statusCode, 400)
      await endClient(a)
      await endClient(b)
    })

    t.test('bad requests: each rejected with the contract code, nothing registered, broker up', async (t) => {
      const claim = await claimConnect(tb, 'claim-bad')
      const before = await deviceCount(tb)
      const expectRejected = async (name: string, topic: string, payload: unknown, statusCode: number, errorCode: string, message?: RegExp): Promise<void> => {
        const r = await request(claim, topic, payload)
        t.equal(r.outcome, 'rejected', `${name}: rejected`)
        t.equal(r.body.statusCode, statusCode, `${name}: ${statusCode}`)
        t.equal(r.body.errorCode, errorCode, `${name}: ${errorCode}`)
        if (message) t.match(String(r.body.errorMessage), message, `${name}: message`)
      }
      const created = async (): Promise<string> => {
        const r = await request(claim, CSR_TOPIC, { certificateSigningRequest: newCsr('ec').csr })
        return String(r.body.certificateOwnershipToken)
      }
      // certificates
      await expectRejected('garbage CSR', CSR_TOPIC, { certificateSigningRequest: 'not a csr' }, 400, 'InvalidCsr')
      const good = newCsr('ec').csr
      const b64 = good.split('\n').filter((l) => l && !l.startsWith('-----')).join('')
      const der = Buffer.from(b64, 'base64')
      der[der.length - 5]! ^= 0xff
      const badSig = `-----BEGIN CERTIFICATE REQUEST-----\n${der.toString('base64').replace(/(.{64})/g, '$1\n')}\n-----END CERTIFICATE REQUEST-----\n`
      await expectRejected('CSR with a bad signature', CSR_TOPIC, { certificateSigningRequest: badSig }, 400, 'InvalidCsr')
      const rsa1024 = generateKeyPairSync('rsa', { modulusLength: 1024 })
      await expectRejected('RSA-1024 CSR', CSR_TOPIC, { certificateSigningRequest: createCsr({ commonName: 'x', ...rsa1024 }) }, 400, 'InvalidCsr')
      const ed = generateKeyPairSync('ed25519')
      await expectRejected('Ed25519 CSR', CSR_TOPIC, { certificateSigningRequest: createCsr({ commonName: 'x', ...ed }) }, 400, 'InvalidCsr')
      await expectRejected('not JSON', CSR_TOPIC, '{"certificateSigningRequest":', 400, 'InvalidRequest')
      // registration
      await expectRejected('unknown template', '$provision/templates/nope/provision/json', { certificateOwnershipToken: await created(), parameters: { serialNumber: 'ABCD' } }, 404, 'TemplateNotFound')
      await expectRejected('parameters failing the schema', REGISTER, { certificateOwnershipToken: await created(), parameters: { serialNumber: 'lower case!' } }, 400, 'InvalidParameters', /serialNumber/)
      await expectRejected('missing parameter', REGISTER, { certificateOwnershipToken: await created(), parameters: {} }, 400, 'InvalidParameters', /serialNumber/)
      await expectRejected('allow-list refusal', '$provision/templates/allowlisted/provision/json', { certificateOwnershipToken: await created(), parameters: { serialNumber: 'BBBB-0002' } }, 403, 'ProvisioningDenied')
      await expectRejected('hook refusal', '$provision/templates/hooked/provision/json', { certificateOwnershipToken: await created(), parameters: { serialNumber: 'DENY-1' } }, 403, 'ProvisioningDenied', /deny list/)
      await expectRejected('unknown token', REGISTER, { certificateOwnershipToken: 'made-up', parameters: { serialNumber: 'ABCD' } }, 400, 'InvalidCertificateOwnershipToken')

      const replayed = await created()
      const first = await request(claim, REGISTER, { certificateOwnershipToken: replayed, parameters: { serialNumber: `REPLAY-${store.toUpperCase()}` } })
      t.equal(first.outcome, 'accepted', 'first use of a token works')
      await expectRejected('replayed token', REGISTER, { certificateOwnershipToken: replayed, parameters: { serialNumber: `REPLAY2-${store.toUpperCase()}` } }, 400, 'InvalidCertificateOwnershipToken')

      const expiring = await created()
      clock += 3600_000 + 1
      await expectRejected('expired token', REGISTER, { certificateOwnershipToken: expiring, parameters: { serialNumber: 'EXPIRED-1' } }, 400, 'InvalidCertificateOwnershipToken')

      const other = await claimConnect(tb, 'claim-other')
      const stolen = String((await request(other, CSR_TOPIC, { certificateSigningRequest: newCsr('ec').csr })).body.certificateOwnershipToken)
      await expectRejected('token from another connection', REGISTER, { certificateOwnershipToken: stolen, parameters: { serialNumber: 'STOLEN-1' } }, 400, 'InvalidCertificateOwnershipToken')
      await endClient(other)

      t.equal(await deviceCount(tb), before + 1, 'only the one good registration happened')
      t.ok(claim.connected, 'the claim connection is still up')
      const hooked = await request(claim, '$provision/templates/hooked/provision/json', { certificateOwnershipToken: await created(), parameters: { serialNumber: 'OK-1' } })
      t.equal(hooked.body.deviceId, 'hook-OK-1-X', 'a hook may override parameters')
      const rejections = tb.events('provision.rejected')
      t.ok(rejections.length >= 14, 'every rejection audited')
      t.notOk(tb.audit.raw.some((l) => l.includes(replayed) || l.includes('BEGIN CERTIFICATE')), 'no token or CSR in the audit log')
      await endClient(claim)
    })

    t.test('device-id collision follows the template reprovision policy', async (t) => {
      const first = await provision(tb, `COLL-${store.toUpperCase()}`, 'ec')
      let err: Error | undefined
      try { await provision(tb, `COLL-${store.toUpperCase()}`, 'ec') } catch (e) { err = e as Error }
      t.match(err?.message, /DeviceExists/, 'deny: DeviceExists')
      t.match(err?.message, /"statusCode":400/)

      const claim = await claimConnect(tb)
      const token = async (): Promise<string> => String((await request(claim, CSR_TOPIC, { certificateSigningRequest: newCsr('ec').csr })).body.certificateOwnershipToken)
      const topic = '$provision/templates/replaceable/provision/json'
      const r1 = await request(claim, topic, { certificateOwnershipToken: await token(), parameters: { serialNumber: 'SAME' } })
      const r2 = await request(claim, topic, { certificateOwnershipToken: await token(), parameters: { serialNumber: 'SAME' } })
      t.equal(r1.outcome, 'accepted')
      t.equal(r2.outcome, 'accepted', 'replace: accepted again')
      const old = await tb.handle.registry.getCertificate(String(r1.body.certificateId))
      t.equal(old?.status, 'revoked', 'replace: the old certificate is revoked')
      await endClient(claim)
      t.ok(first.deviceId)
    })

    t.test('a manufacturer certificate connects on its very first attempt and is registered', async (t) => {
      const creds = credentials(tb.pki, 'manufacturer-device')
      t.equal(await tb.handle.registry.getDevice('mfg-0001'), null, 'not registered before')
      const device = await connect(tb, creds, { clientId: 'mfg-0001' })
      t.ok(device.connected, 'first attempt succeeds')
      const inbox = collect(device)
      await subscribe(device, 'devices/mfg-0001/config')
      await waitFor(() => inbox.length >= 1)
      t.same(JSON.parse(inbox[0]!.payload).version, 1, 'initial config retained')
      await endClient(device)
      t.equal((await tb.handle.registry.getDevice('mfg-0001'))?.template, 'factory')
      const again = await connect(tb, creds, { clientId: 'mfg-0001' })
      t.ok(again.connected, 'and again as a registered device')
      await endClient(again)
      t.equal(tb.events('device.registered').filter((l) => l.deviceId === 'mfg-0001').length, 1, 'registered once')
    })

    t.test('AWS topics are off unless enabled', async (t) => {
      const claim = await claimConnect(tb)
      t.same(await subscribe(claim, '$aws/certificates/create/json/accepted'), [128])
      await endClient(claim)
    })
  })
}

t.test('PROVISIONING_AWS_TOPICS=1: the flow on $aws topics, with thingName, using the create-step certificate', async (t) => {
  const tb = await startBroker({ store: 'memory', overrides: { PROVISIONING_AWS_TOPICS: true } })
  t.teardown(() => tb.close())
  const p = await provision(tb, 'AWS-0001', 'generated', { prefix: '$aws' })
  t.equal(p.register.thingName, 'sensor-AWS-0001')
  t.equal(p.register.deviceId, 'sensor-AWS-0001')
  // AWS firmware keeps the certificate from the create step
  await firstContact(t, tb, p.deviceId, { cert: p.createCertificatePem, key: p.creds.key })
  await firstContact(t, tb, p.deviceId, p.creds)
})

t.test('claim limits: session time limit, throttle returns 429 and recovers', async (t) => {
  let clock = Date.now()
  const tb = await startBroker({ store: 'memory', now: () => clock, overrides: { CLAIM_SESSION_MAX_SECONDS: 1, PROVISION_RATE_PER_CLAIM_CERT: 3 } })
  t.teardown(() => tb.close())
  const claim = await claimConnect(tb)
  const closed = new Promise<number>((resolve) => { const start = Date.now(); claim.once('close', () => resolve(Date.now() - start)) })
  const codes: unknown[] = []
  for (let i = 0; i < 4; i++) codes.push((await request(claim, '$provision/certificates/create/json', {})).body.statusCode ?? 'accepted')
  t.same(codes, ['accepted', 'accepted', 'accepted', 429], 'the fourth request is throttled')
  const after = await closed
  t.ok(after < 2500, `claim session closed at its limit (${after} ms)`)
  t.equal(tb.events('claim.session.expired').length, 1)
  clock += 60_000
  const again = await claimConnect(tb)
  t.equal((await request(again, '$provision/certificates/create/json', {})).outcome, 'accepted', 'throttle recovered')
  again.end(true)
  const persistent = await connect(tb, credentials(tb.pki, 'claim'), { clean: false, clientId: 'claim-persist' }).then(() => 'accepted', (e: Error & { code?: number }) => e.code)
  t.equal(persistent, 5, 'a claim session must be clean')
})

t.test('a pre-provisioning hook that hangs is refused after 5 s and audited', async (t) => {
  const tb = await startBroker({ store: 'memory', overrides: { TEMPLATES_DIR: templatesDir } })
  t.teardown(() => tb.close())
  const claim = await claimConnect(tb)
  const token = String((await request(claim, CSR_TOPIC, { certificateSigningRequest: newCsr('ec').csr })).body.certificateOwnershipToken)
  const start = Date.now()
  const r = await request(claim, '$provision/templates/hung/provision/json', { certificateOwnershipToken: token, parameters: { serialNumber: 'HANG-1' } }, 10_000)
  const took = Date.now() - start
  t.equal(r.body.statusCode, 403)
  t.equal(r.body.errorCode, 'ProvisioningDenied')
  t.ok(took >= 4900 && took < 8000, `refused after ~5 s (${took} ms)`)
  t.ok(tb.events('provision.rejected').some((l) => String(l.reason).includes('5 s')), 'audited')
  t.equal(await tb.handle.registry.getDevice('hung-HANG-1'), null)
  await endClient(claim)
  t.ok(generateKeyPair('ec'))
})
