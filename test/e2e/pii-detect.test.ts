/**
 * Inline detection of personal data in unannotated fields (CONTRACT §5), over
 * real TLS, MQTT.js and both stores: one broker per store whose topic map sets
 * each mode on its own topic —
 *   devices/+/telemetry    "detect": "flag"    delivered; one pii.detected line (path and kind, never the value)
 *   devices/+/state        "detect": "redact"  the match replaced in what is routed and in the retained copy
 *   devices/+/telemetry/+  "detect": "reject"  PUBACKed, not routed, PiiDetected report; counts as a bad payload
 */
import t from 'tap'
import { cpSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import {
  STORES, collect, connect, credentials, endClient, publish, registerDevice, startBroker, subscribe, waitFor,
  type TestBroker
} from '../helpers/broker.js'
import { memoryStoreDump, redisDump } from '../helpers/pii.js'

const ADDRESS = 'jane.doe@example.com'

function schemasDir (): string {
  const dir = mkdtempSync(join(tmpdir(), 'jitp-pii-detect-schemas-'))
  cpSync(resolve('schemas'), dir, { recursive: true })
  const map = JSON.parse(readFileSync(join(dir, 'topics.json'), 'utf8')) as { topics: Record<string, Record<string, unknown>> }
  map.topics['devices/+/telemetry'] = { schema: 'telemetry.json', detect: 'flag' }
  map.topics['devices/+/telemetry/+'] = { schema: 'telemetry.json', detect: 'reject' }
  map.topics['devices/+/state'] = { schema: 'state.json', detect: 'redact' }
  writeFileSync(join(dir, 'topics.json'), JSON.stringify(map, null, 2))
  return dir
}
const SCHEMAS_DIR = schemasDir()

async function detections (tb: TestBroker): Promise<Array<{ topic: string, kind: string, value: number }>> {
  const metric = await tb.handle.metrics.piiDetections.get()
  return metric.values.map((v) => ({ topic: String(v.labels.topic), kind: String(v.labels.kind), value: v.value }))
}

for (const store of STORES) {
  t.test(`inline detection (${store})`, async (t) => {
    const tb = await startBroker({ store, overrides: { SCHEMAS_DIR, BAD_PAYLOADS_PER_MINUTE: 3 } })
    t.teardown(() => tb.close())
    const service = await connect(tb, credentials(tb.pki, 'service'), { clientId: `pd-svc-${store}` })
    await subscribe(service, ['devices/+/telemetry', 'devices/+/telemetry/+', 'devices/+/state'])
    const routed = collect(service)

    t.test('flag: delivered as sent, one pii.detected naming the path and the kind, never the value', async (t) => {
      const id = `pd-flag-${store}`
      const device = await connect(tb, await registerDevice(tb, id), { clientId: id })
      const payload = {
        ts: 1763769600000,
        seq: 1,
        values: {
          note: `mail ${ADDRESS}`,
          // look-alikes that are not personal data: a card number failing Luhn, a serial, a timestamp
          card: '4111 1111 1111 1112',
          serial: '0123456789',
          at: '1763769600000',
          firmware: '1.4.2'
        }
      }
      await publish(device, `devices/${id}/telemetry`, JSON.stringify(payload))
      await waitFor(() => routed.some((m) => m.topic === `devices/${id}/telemetry`) && tb.events('pii.detected').some((l) => l.deviceId === id), 5000, 'delivery and audit')
      const got = routed.filter((m) => m.topic === `devices/${id}/telemetry`)
      t.same(got.map((m) => JSON.parse(m.payload) as unknown), [payload], 'delivered unchanged')
      const lines = tb.events('pii.detected').filter((l) => l.deviceId === id)
      t.equal(lines.length, 1, 'exactly one pii.detected line')
      t.match(lines[0], { topic: `devices/${id}/telemetry`, path: '/values/note', kind: 'email', clientId: id, deviceId: id, reason: 'flagged' })
      t.notOk(tb.audit.raw.join('\n').includes(ADDRESS), 'the address appears nowhere in the audit output')
      t.notOk(tb.audit.raw.join('\n').includes('jane.doe'), 'not even its local part')
      t.same(await detections(tb), [{ topic: 'devices/+/telemetry', kind: 'email', value: 1 }], 'counted per topic filter and kind')
      await endClient(device)
    })

    t.test('redact: the service and the retained copy get the address replaced', async (t) => {
      const id = `pd-redact-${store}`
      const device = await connect(tb, await registerDevice(tb, id), { clientId: id })
      const topic = `devices/${id}/state`
      const payload = { ts: 1763769600000, status: 'online', details: { note: `mail ${ADDRESS}`, ok: 'nothing here' } }
      await publish(device, topic, JSON.stringify(payload), { retain: true }) // resolves on PUBACK: stored
      await waitFor(() => routed.some((m) => m.topic === topic), 5000, 'live delivery')
      const redacted = { ts: 1763769600000, status: 'online', details: { note: 'mail [email]', ok: 'nothing here' } }
      t.same(routed.filter((m) => m.topic === topic).map((m) => JSON.parse(m.payload) as unknown), [redacted], 'live: redacted')
      t.match(tb.events('pii.detected').filter((l) => l.deviceId === id), [{ path: '/details/note', kind: 'email', reason: 'redacted' }])

      // the retained copy, as the store holds it and as a late subscriber receives it
      const dump = tb.redis ? await redisDump(tb.redis.url) : await memoryStoreDump(tb.handle.broker, [])
      t.notOk(dump.includes(ADDRESS), 'the store holds no copy of the address')
      t.ok(dump.includes('mail [email]'), 'it holds the redacted state')
      const late = await connect(tb, credentials(tb.pki, 'service'), { clientId: `pd-late-${store}` })
      const retained = collect(late)
      await subscribe(late, topic)
      await waitFor(() => retained.length >= 1, 5000, 'retained delivery')
      t.equal(retained[0]!.retain, true)
      t.same(JSON.parse(retained[0]!.payload), redacted, 'retained: redacted')
      await endClient(late)
      t.notOk(tb.audit.raw.join('\n').includes(ADDRESS), 'nor the audit log')
      await endClient(device)
    })

    t.test('reject: PUBACKed, not routed, PiiDetected on errors, counted as a bad payload', async (t) => {
      const id = `pd-reject-${store}`
      const device = await connect(tb, await registerDevice(tb, id), { clientId: id })
      await subscribe(device, `devices/${id}/errors`)
      const reports = collect(device)
      const topic = `devices/${id}/telemetry/diag`
      const bad = { ts: 1763769600000, seq: 1, values: { note: `mail ${ADDRESS}` } }
      await publish(device, topic, JSON.stringify(bad), { qos: 1 }) // resolves only on PUBACK
      await waitFor(() => reports.length >= 1 && tb.events('payload.rejected').some((l) => l.deviceId === id), 5000, 'report and audit')
      const report = JSON.parse(reports[0]!.payload) as { topic: string, errorCode: string, errors: Array<{ path: string, message: string }> }
      t.equal(report.topic, topic)
      t.equal(report.errorCode, 'PiiDetected')
      t.equal(report.errors[0]!.path, '/values/note')
      t.notOk(reports[0]!.payload.includes(ADDRESS), 'the report does not echo the address')
      t.match(tb.events('payload.rejected').filter((l) => l.deviceId === id), [{ topic, errorCode: 'PiiDetected' }])

      // a clean message on the same topic goes through: the rejected one was not routed before it
      const clean = { ts: 1763769600000, seq: 2, values: { note: 'all quiet' } }
      await publish(device, topic, JSON.stringify(clean), { qos: 1 })
      await waitFor(() => routed.some((m) => m.topic === topic), 5000, 'the clean message')
      t.same(routed.filter((m) => m.topic === topic).map((m) => JSON.parse(m.payload) as unknown), [clean], 'only the clean message was routed')
      t.notOk(tb.audit.raw.join('\n').includes(ADDRESS), 'the audit log holds no address')
      t.ok((await detections(tb)).some((d) => d.topic === 'devices/+/telemetry/+' && d.kind === 'email' && d.value >= 1), 'counted')

      // past BAD_PAYLOADS_PER_MINUTE (3 here) the device is disconnected like any sender of bad payloads
      const closed = new Promise<void>((resolve) => device.once('close', () => resolve()))
      for (let i = 0; i < 3; i++) await publish(device, topic, JSON.stringify({ ...bad, seq: 10 + i }), { qos: 1 })
      await closed
      await waitFor(() => tb.events('client.disconnected.offender').some((l) => l.deviceId === id), 5000, 'the offender audit line')
      t.pass('disconnected after the fourth rejected payload in a minute')
      device.end(true)
    })

    t.test('teardown', async () => { await endClient(service) })
  })
}
