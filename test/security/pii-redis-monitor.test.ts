/**
 * Attack: someone who can watch Redis (MONITOR, a replica, a packet capture
 * between broker and Redis) reads personal data, ownership tokens or CSRs off
 * the session store and the pub/sub fan-out between broker processes.
 * Defence: x-pii values are sealed (AES-256-GCM) before Aedes stores or emits a
 * message, and opened only on delivery to a `pii` holder, on whichever broker
 * process that holder is connected (every process derives the same key from
 * the shared CERTS_DIR); provisioning requests are consumed by the broker
 * (never routed), their replies go straight to the requesting connection, and
 * tokens are stored under their SHA-256.
 * Two broker processes (this one and a child) sharing a private redis-server.
 */
import t from 'tap'
import { createHash } from 'node:crypto'
import { Redis } from 'ioredis'
import { collect, connect, connectCollecting, credentials, endClient, publish, registerDevice, startBroker, subscribe, waitFor } from '../helpers/broker.js'
import { startBrokerProcess } from '../helpers/broker-process.js'
import { PII_VALUES, clearValuesIn, piiSchemasDir, redisDumpEveryKey, statePayload, telemetryPayload } from '../helpers/pii.js'
import { claimConnect, newCsr, request } from '../helpers/provisioning.js'
import { startRedisServer } from '../helpers/redis-server.js'

const SCHEMAS_DIR = piiSchemasDir()

t.test('MONITOR shows no x-pii value, no ownership token and no CSR', async (t) => {
  const redis = await startRedisServer()
  // MONITOR first, on a quiet Redis: ioredis cannot tell another client's command echoed
  // while its MONITOR is starting from a reply ("Command queue state error")
  const watcher = new Redis(redis.url, { maxRetriesPerRequest: 1 })
  const monitor = await watcher.monitor()
  const probe = new Redis(redis.url, { maxRetriesPerRequest: 1 })
  const seen: string[] = []
  monitor.on('monitor', (_time: string, args: string[]) => { seen.push(args.join(' ')) })
  await probe.echo('monitor-probe')
  await waitFor(() => seen.some((l) => l.includes('monitor-probe')), 5000, 'MONITOR to start')
  // default policy: services hold `pii`
  const a = await startBroker({ store: 'redis', redis, overrides: { SCHEMAS_DIR } })
  const b = await startBrokerProcess({ redisUrl: redis.url, pki: a.pki, overrides: { SCHEMAS_DIR } })
  const onB = { port: b.port, pki: a.pki }
  // one teardown, in order: the watchers, the brokers, and Redis last (a broker closing
  // against a Redis already gone would wait on its retries)
  t.teardown(async () => {
    for (const conn of [monitor, probe, watcher]) conn.disconnect()
    await b.stop()
    await a.close()
    await redis.stop()
  })

  const deviceId = 'mon-1'
  const stateTopic = `devices/${deviceId}/state`
  const teleTopic = `devices/${deviceId}/telemetry`
  const creds = await registerDevice(a, deviceId)
  const svc = credentials(a.pki, 'service')

  // an offline persistent subscriber (its queue in Redis) and a live one on the other process
  const offline = await connect(a, svc, { clientId: 'mon-offline', clean: false })
  await subscribe(offline, [stateTopic, teleTopic], 1)
  await endClient(offline)
  // and one that stays away: its queued copies are still in Redis when every key is dumped
  const away = await connect(onB, svc, { clientId: 'mon-away', clean: false })
  await subscribe(away, [stateTopic, teleTopic], 1)
  await endClient(away)
  const liveB = await connect(onB, svc, { clientId: 'mon-live-b' })
  await subscribe(liveB, [stateTopic, teleTopic], 1)
  const gotB = collect(liveB)

  const device = await connect(a, creds, { clientId: deviceId })
  await publish(device, stateTopic, JSON.stringify(statePayload()), { qos: 1, retain: true })
  await publish(device, teleTopic, JSON.stringify(telemetryPayload(1)), { qos: 1 })
  await waitFor(() => gotB.length >= 2, 10_000, 'live deliveries on the other broker process')
  const byTopic = (topic: string): unknown => JSON.parse(gotB.find((m) => m.topic === topic)!.payload)
  t.same(byTopic(stateTopic), statePayload(), 'a pii holder on the other process gets the clear values (state)')
  t.same(byTopic(teleTopic), telemetryPayload(1), 'and (telemetry)')

  // the offline subscriber comes back on the other process: its queue, opened there
  const { client: back, got: queued } = await connectCollecting(onB, svc, { clientId: 'mon-offline', clean: false })
  await waitFor(() => queued.length >= 2, 10_000, 'queued deliveries')
  t.same(queued.map((m) => JSON.parse(m.payload) as unknown).sort((x, y) => JSON.stringify(x).localeCompare(JSON.stringify(y))),
    [statePayload(), telemetryPayload(1)].sort((x, y) => JSON.stringify(x).localeCompare(JSON.stringify(y))), 'offline queue, clear for the holder')
  // and a retained read on the other process
  const { client: late, got: retained } = await connectCollecting(onB, svc, { clientId: 'mon-late' })
  await subscribe(late, stateTopic, 1)
  await waitFor(() => retained.length >= 1, 10_000, 'retained delivery')
  t.same(JSON.parse(retained[0]!.payload), statePayload(), 'retained, clear for the holder')

  // a claim connection: a certificate from a CSR, then the registration with its token
  const claim = await claimConnect(a)
  const { csr } = newCsr('ec')
  const created = await request(claim, '$provision/certificates/create-from-csr/json', { certificateSigningRequest: csr })
  t.equal(created.outcome, 'accepted')
  const token = String(created.body.certificateOwnershipToken)
  const registered = await request(claim, '$provision/templates/sensor/provision/json', { certificateOwnershipToken: token, parameters: { serialNumber: 'MON-0001' } })
  t.equal(registered.outcome, 'accepted')
  claim.end(true)

  await probe.echo('monitor-end')
  await waitFor(() => seen.some((l) => l.includes('monitor-end')), 5000, 'MONITOR to catch up')
  const traffic = seen.join('\n')
  t.ok(seen.length > 50, `MONITOR saw the traffic (${seen.length} commands)`)
  t.ok(traffic.includes('"enc":') && traffic.includes('"kid":'), 'the messages crossed Redis as envelopes')
  t.same(clearValuesIn(traffic), [], `no x-pii value in clear (looked for ${PII_VALUES.length})`)
  t.notOk(traffic.includes(token), 'no ownership token')
  t.ok(traffic.includes(`token:${createHash('sha256').update(token).digest('hex')}`), 'the token is stored under its SHA-256')
  const csrBody = csr.split('\n').filter((l) => l && !l.startsWith('-----'))
  t.notOk(traffic.includes('CERTIFICATE REQUEST') || csrBody.some((line) => traffic.includes(line)), 'no CSR')

  // afterwards, DUMP of every key: the retained state and the queued copies of the subscriber still away
  const dumped = await redisDumpEveryKey(redis.url)
  t.ok(dumped.keys > 10, `DUMP of every key (${dumped.keys})`)
  t.ok(dumped.text.includes('mon-away') && dumped.text.includes(stateTopic), 'the dump holds the queue and the retained state')
  t.ok(dumped.text.includes('"enc":') && dumped.text.includes('"kid":'), 'their x-pii values are envelopes')
  t.same(clearValuesIn(dumped.text), [], `no x-pii value in clear in any key (looked for ${PII_VALUES.length})`)

  await endClient(device)
  await endClient(back)
  await endClient(late)
  await endClient(liveB)
})
