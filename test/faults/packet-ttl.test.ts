/**
 * Fault (a leak in the store): aedes-persistence-redis drops a cleaned
 * session's queue list but keeps the `packet:*` keys it pointed to, with no
 * TTL: 1,000 queued messages left 2,000 keys behind forever. Cleaning a
 * session now releases its queued packets at once, and every queued packet
 * carries PACKET_TTL_SECONDS, the backstop for a queue dropped another way
 * (an UNSUBSCRIBE of its last filter).
 */
import { Redis } from 'ioredis'
import t from 'tap'
import {
  connect, credentials, endClient, registerDevice, startBroker, subscribe, waitFor, type TestBroker
} from '../helpers/broker.js'

async function packetKeys (redis: Redis): Promise<{ total: number, withoutTtl: number }> {
  let total = 0
  let withoutTtl = 0
  let cursor = '0'
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', 'packet:*', 'COUNT', 1000)
    cursor = next
    for (const key of keys) {
      total++
      if (await redis.ttl(key) === -1) withoutTtl++
    }
  } while (cursor !== '0')
  return { total, withoutTtl }
}

/** polls an asynchronous condition (it reads Redis) until it holds or `ms` pass */
async function until (check: () => Promise<boolean>, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms
  for (;;) {
    if (await check()) return true
    if (Date.now() > deadline) return false
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
}

/** a persistent subscriber that goes offline, then `count` QoS 1 messages queued for it */
async function queueFor (tb: TestBroker, subscriber: string, deviceId: string, count: number): Promise<void> {
  const sub = await connect(tb, credentials(tb.pki, 'service'), { clientId: subscriber, clean: false })
  await subscribe(sub, `devices/${deviceId}/telemetry`, 1)
  await endClient(sub)
  const device = await connect(tb, await registerDevice(tb, deviceId), { clientId: deviceId })
  let acked = 0
  for (let seq = 0; seq < count; seq++) {
    device.publish(`devices/${deviceId}/telemetry`, JSON.stringify({ ts: Date.now(), seq, values: { v: seq } }), { qos: 1 }, (err) => {
      if (!err) acked++
    })
  }
  await waitFor(() => acked === count, 30_000, `${count} acknowledged`)
  await endClient(device)
}

t.test('a cleaned session leaves no packet:* key behind', async (t) => {
  const tb = await startBroker({ store: 'redis' })
  t.teardown(() => tb.close())
  const redis = new Redis(tb.redis!.url)
  t.teardown(() => { redis.disconnect() })

  await queueFor(tb, 'backend-ttl-clean', 'ttl-dev-1', 1000)
  t.equal(await redis.llen('outgoing:backend-ttl-clean'), 1000, '1,000 queued')
  const queued = await packetKeys(redis)
  t.equal(queued.total, 2000, 'a packet and its count per message')
  t.equal(queued.withoutTtl, 0, 'each with a TTL (PACKET_TTL_SECONDS)')

  // the same identity connects clean: its session, queue included, is discarded [MQTT-3.1.2-6]
  const clean = await connect(tb, credentials(tb.pki, 'service'), { clientId: 'backend-ttl-clean', clean: true })
  await endClient(clean)
  t.same(await packetKeys(redis), { total: 0, withoutTtl: 0 }, 'no packet:* key left at all')
  t.equal(await redis.exists('outgoing:backend-ttl-clean'), 0, 'nor the queue')
})

t.test('a queue dropped by unsubscribing: its packets expire after PACKET_TTL_SECONDS', async (t) => {
  const tb = await startBroker({ store: 'redis', overrides: { PACKET_TTL_SECONDS: 5 } })
  t.teardown(() => tb.close())
  const redis = new Redis(tb.redis!.url)
  t.teardown(() => { redis.disconnect() })

  await queueFor(tb, 'backend-ttl-unsub', 'ttl-dev-2', 200)
  const sub = await connect(tb, credentials(tb.pki, 'service'), { clientId: 'backend-ttl-unsub', clean: false })
  // the queue is handed out on reconnect: never acknowledged here (MQTT.js sends the PUBACK when
  // handleMessage calls back), so every packet stays queued; unsubscribing the last filter then
  // makes the store drop the list and nothing else
  sub.handleMessage = () => undefined
  // (MQTT.js handles incoming packets one at a time, so its UNSUBACK is never read: Redis tells instead)
  sub.unsubscribe('devices/ttl-dev-2/telemetry')
  t.ok(await until(async () => await redis.exists('outgoing:backend-ttl-unsub') === 0, 10_000), 'the store dropped the queue')
  sub.end(true)
  const left = await packetKeys(redis)
  t.ok(left.total > 0, `the dropped queue left ${left.total} packet:* keys`)
  t.equal(left.withoutTtl, 0, 'none without a TTL')
  t.ok(await until(async () => (await packetKeys(redis)).total === 0, 15_000), 'none left after the TTL')
})
