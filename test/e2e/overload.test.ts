/**
 * Overload resilience (broker/flow-control.ts): 50 devices publish QoS 1 flat out
 * to one persistent-session subscriber that stops reading and then disconnects.
 * Bare Aedes 1.2 in memory dies here (RangeError in mqemitter); this broker must
 * stay up with bounded memory, keep the oldest SESSION_QUEUE_LIMIT messages for
 * the session, and drop, count and audit the rest.
 */
import t from 'tap'
import type { Duplex } from 'node:stream'
import type { MqttClient } from 'mqtt'
import {
  STORES, collect, connect, credentials, endClient, registerDevice, sleep, startBroker, subscribe, waitFor
} from '../helpers/broker.js'

const DEVICES = 50
const LIMIT = 300
const IN_FLIGHT = 64
const READ_STOPS_AFTER_MS = 0
const DISCONNECT_AFTER_MS = 2500
const FLOOD_MS = 7000
const MAX_MESSAGES_PER_DEVICE = 20_000
const RSS_LIMIT = 300 * 1024 * 1024

const telemetry = (seq: number): string =>
  JSON.stringify({ ts: Date.now(), seq, values: { temperature: 21.5, humidity: 40.2, pressure: 1013.25, battery: 3.71, door: 'closed', motion: false } })

/** publishes QoS 1 until the deadline, never more than IN_FLIGHT unacknowledged */
function flood (client: MqttClient, deviceId: string, deadline: number): Promise<number> {
  return new Promise((resolve) => {
    let inFlight = 0
    let sent = 0
    let done = false
    const finish = (): void => {
      if (!done && inFlight === 0) {
        done = true
        resolve(sent)
      }
    }
    const pump = (): void => {
      while (inFlight < IN_FLIGHT && Date.now() < deadline && sent < MAX_MESSAGES_PER_DEVICE && client.connected) {
        inFlight++
        sent++
        client.publish(`devices/${deviceId}/telemetry`, telemetry(sent), { qos: 1 }, () => {
          inFlight--
          setImmediate(pump)
        })
      }
      if (Date.now() >= deadline || sent >= MAX_MESSAGES_PER_DEVICE || !client.connected) finish()
    }
    // PUBACKs still pending at the end of a bounded wait are not ours to keep waiting for
    setTimeout(() => { inFlight = 0; finish() }, deadline - Date.now() + 5000).unref()
    pump()
  })
}

for (const store of STORES) {
  t.test(`overload: QoS 1 flood, slow subscriber that disconnects (${store})`, async (t) => {
    t.comment(`rss at start ${Math.round(process.memoryUsage().rss / 1048576)} MB`)
    const tb = await startBroker({ store, overrides: { SESSION_QUEUE_LIMIT: LIMIT } })
    t.teardown(() => tb.close())

    const service = credentials(tb.pki, 'service')
    const slow = await connect(tb, service, { clientId: 'overload-service', clean: false })
    t.same(await subscribe(slow, 'devices/+/telemetry', 1), [1], 'persistent subscription granted')

    const devices: Array<{ id: string, client: MqttClient }> = []
    for (let i = 0; i < DEVICES; i++) {
      const id = `flood-${i}`
      const client = await connect(tb, await registerDevice(tb, id), { clientId: id })
      devices.push({ id, client })
    }

    let peakRss = process.memoryUsage().rss
    t.comment(`rss before flood ${Math.round(peakRss / 1048576)} MB heap ${Math.round(process.memoryUsage().heapUsed / 1048576)}`)
    const sampler2 = setInterval(() => { const m = process.memoryUsage(); t.comment(`rss ${Math.round(m.rss / 1048576)} heap ${Math.round(m.heapUsed / 1048576)} ext ${Math.round(m.external / 1048576)} ab ${Math.round(m.arrayBuffers / 1048576)}`) }, 1000)
    t.teardown(() => clearInterval(sampler2))
    const sampler = setInterval(() => { peakRss = Math.max(peakRss, process.memoryUsage().rss) }, 100)
    t.teardown(() => clearInterval(sampler))

    const deadline = Date.now() + FLOOD_MS
    const flooding = Promise.all(devices.map(({ id, client }) => flood(client, id, deadline)))
    await sleep(READ_STOPS_AFTER_MS)
    // slow: stops reading, so nothing it was sent is acknowledged
    ;(slow.stream as Duplex).pause()
    await sleep(DISCONNECT_AFTER_MS)
    // ...and then vanishes mid-run
    ;(slow.stream as Duplex).destroy()
    slow.end(true)
    const sent = (await flooding).reduce((a, b) => a + b, 0)
    clearInterval(sampler)
    t.comment(`${store}: ${sent} messages published, peak RSS ${Math.round(peakRss / 1048576)} MB`)

    t.ok(sent > LIMIT * 4, `the flood published well past the limit (${sent})`)
    t.ok(peakRss <= RSS_LIMIT, `RSS stayed at or below 300 MB (peak ${Math.round(peakRss / 1048576)} MB)`)
    const health = await fetch(`http://127.0.0.1:${tb.httpPort}/healthz`)
    t.equal(health.status, 200, 'the broker answers /healthz afterwards')

    const drops = (await tb.handle.metrics.queueDrops.get()).values[0]?.value ?? 0
    t.ok(drops > 0, `messages beyond the limit were dropped and counted (${drops})`)
    await waitFor(() => tb.events('queue.dropped').length > 0, 3000, 'queue.dropped audit line')
    const line = tb.events('queue.dropped')[0]!
    t.equal(line.clientId, 'overload-service', 'the audit line names the session')
    t.equal(line.errorCode, 'SessionQueueFull')

    for (const { client } of devices) await endClient(client)

    // the session comes back and gets what was queued within the limit: nothing more, nothing less
    const back = await connect(tb, service, { clientId: 'overload-service', clean: false })
    const got = collect(back)
    await waitFor(() => got.length >= LIMIT, 10_000, `${LIMIT} queued messages`)
    await sleep(500)
    t.comment(`got ${got.length}`)
    t.equal(got.length, LIMIT, `exactly the ${LIMIT} queued messages arrive`)
    t.ok(got.every((m) => typeof (JSON.parse(m.payload) as { seq?: unknown }).seq === 'number'), 'each is an intact telemetry message')
    t.equal(new Set(got.map((m) => `${m.topic} ${m.payload}`)).size, got.length, 'no duplicates')
    await endClient(back)

    // a device connecting now still works
    const again = await connect(tb, service, { clientId: 'overload-check' })
    t.ok(again.connected, 'new connections are accepted after the flood')
    await endClient(again)
  })
}
