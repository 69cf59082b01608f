/**
 * Device activity (plugins/activity.ts): counted from real devices over mutual TLS
 * on both stores, flushed in batches (no store write per message, checked with
 * Redis' INFO commandstats), flushed at close, kept across a failed flush, and a
 * dead store cannot hang close().
 */
import { Writable } from 'node:stream'
import type { Client } from 'aedes'
import { Redis } from 'ioredis'
import pino from 'pino'
import t from 'tap'
import type { PluginContext } from '../../broker/plugin.js'
import type { ConnectionState } from '../../broker/session.js'
import { RedisRegistry } from '../../broker/store/redis-registry.js'
import type { DeviceActivity, Registry } from '../../broker/store/registry.js'
import { activityPlugin } from '../../plugins/activity.js'
import { STORES, connect, credentials, endClient, publish, registerDevice, startBroker } from '../helpers/broker.js'
import { startRedisServer } from '../helpers/redis-server.js'

const telemetry = (seq: number): string => JSON.stringify({ ts: 1763769600000, seq, values: { temperature: 21.5 } })

/** polls the store until `check` accepts the device's activity */
async function activityWhen (registry: Registry, deviceId: string, check: (a: DeviceActivity) => boolean, ms = 5000): Promise<DeviceActivity> {
  const deadline = Date.now() + ms
  let last: DeviceActivity | null = null
  while (Date.now() < deadline) {
    last = await registry.getActivity(deviceId).catch(() => null)
    if (last !== null && check(last)) return last
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  throw new Error(`activity of ${deviceId} never matched; last seen ${JSON.stringify(last)}`)
}

async function commandCalls (raw: Redis): Promise<Record<string, number>> {
  const info = await raw.info('commandstats')
  return Object.fromEntries([...info.matchAll(/^cmdstat_([a-z|]+):calls=(\d+)/gm)].map((m) => [m[1]!, Number(m[2])]))
}

for (const store of STORES) {
  t.test(`a device's connects, messages and rejections reach the registry (${store})`, async (t) => {
    const tb = await startBroker({ store, overrides: { ACTIVITY_FLUSH_MS: 100 } })
    t.teardown(() => tb.close())
    const { registry } = tb.handle
    const creds = await registerDevice(tb, 'act-1')
    const notAfter = (await registry.getCertificate(creds.certificateId))!.notAfter
    const service = await connect(tb, credentials(tb.pki, 'service'))
    const started = Date.now()

    const device = await connect(tb, creds, { clientId: 'act-1' })
    for (let i = 0; i < 20; i++) await publish(device, 'devices/act-1/telemetry', telemetry(i))
    await publish(device, 'devices/act-1/telemetry', '{"ts": ')
    await publish(service, 'devices/act-1/commands/reboot', JSON.stringify({ name: 'reboot' }), { qos: 0 })
    const seen = await activityWhen(registry, 'act-1', (a) => a.messagesIn === 20 && a.rejected === 1)
    t.match(seen, { connects: 1, messagesIn: 20, rejected: 1, lastErrorCode: 'InvalidJson', remoteAddress: '127.0.0.1', certificateNotAfter: notAfter },
      'counted from the first packet; the service\'s command to it is not its message')
    t.ok(seen.firstSeen! >= started && seen.firstSeen! <= seen.lastSeen! && seen.lastSeen! <= Date.now(), 'first and last seen within the test')

    await endClient(device)
    const again = await connect(tb, creds, { clientId: 'act-1' })
    const reconnected = await activityWhen(registry, 'act-1', (a) => a.connects === 2)
    t.match(reconnected, { messagesIn: 20, rejected: 1, firstSeen: seen.firstSeen }, 'a reconnect adds a connect; firstSeen stays')
    t.ok(reconnected.lastSeen! >= seen.lastSeen!, 'lastSeen moves on')
    t.equal(await registry.getActivity('service'), null, 'only devices are tracked')
    await endClient(again)
    await endClient(service)
  })

  t.test(`close() writes what is still pending (${store})`, async (t) => {
    const redis = store === 'redis' ? await startRedisServer() : undefined
    if (redis) t.teardown(() => redis.stop())
    // no periodic flush within the test: only close() can write
    const tb = await startBroker({ store, redis, overrides: { ACTIVITY_FLUSH_MS: 600_000 } })
    let closed = false
    t.teardown(() => closed ? undefined : tb.close())
    const creds = await registerDevice(tb, 'act-close')
    const device = await connect(tb, creds, { clientId: 'act-close' })
    for (let i = 0; i < 5; i++) await publish(device, 'devices/act-close/telemetry', telemetry(i))
    t.equal(await tb.handle.registry.getActivity('act-close'), null, 'nothing written before close')
    await tb.close()
    closed = true
    const reader = redis ? new RedisRegistry({ url: redis.url }) : tb.handle.registry
    t.teardown(() => reader.close())
    t.match(await reader.getActivity('act-close'), { connects: 1, messagesIn: 5, rejected: 0 }, 'written by close()')
  })
}

t.test('1,000 telemetry messages cost a few registry writes, not 1,000 (redis, INFO commandstats)', async (t) => {
  const flushMs = 200
  const tb = await startBroker({ store: 'redis', overrides: { ACTIVITY_FLUSH_MS: flushMs } })
  t.teardown(() => tb.close())
  const raw = new Redis(tb.redis!.url)
  t.teardown(() => raw.quit())
  const { registry } = tb.handle
  const creds = await registerDevice(tb, 'act-busy')
  const device = await connect(tb, creds, { clientId: 'act-busy' })
  await activityWhen(registry, 'act-busy', (a) => a.connects === 1)

  // the flushes themselves, counted at the registry: the scripts Redis counts include
  // other timers' (the config-ack scan, the rollouts lease, once a second each)
  let flushCalls = 0
  const recordActivity = registry.recordActivity.bind(registry)
  registry.recordActivity = (deltas) => { flushCalls++; return recordActivity(deltas) }
  const before = await commandCalls(raw)
  const started = Date.now()
  // in order on one connection: the last (QoS 1) PUBACK comes after the 999 before it were handled
  for (let i = 0; i < 999; i++) device.publish('devices/act-busy/telemetry', telemetry(i), { qos: 0 })
  await publish(device, 'devices/act-busy/telemetry', telemetry(999), { qos: 1 })
  await activityWhen(registry, 'act-busy', (a) => a.messagesIn === 1000)
  const elapsed = Date.now() - started
  const after = await commandCalls(raw)
  const delta = (cmd: string): number => (after[cmd] ?? 0) - (before[cmd] ?? 0)

  const writes = ['hset', 'hsetnx', 'hincrby', 'hmset', 'set', 'eval', 'evalsha', 'zadd', 'sadd', 'incr', 'incrby'].reduce((n, cmd) => n + delta(cmd), 0)
  const flushes = delta('eval') + delta('evalsha')
  t.comment(`${elapsed} ms, ${flushCalls} flushes, ${flushes} scripts, ${writes} write commands (the scripts' own HSET/HINCRBY included), ${delta('publish')} PUBLISH`)
  t.ok(delta('publish') >= 1000, 'the messages went through this Redis (mqemitter PUBLISH each)')
  t.ok(flushCalls >= 1 && flushCalls <= Math.ceil(elapsed / flushMs) + 2, `one flush per interval at most (${flushCalls} in ${elapsed} ms)`)
  t.ok(writes <= 5 * flushes, `a few writes per flush (${writes})`)
  t.ok(writes < 100, 'nowhere near one per message')
  await endClient(device)
})

t.test('a failed flush keeps its counts for the next one; a dead store does not hang close()', async (t) => {
  const tb = await startBroker({ store: 'memory' })
  t.teardown(() => tb.close())
  const fragile = await startRedisServer()
  t.teardown(() => fragile.stop())
  const registry = new RedisRegistry({ url: fragile.url })
  t.teardown(() => registry.close())
  const logged: Array<{ msg?: string }> = []
  const log = pino({ level: 'info' }, new Writable({
    write (chunk: Buffer, _enc, cb) {
      logged.push(JSON.parse(chunk.toString()) as { msg?: string })
      cb()
    }
  }))
  // the plugin on a real broker's context, with the Redis registry and a short interval
  const ctx: PluginContext = { ...tb.handle.ctx, registry, log, config: { ...tb.handle.ctx.config, activityFlushMs: 100 } }
  const hooks = await activityPlugin.setup(ctx, undefined)
  const identity = { role: 'device', clientId: 'unit-1', certificateId: 'c', name: 'unit-1', permissions: new Set<string>() } as const
  const state = { peer: { notAfter: 1_900_000_000_000 }, remoteAddress: '10.1.2.3', identity } as unknown as ConnectionState
  const client = {} as Client
  const message = (): void => hooks.published!({ client, identity, packet: {} as never })

  hooks.ready!(client, state)
  for (let i = 0; i < 3; i++) message()
  t.match(await activityWhen(registry, 'unit-1', (a) => a.messagesIn === 3), { connects: 1, remoteAddress: '10.1.2.3', certificateNotAfter: 1_900_000_000_000 }, 'flushed')

  await fragile.kill()
  message()
  message()
  hooks.rejected!({ client, identity, topic: 'devices/unit-1/telemetry', code: 'SchemaViolation', errors: [] })
  const deadline = Date.now() + 5000
  while (!logged.some((l) => l.msg?.includes('not written')) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20))
  t.ok(logged.some((l) => l.msg?.includes('kept for the next flush')), 'the failed flush is logged')
  message()
  await fragile.restart() // empty: the server kept nothing on disk
  t.match(await activityWhen(registry, 'unit-1', (a) => a.messagesIn === 3 && a.rejected === 1, 8000),
    { connects: 0, lastErrorCode: 'SchemaViolation' }, 'the outage\'s counts (two kept from the failed flush, one since) arrive once Redis is back')
  t.ok(logged.some((l) => l.msg === 'device activity written again'), 'recovery logged')

  await fragile.kill()
  message()
  const closing = Date.now()
  await hooks.close!()
  const took = Date.now() - closing
  t.ok(took < 2500, `close() with a dead store returned in ${took} ms`)
  t.ok(logged.some((l) => l.msg === 'device activity not written at shutdown'), 'the lost batch is logged')
})
