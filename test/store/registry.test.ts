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

const inOrder = (records: ReadonlyArray<{ certificateId: string } | { deviceId: string }>): string[] =>
  records.map((r) => 'certificateId' in r ? r.certificateId : r.deviceId)

let prefixes = 0
/** a fresh key space per registry (or per group of registries that must share one) */
const uniquePrefix = (): string => `jitp-test-${process.pid}-${++prefixes}:`

registryContract(t, 'memory', async ({ now }) => {
  const registry = new MemoryRegistry({ now })
  return { registry, cleanup: () => registry.close() }
})

/**
 * fail fast in an outage: the ping's budget is 500 ms and a command's wait 1 s (broker/store/redis.ts);
 * asserted with a second more, which a loaded machine's event loop may take on top
 * (ioredis' own default would hold a command for its whole reconnect schedule)
 */
const PING_BOUND_MS = 1500
const COMMAND_BOUND_MS = 2500

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
    const cert = certificate('layout-c1', 'layout-d1')
    const expiryMember = `${String(cert.notAfter).padStart(16, '0')}:${cert.certificateId}`
    t.same(keys.sort(), [
      `jitp:cert:${certId('layout-c1')}`, 'jitp:device-certs:layout-d1', 'jitp:device:layout-d1', 'jitp:devices', tokenKey,
      // the listing indexes (sorted sets, score 0, read with ZRANGEBYLEX)
      'jitp:idx:dev', 'jitp:idx:dev:status:active', 'jitp:idx:dev:template:thermostat', 'jitp:idx:dev:st:active:thermostat',
      'jitp:idx:cert', 'jitp:idx:cert:status:active', 'jitp:idx:cert:exp', 'jitp:idx:cert:exp:active'
    ].sort())
    t.same(await raw.zrange('jitp:idx:cert:exp', 0, -1, 'WITHSCORES'), [expiryMember, '0'], 'expiry index: fixed-width notAfter, then the id')
    const ttl = await raw.pttl(tokenKey)
    t.ok(ttl > 0 && ttl <= 30_000, `token key expires (pttl ${ttl})`)
    const stored = await raw.get(tokenKey)
    t.ok(stored && !stored.includes('secret-token-value'), 'the raw token is stored nowhere')
    t.same(await raw.smembers('jitp:devices'), ['layout-d1'])
  })

  t.test('a page reads its index and one pipeline of records, never the keyspace', async (t) => {
    const keyPrefix = uniquePrefix()
    const registry = open(t, { keyPrefix })
    const raw = new Redis(server.url)
    t.teardown(() => raw.quit())
    const ids = Array.from({ length: 300 }, (_, i) => `scan-${String(i).padStart(3, '0')}`)
    await Promise.all(ids.map((id) => registry.putDevice(device(id))))
    await registry.listDevicesPage({ limit: 1 }) // the one-time index check of this key space
    const stats = async (): Promise<Record<string, number>> => {
      const info = await raw.info('commandstats')
      return Object.fromEntries([...info.matchAll(/^cmdstat_([a-z|]+):calls=(\d+)/gm)].map((m) => [m[1]!, Number(m[2])]))
    }
    const before = await stats()
    const page = await registry.listDevicesPage({ limit: 100, cursor: (await registry.listDevicesPage({ limit: 100 })).nextCursor! })
    const after = await stats()
    const delta = (cmd: string): number => (after[cmd] ?? 0) - (before[cmd] ?? 0)
    t.strictSame(inOrder(page.items), ids.slice(100, 200), 'the second page')
    t.equal(delta('zrangebylex'), 2, 'one index read per page')
    t.equal(delta('hgetall'), 200, 'one record read per listed device')
    for (const cmd of ['scan', 'keys', 'smembers', 'sscan', 'zrange', 'eval', 'get']) t.equal(delta(cmd), 0, `no ${cmd}`)
  })

  t.test('records written before the indexes existed are indexed on the first page asked for', async (t) => {
    const keyPrefix = uniquePrefix()
    const raw = new Redis(server.url)
    t.teardown(() => raw.quit())
    // the layout of the previous version: hashes and sets, no idx:* keys, no marker
    const old = (id: string, status: string, template: string): Record<string, string> => ({
      deviceId: id, status, template, createdAt: '1', updatedAt: '1', attributes: '{}'
    })
    const rawCert = (name: string, deviceId: string, notAfter: number): Record<string, string> => ({
      certificateId: certId(name), deviceId, status: 'active', serialNumber: '01', notAfter: String(notAfter), createdAt: '1', updatedAt: '1'
    })
    await raw.hset(`${keyPrefix}device:o1`, old('o1', 'active', 'legacy'))
    await raw.hset(`${keyPrefix}device:o2`, old('o2', 'revoked', 'legacy'))
    await raw.sadd(`${keyPrefix}devices`, 'o1', 'o2')
    await raw.hset(`${keyPrefix}cert:${certId('oc1')}`, rawCert('oc1', 'o1', 5000))
    await raw.hset(`${keyPrefix}cert:${certId('oc2')}`, rawCert('oc2', 'o2', 4000)) // listed under o1 too, bound to o2
    await raw.sadd(`${keyPrefix}device-certs:o1`, certId('oc1'), certId('oc2'))
    await raw.sadd(`${keyPrefix}device-certs:o2`, certId('oc2'))
    const registry = open(t, { keyPrefix })
    t.strictSame(inOrder((await registry.listDevicesPage({ limit: 10 })).items), ['o1', 'o2'])
    t.strictSame(inOrder((await registry.listDevicesPage({ status: 'revoked', template: 'legacy', limit: 10 })).items), ['o2'])
    t.strictSame(inOrder((await registry.listCertificatesPage({ expiringBefore: 10_000, limit: 10 })).items), [certId('oc2'), certId('oc1')])
    t.equal(await raw.zcard(`${keyPrefix}idx:cert`), 2, 'each certificate indexed once')
    t.equal(await raw.get(`${keyPrefix}index-version`), '1', 'marked, so no process indexes it again')
  })

  t.test('out of memory: a write is refused whole, its record and indexes intact', async (t) => {
    const registry = open(t, { keyPrefix: uniquePrefix() })
    const raw = new Redis(server.url)
    t.teardown(() => raw.quit())
    await registry.putDevice(device('oom-1'))
    await registry.putCertificate(certificate('oom-c1', 'oom-1'))
    await raw.config('SET', 'maxmemory', '1')
    try {
      await t.rejects(registry.putDevice(device('oom-1', { template: 'other' })), /OOM/, 'putDevice refused')
      await t.rejects(registry.putCertificate(certificate('oom-c1', 'oom-1', { status: 'revoked' })), /OOM/, 'putCertificate refused')
      await t.rejects(registry.setDeviceStatus('oom-1', 'quarantined'), /OOM/, 'setDeviceStatus refused')
    } finally {
      await raw.config('SET', 'maxmemory', '0')
    }
    t.strictSame(await registry.getDevice('oom-1'), device('oom-1'), 'the record as it was')
    t.strictSame(inOrder((await registry.listDevicesPage({ template: 'thermostat', status: 'active', limit: 10 })).items), ['oom-1'], 'still listed as it was')
    t.strictSame(inOrder((await registry.listCertificatesPage({ status: 'active', limit: 10 })).items), [certId('oom-c1')])
  })

  t.test('recordActivity: one round trip, no write per message', async (t) => {
    const registry = open(t)
    const raw = new Redis(server.url)
    t.teardown(() => raw.quit())
    const evals = async (): Promise<number> => Number(/^cmdstat_eval:calls=(\d+)/m.exec(await raw.info('commandstats'))?.[1] ?? 0)
    const before = await evals()
    await registry.recordActivity(Array.from({ length: 1200 }, (_, i) => ({ deviceId: `act-${i}`, seenAt: 1000 + i, connects: 1, messagesIn: i, rejected: 0 })))
    t.equal(await evals() - before, 3, '1,200 deltas: three scripts (batches of 500) in one pipeline')
    t.match(await registry.getActivity('act-1199'), { firstSeen: 2199, lastSeen: 2199, connects: 1, messagesIn: 1199 })
  })

  t.test('certificateRecords: a device connect reads the store in one command', async (t) => {
    const registry = open(t)
    const raw = new Redis(server.url)
    t.teardown(() => raw.quit())
    await registry.putDevice(device('rt-d1'))
    await registry.putCertificate(certificate('rt-c1', 'rt-d1'))
    const q = { certificateId: certId('rt-c1'), issuerFingerprint: certId('issuer'), serialNumber: '01' }
    await registry.certificateRecords(q) // loads the script (EVALSHA, then EVAL after NOSCRIPT)
    const stats = async (): Promise<Record<string, number>> => {
      const info = await raw.info('commandstats')
      return Object.fromEntries([...info.matchAll(/^cmdstat_([a-z|]+):calls=(\d+)/gm)].map((m) => [m[1]!, Number(m[2])]))
    }
    const before = await stats()
    const records = await registry.certificateRecords(q)
    const after = await stats()
    const delta = (cmd: string): number => (after[cmd] ?? 0) - (before[cmd] ?? 0)
    t.strictSame(records, { revoked: false, certificate: certificate('rt-c1', 'rt-d1'), device: device('rt-d1') })
    t.equal(delta('evalsha'), 1, 'one EVALSHA')
    t.equal(delta('eval'), 0, 'the script is not sent again')
    // the reads the script makes, counted by Redis inside it: the list, the certificate, its device
    t.equal(delta('hmget'), 1)
    t.equal(delta('hgetall'), 2)
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

    await a.putDevice(device('q1'))
    t.ok(await a.setDeviceStatus('q1', 'quarantined'))
    t.ok(await eventually(() => seenByB.length === 3, 1000), 'B heard A\'s quarantine')
    t.strictSame(seenByB[2], { deviceId: 'q1', certificateId: null, statusChanged: true }, 'as a status change, not a revocation')
    t.equal((await b.listDevicesPage({ status: 'quarantined', limit: 10 })).items[0]?.deviceId, 'q1', 'and lists it as quarantined')

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
    t.ok(performance.now() - started < PING_BOUND_MS, `ping answered in ${Math.round(performance.now() - started)} ms`)

    const calls: Array<[string, () => Promise<unknown>]> = [['getDevice', () => a.getDevice('d1')], ['revokeDevice', () => b.revokeDevice('d1')]]
    for (const [what, call] of calls) {
      started = performance.now()
      await t.rejects(call(), `${what} rejects while Redis is down`)
      const elapsed = performance.now() - started
      t.ok(elapsed < COMMAND_BOUND_MS, `${what} rejected in ${Math.round(elapsed)} ms`)
    }
    // the first reconnect attempt (100 ms after the socket closed) is refused; that refusal is an 'error' event
    t.ok(await eventually(() => errors.length > 0, 5000), 'connection errors went to onError')

    // now the connections are reconnecting, not merely holding a dead socket
    started = performance.now()
    t.equal(await b.ping(), false, 'ping false during a sustained outage')
    t.ok(performance.now() - started < PING_BOUND_MS, `ping answered in ${Math.round(performance.now() - started)} ms`)
    started = performance.now()
    await t.rejects(a.takeToken('any'), 'takeToken rejects during a sustained outage')
    t.ok(performance.now() - started < COMMAND_BOUND_MS, `takeToken rejected in ${Math.round(performance.now() - started)} ms`)

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
