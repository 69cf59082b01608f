/**
 * The delivery flow, per message and subscriber (live, retained, and the offline
 * queue after a reconnect: a filter granted for what it may match, or refused at
 * SUBSCRIBE but kept in a persistent session, delivers only what the rules allow):
 *   dropped packet (QUARANTINE_TOPIC) → no identity → reserved topics → plugin answers → transforms
 * Synchronous plain calls, as Aedes requires; null means "not to this subscriber".
 * A refused delivery allocates nothing: the answers are built once, and so are the
 * counters they are counted under.
 */
import type { AedesPublishPacket, Client } from 'aedes'
import { isReserved } from '../reserved-topics.js'
import type { ForwardEvent } from '../plugin.js'
import { stateOf, type Identity } from '../session.js'
import type { ChainContext } from './context.js'
import { QUARANTINE_TOPIC } from './publish.js'

export function authorizeForward (chain: ChainContext, client: Client, packet: AedesPublishPacket): AedesPublishPacket | null {
  if (packet.topic === QUARANTINE_TOPIC) return null
  const state = stateOf(client)
  const identity = state?.identity
  if (!state || !identity) return null
  if (refuseReservedDelivery(chain, identity, packet)) return null
  // one event per delivery, handed to every plugin in turn (this runs per message and subscriber)
  const ev: MutableForwardEvent = { client, identity, state, packet }
  const refusal = forwardRefusal(chain, ev)
  if (refusal !== null) {
    denialCounter(chain, refusal).inc()
    return null
  }
  return transformForSubscriber(chain, ev)
}

/** the transforms replace `packet` as they go; plugins get it read-only */
type MutableForwardEvent = { -readonly [K in keyof ForwardEvent]: ForwardEvent[K] }

type Counter = { inc (): void }
/** per chain, the `forward` denial counter of each rule name (names come from the policy: a short, fixed list) */
const forwardDenials = new WeakMap<ChainContext, Map<string, Counter>>()

function denialCounter (chain: ChainContext, rule: string): Counter {
  let byRule = forwardDenials.get(chain)
  if (byRule === undefined) forwardDenials.set(chain, byRule = new Map())
  let counter = byRule.get(rule)
  if (counter === undefined) byRule.set(rule, counter = chain.ctx.metrics.denials.labels('forward', rule))
  return counter
}

/**
 * Whether `client` may receive `packet`: the same answer as a delivery, asked
 * before one (broker/store/undeliverable.ts: not storing for a persistent session
 * what it may never receive); nothing counted, nothing transformed.
 */
export function mayReceive (chain: ChainContext, client: Client, packet: AedesPublishPacket): boolean {
  if (packet.topic === QUARANTINE_TOPIC) return false
  const state = stateOf(client)
  const identity = state?.identity
  if (!state || !identity) return false
  if (isReserved(packet.topic) && !chain.reserved.open(identity.role, 'receive', packet.topic)) return false
  return forwardRefusal(chain, { client, identity, state, packet }) === null
}

function refuseReservedDelivery (chain: ChainContext, identity: Identity, packet: AedesPublishPacket): boolean {
  if (isReserved(packet.topic) && !chain.reserved.open(identity.role, 'receive', packet.topic)) {
    // `$SYS` and the broker's other `$` topics reach nobody, whatever the rules say
    denialCounter(chain, 'reserved-topic').inc()
    return true
  }
  return false
}

/** the first non-defer answer wins; everyone deferring is a denial. Null when allowed, else the deciding rule */
function forwardRefusal (chain: ChainContext, ev: ForwardEvent): string | null {
  for (const plugin of chain.hooks.authorizeForward) {
    const answer = plugin.authorizeForward!(ev)
    if (answer.verdict === 'defer') continue
    return answer.verdict === 'allow' ? null : (answer.rule ?? 'default-deny')
  }
  return 'no-rule'
}

/** e.g. personal data left out for a subscriber without the permission */
function transformForSubscriber (chain: ChainContext, ev: MutableForwardEvent): AedesPublishPacket {
  for (const plugin of chain.hooks.transformForward) ev.packet = plugin.transformForward!(ev)
  return ev.packet
}
