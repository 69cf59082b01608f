/**
 * Per-topic treatment of x-pii values for subscribers without the `pii`
 * permission (CONTRACT §5), over real TLS, MQTT.js and a private redis-server:
 *   telemetry  "pii": "pseudonymize"  a keyed token, the same on every broker process sharing PII_KEY
 *   state      "pii": "encrypt"       an {enc, kid} envelope under the newest key of PII_KEYS_DIR,
 *                                     opened offline by `aedes-jitp pii decrypt --key-dir D`
 * Three brokers share Redis: A (this process) and B (a child process) grant no
 * `pii`; C (this process) grants it to services. Devices publish on A. Then the
 * same treatments on the paths the store serves (offline queue, retained), on
 * both stores, and the start refused without keys.
 */
import t from 'tap'
import { spawn } from 'node:child_process'
import { createHmac, hkdfSync, randomBytes } from 'node:crypto'
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  STORES, collect, connect, credentials, endClient, publish, registerDevice, startBroker, subscribe, waitFor,
  type TestBroker
} from '../helpers/broker.js'
import { startBrokerProcess } from '../helpers/broker-process.js'
import { CLI } from '../helpers/cli.js'
import { PII_VALUES, clearValuesIn, memoryStoreDump, piiPolicies, piiSchemasDir, redisDump, statePayload, telemetryPayload } from '../helpers/pii.js'
import { startRedisServer } from '../helpers/redis-server.js'

const PII_KEY = randomBytes(32).toString('base64')
const policies = piiPolicies()

function schemasDir (): string {
  const dir = piiSchemasDir()
  const file = join(dir, 'topics.json')
  const map = JSON.parse(readFileSync(file, 'utf8')) as { topics: Record<string, Record<string, unknown>> }
  map.topics['devices/+/telemetry'] = { schema: 'telemetry.json', pii: 'pseudonymize' }
  map.topics['devices/+/state'] = { schema: 'state.json', pii: 'encrypt' }
  writeFileSync(file, JSON.stringify(map, null, 2))
  return dir
}
const SCHEMAS_DIR = schemasDir()

function newKeyDir (...kids: string[]): string {
  const dir = mkdtempSync(join(tmpdir(), 'jitp-pii-keys-'))
  for (const kid of kids) writeFileSync(join(dir, kid), randomBytes(32).toString('base64') + '\n')
  return dir
}

/** `aedes-jitp pii decrypt --key-dir D` with `input` on stdin (the real command line, from dist/) */
function decrypt (dir: string, input: string): Promise<{ code: number | null, stdout: string, stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, 'pii', 'decrypt', '--key-dir', dir], { stdio: ['pipe', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d: Buffer) => { stdout += d.toString() })
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
    child.on('exit', (code) => resolve({ code, stdout, stderr }))
    child.stdin.end(input)
  })
}

/**
 * the token docs/PRIVACY.md promises: HMAC-SHA256 over the canonical JSON, 12 bytes, base64url, under the
 * pseudonym key HKDF-SHA256(PII_KEY, salt "aedes-jitp", info "x-pii pseudonym key", 32), not PII_KEY itself
 */
const PSEUDONYM_KEY = Buffer.from(hkdfSync('sha256', Buffer.from(PII_KEY, 'base64'), Buffer.from('aedes-jitp'), Buffer.from('x-pii pseudonym key'), 32))
const expectedToken = (value: unknown): string =>
  'pii_' + createHmac('sha256', PSEUDONYM_KEY).update(JSON.stringify(value)).digest().subarray(0, 12).toString('base64url')

type Got = ReturnType<typeof collect>
const parsed = (got: Got, topic: string): Array<Record<string, unknown>> =>
  got.filter((m) => m.topic === topic).map((m) => JSON.parse(m.payload) as Record<string, unknown>)
const ENVELOPE = { enc: /^[A-Za-z0-9+/]+=*$/, kid: String }

