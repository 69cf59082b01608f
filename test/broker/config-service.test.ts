/**
 * The configuration service (broker/config-service.ts) on a real in-memory broker:
 * effective configuration (deep merge), validation naming the JSON pointer with
 * nothing committed or published, rollback to a version or the last known good
 * (and the refusals when there is none), compare-and-set, and a template's
 * configuration applied to its devices at once.
 */
import { Ajv } from 'ajv'
import t from 'tap'
import { createConfigService, deepMerge, type ConfigTemplate } from '../../broker/config-service.js'
import { JitpError } from '../../broker/errors.js'
import { MemoryDeviceConfigStore } from '../../broker/store/memory-device-configs.js'
import { startBroker, type TestBroker } from '../helpers/broker.js'

const ajv = new Ajv({ strict: true })
const sensor: ConfigTemplate = {
  name: 'sensor',
  configuration: { interval: 60, radio: { power: 3, channels: [1, 2] } },
  validateConfig: ajv.compile({
    type: 'object',
    properties: { interval: { type: 'integer', minimum: 1 }, radio: { type: 'object', properties: { power: { type: 'integer', maximum: 10 } } } }
  }),
  configAckTimeoutSeconds: 30
}

/** what is retained on a topic right now, read from the broker's own persistence */
async function retained (tb: TestBroker, topic: string): Promise<string | null> {
  const persistence = (tb.handle.broker as unknown as { persistence: { createRetainedStreamCombi (topics: string[]): AsyncIterable<{ payload: Buffer }> } }).persistence
  for await (const packet of persistence.createRetainedStreamCombi([topic])) return packet.payload.toString()
  return null
}

t.test('deepMerge: objects merged recursively, arrays and scalars replaced', async (t) => {
  t.same(deepMerge({ a: 1, o: { x: 1, y: [1, 2], z: { k: 1 } } }, { o: { y: [3], z: { j: 2 } }, b: null }),
    { a: 1, o: { x: 1, y: [3], z: { k: 1, j: 2 } }, b: null })
})

