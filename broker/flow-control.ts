/**
 * Flow control: what keeps a flood (many publishers, a slow or vanished
 * subscriber) from taking the broker down or its memory with it.
 *
 * - Aedes' own options first. `concurrency: 0` turns off mqemitter's internal
 *   queue: with a limit, messages beyond it wait in an unbounded array, and when
 *   the subscriber they waited for is gone they are handed on synchronously, one
 *   inside the other, until `RangeError: Maximum call stack size exceeded`
 *   (mqemitter 7, `released` → `_do` → `released`). Without it nothing queues
 *   there: a publisher's next packets are read only when its previous ones were
 *   delivered (Aedes' per-client parse batch), which is the backpressure.
 *   `drainTimeout` disconnects a subscriber whose socket stops draining.
 * - Session queues (QoS 1/2 messages kept for a persistent session, delivered
 *   or not yet acknowledged) are bounded per client: `boundSessionQueues`, one
 *   of the persistence wrappers (broker/store/wrappers.ts, listed in build.ts),
 *   stores a message for a client only below SESSION_QUEUE_LIMIT; beyond it the
 *   message is counted in `queueDrops` and audited as `queue.dropped` (one line
 *   per client per second, with the count). The oldest messages are kept.
 * - A client with more than MAX_CLIENT_BUFFER_BYTES waiting in its socket is
 *   disconnected (with Redis nothing ties publishers to a slow subscriber, so
 *   its socket buffer would otherwise grow until the drain timeout).
 */
import type { Aedes } from 'aedes'
import type { Redis } from 'ioredis'
import type { Audit } from './audit.js'
import type { Config } from './config.js'
import { refusalFields } from './errors.js'
import type { Metrics } from './metrics.js'
import { liveClients } from './session.js'
import type { AedesPersistence, StoredPacket, StoredSub } from './store/wrappers.js'

/** how often drops are summed into one audit line per client, and slow consumers looked for */
const SWEEP_INTERVAL_MS = 1000
/** at the limit with Redis, how long a queue length read from Redis is trusted */
const RESYNC_MS = 100
/** dropped deliveries remembered per live client, so the live copy is still written (see outgoingUpdate) */
const MAX_REMEMBERED_DROPS = 65_536
/** aedes-persistence-redis keeps a session queue in the list `outgoing:<encoded clientId>` */
const redisQueueKey = (clientId: string): string => `outgoing:${encodeURIComponent(clientId)}`

type QueuedPacket = StoredPacket
type Sub = StoredSub
/** what admit counted in: the subscriptions and, in the same order, the queue entries it counted them on */
interface Admitted { readonly subs: Sub[], readonly queues: ClientQueue[] }

interface ClientQueue {
  /** messages stored for this client and not yet acknowledged (this process's view) */
  length: number
  /** enqueues admitted here and not yet written to the store */
  pending: number
  /** when `length` was last read from Redis */
  syncedAt: number
  syncing: Promise<void> | null
  /** reads from Redis applied so far: a removal that saw one land meanwhile may already be in it */
  syncs: number
  /** packets not stored because the queue was full, while the client was connected */
  dropped: Set<string> | null
}

export interface FlowControlDeps {
  readonly audit: Audit
  readonly metrics: Metrics
  /**
   * the session store's own connection (null in memory). Queue lengths are read on it,
   * not on a connection of their own: Redis answers one connection in order, so a
   * length read after an RPUSH was sent counts it and one read before does not (and
   * the push is then still pending here). On a second connection the push could land
   * after the read yet settle before it, counted nowhere: one message over the limit
   * (seen: 301 of 300 in test/e2e/overload.test.ts, Redis)
   */
  readonly redis: Redis | null
}

export interface FlowControl {
  /** options for Aedes.createBroker (concurrency, drainTimeout) */
  readonly aedesOptions: { concurrency: number, drainTimeout: number }
  /** the persistence wrapper bounding session queues (for the list in build.ts) */
  readonly boundSessionQueues: <P extends AedesPersistence>(persistence: P) => P
  /** starts the slow-consumer sweep for this broker */
  attach (broker: Aedes): void
  close (): Promise<void>
}

