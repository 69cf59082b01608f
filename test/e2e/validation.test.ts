/**
 * Payload validation on every publish (CONTRACT §5), over real TLS and MQTT.js,
 * with the in-memory store and with Redis.
 */
import t from 'tap'
import { spawnSync } from 'node:child_process'
import { cpSync, mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { defaultPolicy } from '../../plugins/policy.js'
import {
  STORES, collect, connect, credentials, endClient, publish, registerDevice, sleep, startBroker,
  subscribe, waitFor
} from '../helpers/broker.js'

const policyDir = mkdtempSync(join(tmpdir(), 'jitp-policy-'))
const base = defaultPolicy({ awsTopics: false })
// a device topic the policy allows but no schema maps, to exercise NoSchema
const withDebug = {
  permissions: base.permissions,
  rules: [...base.rules, { name: 'device-debug', role: 'device', actions: ['publish'], topics: ['devices/${deviceId}/debug'] }, { name: 'service-debug', role: 'service', actions: ['subscribe'], topics: ['devices/+/debug'] }]
}
const POLICY_FILE = join(policyDir, 'policy.json')
writeFileSync(POLICY_FILE, JSON.stringify(withDebug))
const NO_PII_POLICY = join(policyDir, 'no-pii.json')
writeFileSync(NO_PII_POLICY, JSON.stringify({ ...withDebug, permissions: {} }))

const telemetry = (seq: number): string => JSON.stringify({ ts: 1763769600000, seq, values: { temperature: 21.5, door: 'open' } })

for (const store of STORES) {
  t.test(`validation (${store})`, async (t) => {
    const tb = await startBroker({ store, overrides: { POLICY_FILE, MAX_PAYLOAD_BYTES: 1024, BAD_PAYLOADS_PER_MINUTE: 10_000 } })
    t.teardown(() => tb.close())

    t.test('each error code: PUBACK, connection open, nothing routed, report to the device, one audit line', async (t) => {
      const creds = await registerDevice(tb, 'val-1')
      const service = await connect(tb, credentials(tb.pki, 'service'))
      await subscribe(service, ['devices/+/telemetry', 'devices/+/state', 'devices/+/debug'])
      const routed = collect(service)
      const device = await connect(tb, creds, { clientId: 'val-1' })
      await subscribe(device, 'devices/val-1/errors')
      const reports = collect(device)
      const cases: Array<[string, string | Buffer, string]> = [
        ['devices/val-1/debug', '{"a":1}', 'NoSchema'],
        ['devices/val-1/telemetry', '{"ts": 1, "values": ', 'InvalidJson'],
        ['devices/val-1/telemetry', Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), 'InvalidJson'],
        ['devices/val-1/telemetry', JSON.stringify({ ts: 1, values: { big: 'x'.repeat(2000) } }), 'PayloadTooLarge'],
        ['devices/val-1/telemetry', JSON.stringify({ ts: '1763769600000', seq: 1, values: {} }), 'SchemaViolation'],
        ['devices/val-1/state', JSON.stringify({ ts: 1763769600000, status: 42 }), 'SchemaViolation']
      ]
      for (const [topic, payload, code] of cases) {
        const before = tb.events('payload.rejected').length
        await publish(device, topic, payload, { qos: 1 }) // resolves only on PUBACK
        await waitFor(() => reports.length > 0 && JSON.parse(reports[reports.length - 1]!.payload).topic === topic && tb.events('payload.rejected').length > before, 3000, `report for ${code}`)
        const report = JSON.parse(reports.pop()!.payload) as { errorCode: string, errors: unknown[], at: number }
        reports.length = 0
        t.equal(report.errorCode, code, `${code}: reported on devices/val-1/errors`)
        t.ok(Array.isArray(report.errors) && report.errors.length >= 1, `${code}: errors listed`)
        t.type(report.at, 'number')
        await sleep(50)
        const lines = tb.events('payload.rejected').slice(before)
        t.equal(lines.length, 1, `${code}: exactly one audit line`)
        t.equal(lines[0]?.errorCode, code)
        t.ok(device.connected, `${code}: connection stays open`)
      }
      await publish(device, 'devices/val-1/telemetry', telemetry(1))
      await waitFor(() => routed.length >= 1)
      t.same(routed.map((m) => m.topic), ['devices/val-1/telemetry'], 'only the valid message was routed')
      t.same(JSON.parse(routed[0]!.payload), JSON.parse(telemetry(1)))
      await endClient(device)
      await endClient(service)
    })

    t.test('10,000 QoS 1 messages, every tenth invalid: exactly the 9,000 valid ones arrive, in order', async (t) => {
      const creds = await registerDevice(tb, 'val-bulk')
      const service = await connect(tb, credentials(tb.pki, 'service'))
      await subscribe(service, 'devices/val-bulk/telemetry', 1)
      const got: number[] = []
      service.on('message', (_topic, payload) => got.push((JSON.parse(payload.toString()) as { seq: number }).seq))
      const device = await connect(tb, creds, { clientId: 'val-bulk' })
      const sends: Array<Promise<void>> = []
      for (let i = 0; i < 10_000; i++) {
        const payload = i % 10 === 9 ? JSON.stringify({ ts: 'bad', seq: i, values: {} }) : telemetry(i)
        sends.push(publish(device, 'devices/val-bulk/telemetry', payload, { qos: 1 }))
      }
      await Promise.all(sends)
      await waitFor(() => got.length >= 9000, 60_000, '9000 messages')
      await sleep(300)
      t.equal(got.length, 9000, 'exactly 9,000 delivered')
      const expected = Array.from({ length: 10_000 }, (_, i) => i).filter((i) => i % 10 !== 9)
      t.ok(got.every((v, i) => v === expected[i]), 'in order, none invalid')
      t.ok(device.connected, 'the device was not disconnected')
      await endClient(device)
      await endClient(service)
    })

    t.test('a bad retained publish leaves the previous retained value', async (t) => {
      const creds = await registerDevice(tb, 'val-ret')
      const device = await connect(tb, creds, { clientId: 'val-ret' })
      await publish(device, 'devices/val-ret/state', JSON.stringify({ ts: 1763769600000, status: 'online' }), { retain: true })
      await publish(device, 'devices/val-ret/state', '{"status":', { retain: true })
      await endClient(device)
      const service = await connect(tb, credentials(tb.pki, 'service'))
      const got = collect(service)
      await subscribe(service, 'devices/val-ret/state')
      await waitFor(() => got.length >= 1)
      await sleep(200)
      t.equal(got.length, 1)
      t.same(JSON.parse(got[0]!.payload), { ts: 1763769600000, status: 'online' })
      t.equal(got[0]!.retain, true)
      await endClient(service)
    })

    t.test('an invalid will leaves no will behind; a valid one is published', async (t) => {
      const bad = await registerDevice(tb, 'val-will-bad')
      const good = await registerDevice(tb, 'val-will-good')
      const service = await connect(tb, credentials(tb.pki, 'service'))
      await subscribe(service, 'devices/+/state')
      const got = collect(service)
      const before = tb.events('payload.rejected').length
      const d1 = await connect(tb, bad, { clientId: 'val-will-bad', will: { topic: 'devices/val-will-bad/state', payload: Buffer.from('not json'), qos: 1, retain: false } })
      t.equal(tb.events('payload.rejected').length, before + 1, 'the bad will is audited at connect')
      const d2 = await connect(tb, good, { clientId: 'val-will-good', will: { topic: 'devices/val-will-good/state', payload: Buffer.from(JSON.stringify({ ts: 1, status: 'lost' })), qos: 1, retain: false } })
      d1.stream.destroy()
      d2.stream.destroy()
      await waitFor(() => got.length >= 1)
      await sleep(300)
      t.same(got.filter((m) => m.topic.includes('val-will')).map((m) => m.topic), ['devices/val-will-good/state'])
      await endClient(service)
    })

    t.test('x-pii fields: never in the audit log, kept for a service with pii', async (t) => {
      const creds = await registerDevice(tb, 'val-pii')
      const service = await connect(tb, credentials(tb.pki, 'service'))
      await subscribe(service, 'devices/val-pii/telemetry')
      const got = collect(service)
      const device = await connect(tb, creds, { clientId: 'val-pii' })
      await publish(device, 'devices/val-pii/telemetry', JSON.stringify({ ts: 1, seq: 1, values: { t: 1 }, owner: 'Jane Roe' }))
      await publish(device, 'devices/val-pii/telemetry', JSON.stringify({ ts: 'x', owner: 'John Doe' })) // rejected
      await waitFor(() => got.length >= 1)
      t.equal((JSON.parse(got[0]!.payload) as { owner?: string }).owner, 'Jane Roe', 'service with pii gets the field')
      t.notOk(tb.audit.raw.some((l) => l.includes('Jane Roe') || l.includes('John Doe')), 'no personal data in the audit log')
      await endClient(device)
      await endClient(service)
    })
  })
}

