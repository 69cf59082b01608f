/**
 * Issue 11's rollout acceptance with real devices, on both stores: 200 MQTT.js
 * devices of the template `sensor` over mutual TLS, each subscribed to its
 * configuration and answering `applied` or `failed` as the test tells it; the
 * rollouts started through the admin HTTPS API (waves 5,25,100, no wait, abort at
 * 20 %) and read back with the real CLI (`rollout status <id> --json`).
 * - a template configuration 2 % of the devices fail (one in each of the first two
 *   waves, two in the last): completes;
 * - then a patch 50 % of the devices fail: aborts after the first wave; the later
 *   waves' devices never receive a version; every device it changed receives a
 *   newer version with its previous content (retained, too).
 * The numbers per wave are counted from the devices' own records: which version
 * each received and what it answered.
 * Which devices fail is decided by their place in the rollout's cohort order, known
 * once the rollout is started: the devices hold their answers until then (a few ms,
 * as firmware applying a configuration would).
 */
import type { MqttClient } from 'mqtt'
import t, { type Test } from 'tap'
import { cohortOrder, waveEnds, type Rollout, type WaveProgress } from '../../broker/rollouts.js'
import { configHash, type JsonObject } from '../../broker/store/device-configs.js'
import { adminRequest } from '../helpers/admin.js'
import { STORES, connect, endClient, publish, registerDevice, startBroker, subscribe, waitFor, type ClientCredentials, type TestBroker } from '../helpers/broker.js'
import { cli } from '../helpers/cli.js'

const N = 200
/** devices connecting at once (200 at once also works here, but a busy CI must stay within the 5 s connect timeout) */
const BATCH = 50
const WAVES = [5, 25, 100]
const TEMPLATE = 'sensor'
const V1: JsonObject = { telemetryIntervalSeconds: 60, reportState: true }
/** scenario A: the template's new configuration */
const A_CONFIG: JsonObject = { telemetryIntervalSeconds: 30, reportState: true }
/** scenario B: a patch of every device's overrides */
const B_PATCH: JsonObject = { reportState: false }

type Answer = 'applied' | 'failed'
interface Received { version: number, config: JsonObject, answer?: Answer }

/** a device: subscribes to its configuration, answers each version once the test has said how */
class Device {
  readonly got: Received[] = []
  /** fails a configuration when this says so; applies everything else */
  fails: (config: JsonObject) => boolean = () => false
  client: MqttClient | null = null
  constructor (readonly id: string, readonly creds: ClientCredentials, private readonly ready: () => Promise<void>) {}

  async connect (tb: TestBroker): Promise<void> {
    const client = await connect(tb, this.creds, { clientId: this.id, clean: false })
    this.client = client
    client.on('message', (topic, payload) => {
      if (topic !== `devices/${this.id}/config` || payload.length === 0) return
      const got: Received = JSON.parse(payload.toString()) as Received
      this.got.push(got)
      // answers in the order received: every message waits for the same gate
      void this.ready().then(() => {
        got.answer = this.fails(got.config) ? 'failed' : 'applied'
        const ack = { version: got.version, status: got.answer, ...(got.answer === 'failed' ? { error: 'cannot apply' } : {}) }
        return publish(client, `devices/${this.id}/config/ack`, JSON.stringify(ack))
      }).catch(() => {})
    })
    await subscribe(client, `devices/${this.id}/config`)
  }

  last (): Received | undefined {
    return this.got[this.got.length - 1]
  }
}

async function until (check: () => Promise<boolean>, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms
  while (!await check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 25))
  }
}

/** runs `fn` over `items`, `size` at a time */
async function inBatches<T> (items: readonly T[], size: number, fn: (item: T, i: number) => Promise<void>): Promise<void> {
  for (let i = 0; i < items.length; i += size) await Promise.all(items.slice(i, i + size).map((x, j) => fn(x, i + j)))
}

async function api (tb: TestBroker, method: string, path: string, body?: unknown): Promise<Rollout> {
  const res = await adminRequest(tb.adminPort!, tb.pki, method, path, body === undefined ? {} : { body })
  if (res.status !== 200) throw new Error(`${method} ${path}: ${res.status} ${res.raw}`)
  return res.body as Rollout
}

