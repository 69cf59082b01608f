/**
 * The persistence wrappers: every change this broker makes to how Aedes'
 * persistence behaves, applied in ONE list (broker/build.ts) instead of each
 * module patching the object where it happens to hold it. A wrapper is a named
 * function `(persistence) => persistence` that replaces some methods with own
 * properties (which shadow the prototype's; the originals keep their `this`)
 * and says in its comment which defect of the store it answers.
 *
 * The list is applied in order, so the first wrapper sits closest to the store
 * and the last one sees every call first.
 *
 * The wrappers defined elsewhere:
 * - indexRetained (./retained-index.ts, memory only): retained messages by topic
 *   level, so a SUBSCRIBE does not test every retained config of the fleet.
 * - boundSessionQueues (../flow-control.ts): at most SESSION_QUEUE_LIMIT messages
 *   per persistent session; beyond it counted and audited as `queue.dropped`.
 * - personalDataWrapper (./personal-data.ts), skipUndeliverable (./undeliverable.ts),
 *   gateQueue (./queue-gate.ts): see their own comments.
 */
import type { Client } from 'aedes'
import type { Redis } from 'ioredis'
import type { Audit } from '../audit.js'
import { Errors, JitpError, isJitpError } from '../errors.js'
import type { Metrics } from '../metrics.js'
import { redisScript, runScript } from './redis.js'

/** what Aedes stores and queues (an aedes-packet) */
export interface StoredPacket {
  readonly topic: string
  readonly payload: Buffer | string
  readonly qos?: number
  readonly retain?: boolean
  readonly brokerId?: string
  readonly brokerCounter?: number
  readonly messageId?: number
}

/** a subscription as the persistence hands it to outgoingEnqueueCombi */
export interface StoredSub { readonly clientId: string, readonly topic?: string, readonly qos?: number }

/** the methods of an Aedes persistence (aedes-persistence 11, aedes-persistence-redis 12) the wrappers touch */
export interface AedesPersistence {
  storeRetained (packet: StoredPacket): Promise<void>
  /** a Readable (memory) or an async generator (Redis): both async-iterable */
  createRetainedStream (pattern: string): AsyncIterable<StoredPacket>
  createRetainedStreamCombi (patterns: string[]): AsyncIterable<StoredPacket>
  subscriptionsByTopic (topic: string): Promise<StoredSub[]>
  outgoingEnqueue (sub: StoredSub, packet: StoredPacket): Promise<void>
  outgoingEnqueueCombi (subs: StoredSub[], packet: StoredPacket): Promise<void>
  outgoingUpdate (client: Client, packet: StoredPacket): Promise<void>
  outgoingClearMessageId (client: Client, packet: StoredPacket): Promise<unknown>
  outgoingStream (client: Client): AsyncIterable<StoredPacket>
  cleanSubscriptions (client: Client): Promise<void>
  subscriptionsByClient (client: Client): Promise<ReadonlyArray<{ readonly topic: string }>>
  removeSubscriptions (client: Client, topics: string[]): Promise<void>
}

export type PersistenceWrapper = (persistence: AedesPersistence) => AedesPersistence

/** Applies the wrappers in order (the first sits closest to the store); `null` entries are skipped. */
export function wrapPersistence<P> (persistence: P, wrappers: ReadonlyArray<PersistenceWrapper | null>): P {
  let wrapped = persistence as unknown as AedesPersistence
  for (const wrapper of wrappers) if (wrapper !== null) wrapped = wrapper(wrapped)
  return wrapped as unknown as P
}

/** A message the store refused; Aedes fails the publish with it (no PUBACK) and closes the client. */
export class PublishNotStoredError extends JitpError {
  readonly topic: string
  constructor (step: string, topic: string, cause: unknown) {
    super('PublishNotStored', `${step} failed (${cause instanceof Error ? cause.message : String(cause)})`)
    this.topic = topic
    this.cause = cause
  }
}

/**
 * Answers: with Redis, a publish also goes out on pub/sub (mqemitter-redis) to the
 * other broker processes; when Redis dies that step can fail before (or instead of)
 * the store's, and Aedes then closes the publisher with the emitter's bare error:
 * not acknowledged (right), but neither counted nor audited. Marked here like a
 * failed store, so the same 'clientError' listener counts and audits it.
 */
export function failEmitVisibly<M> (mq: M): M {
  const emitter = mq as unknown as { emit (packet: { topic: string }, done?: (err?: Error | null) => void): unknown }
  const emit = emitter.emit.bind(emitter)
  emitter.emit = function emitOrFail (packet, done) {
    if (!done) return emit(packet)
    return emit(packet, (err) => done(err ? new PublishNotStoredError('emit', packet.topic, err) : err))
  }
  return mq
}

