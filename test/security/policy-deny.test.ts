/**
 * Attack: a service allowed `devices/+/#` reads a topic an operator denied it
 * (`devices/<id>/secrets`) through its wide filter, from the offline queue or by
 * naming it; a device reads past its own inbox with `devices/<id>/#`.
 * Defence (CONTRACT §4): rules are ordered and the first that matches decides,
 * on publish, on subscribe and again on every delivery (live, retained, queued);
 * a wide filter is granted for what it may match and delivers only what the
 * rules allow. The order as written matters: the same two rules the other way
 * round deliver the secrets.
 */
import t from 'tap'
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { Redis } from 'ioredis'
import { publishDeviceConfig } from '../../broker/config-store.js'
import { defaultPolicy, type PolicyRule } from '../../plugins/policy.js'
import {
  collect, connect, credentials, endClient, publish, registerDevice, sleep, startBroker, subscribe, waitFor, type TestBroker
} from '../helpers/broker.js'

const dir = mkdtempSync(join(tmpdir(), 'jitp-policy-deny-'))
t.teardown(() => rmSync(dir, { recursive: true, force: true }))

// the default schemas, and one for the secrets topic (a topic no schema maps is dropped before any rule could matter)
const SCHEMAS_DIR = join(dir, 'schemas')
cpSync(resolve('schemas'), SCHEMAS_DIR, { recursive: true })
const topicMap = JSON.parse(readFileSync(join(SCHEMAS_DIR, 'topics.json'), 'utf8')) as { topics: Record<string, unknown> }
topicMap.topics['devices/+/secrets'] = { format: 'binary', maxBytes: 64 }
writeFileSync(join(SCHEMAS_DIR, 'topics.json'), JSON.stringify(topicMap))

const deviceRules: PolicyRule[] = [
  ...defaultPolicy({ awsTopics: false }).rules.filter((r) => r.role !== 'service'),
  { name: 'device-secrets', role: 'device', actions: ['publish'], topics: ['devices/${deviceId}/secrets'] }
]
const noSecrets: PolicyRule = { name: 'no-secrets', role: 'service', effect: 'deny', actions: ['publish', 'subscribe'], topics: ['devices/+/secrets'] }
const allDevices: PolicyRule = { name: 'all-devices', role: 'service', effect: 'allow', actions: ['publish', 'subscribe'], topics: ['devices/+/#'] }

function policyFile (name: string, serviceRules: PolicyRule[]): string {
  const file = join(dir, `${name}.json`)
  writeFileSync(file, JSON.stringify({ rules: [...deviceRules, ...serviceRules] }))
  return file
}
const DENY_FIRST = policyFile('deny-first', [noSecrets, allDevices])
const ALLOW_FIRST = policyFile('allow-first', [allDevices, noSecrets])

const telemetry = (seq: number): string => JSON.stringify({ ts: 1, seq, values: {} })

/** deliveries refused so far by the rule named `rule` (every subscriber of this broker) */
async function forwardDenials (tb: TestBroker, rule: string): Promise<number> {
  const { values } = await tb.handle.metrics.denials.get()
  return values.find((v) => v.labels.action === 'forward' && v.labels.rule === rule)?.value ?? 0
}

/** the counter moves when the decision is made: the event to wait for when nothing is delivered */
async function untilForwardDenials (tb: TestBroker, rule: string, atLeast: number, what: string): Promise<void> {
  const start = Date.now()
  while (await forwardDenials(tb, rule) < atLeast) {
    if (Date.now() - start > 10_000) throw new Error(`timed out waiting for ${what}`)
    await sleep(10)
  }
}

