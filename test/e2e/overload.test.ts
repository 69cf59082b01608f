/**
 * Overload resilience (broker/flow-control.ts): 50 devices publish QoS 1 flat out
 * to one persistent-session subscriber that stops reading and then disconnects.
 * Bare Aedes 1.2 in memory dies here (RangeError in mqemitter); this broker must
 * stay up with bounded memory, keep the oldest SESSION_QUEUE_LIMIT messages for
 * the session, and drop, count and audit the rest.
 * The broker runs in its own process (bench/broker-child.ts) so its RSS is its own.
 */
import t from 'tap'
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import type { Duplex } from 'node:stream'
import type { MqttClient } from 'mqtt'
import type { BenchDevice } from '../../bench/broker-child.js'
import { procUsage } from '../../bench/proc.js'
import { ensureBuilt } from '../helpers/broker-process.js'
import { startBrokerChild } from '../../bench/processes.js'
import { issueCertificate, loadIssuer } from '../../pki/certificate.js'
import { generateKeyPair, privateKeyToPem } from '../../pki/keys.js'
import {
  STORES, connect, connectCollecting, credentials, devPki, endClient, sleep, subscribe, waitFor, type ClientCredentials
} from '../helpers/broker.js'
import { startRedisServer } from '../helpers/redis-server.js'

const DEVICES = 50
const LIMIT = 300
const IN_FLIGHT = 64
const DISCONNECT_AFTER_MS = 2500
const FLOOD_MS = 5000
const MAX_MESSAGES_PER_DEVICE = 20_000
/**
 * what the flood may add to the broker's RSS: bounded by the in-flight window and the
 * session queue, not by the messages sent. Measured from the broker's own baseline
 * (which grows with the code it loads: the admin API added about 10 MB), so the
 * bound is about the flood, not the build. Seen here: +125 to +175 MB with Redis.
 */
const RSS_GROWTH_LIMIT = 220 * 1024 * 1024

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
    const more = (): boolean => Date.now() < deadline && sent < MAX_MESSAGES_PER_DEVICE && client.connected
    const pump = (): void => {
      while (inFlight < IN_FLIGHT && more()) {
        inFlight++
        sent++
        client.publish(`devices/${deviceId}/telemetry`, telemetry(sent), { qos: 1 }, () => {
          inFlight--
          setImmediate(pump)
        })
      }
      if (!more()) finish()
    }
    // PUBACKs still missing after a bounded wait are not worth waiting for
    setTimeout(() => { inFlight = 0; finish() }, deadline - Date.now() + 5000).unref()
    pump()
  })
}

const CHILD_SCRIPT = resolve('dist/bench/broker-child.js')
function deviceCredentials (pkiDir: string, deviceIds: string[]): { creds: Map<string, ClientCredentials>, file: string } {
  const caPem = readFileSync(join(pkiDir, 'device-ca.pem'), 'utf8')
  const issuer = loadIssuer(caPem, readFileSync(join(pkiDir, 'device-ca.key'), 'utf8'))
  const creds = new Map<string, ClientCredentials>()
  const records: BenchDevice[] = []
  for (const deviceId of deviceIds) {
    const keys = generateKeyPair('ec')
    const issued = issueCertificate({ commonName: deviceId, publicKey: keys.publicKey, issuer, validityDays: 1, extKeyUsage: ['clientAuth'] })
    creds.set(deviceId, { cert: issued.pem + caPem, key: privateKeyToPem(keys.privateKey) })
    records.push({ deviceId, certificateId: issued.certificateId, serialNumber: issued.serialNumber, notAfter: issued.notAfter.getTime() })
  }
  const file = join(mkdtempSync(join(tmpdir(), 'jitp-overload-')), 'devices.json')
  writeFileSync(file, JSON.stringify(records))
  return { creds, file }
}

async function queueDrops (httpPort: number): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text()
  return Number(/^jitp_queue_drops_total (\d+)/m.exec(text)?.[1] ?? 0)
}

function auditLines (file: string, event: string): Array<Record<string, unknown>> {
  let text = ''
  try {
    text = readFileSync(file, 'utf8')
  } catch {
    return []
  }
  return text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.event === event)
}

ensureBuilt()

