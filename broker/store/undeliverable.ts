/**
 * Answers: a subscription may be wider than what its subscriber may receive
 * (CONTRACT §4: a device's `devices/<id>/#`, a service's `devices/+/#` under a
 * `deny` rule, a quarantined device's commands filter kept by its session). Aedes
 * stores a QoS 1 message for every persistent subscription that matches it before
 * delivery asks authorizeForward, and a refused live delivery leaves that copy in
 * the queue (Aedes clears it by a message id the refused packet never got): a
 * device subscribed to `devices/<id>/#` fills its own queue with its own telemetry,
 * up to SESSION_QUEUE_LIMIT, after which what it may receive is dropped.
 *
 * So a message is not stored for a subscriber that is live on this process and may
 * not receive it (the same answer delivery will give, broker/chain/forward.ts).
 * A subscriber this process cannot ask (offline, or live on another broker) is
 * stored as before; its reconnect's queue delivery asks again and clears what it
 * refuses.
 */
import type { PersistenceWrapper, StoredPacket, StoredSub } from './wrappers.js'

/** may `clientId` receive `packet`? undefined when this process cannot tell (the client is not live here) */
export type ReceiveCheck = (clientId: string, packet: StoredPacket) => boolean | undefined

export interface UndeliverableFilter {
  readonly skipUndeliverable: PersistenceWrapper
  /** the check exists once the chain is installed, after the persistence; until then everything is stored */
  bind (check: ReceiveCheck): void
}

export function undeliverableFilter (): UndeliverableFilter {
  let check: ReceiveCheck = () => undefined

  /** the subscriptions to store for; the same array (no copy) when none is left out */
  function deliverable (subs: StoredSub[], packet: StoredPacket): StoredSub[] {
    let kept: StoredSub[] | null = null
    for (let i = 0; i < subs.length; i++) {
      const sub = subs[i]!
      if (check(sub.clientId, packet) === false) kept ??= subs.slice(0, i)
      else if (kept !== null) kept.push(sub)
    }
    return kept ?? subs
  }

  return {
    bind (c) { check = c },
    skipUndeliverable (persistence) {
      const enqueueCombi = persistence.outgoingEnqueueCombi.bind(persistence)
      const enqueue = persistence.outgoingEnqueue.bind(persistence)
      persistence.outgoingEnqueueCombi = async function outgoingEnqueueCombiDeliverable (subs, packet) {
        if (!subs || subs.length === 0) return enqueueCombi(subs, packet)
        const kept = deliverable(subs, packet)
        if (kept.length > 0) await enqueueCombi(kept, packet)
      }
      persistence.outgoingEnqueue = async function outgoingEnqueueDeliverable (sub, packet) {
        if (check(sub.clientId, packet) !== false) await enqueue(sub, packet)
      }
      return persistence
    }
  }
}
