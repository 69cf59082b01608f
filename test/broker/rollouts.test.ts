/**
 * Rollouts (broker/rollouts.ts) on the memory store, with the real configuration
 * service publishing through a real broker and the real config-ack plugin judging
 * the acknowledgements. The simulated devices see every version the broker
 * publishes (an in-process subscription to `devices/+/config`) and answer through
 * the plugin's hooks as their MQTT acks would: delivery (which starts the ack
 * timer), then `applied`, `failed`, nothing (timed out after 1 s), or nothing at
 * all while offline (never delivered). Real MQTT devices: test/e2e/rollout.test.ts.
 */
import { Ajv } from 'ajv'
import type { Client } from 'aedes'
import t, { type Test } from 'tap'
import type { AppLogger } from '../../broker/logger.js'
import { createConfigService, type ConfigService, type ConfigTemplate } from '../../broker/config-service.js'
import type { PluginHooks } from '../../broker/plugin.js'
import { cohortOrder, createRollouts, waveEnds, wavePercents, type Rollout, type Rollouts, type RolloutDeps } from '../../broker/rollouts.js'
import type { Identity } from '../../broker/session.js'
import { configHash, type DeviceConfigStore, type JsonObject } from '../../broker/store/device-configs.js'
import { MemoryDeviceConfigStore } from '../../broker/store/memory-device-configs.js'
import { configAckPlugin } from '../../plugins/config-ack.js'
import pino from 'pino'
import { startBroker, type TestBroker } from '../helpers/broker.js'

const V1 = { level: 1 }
const V1_HASH = configHash(V1)
const TICK_MS = 50

const validateLevel = new Ajv({ strict: true }).compile({ type: 'object', properties: { level: { type: 'integer', maximum: 10 } } })
const templates = new Map<string, ConfigTemplate>(['ok', 'half', 'ctl', 'takeover', 'sample', 'empty', 'patch'].map((name) => [name, {
  name, configuration: V1, validateConfig: validateLevel, configAckTimeoutSeconds: 1
}]))

type Answer = 'applied' | 'failed' | 'silent' | 'offline'

/** the devices' side: what each answers to a configuration, decided when it arrives */
class Fleet {
  /** per device, how it answers a configuration; unset: applies everything */
  readonly answer = new Map<string, (config: JsonObject) => Answer>()
  /** acks that came before the test said how the device answers (would make the numbers meaningless) */
  readonly unplanned: string[] = []
  readonly #clients = new Map<string, Client>()

  constructor (readonly hooks: PluginHooks) {}

  /** a version reached the device (the broker published it); it answers a moment later, as over the network */
  received (deviceId: string, version: number, payload: Buffer): void {
    setTimeout(() => this.#answer(deviceId, version, payload), 2)
  }

  #answer (deviceId: string, version: number, payload: Buffer): void {
    const config = (JSON.parse(payload.toString()) as { config: JsonObject }).config
    const decide = this.answer.get(deviceId)
    if (decide === undefined && config.level !== 1) this.unplanned.push(deviceId)
    const answer = decide?.(config) ?? 'applied'
    if (answer === 'offline') return
    const identity = { role: 'device', clientId: deviceId, certificateId: 'x', name: deviceId, permissions: new Set<string>() } as Identity
    let client = this.#clients.get(deviceId)
    if (!client) this.#clients.set(deviceId, client = { id: deviceId } as Client)
    const topic = `devices/${deviceId}/config`
    this.hooks.transformForward!({ client, identity, state: undefined as never, packet: { cmd: 'publish', topic, payload, qos: 1, retain: false, dup: false, messageId: 1 } as never })
    if (answer === 'silent') return
    const ack = Buffer.from(JSON.stringify({ version, status: answer, ...(answer === 'failed' ? { error: 'level out of range' } : {}) }))
    this.hooks.published!({ client: null, identity, packet: { cmd: 'publish', topic: `${topic}/ack`, payload: ack, qos: 1, retain: false, dup: false } as never })
  }
}

