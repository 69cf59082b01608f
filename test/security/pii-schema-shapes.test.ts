/**
 * Attacks found by a review of the personal-data path (seventh session), each by a
 * device publishing on its own state topic, against a schema an operator may write:
 * - redact renamed a key that held an address (`{"jane@…": {...}}` matched by a
 *   patternProperties "@"), and the x-pii values beneath it, no longer under a key
 *   the pattern matches, were routed and stored in clear (and, once that was checked
 *   by value, an equal value made personal elsewhere by the same rename stood in);
 * - a schema violation inside an x-pii object named its keys in the report path
 *   (`/guests/Jane Roe`), and services without `pii` read `devices/<id>/errors`;
 * - a valid payload nested 6,000 deep with an x-pii value present made
 *   JSON.stringify throw while sealing, and the exception ended the broker process.
 * Defence: every value personal before a redaction must still be found after it,
 * else PiiDetected (plugins/validation.ts); report paths are masked beneath x-pii
 * values (plugins/pii-map.ts maskBeneathPersonal); a publish hook that throws
 * refuses the message as InternalError (broker/chain/publish.ts vet).
 * Both stores, real TLS, real MQTT.js clients.
 */
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import t from 'tap'
import type { ErrorReport } from '../../broker/chain/publish.js'
import { STORES, publish, startBroker, waitFor } from '../helpers/broker.js'
import { piiPolicies, storeDump, watchState } from '../helpers/pii.js'

const SCHEMAS_DIR = mkdtempSync(join(tmpdir(), 'jitp-pii-shapes-'))
cpSync(resolve('schemas'), SCHEMAS_DIR, { recursive: true })
const PII = { type: 'string', maxLength: 256, 'x-pii': true }
writeFileSync(join(SCHEMAS_DIR, 'shapes.json'), JSON.stringify({
  $id: 'shapes',
  type: 'object',
  required: ['ts'],
  additionalProperties: false,
  properties: {
    ts: { type: 'integer', minimum: 0 },
    owner: PII,
    contacts: {
      type: 'object',
      patternProperties: { '@': { type: 'object', properties: { name: PII, mail: PII } } },
      additionalProperties: { type: 'object' }
    },
    guests: { type: 'object', 'x-pii': true, additionalProperties: { type: 'string', format: 'date' } },
    // a key renamed to "[email]" becomes personal here: an equal value must not stand in for one that left
    aliases: { type: 'object', patternProperties: { '^\\[': PII }, additionalProperties: { type: 'string' } },
    details: { type: 'object' }
  }
}))
const topicsFile = join(SCHEMAS_DIR, 'topics.json')
const topicMap = JSON.parse(readFileSync(topicsFile, 'utf8')) as { topics: Record<string, Record<string, unknown>> }
topicMap.topics['devices/+/state'] = { schema: 'shapes.json', detect: 'redact' }
writeFileSync(topicsFile, JSON.stringify(topicMap))
process.once('exit', () => rmSync(SCHEMAS_DIR, { recursive: true, force: true }))
const policies = piiPolicies()

const NAME = 'Jane Roe'
const ADDRESS = 'jane.roe@example.org'

for (const store of STORES) {
  t.test(`schema shapes that hid personal data (${store})`, async (t) => {
    const tb = await startBroker({ store, overrides: { SCHEMAS_DIR, POLICY_FILE: policies.withoutPii } })
    t.teardown(() => tb.close())
    const deviceId = `ps-${store}`
    const { topic, queueId, got, device } = await watchState(t, tb, deviceId)

    const renamed = JSON.stringify({ ts: 1, contacts: { [ADDRESS]: { name: NAME, mail: ADDRESS } } })
    const standIn = JSON.stringify({ ts: 5, contacts: { [ADDRESS]: { name: NAME } }, aliases: { 'bob@example.org': NAME } })
    const guests = JSON.stringify({ ts: 2, guests: { [NAME]: 'tomorrow' } })
    const depth = 6000
    const deep = `{"ts":3,"owner":"${NAME}","details":{"a":${'['.repeat(depth)}1${']'.repeat(depth)}}}`
    const plain = JSON.stringify({ ts: 4, owner: NAME, details: { note: `write to ${ADDRESS}` } })
    for (const payload of [renamed, standIn, guests, deep, plain]) await publish(device, topic, payload, { qos: 1, retain: true })

    // QoS 1 from one client is judged in order: the plain payload last
    await waitFor(() => got.some((m) => m.topic === topic), 5000, 'the plain payload routed (the broker is alive)')
    t.same(got.filter((m) => m.topic === topic).map((m) => JSON.parse(m.payload) as unknown), [{ ts: 4, details: { note: 'write to [email]' } }],
      'only the plain payload, its x-pii value removed and the address redacted')
    t.notOk(got.some((m) => m.payload.includes(NAME) || m.payload.includes(ADDRESS)), 'no personal value reached the service, in a message or a report')

    const reports = (): ErrorReport[] => got.filter((m) => m.topic === `devices/${deviceId}/errors`).map((m) => JSON.parse(m.payload) as ErrorReport)
    await waitFor(() => reports().length >= 4, 5000, 'four refusals reported')
    t.match(reports(), [
      { errorCode: 'PiiDetected', errors: [{ message: /cannot be redacted/ }] },
      { errorCode: 'PiiDetected', errors: [{ message: /cannot be redacted/ }] },
      { errorCode: 'SchemaViolation', errors: [{ path: '/guests/*' }] },
      { errorCode: 'InternalError' }
    ], 'the rename refused, the path masked, the throw turned into a refusal')

    t.notOk((await storeDump(tb, [queueId])).includes(NAME), 'nothing in clear in the retained copy or the offline queue')
    t.match(tb.events('payload.rejected').filter((l) => l.deviceId === deviceId).map((l) => l.errorCode), ['PiiDetected', 'PiiDetected', 'SchemaViolation', 'InternalError'])
    t.notOk(tb.audit.raw.join('\n').includes(NAME), 'the audit log holds no personal value')
  })
}
