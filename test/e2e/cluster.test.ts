/**
 * Two broker processes sharing one real redis-server: a device provisioned
 * through A connects to B, telemetry crosses brokers, and `aedes-jitp devices
 * revoke` (the real CLI, a third process) through A's admin API disconnects it
 * from B within 1 s; the audit query through B's admin API returns A's events,
 * and the revocation is in the cluster's audit exactly once.
 * Needs `npm run build` (npm test's pretest does it).
 */
import t from 'tap'
import { collect, connect, credentials, endClient, publish, RUN_AUDIT_FILE, sleep, startBroker, subscribe, waitFor } from '../helpers/broker.js'
import { cli, startChildBroker } from '../helpers/cli.js'
import { provision } from '../helpers/provisioning.js'
import { freePort, startRedisServer } from '../helpers/redis-server.js'


t.test('two brokers, one Redis', async (t) => {
  const redis = await startRedisServer()
  t.teardown(() => redis.stop())
  const a = await startBroker({ store: 'redis', redis })
  t.teardown(() => a.close())
  const [portB, httpB, adminB] = [await freePort(), await freePort(), await freePort()]
  const shared = { REDIS_URL: redis.url, CERTS_DIR: a.pki.dir, AUDIT_LOG: RUN_AUDIT_FILE, LOG_LEVEL: 'warn' }
  const b = await startChildBroker({ ...shared, MQTTS_PORT: String(portB), HTTP_PORT: String(httpB), ADMIN_PORT: String(adminB), HOST: '127.0.0.1', GENERATE_DEV_CERTS: 'false' }, httpB)
  // the CLI talks to A's admin API; `viaB` to B's
  const env = { CERTS_DIR: a.pki.dir, ADMIN_PORT: String(a.adminPort) }
  const viaB = { CERTS_DIR: a.pki.dir, ADMIN_PORT: String(adminB) }
  t.teardown(() => { if (b.exitCode === null) b.kill('SIGKILL') })
  const onB = { port: portB, pki: a.pki }

  const p = await provision(a, 'CLUSTER-1', 'ec')
  const service = await connect(a, credentials(a.pki, 'service'))
  await subscribe(service, 'devices/+/telemetry')
  const seen = collect(service)

  const device = await connect(onB, p.creds, { clientId: p.deviceId })
  t.ok(device.connected, 'provisioned through A, connects to B')
  const config = collect(device)
  await subscribe(device, `devices/${p.deviceId}/config`)
  await waitFor(() => config.length >= 1, 5000, 'retained config from the shared store')
  await publish(device, `devices/${p.deviceId}/telemetry`, JSON.stringify({ ts: 1, seq: 1, values: { t: 1 } }))
  await waitFor(() => seen.length >= 1, 5000, 'telemetry from B at a service on A')

  const list = await cli(['devices', 'list'], env)
  t.equal(list.code, 0)
  t.match(list.stdout, new RegExp(`^${p.deviceId}\\s+provisioned\\s+sensor`, 'm'), 'devices list shows it (provisioned until its health check passes)')
  const show = await cli(['devices', 'show', p.deviceId, '--json'], viaB)
  t.equal(show.code, 0)
  t.equal((JSON.parse(show.stdout) as { certificates: unknown[] }).certificates.length, 2, 'devices show lists its certificates')
  t.notMatch(show.stdout, /PRIVATE KEY/)

  const closed = new Promise<number>((resolve_) => device.once('close', () => resolve_(Date.now())))
  const revoke = await cli(['devices', 'revoke', p.deviceId], env)
  const revokedAt = Date.now()
  t.equal(revoke.code, 0, `revoke: ${revoke.stderr}`)
  const closedAt = await Promise.race([closed, sleep(3000).then(() => Infinity)])
  t.ok(closedAt - revokedAt <= 1000, `disconnected from B within 1 s (${closedAt - revokedAt} ms after the CLI returned)`)
  const again = await connect(onB, p.creds, { clientId: p.deviceId }).then(() => 0, (e: Error & { code?: number }) => e.code)
  t.equal(again, 5, 'later connects get CONNACK 5')
  device.end(true)
  await endClient(service)

  const unknown = await cli(['devices', 'revoke', 'no-such-device'], env)
  t.not(unknown.code, 0)
  t.equal(unknown.stderr.trim().split('\n').length, 1, 'one-line error')

  // one query through B sees what A wrote: the audit stream is shared
  let revocations: Array<Record<string, unknown>> = []
  for (let i = 0; i < 20 && revocations.length === 0; i++) {
    const r = await cli(['audit', '--event', 'device.*', '--device', p.deviceId, '--json'], viaB)
    t.equal(r.code, 0, r.stderr)
    const lines = r.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>)
    revocations = lines.filter((l) => l.event === 'device.revoked')
    if (revocations.length === 0) await sleep(100)
    else t.ok(lines.some((l) => l.event === 'device.registered'), 'the registration A audited is there too')
  }
  t.equal(revocations.length, 1, 'the revocation is audited once in the whole cluster')
  t.match(revocations[0], { deviceId: p.deviceId, actor: 'admin-dev' })

  b.kill('SIGTERM')
  await new Promise((resolve_) => b.once('exit', resolve_))
})