t.test('three brokers on one Redis: pseudonyms agree across processes, envelopes open offline', async (t) => {
  const redis = await startRedisServer()
  const keyDir = newKeyDir('k-2026-01')
  const common = { SCHEMAS_DIR, PII_KEY, PII_KEYS_DIR: keyDir }
  const a = await startBroker({ store: 'redis', redis, overrides: { ...common, POLICY_FILE: policies.withoutPii } })
  // B's process starts while C is built here
  const [b, c] = await Promise.all([
    startBrokerProcess({ redisUrl: redis.url, pki: a.pki, overrides: { ...common, POLICY_FILE: policies.withoutPii } }),
    startBroker({ store: 'redis', redis, pki: a.pki, overrides: { ...common, POLICY_FILE: policies.withPii } })
  ])
  t.teardown(async () => {
    await b.stop()
    await c.close()
    await a.close()
    await redis.stop()
  })
  const svc = credentials(a.pki, 'service')
  const onB = { port: b.port, pki: a.pki }
  const deviceId = 'pt-1'
  const teleTopic = `devices/${deviceId}/telemetry`
  const stateTopic = `devices/${deviceId}/state`
  const svcA = await connect(a, svc, { clientId: 'pt-svc-a' })
  const svcB = await connect(onB, svc, { clientId: 'pt-svc-b' })
  const svcC = await connect(c, svc, { clientId: 'pt-svc-c' })
  for (const s of [svcA, svcB, svcC]) await subscribe(s, [teleTopic, stateTopic], 1)
  const gotA = collect(svcA)
  const gotB = collect(svcB)
  const gotC = collect(svcC)
  const device = await connect(a, await registerDevice(a, deviceId), { clientId: deviceId })

  t.test('pseudonymize: the same token for the same owner on two processes; the holder sees the value', async (t) => {
    await publish(device, teleTopic, JSON.stringify(telemetryPayload(1)))
    await publish(device, teleTopic, JSON.stringify(telemetryPayload(2)))
    await publish(device, teleTopic, JSON.stringify({ ...telemetryPayload(3), owner: 'Someone Else' }))
    await waitFor(() => [gotA, gotB, gotC].every((g) => parsed(g, teleTopic).length >= 3), 10_000, 'three deliveries to each service')
    const owners = (g: Got): unknown[] => parsed(g, teleTopic).sort((x, y) => Number(x.seq) - Number(y.seq)).map((p) => p.owner)
    const token = expectedToken('Tele Owner')
    t.match(token, /^pii_[A-Za-z0-9_-]{16}$/)
    t.same(owners(gotA), [token, token, expectedToken('Someone Else')], 'broker A: HMAC-SHA256 tokens under PII_KEY, stable per value')
    t.same(owners(gotB), owners(gotA), 'broker B (another process): the same tokens')
    t.same(owners(gotC), ['Tele Owner', 'Tele Owner', 'Someone Else'], 'a service with pii: the real value')
    t.same(parsed(gotA, teleTopic)[0], { ...telemetryPayload(1), owner: token }, 'everything else as sent')
    t.same(clearValuesIn(gotA.concat(gotB).map((m) => m.payload).join('\n')), [], 'no clear value reached A or B')
  })

  t.test('encrypt: envelopes under the newest key; pii decrypt restores them; a newer key leaves old envelopes readable', async (t) => {
    await publish(device, stateTopic, JSON.stringify(statePayload(1)))
    await waitFor(() => [gotA, gotB, gotC].every((g) => parsed(g, stateTopic).length >= 1), 10_000, 'state deliveries')
    const first = gotA.find((m) => m.topic === stateTopic)!.payload
    const sealed = JSON.parse(first) as Record<string, unknown>
    t.match(sealed, { ts: 1, status: 'online', owner: ENVELOPE, site: { room: 'B-12', contact: ENVELOPE }, occupants: [{ name: ENVELOPE, role: 'tenant' }, { name: ENVELOPE, role: 'guest' }] })
    t.equal((sealed.owner as { kid: string }).kid, 'k-2026-01', 'sealed under the only key')
    t.same(clearValuesIn(gotA.concat(gotB).map((m) => m.payload).join('\n')), [], 'nothing readable without the key')
    t.match(parsed(gotB, stateTopic)[0], { owner: ENVELOPE }, 'broker B seals under the same key directory')
    t.same(parsed(gotC, stateTopic), [statePayload(1)], 'a service with pii: the real values')

    const opened = await decrypt(keyDir, first)
    t.equal(opened.code, 0, opened.stderr)
    t.same(JSON.parse(opened.stdout), statePayload(1), 'pii decrypt with the key restores every value')

    const otherDir = newKeyDir('k-2026-01') // the same id, another key: nothing opens
    const refused = await decrypt(otherDir, first)
    t.equal(refused.code, 2, 'non-zero when envelopes stay sealed')
    t.match(refused.stderr, /5 envelope\(s\) left sealed.*"k-2026-01"/)
    t.same(clearValuesIn(refused.stdout), [], 'without the key nothing readable')
    t.same(JSON.parse(refused.stdout), sealed, 'the envelopes are left as they were')

    // a newer key (it sorts last): the brokers pick it up from the directory, no restart
    writeFileSync(join(keyDir, 'k-2026-07'), randomBytes(32).toString('base64'))
    let newer: string | undefined
    for (let ts = 2; ts < 200 && newer === undefined; ts++) {
      const before = parsed(gotA, stateTopic).length
      await publish(device, stateTopic, JSON.stringify(statePayload(ts)))
      await waitFor(() => parsed(gotA, stateTopic).length > before, 5000, 'the next state')
      const last = gotA.filter((m) => m.topic === stateTopic).at(-1)!.payload
      if ((JSON.parse(last) as { owner: { kid: string } }).owner.kid === 'k-2026-07') newer = last
      else await new Promise((resolve) => setTimeout(resolve, 100))
    }
    t.ok(newer, 'sealed under the newer key once it is in the directory')
    const both = await decrypt(keyDir, first + '\n' + newer! + '\n')
    t.equal(both.code, 0, both.stderr)
    const docs = both.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>)
    t.same(docs[0], statePayload(1), 'the old envelope still opens')
    t.same(docs[1], statePayload(Number(JSON.parse(newer!).ts)), 'and the new one')
  })

  t.test('teardown', async () => {
    for (const client of [device, svcA, svcB, svcC]) await endClient(client)
  })
})

