/**
 * Closing a connection while Redis is away (broker/store/redis.ts): the commands
 * still queued are rejected, the caller who awaits one sees it, and one nobody awaits
 * (ioredis' own re-SUBSCRIBE after a reconnect is such a command) does not become an
 * unhandled rejection, which would fail a shutdown during an outage (seen once in
 * test/plugins/activity.test.ts, a registry closed in teardown after Redis was killed).
 */
import t from 'tap'
import { once } from 'node:events'
import { createServer, type AddressInfo, type Socket } from 'node:net'
import { connectRedis, quitGracefully, waitReady } from '../../broker/store/redis.js'
import { startRedisServer } from '../helpers/redis-server.js'
import { waitFor } from '../helpers/broker.js'

t.test('a subscriber closed while reconnecting: queued commands rejected, none unhandled', async (t) => {
  const server = await startRedisServer()
  t.teardown(() => server.stop())
  const unhandled: unknown[] = []
  const onUnhandled = (reason: unknown): void => { unhandled.push(reason) }
  process.on('unhandledRejection', onUnhandled)
  t.teardown(() => { process.off('unhandledRejection', onUnhandled) })

  const conn = connectRedis(server.url, 'subscriber', () => undefined)
  await conn.subscribe('chan')
  await server.kill()
  await waitFor(() => conn.status === 'reconnecting', 5000, 'the connection to be reconnecting')

  // the subscriber preset keeps commands queued until Redis answers again: one awaited, one not
  const awaited = conn.subscribe('awaited')
  void conn.subscribe('nobody-waits')
  const closed = quitGracefully(conn)
  await t.rejects(awaited, /Connection is closed/, 'the awaited command is rejected')
  await closed
  t.equal(conn.status, 'end', 'the connection ended')
  // an unhandled rejection is reported after the microtasks of its turn: give it a turn
  await new Promise((resolve) => setImmediate(resolve))
  await new Promise((resolve) => setTimeout(resolve, 50))
  t.same(unhandled.map(String), [], 'no unhandled rejection')
})

t.test('closed before it was ready (a Redis that accepted and never answered): queued commands rejected, none unhandled', async (t) => {
  // a half-open Redis: the TCP connection is accepted, nothing is ever answered
  const held: Socket[] = []
  const silent = createServer((s) => { held.push(s); s.on('error', () => {}) })
  silent.listen(0, '127.0.0.1')
  await once(silent, 'listening')
  t.teardown(() => { for (const s of held) s.destroy(); silent.close() })
  const unhandled: unknown[] = []
  const onUnhandled = (reason: unknown): void => { unhandled.push(reason) }
  process.on('unhandledRejection', onUnhandled)
  t.teardown(() => { process.off('unhandledRejection', onUnhandled) })

  const conn = connectRedis(`redis://127.0.0.1:${(silent.address() as AddressInfo).port}`, 'subscriber', () => undefined)
  await waitFor(() => conn.status === 'connect', 5000, 'the TCP connection (the ready check unanswered)')
  const awaited = conn.subscribe('awaited')
  void conn.subscribe('nobody-waits')
  const closed = quitGracefully(conn)
  await t.rejects(awaited, /Connection is closed/, 'the awaited command is rejected')
  await closed
  t.equal(conn.status, 'end', 'the connection ended')
  await new Promise((resolve) => setImmediate(resolve))
  await new Promise((resolve) => setTimeout(resolve, 50))
  t.same(unhandled.map(String), [], 'no unhandled rejection')
})

t.test('a command in flight when Redis died, then a close before the reconnect is ready: rejected, not left waiting for ever', async (t) => {
  const server = await startRedisServer()
  t.teardown(() => server.stop())
  const unhandled: unknown[] = []
  const onUnhandled = (reason: unknown): void => { unhandled.push(reason) }
  process.on('unhandledRejection', onUnhandled)
  t.teardown(() => { process.off('unhandledRejection', onUnhandled) })

  const conn = connectRedis(server.url, 'failFast', () => undefined)
  await conn.ping()
  // in flight (sent, no reply yet) when the server dies: ioredis keeps it aside to resend once a reconnect is ready
  const inFlight = conn.blpop('never-pushed', 0)
  let settled = false
  inFlight.then(() => { settled = true }, () => { settled = true })
  for (let i = 0; Number(/blocked_clients:(\d+)/.exec(await probe(server.url))?.[1]) !== 1; i++) {
    if (i > 100) throw new Error('the BLPOP never blocked in Redis')
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  await server.kill()
  // what answers on Redis' port next accepts the reconnect and never answers its ready check
  const held: Socket[] = []
  const silent = createServer((s) => { held.push(s); s.on('error', () => {}) })
  silent.listen(Number(new URL(server.url).port), '127.0.0.1')
  await once(silent, 'listening')
  t.teardown(() => { for (const s of held) s.destroy(); silent.close() })
  await waitFor(() => held.length > 0 && conn.status === 'connect', 5000, 'the reconnect, not ready')

  await quitGracefully(conn)
  t.equal(conn.status, 'end', 'the connection ended')
  await waitFor(() => settled, 2000, 'the command in flight to settle')
  await t.rejects(inFlight, /Connection is closed/, 'it is rejected as closed')
  await new Promise((resolve) => setTimeout(resolve, 50))
  t.same(unhandled.map(String), [], 'no unhandled rejection')
})

/** INFO clients of a Redis, read on a connection of its own */
async function probe (url: string): Promise<string> {
  const c = connectRedis(url, 'failFast', () => undefined)
  try {
    return await c.info('clients')
  } finally {
    await quitGracefully(c)
  }
}

t.test('many calls waiting for a connection share one listener; each gets its answer', async (t) => {
  const server = await startRedisServer()
  t.teardown(() => server.stop())
  const warnings: string[] = []
  const onWarning = (w: Error): void => { warnings.push(w.name) }
  process.on('warning', onWarning)
  t.teardown(() => { process.off('warning', onWarning) })

  const conn = connectRedis(server.url, 'failFast', () => undefined)
  t.teardown(() => quitGracefully(conn))
  t.equal(await waitReady(conn, 5000), true, 'ready')
  await server.kill()
  await waitFor(() => conn.status !== 'ready', 5000, 'the connection to notice')
  const before = conn.listenerCount('ready')
  // an outage with many registry calls waiting at once, some briefly, some until Redis is back
  const brief = Array.from({ length: 30 }, () => waitReady(conn, 50))
  const patient = Array.from({ length: 30 }, () => waitReady(conn, 10_000))
  t.ok(conn.listenerCount('ready') - before <= 1, `one 'ready' listener for 60 waiting calls (${conn.listenerCount('ready') - before} added)`)
  t.same(await Promise.all(brief), Array.from({ length: 30 }, () => false), 'the brief ones time out: false')
  await server.restart()
  t.same(await Promise.all(patient), Array.from({ length: 30 }, () => true), 'the patient ones: true once Redis is back')
  t.equal(conn.listenerCount('ready'), before, 'and the listener is gone')
  t.notOk(warnings.includes('MaxListenersExceededWarning'), 'no MaxListenersExceededWarning')
})
