/**
 * The operator's day on the embedded broker, as issue 10 states it: `aedes-jitp
 * start` with no REDIS_URL (in-memory store, dev PKI generated on first run, audit
 * on stdout), a device provisioned over MQTT, then the real CLI against the admin
 * API: devices list/show (certificates, activity), certificates revoke on a live
 * service connection (closed within 1 s), audit --event 'device.*'; and the two
 * one-line failures an operator meets: broker not running, certificate refused.
 */
import t from 'tap'
import { spawn } from 'node:child_process'
import { createHash, X509Certificate } from 'node:crypto'
import { mkdtempSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { collect, connect, credentials, publish, sleep, waitFor, type Pki, type TestBroker } from '../helpers/broker.js'
import { CLI, cli } from '../helpers/cli.js'
import { provision } from '../helpers/provisioning.js'
import { freePort } from '../helpers/redis-server.js'

const KEY_MATERIAL = /PRIVATE KEY|certificateOwnershipToken"\s*:\s*"[^"]/

t.test('the CLI manages the in-memory broker of `aedes-jitp start` through the admin API', async (t) => {
  const certs = mkdtempSync(join(tmpdir(), 'jitp-admin-cli-'))
  const [mqttsPort, httpPort, adminPort] = [await freePort(), await freePort(), await freePort()]
  const child = spawn(process.execPath, [CLI, 'start'], {
    env: {
      ...process.env, MQTTS_PORT: String(mqttsPort), HTTP_PORT: String(httpPort), ADMIN_PORT: String(adminPort), HOST: '127.0.0.1',
      CERTS_DIR: certs, AUDIT_LOG: 'stdout', LOG_LEVEL: 'warn', REDIS_URL: '', ACTIVITY_FLUSH_MS: '200'
    },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let stdout = ''
  child.stdout?.on('data', (d: Buffer) => { stdout += d.toString() })
  t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL') })
  await waitFor(() => child.exitCode !== null || stdout.includes('"broker.started"'), 30_000, 'broker.started')
  t.equal(child.exitCode, null, 'broker running')

  const pki: Pki = { dir: certs, read: (f) => readFileSync(join(certs, f), 'utf8') }
  const tb = { port: mqttsPort, pki } as unknown as TestBroker
  const env = { CERTS_DIR: certs, ADMIN_PORT: String(adminPort) }

  const p = await provision(tb, 'CLI-0001', 'ec')
  const device = await connect(tb, p.creds, { clientId: p.deviceId })
  t.teardown(() => { device.end(true) })
  for (let i = 0; i < 3; i++) await publish(device, `devices/${p.deviceId}/telemetry`, JSON.stringify({ ts: 1, seq: i, values: { t: 20 } }))

  await t.test('devices list shows it', async (t) => {
    const list = await cli(['devices', 'list'], env)
    t.equal(list.code, 0, list.stderr)
    t.match(list.stdout, /^DEVICE\s+STATUS\s+TEMPLATE/m, 'a table with a header')
    // CONTRACT §3.7: provisioned until it passes its health check (telemetry alone is not one)
    t.match(list.stdout, new RegExp(`^${p.deviceId}\\s+provisioned\\s+sensor`, 'm'))
    const json = await cli(['devices', 'list', '--json', '--status', 'provisioned'], env)
    t.match(JSON.parse(json.stdout), [{ deviceId: p.deviceId, status: 'provisioned', template: 'sensor' }])
  })

  await t.test('devices show: its certificates and its activity', async (t) => {
    let shown: { certificates: Array<{ status: string }>, activity: { connects: number, messagesIn: number, firstSeen: number | null } } | undefined
    // activity reaches the registry in batches (ACTIVITY_FLUSH_MS): ask until the counts are in
    for (let i = 0; i < 25 && (shown?.activity.messagesIn ?? 0) < 3; i++) {
      const r = await cli(['devices', 'show', p.deviceId, '--json'], env)
      if (r.code !== 0) throw new Error(`devices show: ${r.stderr}`)
      shown = JSON.parse(r.stdout)
      if ((shown?.activity.messagesIn ?? 0) < 3) await sleep(200)
    }
    t.ok(shown, 'shown')
    t.ok(shown!.certificates.length >= 1 && shown!.certificates.some((c) => c.status === 'active'), 'its active certificate')
    t.ok(shown!.activity.connects >= 1, `connects ≥ 1 (${shown!.activity.connects})`)
    t.equal(shown!.activity.messagesIn, 3, 'the three telemetry messages counted')
    t.type(shown!.activity.firstSeen, 'number')
    const human = await cli(['devices', 'show', p.deviceId], env)
    t.match(human.stdout, /messages in\s+3/)
    t.match(human.stdout, /^CERTIFICATE\s+STATUS\s+NOT AFTER/m)
    t.notMatch(human.stdout + JSON.stringify(shown), KEY_MATERIAL)
  })

  await t.test('certificates revoke on the service certificate closes a live service connection within 1 s', async (t) => {
    const creds = credentials(pki, 'service')
    const service = await connect(tb, creds, { clientId: 'backend-cli' })
    const seen = collect(service)
    const closed = new Promise<number>((resolve) => service.once('close', () => resolve(Date.now())))
    const id = createHash('sha256').update(new X509Certificate(pki.read('service.pem')).raw).digest('hex')
    const r = await cli(['certificates', 'revoke', id], env)
    const revokedAt = Date.now()
    t.equal(r.code, 0, r.stderr)
    t.match(r.stdout, /^revoked: certificate [0-9a-f]{64}/)
    const closedAt = await Promise.race([closed, sleep(3000).then(() => Infinity)])
    t.ok(closedAt - revokedAt <= 1000, `closed ${closedAt - revokedAt} ms after the CLI returned`)
    service.end(true)
    t.same(seen, [], 'the revoked service received nothing')
    await t.rejects(connect(tb, creds, { clientId: 'backend-cli', reconnectPeriod: 0 }), 'and cannot come back')
    const list = await cli(['certificates', 'list', '--json'], env)
    t.match(JSON.parse(list.stdout), { revocations: [{ kind: 'certificate', certificateId: id }] })
  })

  await t.test("audit --event 'device.*' prints its registration", async (t) => {
    const r = await cli(['audit', '--event', 'device.*'], env)
    t.equal(r.code, 0, r.stderr)
    t.match(r.stdout, new RegExp(`device\\.registered\\s+.*deviceId=${p.deviceId}`))
    t.notMatch(r.stdout, /admin\.request|connect\.accepted/, 'only device.* events')
    const json = await cli(['audit', '--event', 'certificate.revoked', '--json'], env)
    t.match(JSON.parse(json.stdout.trim().split('\n')[0] ?? '{}'), { event: 'certificate.revoked', actor: 'admin-dev' })
  })

  await t.test('failures are one line and non-zero', async (t) => {
    const down = await cli(['devices', 'list'], { ...env, ADMIN_PORT: String(await freePort()) })
    t.not(down.code, 0)
    t.match(down.stderr, /cannot reach the admin API at https:\/\/127\.0\.0\.1:\d+ \(connection refused\)/)
    t.equal(down.stderr.trim().split('\n').length, 1, 'one line')
    const refused = await cli(['devices', 'list', '--cert', join(certs, 'claim-chain.pem'), '--key', join(certs, 'claim.key')], env)
    t.not(refused.code, 0)
    t.match(refused.stderr, /refused the client certificate/)
    t.equal(refused.stderr.trim().split('\n').length, 1, 'one line')
    const unknown = await cli(['devices', 'revoke', 'no-such-device'], env)
    t.not(unknown.code, 0)
    t.match(unknown.stderr, /DeviceNotFound/)
  })

  await t.test('no key material on the audit stream', async (t) => {
    t.notMatch(stdout, KEY_MATERIAL)
  })

  device.end(true)
  child.kill('SIGTERM')
  const code = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)))
  t.equal(code, 0, 'clean shutdown')
})