async function ended (tb: TestBroker, id: string, ms = 20_000): Promise<Rollout> {
  const deadline = Date.now() + ms
  for (;;) {
    const r = await api(tb, 'GET', `/v1/rollouts/${id}`)
    if (r.status === 'completed' || r.status === 'aborted') return r
    if (Date.now() > deadline) throw new Error(`rollout ${id} did not end: ${JSON.stringify(r)}`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

/**
 * Per wave, from the devices' own records since `mark`: the first version received
 * with the rollout's content is the rollout's, counted published, and applied or
 * failed as the device answered it (pending while it has not).
 */
function counted (order: readonly string[], byId: ReadonlyMap<string, Device>, mark: ReadonlyMap<string, number>, isRollouts: (c: JsonObject) => boolean): WaveProgress[] {
  const ends = waveEnds(WAVES, order.length)
  return WAVES.map((percent, k) => {
    const w: WaveProgress = { percent, targeted: 0, published: 0, applied: 0, failed: 0, timedOut: 0, pending: 0, skipped: 0 }
    for (const id of order.slice(k === 0 ? 0 : ends[k - 1]!, ends[k]!)) {
      w.targeted++
      const d = byId.get(id)!
      const got = d.got.slice(mark.get(id)!).find((g) => isRollouts(g.config))
      if (got === undefined) continue
      w.published++
      if (got.answer === undefined) w.pending++
      else w[got.answer]++
    }
    return w
  })
}

async function retainedConfigs (tb: TestBroker): Promise<Map<string, Received>> {
  const persistence = (tb.handle.broker as unknown as { persistence: { createRetainedStreamCombi (topics: string[]): AsyncIterable<{ topic: string, payload: Buffer }> } }).persistence
  const out = new Map<string, Received>()
  for await (const packet of persistence.createRetainedStreamCombi(['devices/+/config'])) {
    out.set(packet.topic.split('/')[1]!, JSON.parse(packet.payload.toString()) as Received)
  }
  return out
}

for (const kind of STORES) {
  t.test(`a rollout over 200 real devices, waves 5,25,100, abort at 20 % (${kind})`, async (t) => {
    const began = Date.now()
    const tb = await startBroker({ store: kind })
    const devices: Device[] = []
    t.teardown(async () => {
      await Promise.all(devices.map((d) => d.client ? endClient(d.client).catch(() => {}) : undefined))
      await tb.close()
    })
    const { configs, configStore: store, registry } = tb.handle
    const env = { CERTS_DIR: tb.pki.dir, ADMIN_PORT: String(tb.adminPort) }
    // the devices answer once this resolves; replaced by a held one while a rollout's failing devices are chosen
    let gate: Promise<void> = Promise.resolve()
    const ready = (): Promise<void> => gate

    // as registration would: template `sensor`, version 1 from it
    const ids = Array.from({ length: N }, (_, i) => `r200-${kind}-${String(i).padStart(3, '0')}`)
    await inBatches(ids, BATCH, async (id) => {
      const creds = await registerDevice(tb, id)
      await registry.putDevice({ ...(await registry.getDevice(id))!, template: TEMPLATE })
      await configs.apply(id, { template: TEMPLATE, config: V1, author: 'registration' })
      devices.push(new Device(id, creds, ready))
    })
    const byId = new Map(devices.map((d) => [d.id, d]))
    const registered = Date.now()
    await inBatches(devices, BATCH, (d) => d.connect(tb))
    const connected = Date.now()
    await waitFor(() => devices.every((d) => d.got[0]?.version === 1 && d.got[0].answer === 'applied'), 10_000, 'version 1, retained, applied by every device')
    await waitFor(() => tb.events('config.acknowledged').filter((e) => e.reason === 'applied').length >= N, 5000, 'every ack of version 1 recorded')
    t.comment(`${kind}: ${N} devices registered in ${registered - began} ms, connected in ${connected - registered} ms, on version 1 after ${Date.now() - connected} ms`)

    /** starts a rollout with the devices' answers held, then says which fail by their place in its cohorts */
    async function start (t: Test, body: Record<string, unknown>, failsAt: (i: number) => boolean, isRollouts: (c: JsonObject) => boolean): Promise<{ id: string, order: string[], mark: Map<string, number> }> {
      const mark = new Map(devices.map((d) => [d.id, d.got.length]))
      let release = (): void => {}
      gate = new Promise((resolve) => { release = resolve })
      try {
        const started = await api(tb, 'POST', '/v1/rollouts', { target: { template: TEMPLATE }, waves: WAVES, minWaitSeconds: 0, abortThreshold: 0.2, ...body })
        t.match(started, { status: 'running', devices: N, waves: [{ percent: 5, targeted: 10 }, { percent: 25, targeted: 40 }, { percent: 100, targeted: 150 }] })
        const order = cohortOrder(started.id, ids)
        order.forEach((id, i) => { byId.get(id)!.fails = failsAt(i) ? isRollouts : () => false })
        return { id: started.id, order, mark }
      } finally {
        release()
      }
    }

    async function cliStatus (t: Test, id: string): Promise<Rollout> {
      const status = await cli(['rollout', 'status', id, '--json'], env)
      t.equal(status.code, 0, status.stderr)
      return JSON.parse(status.stdout) as Rollout
    }

    await t.test('2 % failing (4 devices): completes with the numbers the devices produced', async (t) => {
      const isA = (c: JsonObject): boolean => c.telemetryIntervalSeconds === A_CONFIG.telemetryIntervalSeconds
      // one failure in wave 1 (1 of 10: under 20 %), one in wave 2, two in wave 3
      const failing = new Set([3, 27, 90, 170])
      const { id, order, mark } = await start(t, { config: A_CONFIG }, (i) => failing.has(i), isA)
      const done = await ended(tb, id)
      t.equal(done.status, 'completed', done.reason ?? '')
      const produced = counted(order, byId, mark, isA)
      t.strictSame(done.waves, produced, 'per wave: what the devices received and answered')
      t.match(produced, [{ published: 10, applied: 9, failed: 1 }, { published: 40, applied: 39, failed: 1 }, { published: 150, applied: 148, failed: 2 }])
      t.strictSame((await cliStatus(t, id)).waves, produced, '`rollout status --json` reports the same numbers')
      t.strictSame(devices.filter((d) => d.got.slice(mark.get(d.id)).filter((g) => isA(g.config)).length !== 1).map((d) => d.id), [], 'every device received the new configuration once')
      // a failing device is rolled back to its last known good (version 1's content) at once
      for (const i of failing) {
        const d = byId.get(order[i]!)!
        await waitFor(() => d.last()?.answer === 'applied' && !isA(d.last()!.config), 5000, `${d.id} back on version 1's content`)
        t.strictSame(d.last()!.config, V1, `${d.id} received version 1's content again`)
      }
      t.match(await store.getTemplateConfig(TEMPLATE), { config: A_CONFIG, author: `rollout ${id}` }, 'the template\'s configuration is the new one')
      t.equal(tb.events('rollout.completed').filter((e) => e.rolloutId === id).length, 1, 'audited rollout.completed')
    })

    await t.test('50 % failing: aborted after the first wave; every device it changed back on its previous content', async (t) => {
      const isB = (c: JsonObject): boolean => c.reportState === B_PATCH.reportState
      // what each device had before (its last configuration, as received and applied)
      await waitFor(() => devices.every((d) => d.last()?.answer === 'applied'), 5000, 'every device settled')
      const before = new Map(devices.map((d) => [d.id, d.last()!]))
      const { id, order, mark } = await start(t, { patch: B_PATCH }, (i) => i % 2 === 0, isB)
      const done = await ended(tb, id)
      t.equal(done.status, 'aborted')
      t.match(done.reason, /^5 of 10 outcomes failed or timed out/)
      const produced = counted(order, byId, mark, isB)
      t.strictSame(done.waves, produced, 'per wave: what the devices received and answered')
      t.match(produced, [{ targeted: 10, published: 10, applied: 5, failed: 5 }, { targeted: 40, published: 0 }, { targeted: 150, published: 0 }])
      t.strictSame((await cliStatus(t, id)).waves, produced, '`rollout status --json` reports the same numbers')

      const wave1 = order.slice(0, waveEnds(WAVES, N)[0])
      const changed = (d: Device): Received => d.got.slice(mark.get(d.id)!).find((g) => isB(g.config))!
      // the failing ones by the automatic rollback, the others by the rollout's own: a newer version, the old content, applied
      await waitFor(() => wave1.every((id) => {
        const d = byId.get(id)!
        const last = d.last()!
        return last.version > changed(d).version && configHash(last.config) === configHash(before.get(id)!.config) && last.answer === 'applied'
      }), 5000, 'every changed device on a newer version with its previous content')
      t.strictSame(wave1.filter((id) => byId.get(id)!.got.slice(mark.get(id)).filter((g) => isB(g.config)).length !== 1), [], 'each changed once')
      // the store agrees once it has the acks
      await until(async () => (await Promise.all(wave1.map((id) => store.getState(id)))).every((s, i) => {
        const last = byId.get(wave1[i]!)!.last()!
        return s?.current?.version === last.version && s.current.hash === configHash(last.config) && s.status === 'current'
      }), 5000, 'the store: every changed device current on the version it applied last')
      const retained = await retainedConfigs(tb)
      for (const id of wave1) {
        t.strictSame(retained.get(id), { version: byId.get(id)!.last()!.version, config: before.get(id)!.config }, `${id}: retained, a newer version with its previous content`)
      }
      const untouched = order.slice(wave1.length)
      t.strictSame(untouched.filter((id) => byId.get(id)!.got.length !== mark.get(id)), [], 'the later waves\' devices received nothing')
      t.strictSame(untouched.filter((id) => retained.get(id)!.version !== before.get(id)!.version), [], 'and their retained version is the one they had')
      t.equal(tb.events('rollout.advanced').filter((e) => e.rolloutId === id).length, 1, 'one wave only')
      t.equal(tb.events('rollout.aborted').filter((e) => e.rolloutId === id).length, 1, 'audited rollout.aborted')
    })
    t.comment(`${kind}: ${Date.now() - began} ms in all`)
  })
}
