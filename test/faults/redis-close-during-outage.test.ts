/**
 * Closing a connection while Redis is away (broker/store/redis.ts): the commands
 * still queued are rejected, the caller who awaits one sees it, and one nobody awaits
 * (ioredis' own re-SUBSCRIBE after a reconnect is such a command) does not become an
 * unhandled rejection, which would fail a shutdown during an outage (seen once in
 * test/plugins/activity.test.ts, a registry closed in teardown after Redis was killed).
 */
import t, { type Test } from 'tap'
import { once } from 'node:events'
import { createServer, type AddressInfo, type Socket } from 'node:net'
import { connectRedis, quitGracefully, waitReady } from '../../broker/store/redis.js'
import type { Redis } from 'ioredis'
import { startRedisServer } from '../helpers/redis-server.js'
import { waitFor } from '../helpers/broker.js'

t.test('a subscriber closed while reconnecting: queued commands rejected, none unhandled', async (t) => {
  const server = await startRedisServer()
  t.teardown(() => server.stop())
  const unhandled = unhandledRejections(t)

  const conn = connectRedis(server.url, 'subscriber', () => undefined)
  await conn.subscribe('chan')
  await server.kill()
  await waitFor(() => conn.status === 'reconnecting', 5000, 'the connection to be reconnecting')

  // the subscriber preset keeps commands queued until Redis answers again
  await closeWithTwoQueued(t, conn, unhandled)
})

t.test('closed before it was ready (a Redis that accepted and never answered): queued commands rejected, none unhandled', async (t) => {
  // a half-open Redis: the TCP connection is accepted, nothing is ever answered
  const silent = await halfOpenRedis(t, 0)
  const unhandled = unhandledRejections(t)

  const conn = connectRedis(`redis://127.0.0.1:${silent.port}`, 'subscriber', () => undefined)
  await waitFor(() => conn.status === 'connect', 5000, 'the TCP connection (the ready check unanswered)')
  await closeWithTwoQueued(t, conn, unhandled)
})

t.test('a command in flight when Redis died, then a close before the reconnect is ready: rejected, not left waiting for ever', async (t) => {
  const server = await startRedisServer()
  t.teardown(() => server.stop())
  const unhandled = unhandledRejections(t)

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
  const silent = await halfOpenRedis(t, Number(new URL(server.url).port))
  await waitFor(() => silent.accepted() > 0 && conn.status === 'connect', 5000, 'the reconnect, not ready')

  await quitGracefully(conn)
  t.equal(conn.status, 'end', 'the connection ended')
  await waitFor(() => settled, 2000, 'the command in flight to settle')
  await t.rejects(inFlight, /Connection is closed/, 'it is rejected as closed')
  t.same(await unhandled(), [], 'no unhandled rejection')
})

/** one command queued and awaited, one nobody awaits, then the close: the first rejected, the second not unhandled */
async function closeWithTwoQueued (t: Test, conn: Redis, unhandled: () => Promise<string[]>): Promise<void> {
  const awaited = conn.subscribe('awaited')
  void conn.subscribe('nobody-waits')
  const closed = quitGracefully(conn)
  await t.rejects(awaited, /Connection is closed/, 'the awaited command is rejected')
  await closed
  t.equal(conn.status, 'end', 'the connection ended')
  t.same(await unhandled(), [], 'no unhandled rejection')
}

/** the process' unhandled rejections from now to the end of the test; the answer waits a turn (they are reported after its microtasks) */
function unhandledRejections (t: Test): () => Promise<string[]> {
  const seen: unknown[] = []
  const onUnhandled = (reason: unknown): void => { seen.push(reason) }
  process.on('unhandledRejection', onUnhandled)
  t.teardown(() => { process.off('unhandledRejection', onUnhandled) })
  return async () => {
    await new Promise((resolve) => setImmediate(resolve))
    await new Promise((resolve) => setTimeout(resolve, 50))
    return seen.map(String)
  }
}

/** a half-open Redis on `port` (0: any): TCP connections are accepted, nothing is ever answered */
async function halfOpenRedis (t: Test, port: number): Promise<{ port: number, accepted (): number }> {
  const held: Socket[] = []
  const silent = createServer((s) => { held.push(s); s.on('error', () => {}) })
  silent.listen(port, '127.0.0.1')
  await once(silent, 'listening')
  t.teardown(() => { for (const s of held) s.destroy(); silent.close() })
  return { port: (silent.address() as AddressInfo).port, accepted: () => held.length }
}

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
