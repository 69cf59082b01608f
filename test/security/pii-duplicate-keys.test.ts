/**
 * Attack: a device hides personal data in the first of two members with the same
 * name. JSON.parse keeps the last one, so validation saw `"site":{"room":"B-12"}`,
 * found no x-pii value to seal and no address to redact, and the broker routed and
 * stored the payload's own bytes, with `"contact":"jane.roe@example.org"` in clear,
 * to a service without the `pii` permission, into its offline queue and the
 * retained copy (a parser that keeps the first member shows it).
 * Defence: a payload that repeats a member name in an object is refused as
 * InvalidJson (broker/json-keys.ts, plugins/validation.ts), on every topic.
 * Both stores, real TLS, real MQTT.js clients.
 */
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import type { ErrorReport } from '../../broker/chain/publish.js'
import { STORES, publish, startBroker, waitFor } from '../helpers/broker.js'
import { clearValuesIn, piiPolicies, piiSchemasDir, storeDump, watchState } from '../helpers/pii.js'

const SCHEMAS_DIR = piiSchemasDir()
// state: x-pii nested (site.contact) and inline detection that must redact (details)
const topicsFile = join(SCHEMAS_DIR, 'topics.json')
const topicMap = JSON.parse(readFileSync(topicsFile, 'utf8')) as { topics: Record<string, Record<string, unknown>> }
topicMap.topics['devices/+/state'] = { schema: 'state.json', detect: 'redact' }
writeFileSync(topicsFile, JSON.stringify(topicMap))
const policies = piiPolicies()

const ADDRESS = 'jane.roe@example.org'

for (const store of STORES) {
  t.test(`a repeated member name cannot carry personal data past sealing or redaction (${store})`, async (t) => {
    const tb = await startBroker({ store, overrides: { SCHEMAS_DIR, POLICY_FILE: policies.withoutPii } })
    t.teardown(() => tb.close())
    const deviceId = `dk-${store}`
    const { topic, queueId, got, device } = await watchState(t, tb, deviceId)

    // the x-pii value in the first `site`, nothing personal in the second
    const hiddenPii = `{"ts":1763769600000,"status":"ok","site":{"room":"B-12","contact":"${ADDRESS}"},"site":{"room":"B-12"}}`
    // an address in the first `details` (redact must replace it), a harmless second one
    const hiddenAddress = `{"ts":1763769600001,"status":"ok","details":{"note":"write to ${ADDRESS}"},"details":{"note":"fine"}}`
    // without the repetition the same content is accepted: sealed, and redacted
    const plain = `{"ts":1763769600002,"status":"ok","site":{"room":"B-12","contact":"${ADDRESS}"},"details":{"note":"write to ${ADDRESS}"}}`
    for (const payload of [hiddenPii, hiddenAddress, plain]) await publish(device, topic, payload, { qos: 1, retain: true })

    // QoS 1 from one client is routed in order: once the plain payload is here, the two before it were judged
    const isPlain = (m: { topic: string, payload: string }): boolean => m.topic === topic && m.payload.includes('1763769600002')
    await waitFor(() => got.some(isPlain), 5000, 'the plain payload')
    const states = got.filter((m) => m.topic === topic).map((m) => JSON.parse(m.payload) as Record<string, unknown>)
    t.notOk(got.some((m) => m.payload.includes(ADDRESS)), 'the address reached the service nowhere')
    t.same(states, [{ ts: 1763769600002, status: 'ok', site: { room: 'B-12' }, details: { note: 'write to [email]' } }],
      'only the plain payload was routed: its x-pii value removed for this service, the address redacted')

    const reports = (): ErrorReport[] => got.filter((m) => m.topic === `devices/${deviceId}/errors`).map((m) => JSON.parse(m.payload) as ErrorReport)
    await waitFor(() => reports().length >= 2, 5000, 'the two refusals reported')
    t.match(reports(), [
      { topic, errorCode: 'InvalidJson', errors: [{ path: '', message: /repeats a member name/ }] },
      { topic, errorCode: 'InvalidJson', errors: [{ path: '', message: /repeats a member name/ }] }
    ], 'both refused, the device told why')
    t.same(clearValuesIn(JSON.stringify(reports())), [], 'the reports quote nothing of the payload')

    t.same(clearValuesIn(await storeDump(tb, [queueId])), [], 'nothing in clear in the retained copy or the offline queue')
    const rejected = tb.events('payload.rejected').filter((l) => l.deviceId === deviceId)
    t.equal(rejected.length, 2, 'two payload.rejected audit lines')
    t.match(rejected, [{ errorCode: 'InvalidJson', topic }, { errorCode: 'InvalidJson', topic }])
    t.same(clearValuesIn(tb.audit.raw.join('\n')), [], 'the audit log holds no personal value')
    t.notOk(tb.audit.raw.join('\n').includes(ADDRESS))
  })
}
