/**
 * SESSION_QUEUE_LIMIT with Redis (broker/flow-control.ts): the bound is exact however
 * the enqueues and the length reads interleave. The wrapper runs over the real
 * aedes-persistence-redis on a private redis-server: a burst of concurrent enqueues
 * for one offline session, the kind a flood sends, must leave exactly the limit in
 * its list. Before the length was read on the session store's own connection, an
 * RPUSH could land after the read yet settle before it, counted nowhere: one message
 * over the limit (test/e2e/overload.test.ts saw 301 of 300 once in a few runs).
 */
import t, { type Test } from 'tap'
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

interface Setup {
  readonly persistence: AedesPersistence
  readonly redis: Redis
  readonly metrics: ReturnType<typeof createMetrics>
  readonly audit: ReturnType<typeof createAudit>
  readonly capture: ReturnType<typeof auditCapture>
  readonly errors: Error[]
  packet (): StoredPacket
  stored (clientId: string): Promise<number>
}

/**
 * flow control's wrapper over the real aedes-persistence-redis on a private redis-server;
 * `beneath` may slow the store's own methods (between the wrapper and Redis) to hold a
 * race open: the timing is the test's, every command still goes to the real Redis
 */
async function setup (t: Test, beneath?: (store: AedesPersistence) => void): Promise<Setup> {
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
  const raw = store.aedesOptions.persistence as AedesPersistence
  beneath?.(raw)
  const persistence = flow.boundSessionQueues(raw)
  const redis = store.redis as Redis
  let counter = 0
  return {
    persistence, redis, metrics, audit, capture, errors,
    packet: () => ({
      cmd: 'publish', topic: 'devices/d/telemetry', payload: Buffer.from('{}'), qos: 1, retain: false, dup: false,
      brokerId: 'queue-limit-test', brokerCounter: ++counter
    } as unknown as StoredPacket),
    stored: (clientId) => redis.llen(`outgoing:${encodeURIComponent(clientId)}`)
  }
}

/** a session's queue filled to the limit; the packets in order */
async function fill (persistence: AedesPersistence, packet: () => StoredPacket, sub: { clientId: string }): Promise<StoredPacket[]> {
  const packets: StoredPacket[] = []
  for (let i = 0; i < LIMIT; i++) {
    const p = packet()
    packets.push(p)
    await persistence.outgoingEnqueueCombi([sub] as never, p)
  }
  return packets
}

/** past flow control's RESYNC_MS: the next enqueue at the limit reads the length from Redis */
const pastResync = (): Promise<void> => new Promise((resolve) => setTimeout(resolve, 110))

/** a promise and the function that settles it */
function gate (): { promise: Promise<void>, open (): void } {
  let open = (): void => {}
  const promise = new Promise<void>((resolve) => { open = resolve })
  return { promise, open }
}

t.test('redis: concurrent enqueues for one session never store more than the limit', async (t) => {
  const { persistence, metrics, audit, capture, errors, packet, stored } = await setup(t)

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
    const held = await stored(sub.clientId)
    if (held !== LIMIT) over.push(`${sub.clientId}: ${held}`)
  }
  t.same(over, [], `every session holds exactly ${LIMIT} after ${BURSTS * BURST} enqueues (${ROUNDS} rounds)`)
  t.same(errors, [], 'no store error')
  const drops = (await metrics.queueDrops.get()).values[0]?.value
  t.equal(drops, ROUNDS * (BURSTS * BURST - LIMIT), 'every message beyond the limit counted as dropped')
  await audit.flush()
  t.ok(capture.lines.some((l) => l.event === 'queue.dropped' && l.clientId === 'offline-0' && l.errorCode === 'SessionQueueFull'), 'and audited')
})

