/**
 * Authorization: what an identity may publish, subscribe to and receive.
 * Rules are compiled once per connection (policy.ts); in each list the first
 * rule that matches decides, and nothing matching means deny.
 *
 * - publish: the concrete topic against the publish rules.
 * - delivery: the concrete topic against the subscribe rules, for every message
 *   and every subscriber, whatever the path (live, offline queue, retained, will),
 *   so what a filter may match never widens what a subscriber receives.
 * - subscribe: a filter is granted when it stays within the scope of one of the
 *   subscribe allow rules (its filter with the last level widened to `#`) and at
 *   least one topic it can match is allowed, i.e. its first matching rule is an
 *   allow rule. `devices/<id>/#` is thus granted to a device and delivers its
 *   config, commands and errors only; a filter that only deny rules (or nothing)
 *   would answer is refused, and so is one reaching outside every scope (`#`),
 *   which would make the broker offer the subscriber every message only to drop it.
 */
import { ALLOW, deny, type Allow, type Deny, type Plugin, type PluginHooks } from '../broker/plugin.js'
import type { ConnectionState, Identity } from '../broker/session.js'
import { compileRules, rulesKey, type CompiledRules, type Policy } from './policy.js'
import { coveredByAny, covers, intersect, matchesTopic } from './topic-filters.js'

export interface AuthorizationOptions { readonly policy: Policy }

const NO_PUBLISH_RULE: Deny = Object.freeze(deny('PublishDenied', 'default-deny'))
const NO_DELIVERY_RULE: Deny = Object.freeze(deny('SubscribeDenied', 'default-deny'))
const NO_SUBSCRIBE_RULE: Deny = Object.freeze(deny('SubscribeDenied', 'default-deny'))
// no rule allows it either: counted and audited as the default denial it is
const OUTSIDE_SCOPE: Deny = Object.freeze(deny('SubscribeDenied', 'default-deny', 'outside the scope of every subscribe rule'))
const NO_IDENTITY: Deny = Object.freeze(deny('SubscribeDenied', 'no-identity'))
const NO_PUBLISH_IDENTITY: Deny = Object.freeze(deny('PublishDenied', 'no-identity'))

function rulesOf (state: ConnectionState | undefined): CompiledRules | null {
  return (state?.rules as CompiledRules | undefined) ?? null
}

/** The first publish rule matching `topic` decides; an allow rule must also allow retain for a retained publish. */
export function decidePublish (rules: CompiledRules, topic: string, retain: boolean): Allow | Deny {
  const list = rules.publish
  for (let i = 0; i < list.length; i++) {
    const rule = list[i]!
    if (!matchesTopic(rule.levels, topic)) continue
    return retain && rule.effect === 'allow' && !rule.retain ? rule.retainRefused : rule.answer
  }
  return NO_PUBLISH_RULE
}

/** The first subscribe rule matching `topic` decides whether this subscriber receives it. Allocation-free. */
export function decideDelivery (rules: CompiledRules, topic: string): Allow | Deny {
  const list = rules.subscribe
  for (let i = 0; i < list.length; i++) {
    const rule = list[i]!
    if (matchesTopic(rule.levels, topic)) return rule.answer
  }
  return NO_DELIVERY_RULE
}

/**
 * A filter is granted when it stays within a scope and some topic it can match is
 * allowed: for an allow rule, what the filter and the rule share is not wholly
 * taken by the deny rules before it. A refusal is named after the first deny rule
 * the filter meets, else `default-deny`.
 */
export function decideSubscription (rules: CompiledRules, filter: string): Allow | Deny {
  const levels = filter.split('/')
  if (!rules.scopes.some((scope) => covers(scope, levels))) return OUTSIDE_SCOPE
  let refusal: Deny = NO_SUBSCRIBE_RULE
  for (const rule of rules.subscribe) {
    const shared = intersect(rule.levels, levels)
    if (shared === null) continue
    if (rule.effect === 'deny') {
      if (refusal === NO_SUBSCRIBE_RULE) refusal = rule.answer as Deny
      continue
    }
    if (!coveredByAny(shared, rule.deniedBefore)) return rule.answer
  }
  return refusal
}

