/**
 * Rollouts on the wire (CONTRACT §8, §9), both stores: real MQTT.js devices over
 * mutual TLS that apply, fail or ignore what they receive (and one that is offline
 * during its wave), the real admin HTTPS API and the real CLI.
 * - a template configuration in waves 10,50,100: completes; the numbers per wave
 *   are what the devices did; the offline device gets its version when it
 *   reconnects and then counts as applied; the template's configuration is the new one;
 * - a patch half the devices fail: aborts after the first wave (the minimum sample
 *   is the wave); every device it changed is back on its previous content, the
 *   others were never touched;
 * - through the CLI: start, pause, status, resume, abort (and rolled back).
 * 200 simulated devices, 2 % and 50 % failing, and a driver dying mid-wave:
 * test/broker/rollouts.test.ts; a SIGKILLed process: test/faults/rollout-sigkill.test.ts.
 */
import type { MqttClient } from 'mqtt'
import t from 'tap'
import { cohortOrder, waveEnds, type Rollout } from '../../broker/rollouts.js'
import type { ConfigService } from '../../broker/config-service.js'
import { configHash, type DeviceConfigStore, type JsonObject } from '../../broker/store/device-configs.js'
import { adminRequest } from '../helpers/admin.js'
import { STORES, connect, endClient, publish, registerDevice, startBroker, subscribe, type ClientCredentials, type TestBroker } from '../helpers/broker.js'
import { cli } from '../helpers/cli.js'

type Answer = 'applied' | 'failed' | 'silent'
const N = 20
const V1 = { interval: 10 }

/** a device that subscribes to its configuration and answers each version as `decide` says */
class Device {
  /** every version received, with what the device answered */
  readonly got: Array<{ version: number, config: JsonObject, answer: Answer }> = []
  client: MqttClient | null = null
  constructor (readonly id: string, readonly creds: ClientCredentials, public decide: (config: JsonObject) => Answer) {}

  async connect (tb: TestBroker): Promise<void> {
    const client = await connect(tb, this.creds, { clientId: this.id, clean: false })
    this.client = client
    client.on('message', (topic, payload) => {
      if (topic !== `devices/${this.id}/config` || payload.length === 0) return
      const { version, config } = JSON.parse(payload.toString()) as { version: number, config: JsonObject }
      const answer = this.decide(config)
      this.got.push({ version, config, answer })
      if (answer === 'silent') return
      publish(client, `devices/${this.id}/config/ack`, JSON.stringify({ version, status: answer, ...(answer === 'failed' ? { error: 'unsupported' } : {}) })).catch(() => {})
    })
    await subscribe(client, `devices/${this.id}/config`)
  }

  async disconnect (): Promise<void> {
    if (this.client) await endClient(this.client)
    this.client = null
  }

  /** what the device answered to the version `v` */
  answered (v: number): Answer | undefined {
    return this.got.find((g) => g.version === v)?.answer
  }
}

interface Handles { configs: ConfigService, configStore: DeviceConfigStore }

async function until (check: () => Promise<boolean>, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms
  while (!await check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 25))
  }
}

async function api (tb: TestBroker, method: string, path: string, body?: unknown): Promise<Rollout> {
  const res = await adminRequest(tb.adminPort!, tb.pki, method, path, body === undefined ? {} : { body })
  if (res.status !== 200) throw new Error(`${method} ${path}: ${res.status} ${res.raw}`)
  return res.body as Rollout
}

async function ended (tb: TestBroker, id: string, ms = 15_000): Promise<Rollout> {
  let last: Rollout | null = null
  await until(async () => {
    last = await api(tb, 'GET', `/v1/rollouts/${id}`)
    return last.status === 'completed' || last.status === 'aborted'
  }, ms, `rollout ${id} to end`).catch((err: Error) => { throw new Error(`${err.message}; last ${JSON.stringify(last)}`) })
  return last!
}

/** per wave, what the devices reported about the version the rollout gave them */
function reported (id: string, devices: Device[], percents: number[], versionOf: Map<string, number>, pendingIds: Set<string> = new Set()): Array<Record<string, number>> {
  const order = cohortOrder(id, devices.map((d) => d.id))
  const byId = new Map(devices.map((d) => [d.id, d]))
  const ends = waveEnds(percents, order.length)
  return percents.map((percent, k) => {
    const w = { percent, targeted: 0, published: 0, applied: 0, failed: 0, timedOut: 0, pending: 0, skipped: 0 }
    for (const id of order.slice(k === 0 ? 0 : ends[k - 1]!, ends[k]!)) {
      w.targeted++
      const v = versionOf.get(id)
      if (v === undefined) continue
      w.published++
      const a = pendingIds.has(id) ? undefined : byId.get(id)!.answered(v)
      if (a === 'applied') w.applied++
      else if (a === 'failed') w.failed++
      else if (a === 'silent') w.timedOut++
      else w.pending++
    }
    return w
  })
}