for (const store of STORES) {
  t.test(`overload: QoS 1 flood, slow subscriber that disconnects (${store})`, async (t) => {
    const pki = await devPki()
    const ids = Array.from({ length: DEVICES }, (_v, i) => `flood-${i}`)
    const { creds, file: devicesFile } = deviceCredentials(pki.dir, ids)
    const redis = store === 'redis' ? await startRedisServer() : undefined
    t.teardown(() => redis?.stop())
    const auditLog = join(mkdtempSync(join(tmpdir(), 'jitp-overload-audit-')), 'audit.log')
    const broker = await startBrokerChild(`overload-${store}`, {
      kind: 'jitp', store, redisUrl: redis?.url, certsDir: pki.dir, devicesFile, auditLog, overrides: { SESSION_QUEUE_LIMIT: LIMIT }
    }, { script: CHILD_SCRIPT })
    t.teardown(() => broker.stop())
    const tb = { port: broker.port, pki }
    const httpPort = broker.httpPort!

    const service = credentials(pki, 'service')
    const slow = await connect(tb, service, { clientId: 'overload-service', clean: false })
    t.same(await subscribe(slow, 'devices/+/telemetry', 1), [1], 'persistent subscription granted')
    // slow: it stops reading at once, so nothing it is sent is acknowledged
    ;(slow.stream as Duplex).pause()

    const devices: Array<{ id: string, client: MqttClient }> = []
    for (const id of ids) devices.push({ id, client: await connect(tb, creds.get(id)!, { clientId: id }) })

    const baselineRss = procUsage(broker.pid)?.rssBytes ?? 0
    let peakRss = baselineRss
    t.comment(`baseline rss ${Math.round(baselineRss / 1048576)} MB`)
    const sampler = setInterval(() => { peakRss = Math.max(peakRss, procUsage(broker.pid)?.rssBytes ?? 0) }, 100)
    t.teardown(() => clearInterval(sampler))

    const deadline = Date.now() + FLOOD_MS
    const flooding = Promise.all(devices.map(({ id, client }) => flood(client, id, deadline)))
    await sleep(DISCONNECT_AFTER_MS)
    // ...and then it vanishes mid-run
    ;(slow.stream as Duplex).destroy()
    slow.end(true)
    const sent = (await flooding).reduce((a, b) => a + b, 0)
    clearInterval(sampler)
    t.comment(`${store}: ${sent} messages published, broker peak RSS ${Math.round(peakRss / 1048576)} MB`)

    t.equal(broker.exitStatus(), null, 'the broker process is alive')
    t.ok(sent > LIMIT * 4, `the flood published well past the limit (${sent})`)
    t.ok(baselineRss > 0 && peakRss - baselineRss <= RSS_GROWTH_LIMIT,
      `broker RSS grew by at most ${RSS_GROWTH_LIMIT / 1048576} MB (${Math.round(baselineRss / 1048576)} → peak ${Math.round(peakRss / 1048576)} MB)`)
    const health = await fetch(`http://127.0.0.1:${httpPort}/healthz`)
    t.equal(health.status, 200, 'the broker answers /healthz afterwards')

    const drops = await queueDrops(httpPort)
    t.ok(drops > 0, `messages beyond the limit were dropped and counted in jitp_queue_drops_total (${drops})`)
    await waitFor(() => auditLines(auditLog, 'queue.dropped').length > 0, 5000, 'queue.dropped audit line')
    const line = auditLines(auditLog, 'queue.dropped')[0]!
    t.equal(line.clientId, 'overload-service', 'the audit line names the session')
    t.equal(line.errorCode, 'SessionQueueFull')

    // everything published so far has been routed before the session comes back: with
    // Redis a message reaches live subscribers through pub/sub, which a flood leaves
    // behind; one still on its way when the session is back is delivered to it live (as
    // bare Aedes does), which is not what this test counts. Redis pub/sub keeps the
    // order of one publishing broker, so a marker seen by a watcher comes after them all
    const { client: watcher, got: watched } = await connectCollecting(tb, service, { clientId: 'overload-watcher' })
    t.same(await subscribe(watcher, 'devices/flood-0/telemetry', 0), [0], 'the watcher subscribed')
    const marker = JSON.stringify({ ts: Date.now(), seq: 0, values: { marker: 'end of flood' } })
    await new Promise<void>((resolve, reject) => devices[0]!.client.publish('devices/flood-0/telemetry', marker, { qos: 1 }, (err) => { if (err) reject(err); else resolve() }))
    await waitFor(() => watched.some((m) => m.payload === marker), 30_000, 'the marker, after the flood\'s last message was routed')
    await endClient(watcher)

    for (const { client } of devices) await endClient(client)

    // the session comes back and gets what was queued within the limit: nothing more, nothing less
    const { client: back, got } = await connectCollecting(tb, service, { clientId: 'overload-service', clean: false })
    await waitFor(() => got.length >= LIMIT, 10_000, `${LIMIT} queued messages`)
    await sleep(500)
    t.equal(got.length, LIMIT, `exactly the ${LIMIT} queued messages arrive`)
    t.ok(got.every((m) => typeof (JSON.parse(m.payload) as { seq?: unknown }).seq === 'number'), 'each is an intact telemetry message')
    t.equal(new Set(got.map((m) => `${m.topic} ${m.payload}`)).size, got.length, 'no duplicates')
    await endClient(back)

    const again = await connect(tb, service, { clientId: 'overload-check' })
    t.ok(again.connected, 'new connections are accepted after the flood')
    await endClient(again)
  })
}
