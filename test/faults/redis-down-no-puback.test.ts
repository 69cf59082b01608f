/**
 * Fault: Redis is down when a device publishes QoS 1 for a persistent
 * subscriber. The message cannot be stored, so it must not be acknowledged
 * [MQTT-4.3.2-2]: no PUBACK, the connection is closed, the failure counted
 * and audited (PublishNotStored). Once Redis is back, the client's resend
 * [MQTT-4.4.0-1] is acknowledged and delivered.
 */
import t from 'tap'
import { connect, connectCollecting, credentials, endClient, registerDevice, startBroker, subscribe, waitFor } from '../helpers/broker.js'
import { startRedisServer } from '../helpers/redis-server.js'

const DEVICE = 'down-dev-1'
const SUBSCRIBER = 'backend-down'

async function notStoredCount (tb: { handle: { metrics: { publishesNotStored: { get (): Promise<{ values: Array<{ value: number }> }> } } } }): Promise<number> {
  return (await tb.handle.metrics.publishesNotStored.get()).values[0]?.value ?? 0
}

t.test('Redis down: a QoS 1 publish is not acknowledged, audited, and the resend is delivered', async (t) => {
  const redis = await startRedisServer({ aof: true })
  const tb = await startBroker({ store: 'redis', redis })
  t.teardown(() => tb.close())
  const dev = await registerDevice(tb, DEVICE)

  const sub = await connect(tb, credentials(tb.pki, 'service'), { clientId: SUBSCRIBER, clean: false })
  await subscribe(sub, 'devices/+/telemetry', 1)
  await endClient(sub)

  // the device reconnects by itself (as a real one would) and MQTT.js resends what was not acknowledged
  const device = await connect(tb, dev, { clientId: DEVICE, reconnectPeriod: 250 })
  t.teardown(() => { device.end(true) })
  let closes = 0
  device.on('close', () => { closes++ })

  await redis.kill()
  let acknowledged = false
  device.publish(`devices/${DEVICE}/telemetry`, JSON.stringify({ ts: Date.now(), seq: 1, values: { temperature: 21 } }), { qos: 1 }, (err) => {
    if (!err) acknowledged = true
  })
  await waitFor(() => tb.events('connection.closed').some((l) => l.errorCode === 'PublishNotStored'), 10_000, 'the PublishNotStored audit line')
  const line = tb.events('connection.closed').find((l) => l.errorCode === 'PublishNotStored')!
  t.equal(line.clientId, DEVICE, 'audited for the publishing client')
  t.equal(line.topic, `devices/${DEVICE}/telemetry`, 'with the topic')
  t.match(String(line.reason), /not acknowledged/, 'saying it was not acknowledged')
  t.ok(await notStoredCount(tb) >= 1, 'counted in jitp_publishes_not_stored_total')
  await waitFor(() => closes > 0, 5000, 'the device connection to be closed')
  t.notOk(acknowledged, 'no PUBACK while the message could not be stored')

  await redis.restart()
  await waitFor(() => acknowledged, 30_000, 'the resend to be acknowledged once Redis is back')
  t.ok(acknowledged, 'the resend is acknowledged')

  const { client: again, got } = await connectCollecting(tb, credentials(tb.pki, 'service'), { clientId: SUBSCRIBER, clean: false })
  await waitFor(() => got.length > 0, 10_000, 'the queued message')
  t.equal((JSON.parse(got[0]!.payload) as { seq: number }).seq, 1, 'the subscriber gets the message')
  await endClient(again)
})
