/**
 * Attacks on the personal-data handling of CONTRACT §5 (inline detection, treatments, keys):
 * - personal data in a JSON key (free-form maps: telemetry `values`, state `details`)
 *   went through `reject` and `redact` unseen, and into the retained copy;
 * - a schema violation report, which services read on `devices/<id>/errors`, quoted
 *   the payload's own key (an e-mail address) in its path;
 * - a payload nested thousands deep, or with a 5000-character key, made every
 *   `pii.detected` line as big as the payload;
 * - a device sending addresses as fast as it can wrote eight audit lines per message;
 * - the pseudonym HMAC used the very key that seals the storage envelopes;
 * - a key directory holding a big file named like a key id was read whole.
 * Defence: keys are scanned (written '*'; redacted by renaming, refused when that
 * is not safe); report paths go through the same '*' rule and are cut; pii.detected
 * lines are bounded per client and interval (the rest aggregated with a count, every
 * finding still in the metric); the pseudonym key is HKDF-derived; key files are
 * size-checked before they are read. Both stores where the store is involved.
 */
import { createHmac, hkdfSync, randomBytes } from 'node:crypto'
import { cpSync, mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import t from 'tap'
import { createPiiCipher } from '../../broker/pii-crypto.js'
import { loadPiiKeyring } from '../../broker/pii-keys.js'
import { MAX_LINES_PER_CLIENT } from '../../broker/pii-detection-log.js'
import {
  STORES, collect, connect, credentials, endClient, publish, registerDevice, startBroker, subscribe, waitFor
} from '../helpers/broker.js'
import { memoryStoreDump, redisDump } from '../helpers/pii.js'

const ADDRESS = 'jane.doe@example.com'
const AGGREGATE_SECONDS = 2

const SCHEMAS_DIR = mkdtempSync(join(tmpdir(), 'jitp-pii-leaks-schemas-'))
cpSync(resolve('schemas'), SCHEMAS_DIR, { recursive: true })
const topicMap = JSON.parse(readFileSync(join(SCHEMAS_DIR, 'topics.json'), 'utf8')) as { topics: Record<string, Record<string, unknown>> }
topicMap.topics['devices/+/telemetry'] = { schema: 'telemetry.json', detect: 'flag' }
topicMap.topics['devices/+/telemetry/+'] = { schema: 'telemetry.json', detect: 'reject' }
topicMap.topics['devices/+/state'] = { schema: 'state.json', detect: 'redact' }
writeFileSync(join(SCHEMAS_DIR, 'topics.json'), JSON.stringify(topicMap))
process.once('exit', () => rmSync(SCHEMAS_DIR, { recursive: true, force: true }))

interface Report { topic: string, errorCode: string, errors: Array<{ path: string, message: string }> }

for (const store of STORES) {
  t.test(`personal data where nobody looked (${store})`, async (t) => {
    const tb = await startBroker({ store, overrides: { SCHEMAS_DIR, AUDIT_AGGREGATE_SECONDS: AGGREGATE_SECONDS } })
    t.teardown(() => tb.close())
    const service = await connect(tb, credentials(tb.pki, 'service'), { clientId: `pl-svc-${store}` })
    t.teardown(() => endClient(service))
    const routed = collect(service)
    await subscribe(service, ['devices/+/telemetry', 'devices/+/telemetry/+', 'devices/+/state', 'devices/+/errors'])
    const auditText = (): string => tb.audit.raw.join('\n')

    async function device (id: string) {
      const client = await connect(tb, await registerDevice(tb, id), { clientId: id })
      t.teardown(() => { client.end(true) })
      return client
    }
    const reportsOf = (id: string): Report[] => routed.filter((m) => m.topic === `devices/${id}/errors`).map((m) => JSON.parse(m.payload) as Report)

    t.test('a key holding an address: flagged, rejected, redacted (retained copy too)', async (t) => {
      const id = `pl-key-${store}`
      const d = await device(id)
      const withKey = { ts: 1763769600000, seq: 1, values: { [ADDRESS]: 1, t: 20.5 } }

      await publish(d, `devices/${id}/telemetry`, JSON.stringify(withKey))
      await waitFor(() => tb.events('pii.detected').some((l) => l.deviceId === id), 5000, 'pii.detected for the key')
      t.match(tb.events('pii.detected').filter((l) => l.deviceId === id), [{ topic: `devices/${id}/telemetry`, path: '/values/*', kind: 'email', reason: 'flagged' }], 'flag: the key is found, written *')

      await publish(d, `devices/${id}/telemetry/diag`, JSON.stringify(withKey))
      await waitFor(() => reportsOf(id).length >= 1, 5000, 'the PiiDetected report')
      t.match(reportsOf(id)[0], { topic: `devices/${id}/telemetry/diag`, errorCode: 'PiiDetected', errors: [{ path: '/values/*' }] }, 'reject: refused')

      const topic = `devices/${id}/state`
      await publish(d, topic, JSON.stringify({ ts: 1763769600000, status: 'ok', details: { n: 1, [ADDRESS]: 'seen', note: 'fine' } }), { retain: true })
      await waitFor(() => routed.some((m) => m.topic === topic), 5000, 'the redacted state')
      const redacted = { ts: 1763769600000, status: 'ok', details: { n: 1, '[email]': 'seen', note: 'fine' } }
      t.same(JSON.parse(routed.find((m) => m.topic === topic)!.payload), redacted, 'redact: the key renamed, in its place')
      t.strictSame(Object.keys((JSON.parse(routed.find((m) => m.topic === topic)!.payload) as typeof redacted).details), ['n', '[email]', 'note'], 'key order kept')
      const dump = tb.redis ? await redisDump(tb.redis.url) : await memoryStoreDump(tb.handle.broker, [])
      t.ok(dump.includes('[email]'), 'the store holds the redacted state')
      t.notOk(dump.includes(ADDRESS), 'and no copy of the address')

      // two keys that would both become "[email]": nothing safe to route
      await publish(d, topic, JSON.stringify({ ts: 1763769600000, status: 'ok', details: { [`a.${ADDRESS}`]: 1, [`b.${ADDRESS}`]: 2 } }))
      await waitFor(() => reportsOf(id).length >= 2, 5000, 'the second report')
      t.match(reportsOf(id)[1], { topic, errorCode: 'PiiDetected', errors: [{ path: '/details/*', message: /key/ }] }, 'a key that cannot be renamed: refused')
      t.equal(routed.filter((m) => m.topic === topic).length, 1, 'not routed')

      const seen = routed.filter((m) => m.topic.startsWith(`devices/${id}/`)).map((m) => m.payload).join('\n')
      t.equal(seen.split(ADDRESS).length - 1, 1, 'the service saw the address once: in the flagged telemetry, as sent')
      t.notOk(auditText().includes(ADDRESS), 'the audit log never')
    })

    t.test('a schema violation report does not quote a personal key', async (t) => {
      const id = `pl-report-${store}`
      const d = await device(id)
      await publish(d, `devices/${id}/telemetry`, JSON.stringify({ ts: 1763769600000, values: { [ADDRESS]: { nested: true } } }))
      await waitFor(() => reportsOf(id).length >= 1, 5000, 'the SchemaViolation report')
      t.match(reportsOf(id)[0], { errorCode: 'SchemaViolation', errors: [{ path: '/values/*' }] }, 'the key written *')
      t.notOk(routed.filter((m) => m.topic === `devices/${id}/errors`).some((m) => m.payload.includes('jane.doe')), 'the service reading errors does not get the address')
      t.notOk(auditText().includes('jane.doe'), 'nor the audit log')
    })

    t.test('deep and long paths are cut in audit lines', async (t) => {
      const id = `pl-deep-${store}`
      const d = await device(id)
      let deep: unknown = `mail ${ADDRESS}`
      for (let i = 0; i < 3000; i++) deep = { a: deep }
      const longKey = 'k'.repeat(5000)
      await publish(d, `devices/${id}/state`, JSON.stringify({ ts: 1763769600000, status: 'ok', details: { deep, [longKey]: `call ${ADDRESS}` } }))
      await waitFor(() => tb.events('pii.detected').filter((l) => l.deviceId === id).length >= 2, 5000, 'two findings')
      const paths = tb.events('pii.detected').filter((l) => l.deviceId === id).map((l) => String(l.path))
      for (const p of paths) t.ok(p.length <= 16 * 66, `path of ${p.length} characters`)
      t.ok(paths.some((p) => p.startsWith('/\u2026/a/a/')), 'the deep one keeps its last segments')
      t.ok(paths.includes(`/details/${'k'.repeat(64)}\u2026`), 'the long key is cut')
    })

    t.test('a flood of addresses: bounded audit lines, every finding counted', async (t) => {
      const id = `pl-flood-${store}`
      const d = await device(id)
      const values: Record<string, string> = {}
      for (let i = 0; i < 8; i++) values[`note${i}`] = `mail user${i}@example.com`
      const messages = 25
      for (let seq = 1; seq < messages; seq++) d.publish(`devices/${id}/telemetry`, JSON.stringify({ ts: 1763769600000, seq, values }), { qos: 0 })
      await publish(d, `devices/${id}/telemetry`, JSON.stringify({ ts: 1763769600000, seq: messages, values })) // PUBACK: every one vetted
      const findings = messages * 8
      const lines = (): Array<Record<string, unknown>> => tb.events('pii.detected').filter((l) => l.deviceId === id)
      const counted = (): number => lines().reduce((n, l) => n + (typeof l.count === 'number' ? l.count : 1), 0)
      await waitFor(() => counted() >= findings, AGGREGATE_SECONDS * 1000 * 3 + 3000, `${findings} findings in the audit, aggregated or not`)
      t.equal(counted(), findings, 'every finding accounted for')
      // every interval it spans: MAX_LINES_PER_CLIENT lines, then one aggregated line for its one kind
      t.ok(lines().length <= 3 * (MAX_LINES_PER_CLIENT + 1), `${lines().length} lines for ${findings} findings`)
      t.ok(lines().some((l) => typeof l.count === 'number' && l.count > 1 && l.path === undefined && l.kind === 'email'), 'an aggregated line: a count, the kind, no path')
      const metric = (await tb.handle.metrics.piiDetections.get()).values.find((v) => v.labels.topic === 'devices/+/telemetry' && v.labels.kind === 'email')
      t.ok((metric?.value ?? 0) >= findings, 'the metric counts each one')
      t.notOk(auditText().includes('@example.com'), 'no address in the audit log')
    })
  })
}

t.test('keys: one purpose each, envelopes bound to theirs, key files read only when they can be keys', async (t) => {
  const key = randomBytes(32)
  const cipher = createPiiCipher(key)
  const value = 'Jane Roe'
  const raw = 'pii_' + createHmac('sha256', key).update(JSON.stringify(value)).digest().subarray(0, 12).toString('base64url')
  const subkey = Buffer.from(hkdfSync('sha256', key, Buffer.from('aedes-jitp'), Buffer.from('x-pii pseudonym key'), 32))
  const documented = 'pii_' + createHmac('sha256', subkey).update(JSON.stringify(value)).digest().subarray(0, 12).toString('base64url')
  t.not(cipher.pseudonym(value), raw, 'the pseudonym is not an HMAC under the envelope key itself')
  t.equal(cipher.pseudonym(value), documented, 'it is the one docs/PRIVACY.md gives: under the HKDF-derived pseudonym key')
  t.equal(createPiiCipher(key).pseudonym(value), documented, 'stable')

  const a = cipher.seal(value)
  const b = cipher.seal(value)
  t.not(a.enc, b.enc, 'a fresh nonce each time')
  t.same(cipher.open(a), { value })

  // the same 32 bytes in PII_KEYS_DIR: its envelopes and the storage ones do not open each other
  const dir = mkdtempSync(join(tmpdir(), 'jitp-pii-leaks-keys-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  writeFileSync(join(dir, 'k1'), key.toString('base64') + '\n')
  const ring = loadPiiKeyring(dir)
  t.equal(ring.open({ enc: a.enc, kid: 'k1' }), undefined, 'a storage envelope does not open as an encrypt envelope')
  t.equal(cipher.open({ ...ring.seal(value), kid: cipher.kid }), undefined, 'nor the other way round')

  // a big file named like a key id is refused by its size, naming the file, not read whole
  writeFileSync(join(dir, 'notes.log'), '')
  truncateSync(join(dir, 'notes.log'), 8 * 1024 * 1024)
  t.throws(() => loadPiiKeyring(dir), /notes\.log does not hold the base64 of 32 bytes \(8388608 bytes\)/)
})
