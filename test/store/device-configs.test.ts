import { performance } from 'node:perf_hooks'
import { Redis } from 'ioredis'
import t, { type Test } from 'tap'
import { createDeviceConfigStore } from '../../broker/store/create-device-configs.js'
import { configHash } from '../../broker/store/device-configs.js'
import { MemoryDeviceConfigStore } from '../../broker/store/memory-device-configs.js'
import { RedisDeviceConfigStore } from '../../broker/store/redis-device-configs.js'
import { startRedisServer } from '../helpers/redis-server.js'
import { commitInput, deviceConfigsContract } from './device-configs.contract.js'
import { eventually } from './registry.contract.js'

let prefixes = 0
/** a fresh key space per store (or per group of stores that must share one) */
const uniquePrefix = (): string => `cfg-test-${process.pid}-${++prefixes}:`

deviceConfigsContract(t, 'memory', async ({ now }) => {
  const store = new MemoryDeviceConfigStore({ now })
  return { store, cleanup: () => store.close() }
})

t.test('createDeviceConfigStore: memory without a URL', async (t) => {
  const store = createDeviceConfigStore({})
  t.teardown(() => store.close())
  t.ok(store instanceof MemoryDeviceConfigStore)
})

t.test('redis', async (t) => {
  const server = await startRedisServer()
  t.teardown(() => server.stop())

  function open (t: Test, keyPrefix: string | null = uniquePrefix()): RedisDeviceConfigStore {
    const store = createDeviceConfigStore({ redisUrl: server.url, keyPrefix: keyPrefix ?? undefined })
    t.ok(store instanceof RedisDeviceConfigStore, 'a URL makes a Redis store')
    t.teardown(() => store.close())
    return store as RedisDeviceConfigStore
  }

  function raw (t: Test): Redis {
    const conn = new Redis(server.url)
    t.teardown(() => conn.quit())
    return conn
  }

  deviceConfigsContract(t, 'redis', async () => {
    const store = new RedisDeviceConfigStore({ url: server.url, keyPrefix: uniquePrefix() })
    return { store, cleanup: () => store.close() }
  })

  t.test('key layout: default prefix, ids with `:` are the last part of their key', async (t) => {
    const conn = raw(t)
    const store = open(t, null)
    await store.setTemplateConfig('thermostat', { a: 1 }, 'admin-alice', 1)
    await store.commit('dev:1', commitInput({ a: 1 }, { overrides: { a: 1 } }))
    await store.markDelivered('dev:1', 1, 5)
    await store.putRollout('r1', { id: 'r1' })
    await store.acquireLease('rollouts', 'p1', 60_000)
    t.strictSame((await conn.keys('cfg:*')).sort(), [
      'cfg:dev:dev:1', 'cfg:hist:dev:1', 'cfg:lease:rollouts', 'cfg:pending', 'cfg:rollouts', 'cfg:status', 'cfg:tpl:thermostat'
    ].sort())
    t.match(await conn.hgetall('cfg:dev:dev:1'), { version: '1', template: 'thermostat', status: 'pending', deliveredAt: '5', overrides: '{"a":1}' })
    t.strictSame(await conn.zrange('cfg:pending', 0, -1, 'WITHSCORES'), ['dev:1', '5'])
    const ttl = await conn.pttl('cfg:lease:rollouts')
    t.ok(ttl > 0 && ttl <= 60_000, `the lease expires (pttl ${ttl})`)
    await store.commit('dev', commitInput({ b: 2 }))
    t.equal((await store.getState('dev:1'))?.current?.version, 1, 'device `dev` and device `dev:1` stay apart')
    t.equal((await store.history('dev', 10)).length, 1)
  })

  t.test('commit: one round trip (one EVALSHA) once the server knows the script', async (t) => {
    const store = open(t)
    await store.commit('warm', commitInput({ a: 0 }))
    // MONITOR on this server's quiet moment: the contract tests are done and the store is idle
    const watcher = new Redis(server.url)
    const probe = raw(t)
    const monitor = await watcher.monitor()
    t.teardown(() => { monitor.disconnect(); watcher.disconnect() })
    const seen: Array<{ source: string, args: string[] }> = []
    monitor.on('monitor', (_time: string, args: string[], source: string) => { seen.push({ source, args }) })
    await probe.echo('monitor-start')
    t.ok(await eventually(() => seen.some((c) => c.args.includes('monitor-start')), 5000), 'MONITOR started')
    seen.length = 0

    const version = await store.commit('hot', commitInput({ a: 1 }))
    await probe.echo('monitor-end')
    t.ok(await eventually(() => seen.some((c) => c.args.includes('monitor-end')), 5000), 'MONITOR caught up')
    t.equal(version?.hash, configHash({ a: 1 }))
    const fromClients = seen.filter((c) => c.source !== 'lua' && !c.args.includes('monitor-end')).map((c) => c.args[0]?.toLowerCase())
    t.strictSame(fromClients, ['evalsha'], 'the store sent one command')
    t.ok(seen.some((c) => c.source === 'lua' && c.args[0]?.toLowerCase() === 'zadd'), 'and the script did the work')
  })

  t.test('versions stored before versions recorded overrides still read, and the next commit records the device\'s', async (t) => {
    const conn = raw(t)
    const keyPrefix = uniquePrefix()
    const store = open(t, keyPrefix)
    // what the previous COMMIT script wrote: no `overrides` in the version's JSON
    const old = JSON.stringify({ version: 1, deviceId: 'legacy', config: { a: 1 }, author: 'registration', at: 5, hash: configHash({ a: 1 }) })
    await conn.hset(`${keyPrefix}dev:legacy`, 'version', '1', 'template', 'thermostat', 'status', 'current', 'current', old, 'overrides', '{"a":1}', 'lastKnownGood', '1')
    await conn.hincrby(`${keyPrefix}status`, 'current', 1)
    await conn.zadd(`${keyPrefix}hist:legacy`, 1, old)
    const v1 = await store.getVersion('legacy', 1)
    t.strictSame(v1, JSON.parse(old), 'read as it was')
    t.equal(v1?.overrides, undefined, 'no overrides recorded')
    t.match(await store.getState('legacy'), { current: { version: 1 }, overrides: { a: 1 } })
    const v2 = await store.commit('legacy', commitInput({ a: 1, b: 2 }))
    t.strictSame(v2?.overrides, { a: 1 }, 'the next version records the device\'s overrides')
    t.strictSame((await store.history('legacy', 10)).map((v) => v.overrides), [{ a: 1 }, undefined])
  })

  t.test('a server that lost its scripts (restart, SCRIPT FLUSH): the text is sent again', async (t) => {
    const conn = raw(t)
    const store = open(t)
    await store.commit('d1', commitInput({ a: 1 }))
    await conn.script('FLUSH')
    t.equal((await store.commit('d1', commitInput({ a: 2 })))?.version, 2)
  })

  t.test('out of memory: a commit is refused whole', async (t) => {
    const conn = raw(t)
    const store = open(t)
    await store.commit('oom', commitInput({ a: 1 }))
    await conn.config('SET', 'maxmemory', '1')
    try {
      await t.rejects(store.commit('oom', commitInput({ a: 2 }, { overrides: { a: 2 } })), /OOM/)
    } finally {
      await conn.config('SET', 'maxmemory', '0')
    }
    t.match(await store.getState('oom'), { current: { version: 1 }, overrides: {} }, 'the state as it was')
    t.strictSame((await store.history('oom', 10)).map((v) => v.version), [1])
    t.strictSame(await store.countByStatus(), { current: 0, pending: 1, failed: 0 })
  })

  t.test('two processes on one Redis: one winner per ack, timeout and lease', async (t) => {
    const keyPrefix = uniquePrefix()
    const a = open(t, keyPrefix)
    const b = open(t, keyPrefix)
    await a.commit('d1', commitInput({ a: 1 }))
    t.equal(await b.markDelivered('d1', 1, 10), true)
    t.equal(await a.markDelivered('d1', 1, 11), false, 'delivered once across processes')
    t.strictSame(await a.pendingAcks(100, 10), [{ deviceId: 'd1', version: 1, deliveredAt: 10 }], 'A sees B\'s delivery')
    const claims = await Promise.all(Array.from({ length: 10 }, (_, i) => (i % 2 ? a : b).claimTimeout('d1', 1, 20)))
    t.equal(claims.filter(Boolean).length, 1, 'ten claims on two processes: one winner')
    await b.commit('d1', commitInput({ a: 2 }, { expectedVersion: 1 }))
    const acks = await Promise.all(Array.from({ length: 10 }, (_, i) => (i % 2 ? a : b).recordAck('d1', 2, 'applied', 30)))
    t.equal(acks.filter((r) => r.result === 'recorded').length, 1, 'ten acks on two processes: one recorded')
    const leases = await Promise.all(Array.from({ length: 10 }, (_, i) => (i % 2 ? a : b).acquireLease('rollouts', `p${i}`, 60_000)))
    t.equal(leases.filter(Boolean).length, 1, 'one lease holder')
  })

  t.test('outage: fail fast, never crash, recover', async (t) => {
    const fragile = await startRedisServer()
    t.teardown(() => fragile.stop())
    const errors: Error[] = []
    const store = new RedisDeviceConfigStore({ url: fragile.url, keyPrefix: uniquePrefix(), onError: (err) => errors.push(err) })
    t.teardown(() => store.close())
    await store.commit('d1', commitInput({ a: 1 }))
    await fragile.kill()
    for (const [what, call] of [
      ['commit', () => store.commit('d1', commitInput({ a: 2 }))],
      ['recordAck', () => store.recordAck('d1', 1, 'applied', 1)],
      ['getState', () => store.getState('d1')]
    ] as Array<[string, () => Promise<unknown>]>) {
      const started = performance.now()
      await t.rejects(call(), `${what} rejects while Redis is down`)
      const elapsed = performance.now() - started
      t.ok(elapsed < 2500, `${what} rejected in ${Math.round(elapsed)} ms`)
    }
    t.ok(await eventually(() => errors.length > 0, 2000), 'connection errors went to onError')
    await fragile.restart()
    // the restarted server starts empty and without the scripts
    t.ok(await eventually(async () => (await store.commit('d2', commitInput({ a: 1 })).catch(() => null))?.version === 1, 5000), 'works again after the restart')
    const closing = performance.now()
    await store.close()
    t.ok(performance.now() - closing < 2500, 'close is bounded')
  })

  t.test('close is bounded while Redis is down', async (t) => {
    const fragile = await startRedisServer()
    t.teardown(() => fragile.stop())
    const store = new RedisDeviceConfigStore({ url: fragile.url })
    await store.getState('x')
    await fragile.kill()
    const started = performance.now()
    await store.close()
    t.ok(performance.now() - started < 2500, `closed in ${Math.round(performance.now() - started)} ms`)
    await t.rejects(store.getState('x'), /closed/, 'a closed store refuses calls')
  })
})
