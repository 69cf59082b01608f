/**
 * Attacks on health verification (CONTRACT §3.7) and its quarantine fence:
 * - a device gets counted healthy by messages the broker refused (schema
 *   violation, PiiDetected, another device's topic), or makes another device's
 *   checks count; a quarantined device gets itself active by reporting state and
 *   acking its config (both stores);
 * - a device revoked inside its window leaves its window behind for ever (both stores);
 * - the store is away at the moment of the one-off `connect` check: a healthy
 *   device is quarantined for a blip (memory store, the registry call fails once);
 * - the quarantine notice of another broker process is lost (Redis pub/sub is at
 *   most once): the device keeps its full rights — telemetry, commands, a
 *   telemetry will — for as long as it stays connected (Redis).
 * Defence: a check counts only for a routed message of the device's own session
 * and only while the registry says `provisioned`; a revocation drops the window;
 * a `connect` or `config` check the store missed is tried again with the time it
 * was met; the periodic re-validation re-reads every device session's status and
 * closes a session built under another fence (SessionRevalidated, its will refused).
 */
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { Redis } from 'ioredis'
import t from 'tap'
import { RedisRegistry } from '../../broker/store/redis-registry.js'
import type { HealthCheckOutcome } from '../../broker/store/registry.js'
import {
  STORES, collect, connect, credentials, endClient, publish, registerDevice, startBroker, subscribe, waitFor, type TestBroker
} from '../helpers/broker.js'
import { startRedisServer } from '../helpers/redis-server.js'

const REVALIDATE_SECONDS = 2
const SLACK_MS = 4000

/** state rejects personal data, so PiiDetected is one of the refusals a device can try */
const SCHEMAS_DIR = mkdtempSync(join(tmpdir(), 'jitp-health-fence-schemas-'))
cpSync(resolve('schemas'), SCHEMAS_DIR, { recursive: true })
const topicMap = JSON.parse(readFileSync(join(SCHEMAS_DIR, 'topics.json'), 'utf8')) as { topics: Record<string, Record<string, unknown>> }
topicMap.topics['devices/+/state'] = { schema: 'state.json', detect: 'reject' }
writeFileSync(join(SCHEMAS_DIR, 'topics.json'), JSON.stringify(topicMap))
process.once('exit', () => rmSync(SCHEMAS_DIR, { recursive: true, force: true }))

const state = (extra: Record<string, unknown> = {}): string => JSON.stringify({ ts: Date.now(), status: 'ok', ...extra })
const telemetry = (seq: number): string => JSON.stringify({ ts: Date.now(), seq, values: { t: 20 } })

/** a registered device put in a health window (as a registration or a reinstatement does) */
async function provisionedDevice (tb: TestBroker, id: string, checks: string[], withinMs = 60_000) {
  const creds = await registerDevice(tb, id)
  const deadline = Date.now() + withinMs
  await tb.handle.registry.setDeviceStatus(id, 'provisioned', { deadline, checks })
  return { creds, deadline }
}

async function metOf (tb: TestBroker, id: string): Promise<readonly string[] | null> {
  return (await tb.handle.registry.getHealth(id))?.met ?? null
}

