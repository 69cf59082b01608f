/**
 * jitp_publishes_total is counted in plain numbers on the hot path (Metrics.publishTally)
 * and carried into the prom-client counter at each scrape: every publish counted once,
 * however many scrapes (and cluster aggregations) read it.
 */
import t from 'tap'
import { createMetrics } from '../../broker/metrics.js'

async function publishes (metrics: ReturnType<typeof createMetrics>): Promise<Record<string, number>> {
  const out: Record<string, number> = {}
  for (const v of (await metrics.publishes.get()).values) out[String(v.labels.role)] = v.value
  return out
}

t.test('every tallied publish reaches the counter once, by role', async (t) => {
  const metrics = createMetrics()
  const device = metrics.publishTally('device')
  const service = metrics.publishTally('service')
  t.equal(metrics.publishTally('device'), device, 'one tally per role')
  for (let i = 0; i < 3; i++) device.inc()
  service.inc()
  t.same(await publishes(metrics), { device: 3, service: 1 })
  // a second scrape with nothing new adds nothing
  t.same(await publishes(metrics), { device: 3, service: 1 })
  device.inc()
  device.inc()
  const text = await metrics.registry.metrics()
  t.match(text, /jitp_publishes_total\{role="device"\} 5\b/)
  t.match(text, /jitp_publishes_total\{role="service"\} 1\b/)
  t.same(await publishes(metrics), { device: 5, service: 1 })
})