t.test('x-pii fields are removed for a service without the pii permission', async (t) => {
  const tb = await startBroker({ store: 'memory', overrides: { POLICY_FILE: NO_PII_POLICY } })
  t.teardown(() => tb.close())
  const creds = await registerDevice(tb, 'pii-2')
  const s1 = await connect(tb, credentials(tb.pki, 'service'), { clientId: 'svc-a' })
  const s2 = await connect(tb, credentials(tb.pki, 'service'), { clientId: 'svc-b' })
  await subscribe(s1, 'devices/pii-2/telemetry')
  await subscribe(s2, 'devices/pii-2/telemetry')
  const g1 = collect(s1)
  const g2 = collect(s2)
  const device = await connect(tb, creds, { clientId: 'pii-2' })
  await publish(device, 'devices/pii-2/telemetry', JSON.stringify({ ts: 1, seq: 1, values: { t: 1 }, owner: 'Jane Roe' }))
  await waitFor(() => g1.length >= 1 && g2.length >= 1)
  for (const g of [g1, g2]) {
    const m = JSON.parse(g[0]!.payload) as Record<string, unknown>
    t.notOk('owner' in m, 'owner removed')
    t.same(m.values, { t: 1 }, 'the rest intact')
  }
  await endClient(device)
  await endClient(s1)
  await endClient(s2)
})

