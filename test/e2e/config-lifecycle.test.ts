/**
 * The configuration lifecycle on the wire (CONTRACT §9), both stores, real MQTT.js
 * devices over mutual TLS that apply or fail what they receive: a new version
 * arrives retained at once and an `applied` ack makes it the last known good; a
 * `failed` ack or no ack within CONFIG_ACK_TIMEOUT_SECONDS (1 s here) rolls the
 * device back to its last known good content as a new version; an offline device's
 * timer starts only when it receives its version at reconnect; a stale ack is
 * audited and ignored.
 */
import type { MqttClient } from 'mqtt'
import t, { type Test } from 'tap'
import type { ConfigService } from '../../broker/config-service.js'
import type { DeviceConfigState, DeviceConfigStore, JsonObject } from '../../broker/store/device-configs.js'
import {
  STORES, connect, credentials, endClient, publish, registerDevice, startBroker, subscribe, waitFor,
  type ClientCredentials, type TestBroker
} from '../helpers/broker.js'

const TIMEOUT_MS = 1000

interface Lifecycle { service: ConfigService, store: DeviceConfigStore, close (): Promise<void> }

/**
 * The broker's own service and store once build.ts wires them; until then the
 * same plugin is added to this broker's hook slots (after the chain's own), so the
 * test runs the real code paths on a real broker either way.
 */
async function lifecycle (tb: TestBroker): Promise<Lifecycle> {
  // the broker's own service and store (broker/build.ts wires them, with the config-ack plugin in the chain)
  return { service: tb.handle.configs, store: tb.handle.configStore, close: async () => {} }
}

interface Received { version: number, config: JsonObject, retain: boolean, at: number }
type Answer = 'applied' | 'failed' | null

/** a device that subscribes to its config and answers each version as `decide` says (null: no ack) */
class SimDevice {
  readonly received: Received[] = []
  client!: MqttClient
  constructor (readonly id: string, readonly creds: ClientCredentials, public decide: (config: JsonObject) => Answer) {}

  async connect (tb: TestBroker): Promise<void> {
    const client = await connect(tb, this.creds, { clientId: this.id })
    this.client = client
    client.on('message', (topic, payload, packet) => {
      if (topic !== `devices/${this.id}/config` || payload.length === 0) return
      const msg = JSON.parse(payload.toString()) as { version: number, config: JsonObject }
      this.received.push({ ...msg, retain: packet.retain, at: Date.now() })
      const answer = this.decide(msg.config)
      if (answer === null) return
      const ack = answer === 'applied' ? { version: msg.version, status: 'applied' } : { version: msg.version, status: 'failed', error: 'interval out of range' }
      publish(client, `devices/${this.id}/config/ack`, JSON.stringify(ack)).catch(() => {})
    })
    await subscribe(client, `devices/${this.id}/config`)
  }

  version (v: number): Received | undefined {
    return this.received.find((r) => r.version === v)
  }

  async got (v: number, ms = 3000): Promise<Received> {
    await waitFor(() => this.version(v) !== undefined, ms, `${this.id} receiving version ${v}`)
    return this.version(v)!
  }
}

const applyAll = (): Answer => 'applied'
/** interval 0 is what this firmware cannot apply */
const failZero = (c: JsonObject): Answer => c.interval === 0 ? 'failed' : 'applied'
const silentOnZero = (c: JsonObject): Answer => c.interval === 0 ? null : 'applied'