t.test('deny before allow: the deny rule wins on subscribe, publish and delivery', async (t) => {
  const tb = await startBroker({ store: 'memory', overrides: { POLICY_FILE: DENY_FIRST, SCHEMAS_DIR } })
  t.teardown(() => tb.close())
  const d1 = await connect(tb, await registerDevice(tb, 'pd-1'), { clientId: 'pd-1' })
  const reader = await connect(tb, credentials(tb.pki, 'service'), { clientId: 'pd-reader' })
  const got = collect(reader)

  t.same(await subscribe(reader, 'devices/+/#'), [1], 'the wide filter is granted: some of what it matches is allowed')
  t.same(await subscribe(reader, ['devices/+/secrets', 'devices/pd-1/secrets']), [128, 128], 'a filter only the deny rule answers is refused')
  t.same(tb.events('subscribe.denied').filter((l) => l.clientId === 'pd-reader').map((l) => l.reason), ['no-secrets', 'no-secrets'], 'audited, naming the rule')

  await publish(reader, 'devices/pd-1/secrets', 'from-service')
  t.ok(tb.events('publish.denied').some((l) => l.clientId === 'pd-reader' && l.topic === 'devices/pd-1/secrets' && l.reason === 'no-secrets'), 'publish refused by the deny rule')
  t.ok(reader.connected, 'and the publisher stays connected')

  const before = await forwardDenials(tb, 'no-secrets')
  // one publisher, in order: once the telemetry arrives, the secret's delivery was decided
  await publish(d1, 'devices/pd-1/secrets', 'from-device')
  await publish(d1, 'devices/pd-1/telemetry', telemetry(1))
  await waitFor(() => got.some((m) => m.topic === 'devices/pd-1/telemetry'), 10_000, 'the telemetry')
  t.same(got.map((m) => m.topic), ['devices/pd-1/telemetry'], 'the secret never reached the wide filter')
  t.equal(await forwardDenials(tb, 'no-secrets'), before + 1, 'its delivery was refused by the deny rule')
  await Promise.all([endClient(d1), endClient(reader)])
})

t.test('allow before deny, the same two rules: the allow rule wins', async (t) => {
  const tb = await startBroker({ store: 'memory', overrides: { POLICY_FILE: ALLOW_FIRST, SCHEMAS_DIR } })
  t.teardown(() => tb.close())
  const d1 = await connect(tb, await registerDevice(tb, 'pa-1'), { clientId: 'pa-1' })
  const reader = await connect(tb, credentials(tb.pki, 'service'), { clientId: 'pa-reader' })
  const got = collect(reader)
  t.same(await subscribe(reader, ['devices/+/#', 'devices/+/secrets']), [1, 1], 'both filters granted')
  await publish(d1, 'devices/pa-1/secrets', 'from-device')
  await publish(reader, 'devices/pa-1/secrets', 'from-service')
  await waitFor(() => got.filter((m) => m.topic === 'devices/pa-1/secrets').length >= 2, 10_000, 'both secrets')
  t.same(got.map((m) => m.payload).sort(), ['from-device', 'from-service'], 'both secrets delivered')
  t.equal(tb.events('publish.denied').length, 0, 'nothing refused')
  await Promise.all([endClient(d1), endClient(reader)])
})

t.test('a device: `commands/#` and `devices/<id>/#` are granted and deliver only its inbox', async (t) => {
  const tb = await startBroker({ store: 'memory', overrides: { POLICY_FILE: DENY_FIRST, SCHEMAS_DIR, BAD_PAYLOADS_PER_MINUTE: 1000 } })
  t.teardown(() => tb.close())
  const a = await connect(tb, await registerDevice(tb, 'pv-a'), { clientId: 'pv-a' })
  const b = await connect(tb, await registerDevice(tb, 'pv-b'), { clientId: 'pv-b' })
  const service = await connect(tb, credentials(tb.pki, 'service'), { clientId: 'pv-service' })
  const gotA = collect(a)
  const gotB = collect(b)

  t.same(await subscribe(a, 'devices/pv-a/commands/#'), [1], 'commands/# granted at QoS 1')
  t.same(await subscribe(a, ['devices/+/commands/#', 'devices/pv-b/#', '#']), [128, 128, 128], 'nothing reaching another device')
  await publish(service, 'devices/pv-b/commands/reboot', '{"name":"reboot"}')
  await publish(service, 'devices/pv-a/commands/reboot', '{"name":"reboot"}')
  await waitFor(() => gotA.length >= 1, 10_000, 'its command')
  t.same(gotA.map((m) => m.topic), ['devices/pv-a/commands/reboot'], 'its command, not the other device\'s')

  // retained first: its own state (not for it to receive) and its config
  await publish(b, 'devices/pv-b/state', JSON.stringify({ ts: 1, status: 'online' }), { retain: true })
  await publishDeviceConfig(tb.handle.broker, tb.handle.audit, 'pv-b', 1, { interval: 10 })
  const refusedBefore = await forwardDenials(tb, 'default-deny')
  t.same(await subscribe(b, 'devices/pv-b/#'), [1], 'its whole namespace granted at QoS 1')
  await waitFor(() => gotB.some((m) => m.topic === 'devices/pv-b/config'), 10_000, 'the retained config')
  await untilForwardDenials(tb, 'default-deny', refusedBefore + 1, 'the retained state refused')
  // live: its telemetry and secrets (its to publish, not to receive), a command, then a bad payload whose error report comes last
  await publish(b, 'devices/pv-b/telemetry', telemetry(1))
  await publish(b, 'devices/pv-b/secrets', 'mine')
  await publish(service, 'devices/pv-b/commands/blink', '{"name":"blink"}')
  await waitFor(() => gotB.some((m) => m.topic === 'devices/pv-b/commands/blink'), 10_000, 'the command')
  await publish(b, 'devices/pv-b/telemetry', 'not json')
  await waitFor(() => gotB.some((m) => m.topic === 'devices/pv-b/errors'), 10_000, 'the error report')
  t.same(gotB.map((m) => m.topic), ['devices/pv-b/config', 'devices/pv-b/commands/blink', 'devices/pv-b/errors'], 'config, command and error report; no state, telemetry or secrets')
  t.equal(await forwardDenials(tb, 'default-deny'), refusedBefore + 3, 'the retained state, the telemetry and the secret were refused at delivery')
  await Promise.all([endClient(a), endClient(b), endClient(service)])
})

