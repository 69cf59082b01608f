/**
 * Answers: Aedes hands a reconnecting session its stored messages right after
 * CONNACK (`emptyQueue`, aedes/lib/handlers/connect.js) and emits `clientReady`
 * only once they are out. A check the plugins make at `ready` (a revocation that
 * landed while the connect was in flight: CONTRACT §2 "a revocation that lands
 * while a connect is in flight is honoured") came after the queue had been
 * delivered to the revoked certificate. So the queue is handed out only once the
 * chain's beforeQueue agrees; when it does not, the session has been closed and
 * the queue stays stored, untouched.
 */
import type { Client } from 'aedes'
import type { PersistenceWrapper, StoredPacket } from './wrappers.js'

/** may `client`'s stored messages be handed out now? */
export type QueueCheck = (client: Client) => Promise<boolean>

export interface QueueGate {
  readonly gateQueue: PersistenceWrapper
  /** the check exists once the chain is installed, after the persistence; until then nothing is held back */
  bind (check: QueueCheck): void
}

export function queueGate (): QueueGate {
  let check: QueueCheck = async () => true
  return {
    bind (c) { check = c },
    gateQueue (persistence) {
      const outgoingStream = persistence.outgoingStream.bind(persistence)
      persistence.outgoingStream = function outgoingStreamOnceChecked (client: Client): AsyncIterable<StoredPacket> {
        return (async function * gated (): AsyncGenerator<StoredPacket> {
          if (!await check(client)) return
          yield * outgoingStream(client)
        })()
      }
      return persistence
    }
  }
}