async function stateWhen (service: ConfigService, id: string, check: (s: DeviceConfigState) => boolean, ms = 3000): Promise<DeviceConfigState> {
  const deadline = Date.now() + ms
  let last: DeviceConfigState | null = null
  while (Date.now() < deadline) {
    last = await service.state(id)
    if (last && check(last)) return last
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
  throw new Error(`config state of ${id} never matched; last ${JSON.stringify(last)}`)
}

/** a device on version 1 (`registration`), connected and having applied it */
async function onboarded (t: Test, tb: TestBroker, lc: Lifecycle, id: string, decide: (c: JsonObject) => Answer): Promise<SimDevice> {
  const creds = await registerDevice(tb, id)
  await lc.service.apply(id, { template: 'test', config: { interval: 10 }, overrides: {}, author: 'registration' })
  const device = new SimDevice(id, creds, decide)
  await device.connect(tb)
  t.equal((await device.got(1)).retain, true, `${id}: version 1 arrives retained at subscribe`)
  await stateWhen(lc.service, id, (s) => s.lastKnownGood === 1)
  return device
}

async function counter (metric: { get (): Promise<{ values: Array<{ value: number, labels: Record<string, unknown> }> }> }, label: string, value: string): Promise<number> {
  return (await metric.get()).values.find((v) => v.labels[label] === value)?.value ?? 0
}

for (const kind of STORES) {
  t.test(`configuration lifecycle (${kind})`, async (t) => {
    const tb = await startBroker({ store: kind, overrides: { CONFIG_ACK_TIMEOUT_SECONDS: TIMEOUT_MS / 1000 } })
    const lc = await lifecycle(tb)
    t.teardown(async () => { await lc.close(); await tb.close() })
    const { service } = lc
    const { metrics } = tb.handle

    t.test('a new version arrives retained at once; applied makes it the last known good; a stale ack is ignored', async (t) => {
      const d = await onboarded(t, tb, lc, 'cfg-apply', applyAll)
      const setAt = Date.now()
      const v2 = await service.setOverrides('cfg-apply', { interval: 5 }, 'alice')
      t.match(v2, { version: 2, config: { interval: 5 }, author: 'alice' })
      const got = await d.got(2, 1000)
      t.ok(got.at - setAt < 1000, `version 2 at the device ${got.at - setAt} ms after the change`)
      const s = await stateWhen(service, 'cfg-apply', (s) => s.lastKnownGood === 2)
      t.match(s, { status: 'current', current: { version: 2 }, overrides: { interval: 5 } })

      const watcher = await connect(tb, credentials(tb.pki, 'service'))
      const seen: Array<{ payload: string, retain: boolean }> = []
      watcher.on('message', (_topic, payload, packet) => seen.push({ payload: payload.toString(), retain: packet.retain }))
      await subscribe(watcher, 'devices/cfg-apply/config')
      await waitFor(() => seen.length > 0, 2000, 'the retained config')
      t.same(JSON.parse(seen[0]!.payload), { version: 2, config: { interval: 5 } }, 'what is retained is the current version')
      t.equal(seen[0]!.retain, true)
      await endClient(watcher)

      const history = await service.history('cfg-apply', 20)
      t.same(history.map((v) => [v.version, v.author]), [[2, 'alice'], [1, 'registration']], 'history newest first, with authors')
      t.ok(history.every((v) => /^[0-9a-f]{64}$/.test(v.hash) && v.at > 0), 'each with a content hash and a time')
      t.ok(tb.events('config.published').some((l) => l.deviceId === 'cfg-apply' && l.version === 2 && l.actor === 'alice'), 'config.published audited with its author')

      await publish(d.client, 'devices/cfg-apply/config/ack', JSON.stringify({ version: 1, status: 'failed', error: 'late' }))
      await waitFor(() => tb.events('config.acknowledged').some((l) => l.deviceId === 'cfg-apply' && String(l.reason).startsWith('stale')), 2000, 'the stale ack audited')
      t.match(await service.state('cfg-apply'), { status: 'current', lastKnownGood: 2, current: { version: 2 } }, 'a stale ack changes nothing')
      t.notOk(tb.events('config.rolledback').some((l) => l.deviceId === 'cfg-apply'), 'and rolls nothing back')
      t.ok(await counter(metrics.configAcks, 'status', 'stale') >= 1, 'counted as stale')
      await endClient(d.client)
    })

    t.test('a failed ack puts the device back on its last known good content as a new version within 1 s', async (t) => {
      const d = await onboarded(t, tb, lc, 'cfg-fail', failZero)
      const rollbacksBefore = await counter(metrics.configRollbacks, 'reason', 'failed')
      await service.setOverrides('cfg-fail', { interval: 0 }, 'alice')
      const failedAt = (await d.got(2)).at
      const v3 = await d.got(3, 1000)
      t.ok(v3.at - failedAt < 1000, `version 3 at the device ${v3.at - failedAt} ms after version 2`)
      t.same(v3.config, (await service.history('cfg-fail', 20)).find((v) => v.version === 1)!.config, 'with version 1\'s content')
      const s = await stateWhen(service, 'cfg-fail', (s) => s.lastKnownGood === 3)
      t.match(s, { status: 'current', current: { version: 3, author: 'rollback', reason: 'device reported failed: interval out of range' } })
      // the device may see the new version before the publisher's callback writes the audit line
      await waitFor(() => tb.events('config.rolledback').some((l) => l.deviceId === 'cfg-fail'), 5000, 'config.rolledback audited')
      t.match(tb.events('config.rolledback').find((l) => l.deviceId === 'cfg-fail'), { version: 3, fromVersion: 1, actor: 'rollback', reason: /device reported failed: interval out of range/ })
      t.equal(await counter(metrics.configRollbacks, 'reason', 'failed'), rollbacksBefore + 1, 'one rollback counted')
      await endClient(d.client)
    })

    t.test('no ack within the timeout rolls back; an offline device\'s timer starts only at reconnect', async (t) => {
      const silent = await onboarded(t, tb, lc, 'cfg-silent', silentOnZero)
      const away = await onboarded(t, tb, lc, 'cfg-away', applyAll)
      await endClient(away.client)
      // committed while the device is away: nobody may time it out before it has it
      await service.setOverrides('cfg-away', { interval: 7 }, 'alice')
      await service.setOverrides('cfg-silent', { interval: 0 }, 'alice')
      await silent.got(2)
      // the broker's clock starts when it delivers version 2 (its deliveredAt, read at once:
      // version 3 comes a timeout later), the device sees it later, and version 3 may travel
      // faster than version 2 did: counted from the broker's instant, on the same clock
      const { deliveredAt } = await stateWhen(service, 'cfg-silent', (s) => s.current?.version === 2 && s.deliveredAt !== null)
      const v3 = await silent.got(3, TIMEOUT_MS + 3000)
      t.ok(v3.at - deliveredAt! >= TIMEOUT_MS, `not before the timeout (${v3.at - deliveredAt!} ms after the broker delivered version 2)`)
      t.same(v3.config, { interval: 10 }, 'back on the last known good content')
      // the device may see the new version before the publisher's callback writes the audit line
      await waitFor(() => tb.events('config.rolledback').some((l) => l.deviceId === 'cfg-silent'), 5000, 'config.rolledback audited')
      t.match(tb.events('config.rolledback').find((l) => l.deviceId === 'cfg-silent'), { version: 3, fromVersion: 1, actor: 'rollback', reason: /no acknowledgement within 1 s/ })
      t.ok(await counter(metrics.configAcks, 'status', 'timeout') >= 1, 'the timeout counted')
      await stateWhen(service, 'cfg-silent', (s) => s.lastKnownGood === 3)

      // the scan that timed the silent device out came more than a timeout after cfg-away's version 2
      t.match(await service.state('cfg-away'), { current: { version: 2 }, status: 'pending', deliveredAt: null }, 'the away device is not timed out')
      t.notOk(tb.events('config.rolledback').some((l) => l.deviceId === 'cfg-away'), 'nor rolled back')

      const reconnectAt = Date.now()
      away.received.length = 0
      away.decide = () => null
      await away.connect(tb)
      const got = await away.got(2)
      t.equal(got.retain, true, 'version 2 from the retained message at subscribe')
      const pending = await stateWhen(service, 'cfg-away', (s) => s.deliveredAt !== null)
      t.ok(pending.deliveredAt! >= reconnectAt, 'its timer started at reconnect')
      // and it runs from there: a device that stays silent is rolled back a timeout later
      const back = await away.got(3, TIMEOUT_MS + 3000)
      // counted from the broker's own deliveredAt (same clock): version 2 may reach the device later than version 3 does
      t.ok(back.at - pending.deliveredAt! >= TIMEOUT_MS, `rolled back ${back.at - pending.deliveredAt!} ms after the broker delivered version 2 (${back.at - got.at} ms after the device got it)`)
      t.same(back.config, { interval: 10 })
      // ignoring its last known good content too: audited, not rolled back again and again
      await waitFor(() => tb.events('config.acknowledged').some((l) => l.deviceId === 'cfg-away' && l.version === 3), TIMEOUT_MS + 3000, 'the timeout of version 3')
      t.match(tb.events('config.acknowledged').find((l) => l.deviceId === 'cfg-away' && l.version === 3),
        { reason: /^no acknowledgement within 1 s; not rolled back: it already has the last known good content \(version 1\)/ })
      t.match(await service.state('cfg-away'), { current: { version: 3 }, status: 'failed' }, 'no version 4')
      await endClient(away.client)
      await endClient(silent.client)
    })
  })
}
