/**
 * Authorization: what an identity may publish, subscribe to and receive.
 * Rules are compiled once per connection (see policy.ts); every check here is a
 * synchronous scan of that small list. Nothing matches → deny.
 * Deliveries are checked again, so a subscription refused earlier but kept in a
 * persistent session never delivers.
 */
import { ALLOW, deny, type Allow, type Deny, type Plugin, type PluginHooks } from '../broker/plugin.js'
import type { ConnectionState } from '../broker/session.js'
import { compileRules, covers, matches, type CompiledRules, type Policy } from './policy.js'

export interface AuthorizationOptions { readonly policy: Policy }

function rulesOf (state: ConnectionState | undefined): CompiledRules | null {
  return (state?.rules as CompiledRules | undefined) ?? null
}

export function checkPublish (rules: CompiledRules, topic: string, retain: boolean): Allow | Deny {
  const levels = topic.split('/')
  for (const rule of rules.publish) {
    if (matches(rule.levels, levels)) {
      if (retain && !rule.retain) return deny('PublishDenied', rule.name, 'retain not allowed')
      return { verdict: 'allow', rule: rule.name }
    }
  }
  return deny('PublishDenied', 'default-deny')
}

/**
 * per connection: topics it recently published or received, with their answers.
 * Retained publishes have their own map: a prefixed key (`r:${topic}`) would
 * collide with a client's literal topic `r:...`.
 */
interface Decisions {
  readonly publish: Map<string, Allow | Deny>
  readonly publishRetained: Map<string, Allow | Deny>
  readonly forward: Map<string, boolean>
}

// a device publishes on a handful of topics; a service receives every device's
const MAX_PUBLISH_DECISIONS = 32
const MAX_FORWARD_DECISIONS = 4096

function remember<V> (map: Map<string, V>, max: number, key: string, value: V): V {
  // bounded: past the limit the memo starts over (topics are checked again, never trusted)
  if (map.size >= max) map.clear()
  map.set(key, value)
  return value
}

function mayReceive (rules: CompiledRules, topic: string): boolean {
  const levels = topic.split('/')
  return rules.subscribe.some((rule) => matches(rule.levels, levels))
}

export const authorizationPlugin: Plugin<AuthorizationOptions> = {
  name: 'authorization',
  setup (_ctx, { policy }): PluginHooks {
    // the rules of a connection are fixed when it connects, so an answer for a
    // topic stays right for that connection: the hot path asks a Map, not the rules
    const decisions = new WeakMap<ConnectionState, Decisions>()
    const decisionsOf = (state: ConnectionState): Decisions => {
      let d = decisions.get(state)
      if (d === undefined) {
        d = { publish: new Map(), publishRetained: new Map(), forward: new Map() }
        decisions.set(state, d)
      }
      return d
    }

    return {
      name: 'authorization',
      connected (_client, state) {
        if (state.identity) state.rules = compileRules(policy, state.identity)
      },
      authorizePublish ({ packet, state, client }) {
        const rules = rulesOf(state)
        if (state === undefined || rules === null) {
          // wills of a broker that died come without a client: they were vetted
          // when the device connected (see chain.ts), so let them through
          return client === null ? ALLOW : deny('PublishDenied', 'no-identity')
        }
        const retain = packet.retain === true
        const decided = decisionsOf(state)
        const memo = retain ? decided.publishRetained : decided.publish
        const topic = packet.topic
        return memo.get(topic) ?? remember(memo, MAX_PUBLISH_DECISIONS, topic, checkPublish(rules, topic, retain))
      },
      authorizeSubscribe ({ subscription, state }) {
        const rules = rulesOf(state)
        if (rules === null) return deny('SubscribeDenied', 'no-identity')
        const levels = subscription.topic.split('/')
        for (const rule of rules.subscribe) {
          if (covers(rule.levels, levels)) return { verdict: 'allow', rule: rule.name }
        }
        return deny('SubscribeDenied', 'default-deny')
      },
      authorizeForward ({ packet, state }) {
        const rules = rulesOf(state)
        if (rules === null) return deny('SubscribeDenied', 'no-identity')
        const memo = decisionsOf(state).forward
        const allowed = memo.get(packet.topic) ?? remember(memo, MAX_FORWARD_DECISIONS, packet.topic, mayReceive(rules, packet.topic))
        return allowed ? ALLOW : deny('SubscribeDenied', 'forward-default-deny')
      }
    }
  }
}