t.test('redis: a deny rule also filters what was queued for an offline persistent session', async (t) => {
  const tb = await startBroker({ store: 'redis', overrides: { POLICY_FILE: DENY_FIRST, SCHEMAS_DIR } })
  t.teardown(() => tb.close())
  const creds = credentials(tb.pki, 'service')
  let reader = await connect(tb, creds, { clientId: 'pq-reader', clean: false })
  t.same(await subscribe(reader, 'devices/+/#'), [1])
  await endClient(reader)

  const d1 = await connect(tb, await registerDevice(tb, 'pq-1'), { clientId: 'pq-1' })
  await publish(d1, 'devices/pq-1/secrets', 'queued-secret')
  await publish(d1, 'devices/pq-1/telemetry', telemetry(1))
  await endClient(d1)

  reader = await connect(tb, creds, { clientId: 'pq-reader', clean: false })
  const got = collect(reader)
  // the queue is delivered in order: the secret, queued first, would come before the telemetry
  await waitFor(() => got.some((m) => m.topic === 'devices/pq-1/telemetry'), 10_000, 'the queued telemetry')
  t.same(got.map((m) => m.topic), ['devices/pq-1/telemetry'], 'the queued secret was not delivered')
  await endClient(reader)
})

t.test('redis: a wide filter does not fill its own persistent queue with what it may not receive', async (t) => {
  const tb = await startBroker({ store: 'redis', overrides: { POLICY_FILE: DENY_FIRST, SCHEMAS_DIR } })
  t.teardown(() => tb.close())
  const redis = new Redis(tb.redis!.url)
  t.teardown(() => { redis.disconnect() })
  const device = await connect(tb, await registerDevice(tb, 'pw-1'), { clientId: 'pw-1', clean: false })
  t.same(await subscribe(device, 'devices/pw-1/#'), [1])
  const got = collect(device)
  // its own telemetry matches its filter, and is not its to receive: nothing may be queued for it
  for (let i = 0; i < 5; i++) await publish(device, 'devices/pw-1/telemetry', telemetry(i), { qos: 1 })
  // the config's own copy leaves the queue when the broker has read its PUBACK (Aedes'
  // 'ack', emitted after outgoingClearMessageId), which is after the device has it
  const acked = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no PUBACK of the config reached the broker within 10 s')), 10_000)
    const onAck = (packet: unknown, client: { id?: string } | null | undefined): void => {
      if (client?.id !== 'pw-1' || (packet as { topic?: string } | undefined)?.topic !== 'devices/pw-1/config') return
      clearTimeout(timer)
      tb.handle.broker.off('ack', onAck)
      resolve()
    }
    tb.handle.broker.on('ack', onAck)
  })
  await publishDeviceConfig(tb.handle.broker, tb.handle.audit, 'pw-1', 2, { interval: 5 })
  await waitFor(() => got.some((m) => m.topic === 'devices/pw-1/config'), 10_000, 'its config, which it may receive')
  await acked
  t.equal(await redis.llen('outgoing:pw-1'), 0, 'no undeliverable copy left in the session queue')
  t.same(got.map((m) => m.topic), ['devices/pw-1/config'])
  await endClient(device)
})