t.test('redis: a clean connect while an enqueue for the session is in flight leaves the bound exact', async (t) => {
  // the store's enqueue for the fan-out held open until the session has cleaned
  let hold: ReturnType<typeof gate> | null = null
  const { persistence, packet, stored, errors } = await setup(t, (store) => {
    const enqueue = store.outgoingEnqueueCombi.bind(store)
    store.outgoingEnqueueCombi = async (subs, p) => {
      if (hold !== null) await hold.promise
      return enqueue(subs, p)
    }
  })
  const a = { clientId: 'cleaner', topic: 'devices/+/telemetry', qos: 1 }
  const b = { clientId: 'full', topic: 'devices/+/telemetry', qos: 1 }
  for (let i = 0; i < LIMIT; i++) await persistence.outgoingEnqueueCombi([b] as never, packet())
  await pastResync()
  // one message for both: admitted for `cleaner`, dropped for `full` after a length read
  hold = gate()
  const fanOut = persistence.outgoingEnqueueCombi([a, b] as never, packet())
  await new Promise((resolve) => setTimeout(resolve, 50))
  // meanwhile `cleaner` connects with a clean session
  await persistence.cleanSubscriptions({ id: a.clientId } as never)
  const opened = hold
  hold = null
  opened.open()
  await fanOut
  t.equal(await stored(a.clientId), 1, 'the message admitted before the clean landed in the new queue')
  // the session then fills up, in bursts with the length read between them
  for (let burst = 0; burst < 3; burst++) {
    await Promise.all(Array.from({ length: LIMIT }, () => persistence.outgoingEnqueueCombi([a] as never, packet())))
    await pastResync()
  }
  t.equal(await stored(a.clientId), LIMIT, `exactly the limit (${LIMIT})`)
  t.equal(await stored(b.clientId), LIMIT, 'the full one stayed full')
  t.same(errors, [], 'no store error')
})

t.test('redis: an acknowledgement and a length read at the same time take the message off once', async (t) => {
  // the store's clear held open after Redis removed the message: a length read lands between
  let holdClear: ReturnType<typeof gate> | null = null
  let cleared = gate()
  const { persistence, packet, stored, errors } = await setup(t, (store) => {
    const clear = store.outgoingClearMessageId.bind(store)
    store.outgoingClearMessageId = async (client, p) => {
      const removed = await clear(client, p)
      cleared.open()
      if (holdClear !== null) await holdClear.promise
      return removed
    }
  })
  const sub = { clientId: 'acker', topic: 'devices/+/telemetry', qos: 1 }
  const client = { id: sub.clientId }
  const packets = await fill(persistence, packet, sub)
  // delivered to the live session (message ids assigned), which then acknowledges the first
  for (let i = 0; i < LIMIT; i++) await persistence.outgoingUpdate(client as never, { ...packets[i], messageId: i + 1 } as never)
  await pastResync()
  holdClear = gate()
  cleared = gate()
  const acked = persistence.outgoingClearMessageId(client as never, { messageId: 1 } as never)
  await cleared.promise
  t.equal(await stored(sub.clientId), LIMIT - 1, 'Redis has removed the acknowledged message')
  // a publish now reads the length (LIMIT - 1) and takes the free place
  await persistence.outgoingEnqueueCombi([sub] as never, packet())
  const opened = holdClear
  holdClear = null
  opened.open()
  await acked
  // the clear returns: the place it freed was already counted by the read
  for (let i = 0; i < 5; i++) await persistence.outgoingEnqueueCombi([sub] as never, packet())
  t.equal(await stored(sub.clientId), LIMIT, `exactly the limit (${LIMIT}), not one over`)
  t.same(errors, [], 'no store error')
})

t.test('redis: a QoS 2 PUBREL swap (LREM, then RPUSH) with a length read between them leaves the bound exact', async (t) => {
  const { persistence, redis, packet, stored, errors } = await setup(t)
  const sub = { clientId: 'qos2', topic: 'devices/+/telemetry', qos: 2 }
  const client = { id: sub.clientId }
  const packets = await fill(persistence, packet, sub)
  await persistence.outgoingUpdate(client as never, { ...packets[0], qos: 2, messageId: 1 } as never)
  await pastResync()
  // the store's RPUSH of the PUBREL held until a publish has read the length: the timing
  // is the test's, the commands go to the real Redis (the store's own connection)
  const rpush = redis.rpush.bind(redis) as (...args: unknown[]) => Promise<number>
  const held = gate()
  const lremDone = gate()
  const conn = redis as unknown as { rpush: (...args: unknown[]) => Promise<number> }
  // once: the swap's own RPUSH, the one right after its LREM
  conn.rpush = async (...args: unknown[]) => {
    conn.rpush = rpush
    lremDone.open()
    await held.promise
    return rpush(...args)
  }
  const swap = persistence.outgoingUpdate(client as never, { cmd: 'pubrel', messageId: 1, brokerId: packets[0]!.brokerId, brokerCounter: packets[0]!.brokerCounter } as never)
  await lremDone.promise
  t.equal(await stored(sub.clientId), LIMIT - 1, 'between the two: the list is one short')
  // a publish now reads the length: the swap's message must still count
  await persistence.outgoingEnqueueCombi([sub] as never, packet())
  held.open()
  await swap
  for (let i = 0; i < 5; i++) await persistence.outgoingEnqueueCombi([sub] as never, packet())
  t.equal(await stored(sub.clientId), LIMIT, `exactly the limit (${LIMIT}), not one over`)
  t.same(errors, [], 'no store error')
})