/** the version `author` made for each device that has one */
async function versionsBy (store: DeviceConfigStore, ids: string[], author: string): Promise<Map<string, number>> {
  const out = new Map<string, number>()
  for (const id of ids) {
    const made = (await store.history(id, 50)).filter((v) => v.author === author && v.reason?.startsWith(author) === true)
    if (made.length > 1) throw new Error(`${id} changed ${made.length} times by ${author}`)
    if (made[0]) out.set(id, made[0].version)
  }
  return out
}

for (const kind of STORES) {
  t.test(`rollouts through the admin API and the CLI, real devices (${kind})`, async (t) => {
    const tb = await startBroker({ store: kind, overrides: { CONFIG_ACK_TIMEOUT_SECONDS: 1 } })
    const { configs, configStore: store } = tb.handle as unknown as Handles
    const devices: Device[] = []
    t.teardown(async () => {
      await Promise.all(devices.map((d) => d.disconnect().catch(() => {})))
      await tb.close()
    })
    for (let i = 0; i < N; i++) {
      const id = `ro-${kind}-${String(i).padStart(2, '0')}`
      const creds = await registerDevice(tb, id)
      await configs.apply(id, { template: 'test', config: V1, overrides: {}, author: 'registration' })
      const d = new Device(id, creds, () => 'applied')
      await d.connect(tb)
      devices.push(d)
    }
    const ids = devices.map((d) => d.id)
    await until(async () => (await Promise.all(ids.map((id) => store.getState(id)))).every((s) => s?.lastKnownGood === 1), 10_000, 'version 1 applied by every device')
    const env = { CERTS_DIR: tb.pki.dir, ADMIN_PORT: String(tb.adminPort) }

    await t.test('a template configuration in waves: completes with the numbers the devices produced', async (t) => {
      // interval 5 is what device 03 cannot apply; device 07 never answers; device 11 is offline during the rollout
      devices[3]!.decide = (c) => c.interval === 5 ? 'failed' : 'applied'
      devices[7]!.decide = (c) => c.interval === 5 ? 'silent' : 'applied'
      const offline = devices[11]!
      await offline.disconnect()
      const started = await api(tb, 'POST', '/v1/rollouts', {
        target: { template: 'test' }, config: { interval: 5 }, waves: [10, 50, 100], minWaitSeconds: 0, abortThreshold: 0.3, minSample: 10
      })
      t.match(started, { status: 'running', waves: [{ percent: 10, targeted: 2 }, { percent: 50, targeted: 8 }, { percent: 100, targeted: 10 }] })
      const done = await ended(tb, started.id)
      t.equal(done.status, 'completed', done.reason ?? '')
      const made = await versionsBy(store, ids, `rollout ${started.id}`)
      t.equal(made.size, N, 'every device changed, once')
      t.strictSame(done.waves, reported(started.id, devices, [10, 50, 100], made, new Set([offline.id])), 'per wave: what the devices answered, the offline one pending')
      t.match(done.waves.reduce((n, w) => n + w.failed + w.timedOut + w.pending, 0), 3)
      t.match(await store.getState(devices[3]!.id), { current: { author: 'rollback', hash: configHash(V1) } }, 'the failing device is back on version 1\'s content')

      const status = await cli(['rollout', 'status', started.id, '--json'], env)
      t.equal(status.code, 0, status.stderr)
      t.strictSame((JSON.parse(status.stdout) as Rollout).waves, done.waves, '`rollout status --json` reports the same numbers')
      const table = await cli(['rollout', 'status', started.id], env)
      t.match(table.stdout, new RegExp(`rollout ${started.id}: completed`))
      t.match(table.stdout, /^100%\s+10\s+10\s+/m, 'a line per wave')

      // back online: the retained version arrives, the device applies it, and the rollout counts it
      await offline.connect(tb)
      await until(async () => (await api(tb, 'GET', `/v1/rollouts/${started.id}`)).waves.every((w) => w.pending === 0), 5000, 'the offline device counted once it applied')
      t.equal(offline.answered(made.get(offline.id)!), 'applied')
      const after = await api(tb, 'GET', `/v1/rollouts/${started.id}`)
      t.strictSame(after.waves, reported(started.id, devices, [10, 50, 100], made))
      t.match(await store.getTemplateConfig('test'), { config: { interval: 5 }, author: `rollout ${started.id}` }, 'the template\'s configuration is the new one')
      const events = tb.events('rollout.completed').filter((e) => e.rolloutId === started.id)
      t.equal(events.length, 1, 'audited rollout.completed')
      for (const d of devices) d.decide = () => 'applied'
    })

    await t.test('a patch half the devices fail: aborted, and every device it changed is back on its previous content', async (t) => {
      devices.forEach((d, i) => { d.decide = (c) => c.mode === 'eco' && i % 2 === 0 ? 'failed' : 'applied' })
      const before = new Map(await Promise.all(ids.map(async (id) => [id, (await store.getState(id))!.current!] as const)))
      // the whole first wave decides (minSample), and any failure among it aborts (the odds of a first wave without one: 1 in 184,756)
      const started = await api(tb, 'POST', '/v1/rollouts', { target: { template: 'test' }, patch: { mode: 'eco' }, waves: [50, 100], minWaitSeconds: 0, abortThreshold: 0.05, minSample: N / 2 })
      const done = await ended(tb, started.id)
      t.equal(done.status, 'aborted')
      t.match(done.reason, /outcomes failed or timed out/)
      const made = await versionsBy(store, ids, `rollout ${started.id}`)
      t.equal(made.size, N / 2, 'only the first wave was changed')
      t.strictSame(done.waves, reported(started.id, devices, [50, 100], made), 'per wave: what the devices answered')
      t.ok(done.waves[0]!.applied > 0 && done.waves[0]!.failed > 0, `both kinds in the first wave (${done.waves[0]!.applied} applied, ${done.waves[0]!.failed} failed)`)
      await until(async () => {
        const states = await Promise.all(ids.map((id) => store.getState(id)))
        return states.every((s) => s!.current!.hash === before.get(s!.deviceId)!.hash && s!.status === 'current')
      }, 5000, 'every changed device back on its previous content')
      for (const id of ids) {
        if (!made.has(id)) t.equal((await store.getState(id))!.current!.version, before.get(id)!.version, `${id}: never touched`)
      }
      t.equal(tb.events('rollout.aborted').filter((e) => e.rolloutId === started.id).length, 1, 'audited rollout.aborted')
      for (const d of devices) d.decide = () => 'applied'
    })

    await t.test('the CLI: start, pause, status, resume, abort', async (t) => {
      const before = new Map(await Promise.all(ids.map(async (id) => [id, (await store.getState(id))!.current!] as const)))
      const start = await cli(['rollout', 'start', '--template', 'test', '--patch', '{"debug":true}', '--waves', '50,100', '--min-wait', '600', '--json'], env)
      t.equal(start.code, 0, start.stderr)
      const id = (JSON.parse(start.stdout) as Rollout).id
      await until(async () => (await api(tb, 'GET', `/v1/rollouts/${id}`)).waves[0]!.applied === N / 2, 5000, 'the first wave applied')
      const paused = await cli(['rollout', 'pause', id], env)
      t.equal(paused.stdout, `rollout ${id}: paused\n`, paused.stderr)
      t.match((await cli(['rollout', 'status', id], env)).stdout, /^50%\s+10\s+10\s+10\s+0\s+0\s+0$/m)
      t.equal((await cli(['rollout', 'resume', id], env)).stdout, `rollout ${id}: running\n`)
      const aborted = await cli(['rollout', 'abort', id], env)
      t.equal(aborted.stdout, `rollout ${id}: aborted\n`, aborted.stderr)
      await until(async () => {
        const states = await Promise.all(ids.map((d) => store.getState(d)))
        return states.every((s) => s!.current!.hash === before.get(s!.deviceId)!.hash)
      }, 5000, 'the first wave rolled back')
      const conflict = await cli(['rollout', 'pause', id], env)
      t.not(conflict.code, 0, 'an aborted rollout cannot be paused')
      t.match(conflict.stderr, /RolloutStateConflict|not in a state/)
      const audited = (name: string): unknown[] => tb.events(name).filter((e) => e.rolloutId === id)
      t.match([audited('rollout.started'), audited('rollout.paused'), audited('rollout.resumed'), audited('rollout.aborted')].map((l) => l.length), [1, 1, 1, 1])
    })
  })
}

