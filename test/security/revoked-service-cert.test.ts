/**
 * Attack: a service certificate leaks. Connected to broker B (a second process on
 * the same Redis), it reads every device's telemetry. The operator revokes it with
 * the real CLI (`aedes-jitp certificates revoke`, a third process) through broker
 * A's admin API: B closes the session within 1 s, both brokers then refuse it with
 * CONNACK 5; A wrote the one `certificate.revoked` line with the operator (the admin
 * certificate's CN), B wrote the `disconnect` line with the reason. The same by
 * issuer + serial, and for a whole CA.
 * Needs `npm run build` (npm test's pretest does it).
 */
import { appendFileSync, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { collect, connect, publish, registerDevice, RUN_AUDIT_FILE, sleep, startBroker, subscribe, waitFor } from '../helpers/broker.js'
import { cli, startChildBroker } from '../helpers/cli.js'
import { freePort, startRedisServer } from '../helpers/redis-server.js'
import { connackOf, issueClient, type IssuedClient } from '../helpers/revocation.js'

/** the CN of the dev admin certificate the CLI presents */
const ACTOR = 'admin-dev'

function lines (file: string): Array<Record<string, unknown>> {
  if (!existsSync(file)) return []
  return readFileSync(file, 'utf8').split('\n').filter((l) => l.trim() !== '').map((l) => JSON.parse(l) as Record<string, unknown>)
}

t.test('a leaked service certificate, revoked through the CLI', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'jitp-revoked-svc-'))
  const auditB = join(dir, 'broker-b.log')
  t.teardown(() => {
    // the run-wide audit check (scripts/audit-check.mjs) reads these lines too
    for (const file of [auditB]) if (existsSync(file)) appendFileSync(RUN_AUDIT_FILE, readFileSync(file))
    rmSync(dir, { recursive: true, force: true })
  })
  const redis = await startRedisServer()
  t.teardown(() => redis.stop())
  const a = await startBroker({ store: 'redis', redis })
  t.teardown(() => a.close())
  const [portB, httpB] = [await freePort(), await freePort()]
  const shared = { REDIS_URL: redis.url, CERTS_DIR: a.pki.dir, LOG_LEVEL: 'warn' }
  const b = await startChildBroker({ ...shared, AUDIT_LOG: auditB, MQTTS_PORT: String(portB), HTTP_PORT: String(httpB), HOST: '127.0.0.1', GENERATE_DEV_CERTS: 'false' }, httpB)
  t.teardown(() => { if (b.exitCode === null) b.kill('SIGKILL') })
  const onB = { port: portB, pki: a.pki }
  // the CLI talks to A's admin API; the operator is the admin certificate's CN
  const cliEnv = { CERTS_DIR: a.pki.dir, ADMIN_PORT: String(a.adminPort) }
  const revocationLines = (event: string): Array<Record<string, unknown>> => a.audit.lines.filter((l) => l.event === event)

  const creds = await registerDevice(a, 'meter-0042')
  const device = await connect(a, creds, { clientId: 'meter-0042' })
  t.teardown(() => device.end(true))
  let seq = 0
  const telemetry = (): Promise<void> => publish(device, 'devices/meter-0042/telemetry', JSON.stringify({ ts: Date.now(), seq: ++seq, values: { t: 1 } }))

  /** the leaked certificate reads telemetry on B; the CLI revokes it; B drops it within 1 s */
  async function leakAndRevoke (t: Test, leaked: IssuedClient, clientId: string, args: string[]) {
    const thief = await connect(onB, leaked, { clientId })
    const stolen = collect(thief)
    await subscribe(thief, 'devices/+/telemetry')
    await telemetry()
    await waitFor(() => stolen.length >= 1, 5000, 'telemetry on the leaked session (what the attacker had)')
    const closed = new Promise<number>((resolve_) => thief.once('close', () => resolve_(Date.now())))

    const spawnedAt = Date.now()
    const revoke = await cli(['certificates', 'revoke', ...args], cliEnv)
    const revokedAt = Date.now()
    t.equal(revoke.code, 0, `CLI: ${revoke.stdout.trim()} ${revoke.stderr.trim()}`)
    const closedAt = await Promise.race([closed, sleep(3000).then(() => Infinity)])
    // the CLI revokes before it closes its connections and exits, so the close may come first
    t.ok(closedAt - revokedAt <= 1000, `closed on B within 1 s of the CLI returning (${closedAt - spawnedAt} ms after it was started, the CLI took ${revokedAt - spawnedAt} ms)`)
    // what it gets from now on: nothing, because every broker refuses it (below)
    thief.end(true)

    t.equal(await connackOf(onB, leaked, clientId), 5, 'broker B refuses it: CONNACK 5')
    t.equal(await connackOf(a, leaked, clientId), 5, 'broker A refuses it: CONNACK 5')
    await waitFor(() => lines(auditB).some((l) => l.event === 'disconnect' && l.clientId === clientId), 5000, 'B\'s disconnect line')
    t.match(lines(auditB).find((l) => l.event === 'disconnect' && l.clientId === clientId), {
      role: 'service', certificateId: leaked.certificateId, errorCode: 'CertificateRevoked', reason: 'revocation notice'
    }, 'B audited the session it closed, with the reason')
  }

  t.test('by certificate id', async (t) => {
    const leaked = issueClient(a.pki, 'service', 'leaky-backend-1')
    await leakAndRevoke(t, leaked, 'leaky-1', [leaked.certificateId])
    const revoked = revocationLines('certificate.revoked')
    t.equal(revoked.length, 1, 'exactly one certificate.revoked line, from the broker that served the request')
    t.match(revoked[0], { certificateId: leaked.certificateId, actor: ACTOR })
    t.notOk(lines(auditB).some((l) => String(l.event).endsWith('.revoked')), 'the broker that only closed the session writes no revocation line')
    const list = await cli(['certificates', 'list', '--json'], cliEnv)
    t.equal(list.code, 0)
    const listed = JSON.parse(list.stdout) as { revocations: Array<Record<string, unknown>>, certificates: Array<Record<string, unknown>> }
    t.match(listed.revocations, [{ kind: 'certificate', certificateId: leaked.certificateId }], 'certificates list shows it')
    t.ok(listed.certificates.some((c) => c.certificateId === creds.certificateId), 'and the device certificates')
  })

  t.test('by issuer and serial', async (t) => {
    const leaked = issueClient(a.pki, 'service', 'leaky-backend-2')
    const serialWithColons = leaked.serialNumber.toUpperCase().replace(/(..)(?!$)/g, '$1:')
    await leakAndRevoke(t, leaked, 'leaky-2', ['--issuer', leaked.issuerFingerprint, '--serial', serialWithColons])
    t.match(revocationLines('certificate.revoked').filter((l) => l.serialNumber !== undefined), [
      { issuer: leaked.issuerFingerprint, serialNumber: leaked.serialNumber.toLowerCase(), actor: ACTOR }
    ], 'one line, with issuer and serial')
  })

  t.test('a whole CA', async (t) => {
    const leaked = issueClient(a.pki, 'service', 'leaky-backend-3')
    const sibling = issueClient(a.pki, 'service', 'other-backend')
    await leakAndRevoke(t, leaked, 'leaky-3', ['--ca', leaked.issuerFingerprint])
    t.equal(await connackOf(onB, sibling, 'other-1'), 5, 'every certificate of that CA is refused')
    t.match(revocationLines('ca.revoked'), [{ issuer: leaked.issuerFingerprint, actor: ACTOR }], 'one ca.revoked line')
    t.equal(await connackOf(a, creds, 'meter-0042'), 0, 'devices of another CA are untouched')
  })

  t.test('devices revoke is audited once, by the broker that served it', async (t) => {
    // the CA test's last check took the device's session over: connect it again
    const again = await connect(a, creds, { clientId: 'meter-0042' })
    const closed = new Promise<void>((resolve_) => again.once('close', () => resolve_()))
    const r = await cli(['devices', 'revoke', 'meter-0042'], cliEnv)
    t.equal(r.code, 0, r.stderr)
    t.match(revocationLines('device.revoked'), [{ event: 'device.revoked', deviceId: 'meter-0042', actor: ACTOR }])
    await closed
    await waitFor(() => a.events('disconnect').some((l) => l.clientId === 'meter-0042' && l.errorCode !== undefined), 5000, 'the device\'s disconnect line on A')
    t.match(a.events('disconnect').find((l) => l.clientId === 'meter-0042' && l.errorCode !== undefined), { errorCode: 'DeviceRevoked', reason: 'revocation notice' })
    again.end(true)
    t.equal(revocationLines('device.revoked').length, 1, 'audited once')
    t.notOk(lines(auditB).some((l) => l.event === 'device.revoked'), 'B wrote no device.revoked')
  })
})
