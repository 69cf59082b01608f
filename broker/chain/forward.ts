/**
 * The delivery flow, per message and subscriber (live, and the offline queue after a
 * reconnect: a filter refused at SUBSCRIBE may still sit in a persistent session, so
 * delivery is checked again here):
 *   quarantined → no identity → reserved topics → plugin answers → transforms
 * Synchronous plain calls, as Aedes requires; null means "not to this subscriber".
 */
import type { AedesPublishPacket, Client } from 'aedes'
import { isReserved } from '../reserved-topics.js'
import { stateOf, type ConnectionState, type Identity } from '../session.js'
import type { ChainContext } from './context.js'
import { QUARANTINE_TOPIC } from './publish.js'

export function authorizeForward (chain: ChainContext, client: Client, packet: AedesPublishPacket): AedesPublishPacket | null {
  if (packet.topic === QUARANTINE_TOPIC) return null
  const state = stateOf(client)
  const identity = state?.identity
  if (!state || !identity) return null
  if (refuseReservedDelivery(chain, identity, packet)) return null
  if (!forwardAllowed(chain, client, identity, state, packet)) {
    chain.ctx.metrics.denials.inc({ action: 'forward', rule: 'default-deny' })
    return null
  }
  return transformForSubscriber(chain, client, identity, state, packet)
}

function refuseReservedDelivery (chain: ChainContext, identity: Identity, packet: AedesPublishPacket): boolean {
  if (isReserved(packet.topic) && !chain.reserved.open(identity.role, 'receive', packet.topic)) {
    // `$SYS` and the broker's other `$` topics reach nobody, whatever the rules say
    chain.ctx.metrics.denials.inc({ action: 'forward', rule: 'reserved-topic' })
    return true
  }
  return false
}

/** the first non-defer answer wins; everyone deferring is a denial */
function forwardAllowed (chain: ChainContext, client: Client, identity: Identity, state: ConnectionState, packet: AedesPublishPacket): boolean {
  for (const plugin of chain.hooks.authorizeForward) {
    const answer = plugin.authorizeForward!({ client, identity, state, packet })
    if (answer.verdict === 'defer') continue
    return answer.verdict === 'allow'
  }
  return false
}

/** e.g. personal data left out for a subscriber without the permission */
function transformForSubscriber (chain: ChainContext, client: Client, identity: Identity, state: ConnectionState, packet: AedesPublishPacket): AedesPublishPacket {
  let out = packet
  for (const plugin of chain.hooks.transformForward) out = plugin.transformForward!({ client, identity, state, packet: out })
  return out
}
