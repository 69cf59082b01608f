/**
 * Attack, no certificate needed: open connections to the token listener (or, with
 * the public claim certificate, to MQTTS_PORT) and send CONNECTs that are refused:
 * a garbage password, an MQTT 5 CONNECT. Each wrote a `token.refused` and a
 * `connect.refused` line, hash-chained and sent to the Redis stream: 300 CONNECTs
 * in 1.4 s wrote 501 lines, bounded only by CONNECT_RATE_PER_ADDRESS (about 12,000
 * lines a minute per address). CONTRACT §6: refusals before authentication are
 * aggregated per address and interval, with a count.
 * Defence: per event, code and address budget, the first REFUSAL_BURST refusals of an
 * interval are written one by one, the rest counted in one line (broker/audit.ts).
 */
import t from 'tap'
import { REFUSAL_BURST } from '../../broker/audit.js'
import { startBroker } from '../helpers/broker.js'
import { tokenConnect } from '../helpers/tokens.js'

const ATTEMPTS = REFUSAL_BURST * 3

t.test(`${ATTEMPTS} refused CONNECTs without a certificate: ${REFUSAL_BURST} lines each, then one with the count`, async (t) => {
  // an interval longer than the test: the counts are written when the broker closes
  const tb = await startBroker({ store: 'memory', overrides: { MQTTS_TOKEN_PORT: 0, AUDIT_AGGREGATE_SECONDS: 600, CONNECT_RATE_PER_ADDRESS: 100_000 } })
  let refused = 0
  for (let i = 0; i < ATTEMPTS; i++) {
    const r = await tokenConnect(tb, `not-a-token-${i}`, { clientId: `flood-${i}` })
    if (r.client === null) refused++
    else r.client.end(true)
  }
  t.equal(refused, ATTEMPTS, 'every one refused')
  const before = { token: tb.events('token.refused').length, connect: tb.events('connect.refused').filter((l) => l.remoteAddress === '127.0.0.1').length }
  t.equal(before.token, REFUSAL_BURST, `token.refused: ${REFUSAL_BURST} lines while the flood lasts, not ${ATTEMPTS}`)
  t.ok(before.connect <= REFUSAL_BURST, `connect.refused: ${before.connect} lines`)
  await tb.close()
  const counted = tb.events('token.refused').filter((l) => typeof l.count === 'number')
  t.equal(counted.length, 1, 'one line with the count at the interval\'s end')
  t.match(counted[0], { remoteAddress: '127.0.0.1', count: ATTEMPTS - REFUSAL_BURST, errorCode: String }, 'counting the rest')
})
