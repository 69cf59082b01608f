/**
 * Fault: Redis (append-only file, everysec, as shipped) is SIGKILLed and
 * restarted on the same port while a device publishes 2,000 QoS 1 messages for
 * an offline persistent subscriber. Every acknowledged message is delivered
 * once things settle; what was in flight when Redis died is not acknowledged,
 * counted and audited (PublishNotStored), and resent by the client after it
 * reconnects. Before the fix 110 of 2,000 acknowledged messages were lost with
 * no audit line and no metric.
 */
import t from 'tap'
import { connect, connectCollecting, credentials, endClient, registerDevice, startBroker, subscribe, waitFor } from '../helpers/broker.js'
import { startRedisServer } from '../helpers/redis-server.js'

const MESSAGES = 2000
const DEVICE = 'rkill-dev-1'
const SUBSCRIBER = 'backend-rkill'

t.test('Redis SIGKILLed mid-stream: every acknowledged message delivered, the rest resent, failures audited', async (t) => {
  const redis = await startRedisServer({ aof: true })
  // room for the whole stream in the subscriber's session queue (and handed out in one reconnect)
  const tb = await startBroker({ store: 'redis', redis, overrides: { SESSION_QUEUE_LIMIT: MESSAGES + 500 } })
  t.teardown(() => tb.close())
  const dev = await registerDevice(tb, DEVICE)

  const sub = await connect(tb, credentials(tb.pki, 'service'), { clientId: SUBSCRIBER, clean: false })
  await subscribe(sub, 'devices/+/telemetry', 1)
  await endClient(sub)

  const device = await connect(tb, dev, { clientId: DEVICE, reconnectPeriod: 250 })
  t.teardown(() => { device.end(true) })
  let closes = 0
  device.on('close', () => { closes++ })
  const acknowledged = new Set<number>()
  for (let seq = 0; seq < MESSAGES; seq++) {
    const payload = JSON.stringify({ ts: Date.now(), seq, values: { temperature: 20 + (seq % 10) } })
    device.publish(`devices/${DEVICE}/telemetry`, payload, { qos: 1 }, (err) => {
      if (!err) acknowledged.add(seq)
    })
  }
  // mid-stream: a quarter acknowledged, the rest in flight
  await waitFor(() => acknowledged.size >= MESSAGES / 4, 30_000, 'a quarter of the stream acknowledged')
  await redis.kill()
  const ackedAtKill = acknowledged.size
  t.ok(ackedAtKill < MESSAGES, `Redis killed mid-stream (${ackedAtKill} acknowledged)`)
  // the broker notices (a publish fails, the device is closed) before Redis comes back
  await waitFor(() => closes > 0, 10_000, 'the device to be closed by a failed store')
  await redis.restart()

  await waitFor(() => acknowledged.size === MESSAGES, 45_000, 'every message acknowledged after resends')
  t.equal(acknowledged.size, MESSAGES, 'the client resent what was not acknowledged until all 2,000 were')

  const notStored = (await tb.handle.metrics.publishesNotStored.get()).values[0]?.value ?? 0
  // on failure, say how the device was closed instead
  const closings = tb.audit.lines.filter((l) => l.clientId === DEVICE && /disconnect|closed|refused/.test(String(l.event))).map((l) => `${String(l.event)}:${String(l.errorCode ?? l.reason)}`)
  t.ok(notStored >= 1, `failed stores counted (${notStored}; the device's closings: ${closings.slice(0, 5).join(', ')})`)
  const lines = tb.events('connection.closed').filter((l) => l.errorCode === 'PublishNotStored')
  t.ok(lines.length >= 1, 'and audited as PublishNotStored')
  t.equal(lines[0]?.clientId, DEVICE, 'for the publishing device')

  const { client: again, got } = await connectCollecting(tb, credentials(tb.pki, 'service'), { clientId: SUBSCRIBER, clean: false })
  const received = (): Set<number> => new Set(got.map((m) => (JSON.parse(m.payload) as { seq: number }).seq))
  try {
    await waitFor(() => received().size >= MESSAGES, 30_000, 'every acknowledged message')
  } catch {
    // fall through to the assertion, which names how many were lost
  }
  const seen = received()
  const lost = [...acknowledged].filter((seq) => !seen.has(seq))
  t.equal(lost.length, 0, `no acknowledged message lost (${got.length} delivered, duplicates allowed)`)
  await endClient(again)
})
