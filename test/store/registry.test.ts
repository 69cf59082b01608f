import { createHash } from 'node:crypto'
import { performance } from 'node:perf_hooks'
import { Redis } from 'ioredis'
import t, { type Test } from 'tap'
import { MemoryRegistry } from '../../broker/store/memory-registry.js'
import { RedisRegistry, type RedisRegistryOptions } from '../../broker/store/redis-registry.js'
import { startRedisServer, type RedisServerHandle } from '../helpers/redis-server.js'
import {
  certId, certificate, collectRevocations, device, eventually, registryContract, tokenRecord
} from './registry.contract.js'

let prefixes = 0
/** a fresh key space per registry (or per group of registries that must share one) */
const uniquePrefix = (): string => `jitp-test-${process.pid}-${++prefixes}:`

registryContract(t, 'memory', async ({ now }) => {
  const registry = new MemoryRegistry({ now })
  return { registry, cleanup: () => registry.close() }
})

t.test('redis', async (t) => {
  const server = await startRedisServer()
  t.teardown(() => server.stop())

  function open (t: Test, opts: Partial<RedisRegistryOptions> = {}): RedisRegistry {
    const registry = new RedisRegistry({ url: server.url, keyPrefix: uniquePrefix(), ...opts })
    t.teardown(() => registry.close())
    return registry
  }

  registryContract(t, 'redis', async ({ now }) => {
    const registry = new RedisRegistry({ url: server.url, keyPrefix: uniquePrefix(), now })
    return { registry, cleanup: () => registry.close() }
  })

  t.test('key layout: hashed tokens, default prefix', async (t) => {
    const registry = open(t, { keyPrefix: undefined })
    const raw = new Redis(server.url)
    t.teardown(() => raw.quit())
    await registry.putDevice(device('layout-d1'))
    await registry.putCertificate(certificate('layout-c1', 'layout-d1'))
    await registry.putToken('secret-token-value', tokenRecord('claim-1'), 30_000)

    const tokenKey = `jitp:token:${createHash('sha256').update('secret-token-value').digest('hex')}`
    const keys = await raw.keys('jitp:*')
    t.same(keys.sort(), [
      `jitp:cert:${certId('layout-c1')}`, 'jitp:device-certs:layout-d1', 'jitp:device:layout-d1', 'jitp:devices', tokenKey
    ].sort())
    const ttl = await raw.pttl(tokenKey)
    t.ok(ttl > 0 && ttl <= 30_000, `token key expires (pttl ${ttl})`)
    const stored = await raw.get(tokenKey)
    t.ok(stored && !stored.includes('secret-token-value'), 'the raw token is stored nowhere')
    t.same(await raw.smembers('jitp:devices'), ['layout-d1'])
  })

  t.test('two registries on one Redis: revocations and tokens cross processes', async (t) => {
    const keyPrefix = uniquePrefix()
    const a = open(t, { keyPrefix })
    const b = open(t, { keyPrefix })
    const seenByB = collectRevocations(b)
    t.ok(await a.ping() && await b.ping(), 'both ready (and subscribed)')

    await a.putDevice(device('d1'))
    const started = performance.now()
    t.equal(await a.revokeDevice('d1'), true)
    t.ok(await eventually(() => seenByB.length > 0, 1000), 'B heard A\'s revocation')
    t.comment(`revocation reached B in ${Math.round(performance.now() - started)} ms`)
    t.strictSame(seenByB[0], { deviceId: 'd1', certificateId: null })
    t.equal((await b.getDevice('d1'))?.status, 'revoked')

    await b.putCertificate(certificate('c1', 'd1'))
    t.equal(await b.revokeCertificate(certId('c1')), true)
    t.ok(await eventually(() => seenByB.length === 2, 1000), 'B\'s own revocation reaches its listener')

    await a.putToken('shared', tokenRecord('claim-1'), 60_000)
    t.strictSame(await a.takeToken('shared'), tokenRecord('claim-1'))
    t.equal(await b.takeToken('shared'), null, 'taken on A is gone for B')

    await a.putToken('raced', tokenRecord('claim-2'), 60_000)
    const takes = await Promise.all(Array.from({ length: 10 }, (_, i) => (i % 2 ? a : b).takeToken('raced')))
    t.equal(takes.filter((r) => r !== null).length, 1, 'ten racing takes on two processes: one winner')
  })

  t.test('outage: fail fast, never crash, recover', async (t) => {
    const fragile: RedisServerHandle = await startRedisServer()
    t.teardown(() => fragile.stop())
    const keyPrefix = uniquePrefix()
    const errors: Error[] = []
    const a = new RedisRegistry({ url: fragile.url, keyPrefix, onError: (err) => errors.push(err) })
    const b = new RedisRegistry({ url: fragile.url, keyPrefix }) // no onError: errors must still be swallowed
    t.teardown(() => Promise.all([a.close(), b.close()]))
    const seenByB = collectRevocations(b)
    t.ok(await a.ping() && await b.ping(), 'ready before the outage')

    await fragile.kill()
    let started = performance.now()
    t.equal(await a.ping(), false, 'ping false while Redis is down')
    t.ok(performance.now() - started < 1000, `ping answered in ${Math.round(performance.now() - started)} ms`)

    const calls: Array<[string, () => Promise<unknown>]> = [['getDevice', () => a.getDevice('d1')], ['revokeDevice', () => b.revokeDevice('d1')]]
    for (const [what, call] of calls) {
      started = performance.now()
      await t.rejects(call(), `${what} rejects while Redis is down`)
      const elapsed = performance.now() - started
      t.ok(elapsed < 2000, `${what} rejected in ${Math.round(elapsed)} ms`)
    }
    // the first reconnect attempt (100 ms after the socket closed) is refused; that refusal is an 'error' event
    t.ok(await eventually(() => errors.length > 0, 1000), 'connection errors went to onError')

    // now the connections are reconnecting, not merely holding a dead socket
    started = performance.now()
    t.equal(await b.ping(), false, 'ping false during a sustained outage')
    t.ok(performance.now() - started < 1000, `ping answered in ${Math.round(performance.now() - started)} ms`)
    started = performance.now()
    await t.rejects(a.takeToken('any'), 'takeToken rejects during a sustained outage')
    t.ok(performance.now() - started < 2000, `takeToken rejected in ${Math.round(performance.now() - started)} ms`)

    await fragile.restart()
    started = performance.now()
    t.ok(await eventually(async () => await a.ping() && await b.ping(), 5000), 'ping true again after restart')
    t.comment(`recovered in ${Math.round(performance.now() - started)} ms`)

    await a.putDevice(device('d1'))
    t.equal(await a.revokeDevice('d1'), true)
    t.ok(await eventually(() => seenByB.length > 0, 1000), 'the subscription survived the restart')
    t.strictSame(seenByB[0], { deviceId: 'd1', certificateId: null })
  })
})