async function until (check: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const start = Date.now()
  while (!await check()) {
    if (Date.now() - start > timeoutMs) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

for (const store of STORES) {
  t.test(`refused messages and a quarantined device count for nothing (${store})`, async (t) => {
    const tb = await startBroker({ store, overrides: { SCHEMAS_DIR } })
    t.teardown(() => tb.close())
    const service = await connect(tb, credentials(tb.pki, 'service'), { clientId: `hf-svc-${store}` })
    t.teardown(() => endClient(service))
    const seen = collect(service)
    await subscribe(service, ['devices/+/telemetry', 'devices/+/state'])

    t.test('refused publishes meet no check, of the device or of another one', async (t) => {
      const id = `hf-dev-${store}`
      const victim = `hf-victim-${store}`
      const { creds } = await provisionedDevice(tb, id, ['connect', 'state'])
      await provisionedDevice(tb, victim, ['connect', 'state'])
      const device = await connect(tb, creds, { clientId: id })
      await until(async () => (await metOf(tb, id))?.includes('connect') === true, 5000, 'the connect check')

      await publish(device, `devices/${id}/state`, JSON.stringify({ ts: 1 })) // SchemaViolation: no status
      await publish(device, `devices/${id}/state`, state({ firmware: 'mail jane.doe@example.com' })) // PiiDetected
      await publish(device, `devices/${victim}/state`, state()) // another device's topic: denied
      // a routed message after them, in order: once the service has it, anything they met would be written
      await publish(device, `devices/${id}/telemetry`, telemetry(1))
      await waitFor(() => seen.some((m) => m.topic === `devices/${id}/telemetry`), 5000, 'the routed telemetry')
      t.same(tb.events('payload.rejected').filter((l) => l.deviceId === id).map((l) => l.errorCode), ['SchemaViolation', 'PiiDetected'], 'two payloads rejected')
      t.ok(tb.events('publish.denied').some((l) => l.deviceId === id && l.topic === `devices/${victim}/state`), 'the foreign topic denied')
      t.strictSame(await metOf(tb, id), ['connect'], 'no state check from refused payloads')
      t.strictSame(await metOf(tb, victim), [], 'nothing met for the other device')
      t.equal((await tb.handle.registry.getDevice(id))?.status, 'provisioned')
      t.equal(seen.filter((m) => m.topic.endsWith('/state')).length, 0, 'no state routed')

      // the real thing activates it
      await publish(device, `devices/${id}/state`, state())
      await waitFor(() => tb.events('device.activated').some((l) => l.deviceId === id), 5000, 'the activation')
      t.equal((await tb.handle.registry.getDevice(id))?.status, 'active')
      t.equal((await tb.handle.registry.getDevice(victim))?.status, 'provisioned', 'the other device is not active')
      await endClient(device)
    })

    t.test('a quarantined device: QoS 2 telemetry and a telemetry will go nowhere; state and acks activate nothing', async (t) => {
      const id = `hf-q-${store}`
      const { creds } = await provisionedDevice(tb, id, ['connect', 'config', 'state'])
      await tb.handle.registry.setDeviceStatus(id, 'quarantined')
      const will = { topic: `devices/${id}/telemetry`, payload: Buffer.from(telemetry(99)), qos: 1 as const, retain: false }
      const device = await connect(tb, creds, { clientId: id, will })
      t.ok(tb.events('publish.denied').some((l) => l.deviceId === id && l.topic === will.topic && l.reason === 'quarantine'), 'the will refused at CONNECT')
      await new Promise<void>((resolve, reject) => device.publish(`devices/${id}/telemetry`, telemetry(2), { qos: 2 }, (err) => err ? reject(err) : resolve()))
      await publish(device, `devices/${id}/config/ack`, JSON.stringify({ version: 1, status: 'applied' }))
      await publish(device, `devices/${id}/state`, state())
      await waitFor(() => seen.some((m) => m.topic === `devices/${id}/state`), 5000, 'its state (allowed by the fence)')
      t.equal((await tb.handle.registry.getDevice(id))?.status, 'quarantined', 'still quarantined')
      t.strictSame(await metOf(tb, id), [], 'nothing recorded: not even its connect')
      t.notOk(tb.events('device.activated').some((l) => l.deviceId === id), 'no activation line')

      // the connection dies without DISCONNECT: a will would go out now
      device.stream.destroy()
      await waitFor(() => tb.events('disconnect').some((l) => l.clientId === id), 5000, 'the disconnect')
      const again = await connect(tb, creds, { clientId: id })
      await publish(again, `devices/${id}/state`, state({ status: 'back' }))
      await waitFor(() => seen.some((m) => m.topic === `devices/${id}/state` && m.payload.includes('back')), 5000, 'the state sent after it')
      t.same(seen.filter((m) => m.topic.startsWith(`devices/${id}/telemetry`)), [], 'no telemetry routed: not the QoS 2 one, not the will')
      await endClient(again)
    })

    t.test('a device revoked inside its window leaves no window behind', async (t) => {
      const id = `hf-rev-${store}`
      const { deadline } = await provisionedDevice(tb, id, ['connect', 'state'])
      t.ok(await tb.handle.registry.getHealth(id), 'its window')
      t.ok(await tb.handle.registry.revokeDevice(id))
      t.equal(await tb.handle.registry.getHealth(id), null, 'the window is gone with the device')
      t.notOk((await tb.handle.registry.healthDue(deadline + 1, 1000)).includes(id), 'and it is no longer due')
      t.same(await tb.handle.registry.recordHealthCheck(id, 'connect', Date.now()), { result: 'ignored' })
    })
  })
}

t.test('the store fails at the connect check: tried again, with the time it was met (memory)', async (t) => {
  const tb = await startBroker({ store: 'memory', overrides: { SCHEMAS_DIR } })
  t.teardown(() => tb.close())
  const id = 'hf-blip'
  const { creds } = await provisionedDevice(tb, id, ['connect', 'state'])
  // fault: the registry refuses the first write of the connect check, as a store that is away would
  const registry = tb.handle.registry
  const record = registry.recordHealthCheck.bind(registry)
  let failed = 0
  registry.recordHealthCheck = async function failOnce (deviceId: string, check: string, at: number): Promise<HealthCheckOutcome> {
    if (deviceId === id && check === 'connect' && failed++ === 0) throw new Error('store away')
    return await record(deviceId, check, at)
  }
  const device = await connect(tb, creds, { clientId: id })
  t.teardown(() => endClient(device))
  await publish(device, `devices/${id}/state`, state())
  await waitFor(() => tb.events('device.activated').some((l) => l.deviceId === id), 5000, 'the activation once the connect check is written')
  t.equal(failed, 2, 'one failed write, one retry')
  t.equal((await registry.getDevice(id))?.status, 'active', 'a blip does not quarantine a healthy device')
})

t.test('a quarantine notice lost on its way: the re-validation closes the session (Redis)', async (t) => {
  const redis = await startRedisServer()
  t.teardown(() => redis.stop())
  const tb = await startBroker({ store: 'redis', redis, overrides: { SCHEMAS_DIR, SESSION_REVALIDATE_SECONDS: REVALIDATE_SECONDS } })
  t.teardown(() => tb.close())
  const raw = new Redis(redis.url)
  t.teardown(() => raw.quit())
  // the sweep of another broker process, which quarantines the device when its window closes
  const other = new RedisRegistry({ url: redis.url })
  t.teardown(() => other.close())
  t.ok(await other.ping())

  const id = 'hf-lost'
  const { creds, deadline } = await provisionedDevice(tb, id, ['connect', 'config', 'state'])
  // a telemetry will: one last message it could get out after its quarantine
  const device = await connect(tb, creds, { clientId: id, will: { topic: `devices/${id}/telemetry`, payload: Buffer.from(telemetry(99)), qos: 1, retain: false } })
  const closed = { at: 0 }
  device.once('close', () => { closed.at = Date.now() })
  t.same(await subscribe(device, `devices/${id}/commands/+`), [1], 'provisioned: full device rights')

  // no subscriber can come back: the notice is lost, only the re-validation is left
  const pubsub = String(await raw.call('CLIENT', 'LIST', 'TYPE', 'pubsub')).split('\n').filter((l) => l.trim() !== '').length
  const connected = Number(/connected_clients:(\d+)/.exec(await raw.info('clients'))?.[1])
  const replies = await raw.multi().client('KILL', 'TYPE', 'pubsub').config('SET', 'maxclients', String(connected - pubsub)).exec()
  t.teardown(() => raw.config('SET', 'maxclients', '10000'))
  t.ok(replies?.every(([err]) => err === null), 'pub/sub killed, no room for a new connection')
  const quarantinedAt = Date.now()
  t.ok(await other.expireHealth(id, deadline), 'quarantined by the other process, notice lost')

  await waitFor(() => closed.at > 0, REVALIDATE_SECONDS * 1000 + SLACK_MS, 'the session to be closed')
  t.ok(closed.at - quarantinedAt <= REVALIDATE_SECONDS * 1000 + SLACK_MS, `closed ${closed.at - quarantinedAt} ms after the quarantine`)
  await waitFor(() => tb.events('disconnect').some((l) => l.clientId === id && l.errorCode === 'SessionRevalidated'), 2000, 'the disconnect line')
  t.match(tb.events('disconnect').find((l) => l.clientId === id && l.errorCode === 'SessionRevalidated'), { deviceId: id, reason: /quarantined/ })
  await waitFor(() => tb.events('publish.denied').some((l) => l.deviceId === id && l.topic === `devices/${id}/telemetry`), 2000, 'the will refused')
  device.end(true)

  await raw.config('SET', 'maxclients', '10000')
  const again = await connect(tb, creds, { clientId: id })
  t.same(await subscribe(again, [`devices/${id}/commands/+`, `devices/${id}/config`]), [128, 1], 'back under the quarantine fence')
  await endClient(again)
})