t.test('the repeat-offender limit disconnects a flooding client, which can reconnect', async (t) => {
  const tb = await startBroker({ store: 'memory', overrides: { BAD_PAYLOADS_PER_MINUTE: 5 } })
  t.teardown(() => tb.close())
  const creds = await registerDevice(tb, 'flood-1')
  const device = await connect(tb, creds, { clientId: 'flood-1' })
  const closed = new Promise<void>((resolve) => device.once('close', () => resolve()))
  for (let i = 0; i < 10; i++) device.publish('devices/flood-1/telemetry', 'garbage', { qos: 0 })
  await closed
  t.pass('disconnected')
  t.equal(tb.events('client.disconnected.offender').length, 1, 'audited once')
  device.end(true)
  const again = await connect(tb, creds, { clientId: 'flood-1' })
  t.ok(again.connected, 'can reconnect')
  await endClient(again)
})

t.test('a malformed schema or a duplicate mapping stops the start, naming the file', async (t) => {
  const cli = resolve('dist/bin/aedes-jitp.js')
  const pkiDir = (await startBrokerPkiDir())
  for (const [name, mutate] of [
    ['malformed schema', (dir: string) => writeFileSync(join(dir, 'state.json'), '{"type": "object", "properties": {"a": {"type": "strnig"}}}')],
    ['duplicate mapping', (dir: string) => writeFileSync(join(dir, 'topics.json'), '{"topics": {"devices/+/state": {"schema": "state.json"}, "devices/+/state": {"schema": "telemetry.json"}}}')]
  ] as const) {
    const dir = mkdtempSync(join(tmpdir(), 'jitp-schemas-'))
    cpSync(resolve('schemas'), dir, { recursive: true })
    mutate(dir)
    const run = spawnSync(process.execPath, [cli, 'start'], {
      encoding: 'utf8',
      timeout: 20000,
      env: { ...process.env, SCHEMAS_DIR: dir, CERTS_DIR: pkiDir, MQTTS_PORT: '0', HTTP_PORT: '0', ADMIN_PORT: '0', HOST: '127.0.0.1', REDIS_URL: '', LOG_LEVEL: 'silent', AUDIT_LOG: join(dir, 'audit.log') }
    })
    t.not(run.status, 0, `${name}: non-zero exit`)
    t.match(run.stderr, name === 'malformed schema' ? /state\.json/ : /topics\.json/, `${name}: names the file`)
  }
})

async function startBrokerPkiDir (): Promise<string> {
  const { devPki } = await import('../helpers/broker.js')
  return (await devPki()).dir
}
