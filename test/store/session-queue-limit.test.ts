/**
 * SESSION_QUEUE_LIMIT with Redis (broker/flow-control.ts): the bound is exact however
 * the enqueues and the length reads interleave. The wrapper runs over the real
 * aedes-persistence-redis on a private redis-server: a burst of concurrent enqueues
 * for one offline session, the kind a flood sends, must leave exactly the limit in
 * its list. Before the length was read on the session store's own connection, an
 * RPUSH could land after the read yet settle before it, counted nowhere: one message
 * over the limit (test/e2e/overload.test.ts saw 301 of 300 once in a few runs).
 */
import t from 'tap'
import type { Redis } from 'ioredis'
import { createAudit } from '../../broker/audit.js'
import { loadConfig } from '../../broker/config.js'
import { createFlowControl } from '../../broker/flow-control.js'
import { createMetrics } from '../../broker/metrics.js'
import { createSessionStore } from '../../broker/store/session-store.js'
import type { AedesPersistence, StoredPacket } from '../../broker/store/wrappers.js'
import { auditCapture } from '../helpers/broker.js'
import { startRedisServer } from '../helpers/redis-server.js'

const LIMIT = 20
const ROUNDS = 12
const BURSTS = 2
const BURST = 60

t.test('redis: concurrent enqueues for one session never store more than the limit', async (t) => {
  const server = await startRedisServer()
  t.teardown(() => server.stop())
  const errors: Error[] = []
  const store = createSessionStore(server.url, (err) => { errors.push(err) }, { maxSessionDelivery: LIMIT })
  t.teardown(() => store.close())
  const config = loadConfig({ env: {}, overrides: { REDIS_URL: server.url, SESSION_QUEUE_LIMIT: LIMIT, GENERATE_DEV_CERTS: false } })
  const capture = auditCapture()
  const metrics = createMetrics()
  const audit = createAudit(capture.stream)
  const flow = createFlowControl(config, { audit, metrics, redis: store.redis })
  t.teardown(() => flow.close())
  const persistence = flow.boundSessionQueues(store.aedesOptions.persistence as AedesPersistence)
  const redis = store.redis as Redis

  let counter = 0
  const packet = (): StoredPacket => ({
    cmd: 'publish', topic: 'devices/d/telemetry', payload: Buffer.from('{}'), qos: 1, retain: false, dup: false,
    brokerId: 'queue-limit-test', brokerCounter: ++counter
  } as unknown as StoredPacket)

  // each round a fresh session; its queue fills in one burst, then more bursts
  // arrive while it is full (the length is re-read from Redis every 100 ms at most)
  const over: string[] = []
  for (let round = 0; round < ROUNDS; round++) {
    const sub = { clientId: `offline-${round}`, topic: 'devices/+/telemetry', qos: 1 }
    for (let burst = 0; burst < BURSTS; burst++) {
      // a stream, one enqueue per turn of a busy event loop (as under a flood): the
      // length is read while earlier pushes are between their MSET and their RPUSH,
      // and Redis's answers pile up and are read in one go
      const pushes: Array<Promise<void>> = []
      for (let i = 0; i < BURST; i++) {
        pushes.push(persistence.outgoingEnqueueCombi([sub] as never, packet()))
        await new Promise((resolve) => setImmediate(resolve))
        const until = performance.now() + 0.3
        while (performance.now() < until) { /* hold the loop */ }
      }
      const burstDone = Promise.all(pushes)
      await burstDone
      if (burst < BURSTS - 1) await new Promise((resolve) => setTimeout(resolve, 110))
    }
    const stored = await redis.llen(`outgoing:${encodeURIComponent(sub.clientId)}`)
    if (stored !== LIMIT) over.push(`${sub.clientId}: ${stored}`)
  }
  t.same(over, [], `every session holds exactly ${LIMIT} after ${BURSTS * BURST} enqueues (${ROUNDS} rounds)`)
  t.same(errors, [], 'no store error')
  const drops = (await metrics.queueDrops.get()).values[0]?.value
  t.equal(drops, ROUNDS * (BURSTS * BURST - LIMIT), 'every message beyond the limit counted as dropped')
  await audit.flush()
  t.ok(capture.lines.some((l) => l.event === 'queue.dropped' && l.clientId === 'offline-0' && l.errorCode === 'SessionQueueFull'), 'and audited')
})