t.test('the configuration service', async (t) => {
  const tb = await startBroker({ store: 'memory', overrides: { CONFIG_ACK_TIMEOUT_SECONDS: 300 } })
  const store = new MemoryDeviceConfigStore()
  const service = createConfigService({ ctx: tb.handle.ctx, store, templates: new Map([['sensor', sensor]]) })
  t.teardown(async () => { await service.close(); await tb.close() })
  const now = Date.now()
  await tb.handle.registry.putDevice({ deviceId: 'svc-1', status: 'active', template: 'sensor', createdAt: now, updatedAt: now, attributes: {} })

  t.test('validation names the path; nothing is committed or published', async (t) => {
    t.throws(() => service.validate('sensor', { interval: 0 }), { code: 'InvalidConfiguration', detail: '/config/interval: must be >= 1' })
    t.throws(() => service.validate('sensor', { radio: { power: 11 } }), { code: 'InvalidConfiguration', detail: '/config/radio/power: must be <= 10' })
    t.throws(() => service.validate('sensor', { blob: 'x'.repeat(tb.handle.config.maxPayloadBytes) }), { code: 'InvalidConfiguration', detail: /MAX_PAYLOAD_BYTES/ })
    await t.rejects(service.setOverrides('svc-1', { radio: { power: 99 } }, 'alice'), { code: 'InvalidConfiguration', detail: '/config/radio/power: must be <= 10' })
    t.equal(await service.state('svc-1'), null, 'no version committed')
    t.equal(await retained(tb, 'devices/svc-1/config'), null, 'nothing published')
    await t.rejects(service.setOverrides('nobody', {}, 'alice'), { code: 'DeviceNotFound' })
    t.equal(service.ackTimeoutMs('sensor'), 30_000, 'the template\'s own ack timeout')
    t.equal(service.ackTimeoutMs('other'), 300_000, 'else CONFIG_ACK_TIMEOUT_SECONDS')
    t.equal(service.ackTimeoutMs(), 30_000, 'the shortest, for the timeout scan')
  })

  t.test('overrides merged over the template; rollback to a version and to the last known good', async (t) => {
    await t.rejects(service.rollback('svc-1', { author: 'alice', reason: 'test' }), { code: 'NoLastKnownGood' }, 'nothing applied yet')
    const v1 = await service.setOverrides('svc-1', { radio: { power: 5 } }, 'alice')
    t.same(v1.config, { interval: 60, radio: { power: 5, channels: [1, 2] } })
    t.equal(await retained(tb, 'devices/svc-1/config'), JSON.stringify({ version: 1, config: v1.config }), 'published retained')
    await store.recordAck('svc-1', 1, 'applied', Date.now())
    await service.setOverrides('svc-1', { interval: 5 }, 'bob')
    await t.rejects(service.rollback('svc-1', { toVersion: 9, author: 'alice', reason: 'test' }), { code: 'VersionNotFound' })

    const back = await service.rollback('svc-1', { author: 'carol', reason: 'operator rollback' })
    t.match(back, { version: 3, config: v1.config, author: 'carol', reason: 'operator rollback' }, 'the last known good\'s content as version 3')
    t.match(tb.events('config.rolledback').at(-1), { deviceId: 'svc-1', version: 3, fromVersion: 1, actor: 'carol' })
    t.equal(await service.rollback('svc-1', { toVersion: 2, author: 'carol', reason: 'x', expectedVersion: 2 }), null, 'compare-and-set: 3 is current, nothing done')
    const to2 = await service.rollback('svc-1', { toVersion: 2, author: 'carol', reason: 'x', expectedVersion: 3 })
    t.match(to2, { version: 4, config: { interval: 5 } })
    t.equal(await service.apply('svc-1', { template: 'sensor', config: { interval: 9 }, author: 'alice', expectedVersion: 3 }), null, 'apply with a stale expected version')
    t.equal((await service.state('svc-1'))?.current?.version, 4)
  })

  t.test('a template configuration applied at once', async (t) => {
    await tb.handle.registry.putDevice({ deviceId: 'svc-2', status: 'active', template: 'sensor', createdAt: now, updatedAt: now, attributes: {} })
    await t.rejects(service.setTemplateConfig('sensor', { interval: -1 }, 'alice'), { code: 'InvalidConfiguration' })
    await service.setTemplateConfig('sensor', { interval: 30, radio: { power: 1 } }, 'alice')
    t.match(await service.templateConfig('sensor'), { config: { interval: 30 }, author: 'alice' })
    t.equal(await service.applyTemplateNow('sensor', 'alice'), 2, 'both devices get a version')
    t.match((await service.state('svc-1'))?.current, { version: 5, config: { interval: 5, radio: { power: 1 } } }, 'svc-1 keeps its override')
    t.match((await service.state('svc-2'))?.current, { version: 1, config: { interval: 30, radio: { power: 1 } } })
    t.equal(await service.applyTemplateNow('sensor', 'alice'), 0, 'nothing changed: no new versions')
    await t.rejects(service.applyTemplateNow('nope', 'alice'), JitpError)
  })

  t.test('a rollback restores the overrides of the version it goes back to, not only its content', async (t) => {
    await tb.handle.registry.putDevice({ deviceId: 'svc-3', status: 'active', template: 'sensor', createdAt: now, updatedAt: now, attributes: {} })
    const v1 = await service.setOverrides('svc-3', {}, 'alice')
    t.strictSame(v1.overrides, {}, 'version 1 records its overrides')
    await store.recordAck('svc-3', 1, 'applied', Date.now())
    const v2 = await service.setOverrides('svc-3', { a: 1 }, 'bob')
    t.strictSame(v2.overrides, { a: 1 })
    // as the ack plugin does when version 2 fails: back to the last known good
    const v3 = await service.rollback('svc-3', { author: 'rollback', reason: 'device reported failed', kind: 'failed' })
    t.match(v3, { version: 3, config: v1.config, overrides: {} }, 'version 1\'s content and overrides as version 3')
    t.strictSame((await service.state('svc-3'))?.overrides, {}, 'the device\'s overrides are version 1\'s again')
    await service.setTemplateConfig('sensor', { interval: 45, radio: { power: 2 } }, 'alice')
    await service.applyTemplateNow('sensor', 'alice')
    t.strictSame((await service.state('svc-3'))?.current?.config, { interval: 45, radio: { power: 2 } }, 'a template change does not bring {a:1} back')

    const to2 = await service.rollback('svc-3', { toVersion: 2, author: 'carol', reason: 'operator rollback' })
    t.match(to2, { version: 5, config: v2.config, overrides: { a: 1 } }, 'and to version 2: its overrides come back with it')
    t.strictSame((await service.state('svc-3'))?.overrides, { a: 1 })
  })
})