/**
 * per rule set: answers already given, by topic. Retained publishes have their own
 * map: a prefixed key (`r:${topic}`) would collide with a client's literal topic `r:...`.
 */
interface Decisions {
  readonly publish: Map<string, Allow | Deny>
  readonly publishRetained: Map<string, Allow | Deny>
  readonly delivery: Map<string, Allow | Deny>
}

// a device publishes on a handful of topics and receives a handful; a service
// receives every device's, more than any memo should hold
const MAX_PUBLISH_DECISIONS = 32
const MAX_DELIVERY_DECISIONS = 4096
/** device and service identities whose compiled rules are kept between connections (a few KB each) */
const MAX_COMPILED_RULES = 1024

/**
 * A memo keeps the first `max` topics it is asked about and then stops growing:
 * the other topics are answered by the rules each time (a scan that allocates
 * nothing), where starting the memo over would allocate on every miss.
 */
function remember (map: Map<string, Allow | Deny>, max: number, topic: string, answer: Allow | Deny): Allow | Deny {
  if (map.size < max) map.set(topic, answer)
  return answer
}

export const authorizationPlugin: Plugin<AuthorizationOptions> = {
  name: 'authorization',
  setup (_ctx, { policy }): PluginHooks {
    // keyed by the compiled rules, not the connection: rules compiled anew never
    // meet answers given under the old ones
    const decisions = new WeakMap<CompiledRules, Decisions>()
    const decisionsOf = (rules: CompiledRules): Decisions => {
      let d = decisions.get(rules)
      if (d === undefined) {
        d = { publish: new Map(), publishRetained: new Map(), delivery: new Map() }
        decisions.set(rules, d)
      }
      return d
    }

    // compiled rules by what they depend on (policy.ts, rulesKey): a device that reconnects
    // gets its rules back, and with them the topic answers already memoised, instead of
    // compiling the policy again on every connect. Bounded, least recently used first out.
    // Not for claim connections: each comes with a client id of its own choosing, once,
    // and keeping their rules would let the claim certificate fill the cache
    const compiled = new Map<string, CompiledRules>()
    function rulesFor (identity: Identity): CompiledRules {
      if (identity.role === 'claim') return compileRules(policy, identity)
      const key = rulesKey(identity)
      let rules = compiled.get(key)
      if (rules !== undefined) {
        compiled.delete(key)
      } else {
        rules = compileRules(policy, identity)
        if (compiled.size >= MAX_COMPILED_RULES) compiled.delete(compiled.keys().next().value!)
      }
      compiled.set(key, rules)
      return rules
    }

    return {
      name: 'authorization',
      connected (_client, state) {
        if (state.identity) state.rules = rulesFor(state.identity)
      },
      authorizePublish ({ packet, state, client }) {
        const rules = rulesOf(state)
        if (rules === null) {
          // wills of a broker that died come without a client: they were vetted
          // when the device connected (see chain.ts), so let them through
          return client === null ? ALLOW : NO_PUBLISH_IDENTITY
        }
        const retain = packet.retain === true
        const d = decisionsOf(rules)
        const topic = packet.topic
        const memo = retain ? d.publishRetained : d.publish
        return memo.get(topic) ?? remember(memo, MAX_PUBLISH_DECISIONS, topic, decidePublish(rules, topic, retain))
      },
      authorizeSubscribe ({ subscription, state }) {
        const rules = rulesOf(state)
        return rules === null ? NO_IDENTITY : decideSubscription(rules, subscription.topic)
      },
      authorizeForward ({ packet, state }) {
        const rules = rulesOf(state)
        if (rules === null) return NO_IDENTITY
        const topic = packet.topic
        const memo = decisionsOf(rules).delivery
        return memo.get(topic) ?? remember(memo, MAX_DELIVERY_DECISIONS, topic, decideDelivery(rules, topic))
      }
    }
  }
}