for (const store of STORES) {
  t.test(`${store} store: the offline queue and the retained copy get the same treatment, and hold no clear value`, async (t) => {
    const keyDir = newKeyDir('k1')
    const tb: TestBroker = await startBroker({ store, overrides: { SCHEMAS_DIR, PII_KEY, PII_KEYS_DIR: keyDir, POLICY_FILE: policies.withoutPii } })
    t.teardown(() => tb.close())
    const deviceId = `pt-q-${store}`
    const teleTopic = `devices/${deviceId}/telemetry`
    const stateTopic = `devices/${deviceId}/state`
    const svc = credentials(tb.pki, 'service')
    const offline = await connect(tb, svc, { clientId: `pt-q-svc-${store}`, clean: false })
    await subscribe(offline, [teleTopic, stateTopic], 1)
    await endClient(offline)
    const device = await connect(tb, await registerDevice(tb, deviceId), { clientId: deviceId })
    await publish(device, stateTopic, JSON.stringify(statePayload(7)), { retain: true })
    await publish(device, teleTopic, JSON.stringify(telemetryPayload(7)))

    const dump = tb.redis ? await redisDump(tb.redis.url) : await memoryStoreDump(tb.handle.broker, [`pt-q-svc-${store}`])
    t.same(clearValuesIn(dump), [], `the store holds none of ${PII_VALUES.length} values in clear`)

    const back = await connect(tb, svc, { clientId: `pt-q-svc-${store}`, clean: false })
    const queued = collect(back)
    await waitFor(() => queued.length >= 2, 5000, 'queued deliveries')
    t.same(parsed(queued, teleTopic), [{ ...telemetryPayload(7), owner: expectedToken('Tele Owner') }], 'queue: pseudonymized')
    const state = parsed(queued, stateTopic)[0]!
    t.match(state, { owner: { enc: String, kid: 'k1' } }, 'queue: encrypted')
    const opened = await decrypt(keyDir, JSON.stringify(state))
    t.same(JSON.parse(opened.stdout), statePayload(7), 'and it opens with the key')
    await endClient(back)

    const late = await connect(tb, svc, { clientId: `pt-r-svc-${store}` })
    const retained = collect(late)
    await subscribe(late, stateTopic, 1)
    await waitFor(() => retained.length >= 1, 5000, 'retained delivery')
    t.match(parsed(retained, stateTopic)[0], { owner: { enc: String, kid: 'k1' } }, 'retained: encrypted')
    t.same(clearValuesIn(queued.concat(retained).map((m) => m.payload).join('\n')), [], 'nothing in clear reached the service')
    t.same(clearValuesIn(tb.audit.raw.join('\n')), [], 'nor the audit log')
    await endClient(late)
    await endClient(device)
  })
}

t.test('"pii": "encrypt" without usable keys: the start is refused, naming the key', async (t) => {
  await t.rejects(startBroker({ store: 'memory', overrides: { SCHEMAS_DIR } }), /PII_KEYS_DIR: topic 'devices\/\+\/state' asks for "pii": "encrypt"/)
  const empty = newKeyDir()
  await t.rejects(startBroker({ store: 'memory', overrides: { SCHEMAS_DIR, PII_KEYS_DIR: empty } }), /holds no key/)
  const bad = newKeyDir()
  writeFileSync(join(bad, 'k1'), 'not a key')
  await t.rejects(startBroker({ store: 'memory', overrides: { SCHEMAS_DIR, PII_KEYS_DIR: bad } }), new RegExp(`${join(bad, 'k1')} does not hold the base64 of 32 bytes`))
})
