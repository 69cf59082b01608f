/**
 * Personal data at rest and in transit between brokers (CONTRACT §5): a value
 * marked x-pii is never kept in the session store, nor sent over Redis pub/sub,
 * in clear. It travels as an AES-256-GCM envelope (broker/pii-crypto.ts) from
 * the moment a publish is validated (plugins/validation.ts seals it before
 * Aedes stores, queues or emits the packet) until the delivery to one
 * subscriber, where transformForward opens it for a `pii` holder and removes it
 * for everyone else.
 *
 * `sealPersonalData` is the persistence wrapper that makes this hold for every
 * copy the store keeps, whatever path it came by: retained messages, offline
 * queues, QoS 2 incoming packets, wills (stored straight from CONNECT, never
 * published through the chain), and the per-subscriber copy aedes-persistence-
 * redis writes back on `outgoingUpdate` (the opened copy of a pii holder, or the
 * stripped copy of a non-holder, which would otherwise replace the shared stored
 * packet for every other subscriber too).
 */
import type { PiiCipher } from '../pii-crypto.js'
import { visitPersonalData } from '../../plugins/pii-map.js'
import type { SchemaCatalogue } from '../../plugins/schema-catalogue.js'
import type { AedesPersistence, PersistenceWrapper, StoredPacket } from './wrappers.js'

interface Publishable { readonly topic: string, readonly payload: Buffer | string }

export interface PersonalData {
  readonly cipher: PiiCipher
  /**
   * Seals every x-pii value of a validated payload in place; returns the payload
   * to route and store instead, or null when the topic has none.
   */
  sealParsed (topic: string, data: unknown): Buffer | null
  /**
   * Remembers that `payload` holds no x-pii value in clear (the publish chain
   * checked it and found none to seal), so the store takes it as it is instead of
   * parsing it a second time for every persistent subscriber it is queued for.
   */
  noteClearOfPii (payload: Buffer | string): void
  /** remembers that `copy` (one subscriber's view) was made from the stored `original` */
  noteForwarded (copy: Buffer, original: Buffer | string): void
  /** the packet, or a copy of it with no x-pii value in clear: what may be stored */
  storedForm<P extends Publishable> (packet: P): P
}

/**
 * Marks a payload Buffer this process sealed or checked: it holds no x-pii value in
 * clear, so it is stored as it is, with no second parse. Aedes' packet copies share
 * the payload Buffer, so the mark follows the message. A property on the Buffer,
 * not a WeakSet: an entry per message in a weak table cost about 0.3 µs of insert and
 * collector work on every publish (measured), where this is one property store. The
 * symbol is not exported, so nothing else can set it; a payload that comes back from
 * Redis or another broker is a new Buffer without it, and is parsed and checked.
 */
const CLEAR_OF_PII = Symbol('clear of x-pii')
type Marked = Buffer & { [CLEAR_OF_PII]?: true }
function markClear (payload: Buffer | string): void {
  if (typeof payload !== 'string') (payload as Marked)[CLEAR_OF_PII] = true
}
function isMarkedClear (payload: Buffer | string): boolean {
  return typeof payload !== 'string' && (payload as Marked)[CLEAR_OF_PII] === true
}

