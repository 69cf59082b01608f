/**
 * Attack: a subscriber without the `pii` permission reads personal data from
 * the paths Aedes serves from the store: its offline queue after a reconnect
 * (issue 9: `"owner":"Jane Roe"` came out of the queue), retained messages and
 * wills. And the store itself keeps x-pii values in clear.
 * Defence: x-pii values are sealed (AES-256-GCM envelopes) before anything is
 * stored; every delivery opens them for a `pii` holder and removes them for
 * anyone else (plugins/validation.ts, broker/store/personal-data.ts).
 * Both stores, real TLS, real MQTT.js clients.
 */
import t from 'tap'
import type { MqttClient } from 'mqtt'
import {
  STORES, collect, connect, credentials, endClient, publish, registerDevice, startBroker, subscribe, waitFor
} from '../helpers/broker.js'
import {
  clearValuesIn, piiPolicies, piiSchemasDir, statePayload, stateWithoutPii, storeDump, telemetryPayload
} from '../helpers/pii.js'

const SCHEMAS_DIR = piiSchemasDir()
const policies = piiPolicies()

type Got = ReturnType<typeof collect>
const parsed = (got: Got, topic: string): Array<Record<string, unknown>> =>
  got.filter((m) => m.topic === topic).map((m) => JSON.parse(m.payload) as Record<string, unknown>)

for (const store of STORES) {
  for (const holder of [false, true]) {
    const view = holder ? 'a service with pii' : 'a service without pii'
    t.test(`${view}, ${store} store: offline queue, retained, live and will`, async (t) => {
      const tb = await startBroker({ store, overrides: { SCHEMAS_DIR, POLICY_FILE: holder ? policies.withPii : policies.withoutPii } })
      t.teardown(() => tb.close())
      const deviceId = `pq-${store}-${holder ? 'h' : 'n'}`
      const stateTopic = `devices/${deviceId}/state`
      const teleTopic = `devices/${deviceId}/telemetry`
      const creds = await registerDevice(tb, deviceId)
      const svc = credentials(tb.pki, 'service')

      // a persistent session that goes offline with its subscriptions
      const offline = await connect(tb, svc, { clientId: `svc-q-${deviceId}`, clean: false })
      t.same(await subscribe(offline, [stateTopic, teleTopic], 1), [1, 1])
      await endClient(offline)
      // a live one, connected throughout
      const live = await connect(tb, svc, { clientId: `svc-l-${deviceId}` })
      await subscribe(live, [stateTopic, teleTopic], 1)
      const liveGot = collect(live)

      const device = await connect(tb, creds, { clientId: deviceId })
      await publish(device, stateTopic, JSON.stringify(statePayload()), { qos: 1, retain: true }) // resolves on PUBACK: stored
      await publish(device, teleTopic, JSON.stringify(telemetryPayload(1)), { qos: 1 })
      await waitFor(() => liveGot.length >= 2, 5000, 'live deliveries')

      const expectState = holder ? statePayload() : stateWithoutPii()
      const expectTele = holder ? telemetryPayload(1) : { ts: 1763769600000, seq: 1, values: { t: 21.5 } }
      t.same(parsed(liveGot, stateTopic), [expectState], 'live: state as the view allows')
      t.same(parsed(liveGot, teleTopic), [expectTele], 'live: telemetry as the view allows')

      const dump = await storeDump(tb, [`svc-q-${deviceId}`])
      t.same(clearValuesIn(dump), [], 'the store holds no x-pii value in clear (queue and retained)')
      t.match(dump, /"enc":"[A-Za-z0-9+/=]+","kid":"[0-9a-f]{8}"/, 'it holds envelopes instead')

      // back online: the queue is delivered through the same transform as live traffic
      const back = await connect(tb, svc, { clientId: `svc-q-${deviceId}`, clean: false })
      const queued = collect(back)
      await waitFor(() => queued.length >= 2, 5000, 'queued deliveries')
      t.same(parsed(queued, stateTopic), [expectState], 'offline queue: state as the view allows')
      t.same(parsed(queued, teleTopic), [expectTele], 'offline queue: telemetry as the view allows')
      if (!holder) t.same(clearValuesIn(queued.map((m) => m.payload).join('\n')), [], 'no personal value reached the non-holder')
      await endClient(back)

      // a new subscriber gets the retained state
      const late = await connect(tb, svc, { clientId: `svc-r-${deviceId}` })
      const retained = collect(late)
      await subscribe(late, stateTopic, 1)
      await waitFor(() => retained.length >= 1, 5000, 'retained delivery')
      t.equal(retained[0]!.retain, true)
      t.same(parsed(retained, stateTopic), [expectState], 'retained: as the view allows')
      await endClient(late)

      // a will with personal data: stored sealed while its author is connected, delivered per view
      await endClient(device)
      const willPayload = { ...statePayload(1763769600001), status: 'lost' }
      const withWill: MqttClient = await connect(tb, creds, { clientId: deviceId, will: { topic: stateTopic, payload: Buffer.from(JSON.stringify(willPayload)), qos: 1, retain: false } })
      t.same(clearValuesIn(await storeDump(tb, [])), [], 'the stored will holds no x-pii value in clear')
      const before = liveGot.length
      withWill.stream.destroy()
      await waitFor(() => liveGot.length > before, 5000, 'the will')
      const will = parsed(liveGot.slice(before), stateTopic)
      t.same(will, [holder ? willPayload : { ...stateWithoutPii(1763769600001), status: 'lost' }], 'will: as the view allows')
      withWill.end(true)
      await endClient(live)

      t.same(clearValuesIn(tb.audit.raw.join('\n')), [], 'no personal value in the audit log')
    })
  }
}

t.test('a rejected payload with personal data: neither the report nor the audit line echoes it', async (t) => {
  const tb = await startBroker({ store: 'memory', overrides: { SCHEMAS_DIR, POLICY_FILE: policies.withPii } })
  t.teardown(() => tb.close())
  const creds = await registerDevice(tb, 'pq-bad')
  const device = await connect(tb, creds, { clientId: 'pq-bad' })
  await subscribe(device, 'devices/pq-bad/errors')
  const reports = collect(device)
  const cases: Array<Record<string, unknown>> = [
    { ...statePayload(), owner: 'Jane Roe'.repeat(40) }, // maxLength
    { ...statePayload(), occupants: [{ name: 'Occupant Alpha', extra: 'Occupant Beta' }] }, // additionalProperties
    { ...statePayload(), ts: 'Care Taker' } // type, with a personal value where an integer belongs
  ]
  for (const payload of cases) await publish(device, 'devices/pq-bad/state', JSON.stringify(payload))
  await waitFor(() => reports.length >= cases.length && tb.events('payload.rejected').length >= cases.length, 5000, 'reports')
  t.same(reports.map((r) => (JSON.parse(r.payload) as { errorCode: string }).errorCode), cases.map(() => 'SchemaViolation'))
  t.same(clearValuesIn(reports.map((r) => r.payload).join('\n')), [], 'no personal value in the reports')
  t.same(clearValuesIn(tb.audit.raw.join('\n')), [], 'no personal value in the audit log')
  await endClient(device)
})
