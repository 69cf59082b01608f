/**
 * The central audit (CONTRACT §6, §8; issue 15): two broker processes on one
 * real redis-server. A device's events written by both come back from either
 * one's admin API, and from the real `aedes-jitp audit --device`, in time order,
 * each line naming the process that wrote it. Redis killed: the processes' audit
 * files keep growing (an outage never blocks a line), and when Redis is back the
 * stream catches up with every line written meanwhile; the stream, exported with
 * `audit --json`, verifies per process with `audit verify --merged --partial`,
 * and each process's own file verifies on its own.
 */
import t from 'tap'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { createRegistry } from '../../broker/store/create-registry.js'
import { adminRequest } from '../helpers/admin.js'
import { connect, devPki, endClient, registerDeviceIn } from '../helpers/broker.js'
import { startBrokerProcess, type BrokerProcess } from '../helpers/broker-process.js'
import { cli } from '../helpers/cli.js'
import { startRedisServer } from '../helpers/redis-server.js'

type Line = Record<string, unknown>

async function until<T> (get: () => Promise<T>, ok: (v: T) => boolean, what: string, timeoutMs = 8000): Promise<T> {
  const start = Date.now()
  for (;;) {
    const v = await get()
    if (ok(v)) return v
    if (Date.now() - start > timeoutMs) throw new Error(`timed out waiting for ${what}: last ${JSON.stringify(v).slice(0, 400)}`)
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
}

t.test('two broker processes, one Redis: one query sees both, an outage loses no line', async (t) => {
  const pki = await devPki()
  const redis = await startRedisServer()
  t.teardown(() => redis.stop())
  const X = 'audit-cluster-x'
  const registry = createRegistry({ redisUrl: redis.url })
  const creds = await registerDeviceIn(registry, pki, X)
  await registry.close()
  const [a, b] = await Promise.all([startBrokerProcess({ redisUrl: redis.url, pki }), startBrokerProcess({ redisUrl: redis.url, pki })])
  const brokerIdOf = (p: BrokerProcess): unknown => p.auditLines().find((l) => l.event === 'broker.started')?.brokerId
  // the file line is written asynchronously: a loaded machine can report the process ready first
  const [idA, idB] = await until(async () => [brokerIdOf(a), brokerIdOf(b)], (ids) => ids.every((id) => id !== undefined), 'broker.started in both files')
  t.ok(typeof idA === 'string' && typeof idB === 'string' && idA !== idB, 'each process stamps its own brokerId')

  // X's life across both processes
  await endClient(await connect({ port: a.port, pki }, creds, { clientId: X }))
  t.equal((await adminRequest(a.adminPort, pki, 'POST', `/v1/devices/${X}/quarantine`)).status, 200)
  await endClient(await connect({ port: b.port, pki }, creds, { clientId: X }))
  t.equal((await adminRequest(b.adminPort, pki, 'POST', `/v1/devices/${X}/reinstate`)).status, 200)
  const expected = [
    [idA, 'connect.accepted'], [idA, 'disconnect'], [idA, 'device.quarantined'],
    [idB, 'connect.accepted'], [idB, 'disconnect'], [idB, 'device.reinstated']
  ]
  const ofX = async (p: BrokerProcess): Promise<Line[]> => (await adminRequest(p.adminPort, pki, 'GET', `/v1/audit?deviceId=${X}&limit=100`)).body.items as Line[]
  const viaA = await until(() => ofX(a), (items) => items.length >= expected.length, 'X\'s events of both processes in the stream')
  // (a process writes connect.accepted once its post-connect work is done, which a quick disconnect can beat: only the set is fixed)
  const key = (pair: unknown[]): string => pair.join(' ')
  t.same(viaA.map((l) => key([l.brokerId, l.event])).sort(), expected.map(key).sort(), 'through A: the events of both processes')
  t.ok(viaA.every((l, i) => i === 0 || (l.time as number) >= (viaA[i - 1]!.time as number)), 'in time order')
  t.same(await ofX(b), viaA, 'through B: the same lines')

  const env = { CERTS_DIR: pki.dir, ADMIN_PORT: String(b.adminPort) }
  const shown = await cli(['audit', '--device', X, '--json'], env)
  t.equal(shown.code, 0, shown.stderr)
  t.same(shown.stdout.trim().split('\n').map((l) => JSON.parse(l) as Line), viaA, 'aedes-jitp audit --device X: the same, through the admin API')
  const human = await cli(['audit', '--device', X], { CERTS_DIR: pki.dir, ADMIN_PORT: String(a.adminPort) })
  t.same(human.stdout.trim().split('\n').map((l) => l.split(/\s+/)[2]), viaA.map((l) => l.event), 'and for humans, in the same order')

  // Redis gone: A's file keeps growing, nothing waits for Redis
  await redis.kill()
  // (the admin API answers 503 while the store is away; each request is still audited)
  const urls = [0, 1, 2].map((i) => `/v1/no-such-route-${i}`)
  for (const url of urls) t.ok([404, 503].includes((await adminRequest(a.adminPort, pki, 'GET', url)).status), `${url} answered`)
  const inFile = (p: BrokerProcess): Line[] => p.auditLines().filter((l) => l.event === 'admin.request' && urls.includes(String(l.url)))
  await until(async () => inFile(a).length, (n) => n === urls.length, 'the outage\'s lines in A\'s file')
  t.pass('every line of the outage is in A\'s audit file')

  // back (empty: no AOF): A's backlog arrives, and a query through B sees it
  await redis.restart()
  const caughtUp = await until(async () => {
    const r = await adminRequest(b.adminPort, pki, 'GET', '/v1/audit?event=admin.request&limit=1000')
    return r.status === 200 ? (r.body.items as Line[]).filter((l) => urls.includes(String(l.url))) : []
  }, (items) => items.length === urls.length, 'the stream catching up')
  t.same(caughtUp.map((l) => [l.brokerId, l.url]), urls.map((u) => [idA, u]), 'every line written during the outage reached the stream, once, in order')
  const gaps = await adminRequest(b.adminPort, pki, 'GET', '/v1/audit?event=audit.stream.*&limit=10')
  t.same(gaps.body.items, [], 'nothing dropped: no gap to report')

  // the cluster's stream, exported, verifies per process (each from its first line the restarted Redis has)
  const exported = await cli(['audit', '--json'], env)
  t.equal(exported.code, 0, exported.stderr)
  const streamFile = join(a.auditLog, '..', 'stream.jsonl')
  writeFileSync(streamFile, exported.stdout)
  const streamCheck = await cli(['audit', 'verify', '--merged', '--partial', streamFile], {})
  t.equal(streamCheck.code, 0, `the stream verifies per process: ${streamCheck.stdout}${streamCheck.stderr}`)
  t.match(streamCheck.stdout, /2 chains \(one per brokerId\)/)

  await Promise.all([a.stop(), b.stop()])
  for (const p of [a, b]) {
    const own = await cli(['audit', 'verify', p.auditLog], {})
    t.equal(own.code, 0, `each process's own file verifies: ${own.stdout}${own.stderr}`)
  }
})
