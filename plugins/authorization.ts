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

export const authorizationPlugin: Plugin<AuthorizationOptions> = {
  name: 'authorization',
  setup (_ctx, { policy }): PluginHooks {
    return {
      name: 'authorization',
      connected (_client, state) {
        if (state.identity) state.rules = compileRules(policy, state.identity)
      },
      authorizePublish ({ packet, state, client }) {
        const rules = rulesOf(state)
        if (rules === null) {
          // wills of a broker that died come without a client: they were vetted
          // when the device connected (see chain.ts), so let them through
          return client === null ? ALLOW : deny('PublishDenied', 'no-identity')
        }
        return checkPublish(rules, packet.topic, packet.retain === true)
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
        const levels = packet.topic.split('/')
        for (const rule of rules.subscribe) {
          if (matches(rule.levels, levels)) return ALLOW
        }
        return deny('SubscribeDenied', 'forward-default-deny')
      }
    }
  }
}