function packetKey (packet: QueuedPacket): string {
  return `${packet.brokerId ?? ''}:${packet.brokerCounter ?? ''}`
}

export function createFlowControl (config: Config, deps: FlowControlDeps): FlowControl {
  const { audit, metrics, redis } = deps
  const limit = config.sessionQueueLimit
  const queues = new Map<string, ClientQueue>()
  /** drops not yet audited, per client */
  const unaudited = new Map<string, number>()
  let broker: Aedes | null = null

  function queueOf (clientId: string): ClientQueue {
    let q = queues.get(clientId)
    if (!q) {
      q = { length: 0, pending: 0, syncedAt: 0, syncing: null, syncs: 0, dropped: null }
      queues.set(clientId, q)
    }
    return q
  }

  function isLive (clientId: string): boolean {
    return broker !== null && liveClients(broker)[clientId]?.connected === true
  }

  function recordDrop (clientId: string, q: ClientQueue, packet: QueuedPacket): void {
    metrics.queueDrops.inc()
    if (isLive(clientId)) {
      q.dropped ??= new Set()
      if (q.dropped.size >= MAX_REMEMBERED_DROPS) q.dropped.delete(q.dropped.values().next().value as string)
      q.dropped.add(packetKey(packet))
    }
    const pending = unaudited.get(clientId)
    if (pending === undefined) {
      // the first drop of a burst is audited at once, the rest once a second with their count
      audit.write('queue.dropped', { clientId, topic: packet.topic, qos: packet.qos, count: 1, ...refusalFields('SessionQueueFull', `limit ${limit}`) }, 'warn')
      unaudited.set(clientId, 0)
    } else {
      unaudited.set(clientId, pending + 1)
    }
  }

  /** With Redis other brokers acknowledge too: before dropping, read the real length (at most every RESYNC_MS). */
  async function resync (clientId: string, q: ClientQueue): Promise<void> {
    if (redis === null || Date.now() - q.syncedAt < RESYNC_MS) return
    // a failed read (the session store reports outages) leaves the count as it was: "full"
    q.syncing ??= redis.llen(redisQueueKey(clientId)).then((len) => {
      // admitted but not yet pushed count too, or a burst would slip past the limit
      q.length = len + q.pending
      q.syncs++
    }, () => undefined).finally(() => {
      q.syncedAt = Date.now()
      q.syncing = null
    })
    await q.syncing
  }

  /**
   * the subscriptions whose queue has room; counts them in, and as pending from this
   * instant (a length read from Redis that settles before the push is sent must still
   * count it: pending is what it adds)
   */
  async function admit (subs: Sub[], packet: QueuedPacket): Promise<Admitted> {
    const kept: Admitted = { subs: [], queues: [] }
    for (const sub of subs) {
      const q = queueOf(sub.clientId)
      if (q.length >= limit) await resync(sub.clientId, q)
      if (q.length >= limit) {
        recordDrop(sub.clientId, q, packet)
        continue
      }
      q.length++
      q.pending++
      kept.subs.push(sub)
      // the very objects counted in: a clean connect meanwhile may replace the client's entry
      kept.queues.push(q)
    }
    return kept
  }

  /** stores for the admitted subscriptions, pending (counted in by admit) until the store has them */
  async function enqueueAdmitted (kept: Admitted, packet: QueuedPacket, enqueue: (subs: Sub[], packet: QueuedPacket) => Promise<void>): Promise<void> {
    if (kept.subs.length === 0) return
    try {
      await enqueue(kept.subs, packet)
    } catch (err) {
      // the publish fails, unacknowledged. In memory nothing was stored: it takes no room.
      // With Redis some of its pushes may have landed all the same (several subscriptions,
      // or a lost reply): the length is read again before the next drop rather than
      // guessed lower, which could let a queue past the limit
      for (const q of kept.queues) {
        if (redis === null) q.length = Math.max(0, q.length - 1)
        else q.syncedAt = 0
      }
      throw err
    } finally {
      for (const q of kept.queues) q.pending--
    }
  }

  /** Answers: an offline or slow persistent session would otherwise queue without bound (memory, Redis). */
  function boundSessionQueues<P extends AedesPersistence> (persistence: P): P {
    const enqueueCombi = persistence.outgoingEnqueueCombi.bind(persistence)
    const update = persistence.outgoingUpdate.bind(persistence)
    const clear = persistence.outgoingClearMessageId.bind(persistence)
    const clean = persistence.cleanSubscriptions.bind(persistence)
    // own properties shadow the prototype's methods; the originals keep their `this`
    persistence.outgoingEnqueueCombi = async function outgoingEnqueueCombi (subs, packet) {
      if (!subs || subs.length === 0) return enqueueCombi(subs, packet)
      await enqueueAdmitted(await admit(subs, packet), packet, enqueueCombi)
    }
    persistence.outgoingEnqueue = async function outgoingEnqueue (sub, packet) {
      await enqueueAdmitted(await admit([sub], packet), packet, enqueueCombi)
    }
    persistence.outgoingUpdate = async function outgoingUpdate (client, packet) {
      // a packet not stored for a live client is still written to it: Aedes asks
      // to update it first, which would fail ("no such packet") and close the client
      const q = queues.get(client.id)
      if (q?.dropped?.delete(packetKey(packet))) return
      if ((packet as { cmd?: string }).cmd !== 'pubrel' || q === undefined) return update(client, packet)
      // QoS 2: the store takes the packet out of the list and pushes the PUBREL back in
      // two steps; a length read between them must still count it
      q.pending++
      try {
        return await update(client, packet)
      } finally {
        q.pending--
      }
    }
    persistence.outgoingClearMessageId = async function outgoingClearMessageId (client, packet) {
      const q = queues.get(client.id)
      // a delivery authorizeForward refused is cleared instead of updated
      q?.dropped?.delete(packetKey(packet))
      const syncs = q?.syncs
      const removed = await clear(client, packet)
      // a length read from Redis meanwhile may already have seen the removal: then it is
      // not taken off twice (counting one too many is put right by the next read)
      if (removed && q && q.syncs === syncs && q.length > 0) q.length--
      return removed
    }
    persistence.cleanSubscriptions = async function cleanSubscriptions (client) {
      await clean(client)
      const q = queues.get(client.id)
      if (q === undefined) return
      if (q.pending === 0) {
        // a clean session starts with an empty queue
        queues.delete(client.id)
        return
      }
      // pushes admitted before the clean may still land in the new list: they are all
      // it holds, and its length is read again before anything is dropped for it
      q.length = q.pending
      q.dropped = null
      q.syncedAt = 0
    }
    return persistence
  }

  function sweep (): void {
    for (const [clientId, count] of unaudited) {
      if (count > 0) {
        audit.write('queue.dropped', { clientId, count, ...refusalFields('SessionQueueFull', `limit ${limit}`) }, 'warn')
        unaudited.set(clientId, 0)
      } else {
        unaudited.delete(clientId)
      }
    }
    for (const [clientId, q] of queues) {
      if (q.dropped !== null && !isLive(clientId)) q.dropped = null
      if (q.length === 0 && q.pending === 0 && q.dropped === null && q.syncing === null) queues.delete(clientId)
    }
    if (broker === null) return
    for (const client of Object.values(liveClients(broker))) {
      if (!client) continue
      const buffered = (client.conn as { writableLength?: number }).writableLength ?? 0
      if (buffered > config.maxClientBufferBytes) {
        metrics.queueDrops.inc()
        audit.write('queue.dropped', { clientId: client.id, ...refusalFields('SlowConsumer', `${buffered} bytes waiting in its socket (limit ${config.maxClientBufferBytes})`) }, 'warn')
        client.close()
      }
    }
  }

  const timer = setInterval(sweep, SWEEP_INTERVAL_MS)
  timer.unref()

  return {
    aedesOptions: {
      // 0: no mqemitter queue, so no recursion through it (see the top of this file)
      concurrency: 0,
      drainTimeout: config.drainTimeoutMs
    },
    boundSessionQueues,
    attach (b) {
      broker = b
    },
    async close () {
      clearInterval(timer)
      sweep()
      broker = null
      queues.clear()
      // the connection is the session store's, closed with it
    }
  }
}