interface Env { tb: TestBroker, store: DeviceConfigStore, service: ConfigService, fleet: Fleet, log: AppLogger }

async function environment (t: Test): Promise<Env> {
  const tb = await startBroker({ store: 'memory' })
  const store = new MemoryDeviceConfigStore()
  const { ctx } = tb.handle
  const service = createConfigService({ ctx, store, templates })
  const hooks = await configAckPlugin.setup(ctx, { service, store, scanIntervalMs: 100 })
  const fleet = new Fleet(hooks)
  await new Promise<void>((resolve) => {
    ctx.broker.subscribe('devices/+/config', function toDevice (packet, cb) {
      const m = /^\{"version":(\d+)/.exec(packet.payload.toString())
      if (m) fleet.received(packet.topic.split('/')[1]!, Number(m[1]), packet.payload as Buffer)
      cb()
    }, resolve)
  })
  t.teardown(async () => {
    await hooks.close?.()
    await service.close()
    await store.close()
    await tb.close()
  })
  return { tb, store, service, fleet, log: pino({ level: 'silent' }) }
}

function rolloutsOf (env: Env, owner: string, extra: Partial<RolloutDeps> = {}): Rollouts {
  return createRollouts({
    store: env.store, registry: env.tb.handle.registry, service: env.service, audit: env.tb.handle.audit, metrics: env.tb.handle.metrics,
    log: env.log, now: Date.now, owner, tickMs: TICK_MS, deliveryGraceMs: 300, ...extra
  })
}

/** n devices of `template`, each on version 1 (level 1) and having applied it */
async function devices (env: Env, template: string, n: number): Promise<string[]> {
  const ids = Array.from({ length: n }, (_, i) => `${template}-${String(i).padStart(3, '0')}`)
  const now = Date.now()
  for (const deviceId of ids) {
    if (await env.store.getState(deviceId) !== null) continue
    await env.tb.handle.registry.putDevice({ deviceId, status: 'active', template, createdAt: now, updatedAt: now, attributes: {} })
    await env.service.apply(deviceId, { template, config: V1, overrides: {}, author: 'registration' })
  }
  await until(async () => (await Promise.all(ids.map((d) => env.store.getState(d)))).every((s) => s?.status === 'current'), 5000, 'the current version applied everywhere')
  return ids
}

async function until (check: () => Promise<boolean>, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms
  while (!await check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

async function finished (r: Rollouts, id: string, ms = 10_000): Promise<Rollout> {
  const seen: { last: Rollout | null } = { last: null }
  try {
    await until(async () => {
      seen.last = await r.get(id)
      return seen.last?.status === 'completed' || seen.last?.status === 'aborted'
    }, ms, `rollout ${id} to end`)
  } catch (err) {
    throw new Error(`${(err as Error).message}; last seen ${JSON.stringify(seen.last)}`)
  }
  return seen.last!
}

/** what the devices of each wave were told to answer */
function expectedWaves (n: number, percents: number[], answerOf: (index: number) => Answer): Array<Record<string, number>> {
  const ends = waveEnds(percents, n)
  return percents.map((percent, k) => {
    const w = { percent, targeted: 0, published: 0, applied: 0, failed: 0, timedOut: 0, pending: 0, skipped: 0 }
    for (let i = k === 0 ? 0 : ends[k - 1]!; i < ends[k]!; i++) {
      w.targeted++
      w.published++
      const a = answerOf(i)
      if (a === 'applied') w.applied++
      else if (a === 'failed') w.failed++
      else if (a === 'silent') w.timedOut++
      else w.pending++
    }
    return w
  })
}

/** how many versions `author` made for each device */
async function versionsBy (store: DeviceConfigStore, ids: string[], author: string, reason?: string): Promise<number[]> {
  return await Promise.all(ids.map(async (d) => (await store.history(d, 50)).filter((v) => v.author === author && (reason === undefined || v.reason === reason)).length))
}

t.test('wave plans and cohorts', async (t) => {
  t.strictSame(wavePercents([5, 25, 100]), [5, 25, 100])
  t.strictSame(wavePercents({ base: 1, factor: 4 }), [1, 4, 16, 64, 100])
  t.strictSame(wavePercents({ base: 10, factor: 10 }), [10, 100])
  t.strictSame(waveEnds([5, 25, 100], 200), [10, 50, 200])
  t.strictSame(waveEnds([1, 10, 100], 7), [1, 1, 7], 'a wave covers at least one device')
  for (const bad of [[], [25, 5, 100], [5, 25], [0, 100], [50, 50, 100], { base: 0, factor: 2 }, { base: 1, factor: 1 }, { base: 1e-9, factor: 1.0001 }]) {
    t.throws(() => wavePercents(bad as never), { code: 'InvalidRequest' }, `refused: ${JSON.stringify(bad)}`)
  }
  const ids = Array.from({ length: 50 }, (_, i) => `d${i}`)
  const a = cohortOrder('r1', ids)
  t.strictSame(cohortOrder('r1', [...ids].reverse()), a, 'the same order whatever order the devices came in')
  t.notSame(cohortOrder('r2', ids), a, 'another rollout, other cohorts')
  t.strictSame([...a].sort(), [...ids].sort(), 'every device once')
})

t.test('rollouts on a real broker, service and ack plugin (memory store)', async (t) => {
  const env = await environment(t)
  const { store, fleet, tb } = env

  t.test('2 % failing: completes; the numbers per wave are what the devices did', async (t) => {
    const ids = await devices(env, 'ok', 200)
    const r = rolloutsOf(env, 'p-ok')
    t.teardown(() => r.close())
    // by place in the cohort order: 4 failing (2 %) in waves 2 and 3, one silent, one offline in wave 1 and one in wave 3
    const answerOf = (i: number): Answer => i % 50 === 25 ? 'failed' : i === 30 ? 'silent' : i === 5 || i === 199 ? 'offline' : 'applied'
    const started = await r.start({ target: { template: 'ok' }, config: { level: 2 }, waves: [5, 25, 100], minWaitSeconds: 0.3, abortThreshold: 0.2 }, 'admin-alice')
    cohortOrder(started.id, ids).forEach((d, i) => fleet.answer.set(d, (c) => c.level === 2 ? answerOf(i) : 'applied'))
    t.match(started, { status: 'running', devices: 200, author: 'admin-alice', waves: [{ percent: 5, targeted: 10 }, { percent: 25, targeted: 40 }, { percent: 100, targeted: 150 }] })

    let gaugeSeen = 0
    const sampling = setInterval(() => {
      void tb.handle.metrics.rolloutDevices.get().then((g) => {
        for (const v of g.values) if (v.labels.rollout === started.id && v.labels.state === 'applied') gaugeSeen = Math.max(gaugeSeen, v.value)
      })
    }, 20)
    const done = await finished(r, started.id)
    clearInterval(sampling)
    t.equal(done.status, 'completed', done.reason ?? 'completed')
    t.strictSame(fleet.unplanned, [], 'every device answered as planned')
    t.strictSame(done.waves, expectedWaves(ids.length, [5, 25, 100], answerOf), 'per wave: targeted, published, applied, failed, timed out, pending')
    t.ok(gaugeSeen >= 9, `jitp_rollout_devices{state="applied"} reported progress (${gaugeSeen})`)
    t.equal((await tb.handle.metrics.rolloutDevices.get()).values.filter((v) => v.labels.rollout === started.id).length, 0, 'and is gone once it ended')

    t.match(await store.getTemplateConfig('ok'), { config: { level: 2 }, author: `rollout ${started.id}` }, 'the template configuration is the new one')
    t.strictSame(new Set(await versionsBy(store, ids, `rollout ${started.id}`)), new Set([1]), 'every device changed exactly once')
    const order = cohortOrder(started.id, ids)
    const failedOne = await store.getState(order[25]!)
    t.match(failedOne, { current: { version: 3, author: 'rollback', hash: V1_HASH } }, 'a failing device was rolled back to version 1\'s content')
    t.match(await store.getState(order[199]!), { current: { version: 2, author: `rollout ${started.id}` }, status: 'pending', deliveredAt: null }, 'an offline device is pending on the rollout\'s version')

    const stored = await store.getRollout(started.id)
    t.match(stored, { compacted: true, devices: [], to: {}, late: { [order[5]!]: [2, 0, 'pending'], [order[199]!]: [2, 2, 'pending'] } }, 'the ended record keeps its numbers and the devices still pending, nothing per device else')
    t.ok(JSON.stringify(stored).length < 2000, `small once ended (${JSON.stringify(stored).length} bytes)`)
    // the offline device of the last wave comes back and applies its version: the completed rollout counts it
    const late = order[199]!
    fleet.answer.set(late, () => 'applied')
    const current = (await store.getState(late))!.current!
    fleet.received(late, current.version, Buffer.from(JSON.stringify({ version: current.version, config: current.config })))
    await until(async () => (await r.get(started.id))!.waves[2]!.pending === 0, 3000, 'the late device counted')
    t.match((await r.get(started.id))!.waves, [{ pending: 1 }, {}, { applied: done.waves[2]!.applied + 1, pending: 0 }])

    const events = (name: string) => tb.events(name).filter((e) => e.rolloutId === started.id)
    t.match(events('rollout.started'), [{ actor: 'admin-alice', template: 'ok', count: 200 }])
    t.match(events('rollout.advanced').map((e) => e.reason), ['wave 1 of 3: 5%', 'wave 2 of 3: 25%', 'wave 3 of 3: 100%'])
    t.match(events('rollout.advanced').map((e) => e.count), [10, 40, 150])
    t.equal(events('rollout.completed').length, 1)
    t.equal(events('rollout.aborted').length, 0)
  })

  t.test('50 % failing: aborts after the first wave; every device it changed is back on its previous content', async (t) => {
    const ids = await devices(env, 'half', 200)
    const r = rolloutsOf(env, 'p-half')
    t.teardown(() => r.close())
    const answerOf = (i: number): Answer => i % 2 === 0 ? 'failed' : 'applied'
    const started = await r.start({ target: { template: 'half' }, config: { level: 2 }, waves: [5, 25, 100], minWaitSeconds: 0.3, abortThreshold: 0.2 }, 'admin-alice')
    const order = cohortOrder(started.id, ids)
    order.forEach((d, i) => fleet.answer.set(d, (c) => c.level === 2 ? answerOf(i) : 'applied'))

    const done = await finished(r, started.id)
    t.equal(done.status, 'aborted')
    t.match(done.reason, /5 of 10 outcomes failed or timed out/)
    t.strictSame(done.waves[0], { percent: 5, targeted: 10, published: 10, applied: 5, failed: 5, timedOut: 0, pending: 0, skipped: 0 }, 'the first wave as the devices answered')
    t.match(done.waves.slice(1), [{ targeted: 40, published: 0, applied: 0 }, { targeted: 150, published: 0, applied: 0 }], 'the other waves never started')

    const wave1 = order.slice(0, 10)
    await until(async () => (await Promise.all(wave1.map((d) => store.getState(d)))).every((s) => s?.current?.hash === V1_HASH && s.status === 'current'), 5000, 'wave 1 back on version 1\'s content')
    const applied = wave1.filter((_, i) => answerOf(i) === 'applied')
    t.strictSame(await versionsBy(store, applied, `rollout ${started.id}`, 'rollout aborted'), applied.map(() => 1), 'each device that had applied it: rolled back once by the rollout')
    t.strictSame(await versionsBy(store, wave1, `rollout ${started.id}`, `rollout ${started.id} wave 1 (5%)`), wave1.map(() => 1), 'changed once by its wave')
    const untouched = await Promise.all(order.slice(10).map((d) => store.getState(d)))
    t.ok(untouched.every((s) => s?.current?.version === 1), 'devices of later waves never changed')
    t.equal(await store.getTemplateConfig('half'), null, 'the template configuration is unchanged')

    const events = (name: string) => tb.events(name).filter((e) => e.rolloutId === started.id)
    t.equal(events('rollout.advanced').length, 1, 'one wave only')
    t.match(events('rollout.aborted'), [{ count: 10, reason: /5 of 10/ }])
    t.equal(events('rollout.completed').length, 0)
  })

  t.test('below minSample the threshold is not consulted: an early failure does not stop it, the sample then does', async (t) => {
    const ids = await devices(env, 'sample', 4)
    const r = rolloutsOf(env, 'p-sample')
    t.teardown(() => r.close())
    const started = await r.start({ target: { template: 'sample' }, config: { level: 5 }, waves: [25, 100], minWaitSeconds: 0, abortThreshold: 0.3, minSample: 4 }, 'admin-alice')
    cohortOrder(started.id, ids).forEach((d, i) => fleet.answer.set(d, (c) => c.level === 5 && (i === 0 || i === 2) ? 'failed' : 'applied'))
    const done = await finished(r, started.id)
    t.equal(done.status, 'aborted')
    t.match(done.reason, /2 of 4 outcomes/)
    t.match(done.waves, [{ targeted: 1, failed: 1, applied: 0 }, { targeted: 3, failed: 1, applied: 2 }], 'the first wave\'s 1 of 1 failed did not abort it')
    t.equal(tb.events('rollout.advanced').filter((e) => e.rolloutId === started.id).length, 2)
  })

  t.test('refusals', async (t) => {
    await devices(env, 'ctl', 4)
    const r = rolloutsOf(env, 'p-ctl')
    t.teardown(() => r.close())
    const before = (await r.list()).length
    const base = { target: { template: 'ctl' }, patch: { debug: true }, waves: [50, 100], minWaitSeconds: 0, abortThreshold: 0.2 }
    const cases: Array<[string, Record<string, unknown>, RegExp]> = [
      ['no target', { target: {} }, /target/],
      ['config and patch', { config: { level: 2 } }, /exactly one/],
      ['neither', { patch: undefined }, /exactly one/],
      ['config without a template', { target: { deviceIds: ['ctl-000'] }, patch: undefined, config: { level: 2 } }, /needs its template/],
      ['waves not ending at 100', { waves: [5, 25] }, /last wave must be 100/],
      ['waves going down', { waves: [50, 10, 100] }, /must increase/],
      ['bad threshold', { abortThreshold: 1.5 }, /abortThreshold/],
      ['negative wait', { minWaitSeconds: -1 }, /minWaitSeconds/],
      ['bad minSample', { minSample: 0 }, /minSample/],
      ['unknown devices', { target: { deviceIds: ['ctl-000', 'nope-1', 'nope-2'] } }, /unknown devices nope-1, nope-2/],
      ['nothing matches', { target: { template: 'empty' } }, /no device matches/]
    ]
    for (const [what, change, message] of cases) {
      await t.rejects(r.start({ ...base, ...change } as never, 'admin-alice'), { code: 'InvalidRequest', message }, what)
    }
    await t.rejects(r.start({ ...base, patch: undefined, config: { level: 99 } } as never, 'admin-alice'), { code: 'InvalidConfiguration', message: /\/config\/level/ }, 'a configuration its template\'s configSchema refuses')
    await t.rejects(r.start({ ...base, patch: { level: 'x' } } as never, 'admin-alice'), { code: 'InvalidConfiguration' }, 'a patch that makes the configuration invalid')
    t.equal((await r.list()).length, before, 'nothing stored')
    t.equal(await r.get('rnope'), null)
    for (const action of ['pause', 'resume', 'abort'] as const) {
      await t.rejects(r[action]('rnope', 'admin-alice'), { code: 'RolloutNotFound' }, `${action} of an unknown rollout`)
    }
  })

  t.test('pause holds it, resume moves it on; a patch reaches the listed devices\' overrides; nothing after completion', async (t) => {
    const ids = (await devices(env, 'ctl', 4)).slice(0, 3)
    const r = rolloutsOf(env, 'p-ctl')
    t.teardown(() => r.close())
    const started = await r.start({ target: { deviceIds: ids }, patch: { debug: true }, waves: [34, 100], minWaitSeconds: 0, abortThreshold: 0.2 }, 'admin-alice')
    for (const d of ids) fleet.answer.set(d, () => 'applied')
    t.equal((await r.pause(started.id, 'admin-bob')).status, 'paused')
    t.equal((await r.pause(started.id, 'admin-bob')).status, 'paused', 'pausing again changes nothing')
    const pausedAt = (await r.get(started.id))!
    // paused: several ticks go by with no new wave (the first may have started before the pause)
    await new Promise((resolve) => setTimeout(resolve, 8 * TICK_MS))
    const still = (await r.get(started.id))!
    t.equal(still.status, 'paused')
    t.ok(still.currentWave <= 1 && still.currentWave === pausedAt.currentWave, `no wave started while paused (wave ${still.currentWave})`)
    t.equal((await r.resume(started.id, 'admin-bob')).status, 'running')
    const done = await finished(r, started.id)
    t.equal(done.status, 'completed')
    t.match(done.waves, [{ targeted: 2, applied: 2 }, { targeted: 1, applied: 1 }])
    for (const d of ids) t.match(await store.getState(d), { overrides: { debug: true }, current: { config: { level: 1, debug: true } } }, `${d}: patched overrides`)
    t.match(await store.getState('ctl-003'), { current: { version: 1 }, overrides: {} }, 'a device not listed is untouched')
    t.equal(await store.getTemplateConfig('ctl'), null, 'a patch leaves the template configuration alone')
    await t.rejects(r.pause(started.id, 'admin-bob'), { code: 'RolloutStateConflict' })
    await t.rejects(r.abort(started.id, 'admin-bob'), { code: 'RolloutStateConflict' })
    const events = (name: string) => tb.events(name).filter((e) => e.rolloutId === started.id)
    t.match(events('rollout.paused'), [{ actor: 'admin-bob' }], 'one pause audited')
    t.match(events('rollout.resumed'), [{ actor: 'admin-bob' }])
    t.equal((await r.list())[0]?.id, started.id, 'listed, newest first')
  })

  t.test('an operator\'s abort rolls back what the rollout changed', async (t) => {
    await devices(env, 'ctl', 4)
    const r = rolloutsOf(env, 'p-ctl')
    t.teardown(() => r.close())
    const started = await r.start({ target: { template: 'ctl' }, config: { level: 3 }, waves: [50, 100], minWaitSeconds: 60, abortThreshold: 0.5 }, 'admin-alice')
    const order = cohortOrder(started.id, ['ctl-000', 'ctl-001', 'ctl-002', 'ctl-003'])
    for (const d of order) fleet.answer.set(d, () => 'applied')
    await until(async () => (await r.get(started.id))!.waves[0]!.applied === 2, 5000, 'the first wave applied')
    const before = await Promise.all(order.map((d) => store.getState(d)))
    const aborted = await r.abort(started.id, 'admin-bob')
    t.equal(aborted.status, 'aborted')
    t.equal(aborted.reason, 'aborted by admin-bob')
    await until(async () => (await Promise.all(order.slice(0, 2).map((d) => store.getState(d)))).every((s, i) => s!.current!.version === before[i]!.current!.version + 1), 5000, 'wave 1 rolled back')
    for (const [i, d] of order.slice(0, 2).entries()) {
      const s = await store.getState(d)
      const previous = await store.getVersion(d, before[i]!.current!.version - 1)
      t.equal(s!.current!.hash, previous!.hash, `${d}: back on the content it had before the rollout`)
      t.match(s!.current, { author: `rollout ${started.id}`, reason: 'rollout aborted' })
    }
    for (const [i, d] of order.slice(2).entries()) t.equal((await store.getState(d))!.current!.version, before[i + 2]!.current!.version, `${d}: never reached`)
    t.match(tb.events('rollout.aborted').filter((e) => e.rolloutId === started.id), [{ actor: 'admin-bob' }], 'audited once, with who')
    await t.rejects(r.pause(started.id, 'admin-bob'), { code: 'RolloutStateConflict' })
  })

  t.test('an aborted patch: the overrides go back with the content, so a later template change does not bring the patch back', async (t) => {
    const ids = await devices(env, 'patch', 4)
    const r = rolloutsOf(env, 'p-patch')
    t.teardown(() => r.close())
    for (const d of ids) fleet.answer.set(d, () => 'applied')
    const started = await r.start({ target: { template: 'patch' }, patch: { debug: true }, waves: [50, 100], minWaitSeconds: 60, abortThreshold: 0.5 }, 'admin-alice')
    const changed = cohortOrder(started.id, ids).slice(0, 2)
    await until(async () => (await r.get(started.id))!.waves[0]!.applied === 2, 5000, 'the first wave applied')
    for (const d of changed) t.match(await store.getState(d), { current: { version: 2, overrides: { debug: true } }, overrides: { debug: true } }, `${d}: patched`)
    await r.abort(started.id, 'admin-bob')
    await until(async () => (await Promise.all(changed.map((d) => store.getState(d)))).every((s) => s!.current!.version === 3), 5000, 'wave 1 rolled back')
    for (const d of changed) {
      const s = await store.getState(d)
      t.strictSame(s!.overrides, {}, `${d}: the overrides it had before the rollout`)
      t.strictSame(s!.current!.overrides, {}, `${d}: recorded in the rollback's version`)
      t.strictSame(s!.current!.config, V1, `${d}: and its content`)
    }
    await env.service.setTemplateConfig('patch', { level: 2 }, 'admin-alice')
    t.equal(await env.service.applyTemplateNow('patch', 'admin-alice'), 4, 'every device gets the template change')
    for (const d of ids) t.strictSame((await store.getState(d))!.current!.config, { level: 2 }, `${d}: the template's configuration, without the aborted patch`)
  })

  t.test('the driver dies in the middle of a wave: the next lease holder finishes it, no device changed twice', async (t) => {
    const ids = await devices(env, 'takeover', 60)
    for (const d of ids) fleet.answer.set(d, () => 'applied')
    // A dies (every call it makes from then on never returns, as a killed process) after its 5th change
    let dead = false
    const never = new Promise<never>(() => {})
    let applies = 0
    const deadStore = new Proxy(store, {
      get (target, prop, receiver) {
        const value = Reflect.get(target, prop, receiver) as unknown
        if (typeof value !== 'function') return value
        return (...args: unknown[]) => dead ? never : (value as (...a: unknown[]) => unknown).apply(target, args)
      }
    })
    const dyingService: ConfigService = {
      ...env.service,
      async apply (deviceId, input) {
        if (dead || ++applies > 5) {
          dead = true
          return await never
        }
        return await env.service.apply(deviceId, input)
      }
    }
    const a = rolloutsOf(env, 'p-a', { store: deadStore, service: dyingService, leaseTtlMs: 300 })
    await until(async () => !await store.acquireLease('rollouts', 'probe', 1), 2000, 'A holding the lease')
    const b = rolloutsOf(env, 'p-b', { leaseTtlMs: 300 })
    t.teardown(async () => { void a.close(); await b.close() })
    const started = await a.start({ target: { template: 'takeover' }, config: { level: 4 }, waves: [50, 100], minWaitSeconds: 0, abortThreshold: 0.2 }, 'admin-alice')
    await until(async () => dead, 5000, 'A to die mid-wave')
    const done = await finished(b, started.id)
    t.equal(done.status, 'completed', 'B took the lease over and completed it')
    t.match(done.waves, [{ targeted: 30, published: 30, applied: 30, skipped: 0 }, { targeted: 30, published: 30, applied: 30 }])
    t.strictSame(await versionsBy(store, ids, `rollout ${started.id}`), ids.map(() => 1), 'every device changed exactly once')
    t.equal(applies, 6, 'A changed 5 devices before it died')
  })
})

