/**
 * The subscribe flow, per filter: malformed filter → reserved filters → plugin
 * answers (first non-defer wins, everyone deferring is a denial) → SUBACK.
 */
import type { Client, Subscription } from 'aedes'
import type { ErrorCode } from '../errors.js'
import { isMalformedMqttString } from '../mqtt-strings.js'
import { isReserved } from '../reserved-topics.js'
import { stateOf } from '../session.js'
import { auditFields } from './audit-fields.js'
import { reservedTopicCode, type ChainContext } from './context.js'
import { closeMalformed } from './malformed.js'

export function authorizeSubscribe (chain: ChainContext, client: Client, subscription: Subscription, done: (err: Error | null, sub?: Subscription | null) => void): void {
  const state = stateOf(client)
  const identity = state?.identity
  if (isMalformedMqttString(subscription.topic)) return closeMalformed(chain, client, state, subscription.topic, done)
  let verdict: 'allow' | 'deny' = 'deny'
  let rule = 'no-rule'
  let code: ErrorCode = 'SubscribeDenied'
  if (isReserved(subscription.topic) && !(identity && chain.reserved.open(identity.role, 'subscribe', subscription.topic))) {
    // `$` filters first, before any plugin: no rule opens them (broker/reserved-topics.ts)
    rule = 'reserved-topic'
    code = reservedTopicCode(subscription.topic)
  } else if (state && identity) {
    for (const plugin of chain.hooks.authorizeSubscribe) {
      const answer = plugin.authorizeSubscribe!({ client, identity, state, subscription })
      if (answer.verdict === 'defer') continue
      verdict = answer.verdict
      rule = answer.rule ?? rule
      break
    }
  }
  if (verdict === 'allow') return done(null, subscription)
  chain.ctx.metrics.denials.inc({ action: 'subscribe', rule })
  chain.ctx.audit.write('subscribe.denied', { ...auditFields(client, state), topic: subscription.topic, errorCode: code, reason: rule }, 'warn')
  // a null subscription makes Aedes answer SUBACK 0x80 for this filter
  done(null, null)
}