export function createPersonalData (catalogue: SchemaCatalogue, cipher: PiiCipher): PersonalData {
  // a subscriber's view → the payload it was made from (which is sealed)
  const forwardedFrom = new WeakMap<Buffer, Buffer | string>()

  function piiMapOf (topic: string) {
    const format = catalogue.lookup(topic)?.format
    return format?.kind === 'json' ? format.pii : null
  }

  // one visitor for every message (the hot path allocates no closure per publish)
  function sealValue (container: unknown, key: string | number, value: unknown): void {
    // always sealed, even when it looks like an envelope: only ours open, and
    // opening unwraps as many layers as this key made
    ;(container as Record<string | number, unknown>)[key] = cipher.seal(value)
  }

  function sealParsed (topic: string, data: unknown): Buffer | null {
    const map = piiMapOf(topic)
    if (map === null) return null
    const found = visitPersonalData(map, data, sealValue)
    if (found === 0) return null
    const payload = Buffer.from(JSON.stringify(data))
    markClear(payload)
    return payload
  }

  function storedForm<P extends Publishable> (packet: P): P {
    const payload = packet.payload
    if (isMarkedClear(payload)) return packet
    const original = typeof payload === 'string' ? undefined : forwardedFrom.get(payload)
    if (original !== undefined) return copyWith(packet, original)
    const map = piiMapOf(packet.topic)
    if (map === null || payload.length === 0) return packet
    let data: unknown
    try {
      data = JSON.parse(payload.toString())
    } catch {
      // not JSON: nothing a schema marks can be in it
      return packet
    }
    // a path the publish chain did not seal (a will, a broker's own message, a
    // packet another broker sealed): seal what is still in clear
    const found = visitPersonalData(map, data, function sealClear (container, key, value) {
      if (cipher.open(value) !== undefined) return
      ;(container as Record<string | number, unknown>)[key] = cipher.seal(value)
    })
    if (found === 0) {
      markClear(payload)
      return packet
    }
    const out = Buffer.from(JSON.stringify(data))
    markClear(out)
    return copyWith(packet, out)
  }

  return Object.freeze({
    cipher,
    sealParsed,
    noteClearOfPii: markClear,
    noteForwarded (copy: Buffer, original: Buffer | string) { forwardedFrom.set(copy, original) },
    storedForm
  })
}

/** a copy of an aedes-packet with another payload (same prototype, so the store sees the same shape) */
function copyWith<P extends Publishable> (packet: P, payload: Buffer | string): P {
  return Object.assign(Object.create(Object.getPrototypeOf(packet) as object) as P, packet, { payload })
}

/** the store methods that take a whole packet, beyond those wrappers.ts types */
interface PacketStore extends AedesPersistence {
  incomingStorePacket? (client: unknown, packet: StoredPacket): Promise<void>
  putWill? (client: unknown, packet: StoredPacket): Promise<void>
}

/**
 * Answers: the store keeps whatever packet it is handed, and Redis keeps it in
 * clear for anyone with MONITOR or a dump. Every method that writes a packet
 * gets the stored form instead (sealed, never the caller's object mutated).
 */
export function personalDataWrapper (pd: PersonalData): PersistenceWrapper {
  return function sealPersonalData<P extends AedesPersistence> (persistence: P): P {
    const store = persistence as P & PacketStore
    const storeRetained = store.storeRetained.bind(store)
    const outgoingEnqueue = store.outgoingEnqueue.bind(store)
    const outgoingEnqueueCombi = store.outgoingEnqueueCombi.bind(store)
    const outgoingUpdate = store.outgoingUpdate.bind(store)
    store.storeRetained = function storeRetainedSealed (packet) {
      return storeRetained(pd.storedForm(packet))
    }
    store.outgoingEnqueue = function outgoingEnqueueSealed (sub, packet) {
      return outgoingEnqueue(sub, pd.storedForm(packet))
    }
    store.outgoingEnqueueCombi = function outgoingEnqueueCombiSealed (subs, packet) {
      // Aedes calls it for every QoS 1 publish, persistent subscribers or not: nothing is stored for none
      if (!subs || subs.length === 0) return outgoingEnqueueCombi(subs, packet)
      return outgoingEnqueueCombi(subs, pd.storedForm(packet))
    }
    store.outgoingUpdate = async function outgoingUpdateSealed (client, packet) {
      const stored = pd.storedForm(packet)
      if (stored === packet) return outgoingUpdate(client, packet)
      await outgoingUpdate(client, stored)
      // aedes-persistence-redis fills these in on the packet it is given; the caller reads them
      const filled = packet as { brokerId?: string, brokerCounter?: number }
      filled.brokerId ??= stored.brokerId
      filled.brokerCounter ??= stored.brokerCounter
    }
    if (typeof store.incomingStorePacket === 'function') {
      const incomingStorePacket = store.incomingStorePacket.bind(store)
      store.incomingStorePacket = function incomingStorePacketSealed (client, packet) {
        return incomingStorePacket(client, pd.storedForm(packet))
      }
    }
    if (typeof store.putWill === 'function') {
      const putWill = store.putWill.bind(store)
      store.putWill = function putWillSealed (client, packet) {
        // a copy: Aedes publishes its own (clear) will object at disconnect, through the chain
        return putWill(client, pd.storedForm({ ...packet, payload: typeof packet.payload === 'string' ? Buffer.from(packet.payload) : packet.payload }))
      }
    }
    return persistence
  }
}
