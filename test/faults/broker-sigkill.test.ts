/**
 * Fault: the broker process is SIGKILLed at the instant its publisher receives
 * the last PUBACK of 1,000 QoS 1 messages in flight. A PUBACK promises the
 * message is kept [MQTT-4.3.2-2]: after a restart on the same (durable) Redis,
 * the persistent subscriber gets every acknowledged message (duplicates allowed).
 * Aedes 1.2 wrote the PUBACK before storing: 376 of 1,000 were lost this way.
 */
import t from 'tap'
import { createRegistry } from '../../broker/store/create-registry.js'
import { connect, connectCollecting, credentials, devPki, endClient, subscribe, waitFor } from '../helpers/broker.js'
import { registerDeviceIn, startBrokerProcess } from '../helpers/broker-process.js'
import { startRedisServer } from '../helpers/redis-server.js'

const MESSAGES = 1000
const DEVICE = 'sigkill-dev-1'
const SUBSCRIBER = 'backend-sigkill'

t.test('broker SIGKILLed at the last PUBACK: every acknowledged message reaches the persistent subscriber', async (t) => {
  const redis = await startRedisServer({ aof: true })
  const pki = await devPki()
  const registry = createRegistry({ redisUrl: redis.url, onError: () => undefined })
  t.teardown(() => registry.close())
  const device = await registerDeviceIn(registry, pki, DEVICE)

  const first = await startBrokerProcess({ redisUrl: redis.url, pki })
  // the persistent subscriber registers its session, then goes offline
  const sub = await connect(first, credentials(pki, 'service'), { clientId: SUBSCRIBER, clean: false })
  t.same(await subscribe(sub, 'devices/+/telemetry', 1), [1], 'subscribed with QoS 1')
  await endClient(sub)

  const pub = await connect(first, device, { clientId: DEVICE })
  const acknowledged = new Set<number>()
  let killed = false
  for (let seq = 0; seq < MESSAGES; seq++) {
    const payload = JSON.stringify({ ts: Date.now(), seq, values: { temperature: 20 + (seq % 10) } })
    pub.publish(`devices/${DEVICE}/telemetry`, payload, { qos: 1 }, (err) => {
      if (err) return
      acknowledged.add(seq)
      // the PUBACK handler of the last message: the broker dies before it can do anything more
      if (acknowledged.size === MESSAGES && !killed) {
        killed = true
        first.kill()
      }
    })
  }
  await waitFor(() => killed, 60_000, 'the last PUBACK')
  await first.exited()
  pub.end(true)
  t.equal(acknowledged.size, MESSAGES, 'all 1,000 were acknowledged before the kill')

  const second = await startBrokerProcess({ redisUrl: redis.url, pki })
  const { client: again, got } = await connectCollecting(second, credentials(pki, 'service'), { clientId: SUBSCRIBER, clean: false })
  const received = (): Set<number> => new Set(got.map((m) => (JSON.parse(m.payload) as { seq: number }).seq))
  try {
    await waitFor(() => [...acknowledged].every((seq) => received().has(seq)), 30_000, 'every acknowledged message')
  } catch {
    // fall through to the assertion, which names how many were lost
  }
  const lost = [...acknowledged].filter((seq) => !received().has(seq))
  t.equal(lost.length, 0, `no acknowledged message lost (${got.length} delivered, duplicates allowed)`)
  t.ok(got.every((m) => m.topic === `devices/${DEVICE}/telemetry`), 'only what was published')
  await endClient(again)
  await second.stop()
  const accepted = second.auditLines().filter((l) => l.event === 'connect.accepted' && l.clientId === SUBSCRIBER)
  t.equal(accepted.length, 1, 'the restarted broker audited the subscriber\'s reconnect')
})
