/**
 * The pre-authentication refusal log (CONTRACT §6): refusals aggregated per
 * remote address and interval, with a count. "Per address" is per budget, as
 * for the limits (broker/address-budget.ts): an IPv6 /64 is one host, and
 * aggregated address by address a single /64 wrote a line for each of its
 * addresses (12,000 addresses of one /64: 10,001 lines in one interval).
 */
import t from 'tap'
import { createAudit } from '../../broker/audit.js'
import { createRefusalLog } from '../../broker/listener/refusal-log.js'
import { createMetrics } from '../../broker/metrics.js'
import { auditCapture } from '../helpers/broker.js'

t.test('one line per budget and interval, then one with the count', async (t) => {
  const capture = auditCapture()
  // a long interval: the flush below is the one that writes the counts
  const audit = createAudit(capture.stream, { refusalIntervalMs: 3_600_000 })
  t.teardown(() => audit.close())
  const refusals = createRefusalLog(audit, createMetrics())
  t.teardown(() => refusals.close())
  for (let i = 0; i < 2000; i++) refusals.refuse(`2001:db8:7:7:${(i >> 8).toString(16)}:${(i & 0xff).toString(16)}::1`, 'TooManyPendingConnections')
  for (let i = 0; i < 500; i++) refusals.refuse('192.0.2.7', 'TooManyPendingConnections')
  refusals.refuse('2001:db8:7:8::1', 'TooManyPendingConnections')
  refusals.flush()
  await audit.flush()
  const lines = capture.lines.filter((l) => l.event === 'connect.refused')
  const of64 = lines.filter((l) => String(l.remoteAddress).startsWith('2001:db8:7:7:'))
  t.same(of64.map((l) => l.count), [1, 1999], 'the 2,000 addresses of one /64: a line, then one with the rest counted')
  t.same(lines.filter((l) => l.remoteAddress === '192.0.2.7').map((l) => l.count), [1, 499], 'an IPv4 address as before')
  t.same(lines.filter((l) => l.remoteAddress === '2001:db8:7:8::1').map((l) => l.count), [1], 'the next /64 is another budget')
  t.equal(lines.length, 5, 'five lines for 2,501 refusals')
})