/**
 * Answers: a QoS 1 message that could not be stored (Redis down, killed mid-write)
 * must be neither acknowledged nor lost silently. The Aedes patch already fails
 * the publish (no PUBACK, the client is closed and resends after reconnecting,
 * [MQTT-4.4.0-1]); this marks the store's error on each step of the publish
 * pipeline, so the broker's 'clientError' listener (auditPublishNotStored)
 * can count and audit it apart from protocol errors.
 */
export function failPublishVisibly<P extends AedesPersistence> (persistence: P): P {
  const storeRetained = persistence.storeRetained.bind(persistence)
  const subscriptionsByTopic = persistence.subscriptionsByTopic.bind(persistence)
  const enqueueCombi = persistence.outgoingEnqueueCombi.bind(persistence)
  persistence.storeRetained = async function storeRetainedOrFail (packet) {
    try {
      await storeRetained(packet)
    } catch (err) {
      throw new PublishNotStoredError('storeRetained', packet.topic, err)
    }
  }
  persistence.subscriptionsByTopic = async function subscriptionsByTopicOrFail (topic) {
    try {
      return await subscriptionsByTopic(topic)
    } catch (err) {
      throw new PublishNotStoredError('subscriptionsByTopic', topic, err)
    }
  }
  persistence.outgoingEnqueueCombi = async function outgoingEnqueueCombiOrFail (subs, packet) {
    try {
      await enqueueCombi(subs, packet)
    } catch (err) {
      throw new PublishNotStoredError('outgoingEnqueueCombi', packet.topic, err)
    }
  }
  return persistence
}

/**
 * The broker's 'clientError' listener for messages the store refused: counted
 * in `jitp_publishes_not_stored_total` (every one), audited once per connection
 * (a batch of publishes fails together when Redis goes away).
 */
export function auditPublishNotStored (audit: Audit, metrics: Metrics): (client: Client, err: Error) => void {
  const audited = new WeakSet<Client>()
  return function publishNotStored (client, err) {
    if (!isJitpError(err) || err.code !== 'PublishNotStored') return
    metrics.publishesNotStored.inc()
    if (audited.has(client)) return
    audited.add(client)
    audit.write('connection.closed', {
      clientId: client.id,
      topic: err instanceof PublishNotStoredError ? err.topic : undefined,
      errorCode: Errors.PublishNotStored.code,
      reason: `${err.message}: not acknowledged, connection closed (the client resends)`
    }, 'warn')
  }
}

// KEYS[1]: the session's queue `outgoing:<client id>`; ARGV[1]: 'packet:'.
// Each entry is a shared `packet:<broker>:<counter>` (QoS 1) or this client's copy
// `outgoing:<client id>:<broker>:<counter>` (QoS 2); the shared packet and its
// `:offlineCount` go when the last queue holding them lets go, as an acknowledgement does.
const DROP_QUEUE = redisScript(`
local entries = redis.call('LRANGE', KEYS[1], 0, -1)
for _, entry in ipairs(entries) do
  local packet = entry
  if string.sub(entry, 1, #ARGV[1]) ~= ARGV[1] then
    redis.call('DEL', entry)
    local broker, counter = string.match(entry, ':([^:]+):([^:]+)$')
    packet = ARGV[1] .. broker .. ':' .. counter
  end
  if redis.call('DECR', packet .. ':offlineCount') <= 0 then
    redis.call('DEL', packet, packet .. ':offlineCount')
  end
end
redis.call('DEL', KEYS[1])
return #entries`)

/**
 * Answers: aedes-persistence-redis drops a cleaned session's queue list but not
 * the `packet:*` keys (and their counts) it pointed to, which then stay in Redis
 * forever (1,000 queued → 2,000 keys). When a session is cleaned [MQTT-3.1.2-6],
 * its queued packets are released first, in one script. The packetTTL option
 * (session-store.ts) is the backstop for what this cannot see (an UNSUBSCRIBE
 * of the last filter, a broker killed mid-way).
 *
 * The store's own cleanSubscriptions (aedes-persistence-redis 12) reads the
 * session's subscriptions and, only when there are some, removes them and the
 * queue list: a session with no subscription has no queue. Done here in the same
 * steps, with the script between the read and the removal, so a clean connect of a
 * client that held no session (nearly every one) costs what it costs upstream:
 * one HGETALL, no script.
 */
export function dropQueuedPacketsOnClean (conn: Redis): PersistenceWrapper {
  return function dropQueuedPackets<P extends AedesPersistence> (persistence: P): P {
    persistence.cleanSubscriptions = async function cleanSubscriptionsAndQueue (client) {
      const subs = await persistence.subscriptionsByClient(client)
      if (subs.length === 0) return
      // run to completion before the store's removal drops the list: after a NOSCRIPT
      // (a restarted Redis) the script's text goes in a second command. EVALSHA, not
      // EVAL: Redis would hash the whole text on each
      await runScript(conn, DROP_QUEUE, [`outgoing:${encodeURIComponent(client.id)}`], ['packet:'])
      await persistence.removeSubscriptions(client, subs.map((sub) => sub.topic))
    }
    return persistence
  }
}
