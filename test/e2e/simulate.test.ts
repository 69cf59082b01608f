/**
 * `aedes-jitp simulate` against real brokers (issue 13): virtual devices over real
 * mutual TLS (MQTT.js), the real admin API, both stores. A templates dir of its own
 * gives `sensor` a 5 s health window, so the broker decides quickly.
 *  - 50 devices, no faults: every one active; the summary agrees with the registry
 *    device by device; the devices react like firmware to a new config version
 *    and to the rotate-certificate command sent meanwhile.
 *  - silent 20 %, config-fail 10 %, bad-payload 10 %: the silent ones quarantined
 *    for `state`; of the config failures, those that fail updates are rolled back
 *    after the simulator's configuration update (config.rolledback, last known good
 *    = their first content) and active, those that never apply are quarantined for
 *    `config` (the audit says why nothing was rolled back: no version was ever
 *    applied); the bad payloads reported and counted and those devices active.
 *  - the CLI: `simulate --devices 200 --faults disconnect-storm=1` against
 *    `aedes-jitp start` in a child process: every device active, and without a
 *    TTY no control character in its output.
 */
import t, { type Test } from 'tap'
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { AdminTarget } from '../../broker/cli/admin-client.js'
import { runSimulation, type SimulationSummary } from '../../broker/simulate/run.js'
import { STEPS } from '../../broker/simulate/stats.js'
import { adminRequest } from '../helpers/admin.js'
import { credentials, devPki, STORES, startBroker, type Pki, type TestBroker } from '../helpers/broker.js'
import { cli, startChildBroker } from '../helpers/cli.js'
import { freePort } from '../helpers/redis-server.js'

/** short, yet long enough for a healthy device's first minutes on a loaded machine (npm test runs files in parallel) */
const WINDOW_SECONDS = 5

/** the project's templates, `sensor` with a short health window */
function templatesDir (): string {
  const dir = mkdtempSync(join(tmpdir(), 'jitp-sim-templates-'))
  cpSync('templates', dir, { recursive: true })
  const file = join(dir, 'sensor.json')
  const sensor = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>
  writeFileSync(file, JSON.stringify({ ...sensor, healthCheck: { withinSeconds: WINDOW_SECONDS } }))
  process.once('exit', () => rmSync(dir, { recursive: true, force: true }))
  return dir
}

function adminOf (pki: Pki, port: number): AdminTarget {
  return { url: new URL(`https://127.0.0.1:${port}`), cert: pki.read('admin-chain.pem'), key: pki.read('admin.key'), ca: pki.read('root-ca.pem') }
}

/** what the registry says of each device, asked independently of the simulator */
async function registryStatuses (tb: TestBroker, ids: string[]): Promise<Map<string, string>> {
  const out = new Map<string, string>()
  for (let i = 0; i < ids.length; i += 10) {
    await Promise.all(ids.slice(i, i + 10).map(async (id) => {
      const r = await adminRequest(tb.adminPort!, tb.pki, 'GET', `/v1/devices/${id}`)
      out.set(id, r.status === 200 ? String(r.body.status) : `HTTP ${r.status}`)
    }))
  }
  return out
}

/** the summary's view of every device is the registry's */
async function agreesWithRegistry (t: Test, tb: TestBroker, s: SimulationSummary): Promise<void> {
  const ids = s.perDevice.map((d) => d.deviceId!)
  const registry = await registryStatuses(tb, ids)
  const mismatches = s.perDevice.filter((d) => registry.get(d.deviceId!) !== d.status).map((d) => `${d.deviceId}: summary ${d.status}, registry ${registry.get(d.deviceId!)}`)
  t.same(mismatches, [], 'summary and registry agree device by device')
  const count = (status: string): number => [...registry.values()].filter((v) => v === status).length
  t.equal(s.active, count('active'), 'active counted as the registry has it')
  t.equal(s.quarantined, count('quarantined'), 'quarantined counted as the registry has it')
}

// 35-58 s here, up to 58 s with three busy loops beside the suite: tap's 120 s per file
// (.taprc) is too close for a slower CI machine; the run bounds itself (boundsHit)
t.setTimeout(5 * 60_000)

t.test('simulate against a broker, both stores', async (t) => {
  const pki = await devPki()
  const templates = templatesDir()
  const claim = credentials(pki, 'claim')
  for (const store of STORES) {
    await t.test(store, async (t) => {
      const tb = await startBroker({ store, pki, overrides: { TEMPLATES_DIR: templates, CONFIG_ACK_TIMEOUT_SECONDS: 2 } })
      t.teardown(() => tb.close())
      const admin = adminOf(pki, tb.adminPort!)
      const base = { claim, ca: pki.read('root-ca.pem'), mqttUrl: `mqtts://127.0.0.1:${tb.port}`, admin, concurrency: 8 }

      await t.test('50 devices, no faults: all active; new config versions and rotation handled as firmware would', async (t) => {
        const runId = `OK${store === 'memory' ? 'M' : 'R'}${Date.now().toString(36).toUpperCase()}`
        const [configured, rotated] = [`sensor-${runId}-0000`, `sensor-${runId}-0001`]
        const operator: Array<Promise<{ status: number }>> = []
        const s = await runSimulation({
          ...base,
          devices: 50,
          telemetryRate: 2,
          durationSeconds: 2,
          runId,
          onPhase (phase) {
            if (phase !== 'health') return
            // an operator acts while the fleet runs: a new configuration for one device, a rotation for another
            operator.push(adminRequest(tb.adminPort!, pki, 'PUT', `/v1/devices/${configured}/config`, { body: { config: { telemetryIntervalSeconds: 30 } } }))
            operator.push(adminRequest(tb.adminPort!, pki, 'POST', `/v1/devices/${rotated}/rotate`))
          }
        })
        t.same((await Promise.all(operator)).map((r) => r.status), [200, 200], 'the operator\'s requests were taken during the run')
        t.equal(s.devices, 50)
        t.equal(s.provisioned, 50, 'every device provisioned')
        t.equal(s.failed, 0, `no device failed: ${JSON.stringify(s.errors.slice(0, 3))}`)
        t.equal(s.active, 50, 'every device active')
        t.equal(s.quarantined, 0)
        t.equal(s.undecided, 0)
        t.same(s.boundsHit, [], 'the run ended by itself, within every bound')
        t.equal(s.messages.rejected, 0, 'nothing rejected')
        t.equal(s.messages.acknowledged, s.messages.sent, 'every message acknowledged')
        t.ok(s.messages.telemetry > 0, `telemetry flowed (${s.messages.telemetry})`)
        for (const step of STEPS) t.equal(s.latencyMs[step]?.count, 50, `${step}: 50 samples`)
        await agreesWithRegistry(t, tb, s)
        const activated = new Set(tb.events('device.activated').map((l) => l.deviceId))
        t.ok(s.perDevice.every((d) => activated.has(d.deviceId)), 'device.activated audited for each')

        const c = s.perDevice.find((d) => d.deviceId === configured)!
        t.same(c.configVersions, [1, 2], 'the new version reached the device')
        const cfg = await adminRequest(tb.adminPort!, pki, 'GET', `/v1/devices/${configured}/config`)
        t.match(cfg.body, { version: 2, lastKnownGood: 2, status: 'current' }, 'and its ack made it the last known good')
        const r = s.perDevice.find((d) => d.deviceId === rotated)!
        t.same(r.rotations, { requested: 1, completed: 1, failed: 0 }, 'the rotate-certificate command: new certificate, reconnected with it')
        const issued = tb.events('certificate.rotated').find((l) => l.deviceId === rotated)
        const revoked = tb.events('certificate.revoked').find((l) => l.deviceId === rotated && /rotated/.test(String(l.reason)))
        t.ok(issued && revoked, 'certificate.rotated, then the old certificate revoked at first use of the new one')
        const certs = (await adminRequest(tb.adminPort!, pki, 'GET', `/v1/devices/${rotated}`)).body.certificates as Array<{ certificateId: string, status: string }>
        t.equal(certs.find((c) => c.certificateId === issued?.certificateId)?.status, 'active', 'the registry: the new certificate active')
        t.equal(certs.find((c) => c.certificateId === revoked?.certificateId)?.status, 'revoked', 'the old one revoked')
      })

      await t.test('silent 20 %, config-fail 10 %, bad-payload 10 %: the broker catches each as the contract says', async (t) => {
        const runId = `FL${store === 'memory' ? 'M' : 'R'}${Date.now().toString(36).toUpperCase()}`
        const s = await runSimulation({
          ...base,
          devices: 50,
          telemetryRate: 2,
          durationSeconds: 1,
          runId,
          faults: { silent: 0.2, 'config-fail': 0.1, 'bad-payload': 0.1 }
        })
        t.equal(s.provisioned, 50)
        t.equal(s.failed, 0, `no device failed: ${JSON.stringify(s.errors.slice(0, 3))}`)
        t.same(s.boundsHit, [])
        const withFault = (kind: string): SimulationSummary['perDevice'] => s.perDevice.filter((d) => d.faults.includes(kind as never))
        const silent = withFault('silent')
        const configFail = withFault('config-fail')
        const bad = withFault('bad-payload')
        const clean = s.perDevice.filter((d) => d.faults.length === 0)
        t.same([silent.length, configFail.length, bad.length, clean.length], [10, 5, 5, 30], 'the rates became device counts, on different devices')

        t.ok(silent.every((d) => d.status === 'quarantined' && d.quarantineCheck === 'state'), `silent: quarantined for state (${JSON.stringify(silent.map((d) => [d.status, d.quarantineCheck]))})`)
        const failsUpdates = configFail.filter((d) => d.configFail === 'fails-updates')
        const neverApplies = configFail.filter((d) => d.configFail === 'never-applies')
        t.same([failsUpdates.length, neverApplies.length], [3, 2], 'config-fail devices alternate: fails updates, never applies, ...')
        t.same(configFail.map((d) => d.configFail), ['fails-updates', 'never-applies', 'fails-updates', 'never-applies', 'fails-updates'], 'in device order')

        // the simulator's update reached every device that applied its first version
        const u = s.configUpdate!
        t.ok(u, 'a configuration update was pushed (on by default with config-fail)')
        t.same({ sent: u.sent, applied: u.applied, failed: u.failed, failedThenRolledBack: u.failedThenRolledBack, unsettled: u.unsettled, refused: u.refused, errors: u.errors },
          { sent: 48, applied: 45, failed: 3, failedThenRolledBack: 3, unsettled: 0, refused: null, errors: [] }, 'update: 48 sent (not to the 2 that never applied), 45 applied, 3 failed and rolled back')
        const rolledBackLines = tb.events('config.rolledback').filter((l) => String(l.deviceId).startsWith(`sensor-${runId}-`))
        const rolledBackIds = [...new Set(rolledBackLines.map((l) => String(l.deviceId)))].sort()
        t.same(rolledBackIds, failsUpdates.map((d) => d.deviceId).sort(), 'config.rolledback audited for exactly the devices that fail updates')
        t.equal(s.rolledBack, rolledBackIds.length, `rolledBack counts the devices the audit rolled back (${rolledBackIds.length})`)
        for (const d of failsUpdates) {
          const update = d.configUpdateVersion!
          t.equal(update, 2, `${d.deviceId}: the update made version 2`)
          t.same({ status: d.status, versions: d.configVersions, failed: d.configFailed, applied: d.configApplied, rolledBack: d.rolledBack },
            { status: 'active', versions: [1, 2, 3], failed: [2], applied: 3, rolledBack: 1 }, `${d.deviceId}: applied 1, failed 2, applied the rollback 3, active`)
          t.match(rolledBackLines.find((l) => l.deviceId === d.deviceId), { version: 3, fromVersion: 1, reason: /device reported failed/ }, `${d.deviceId}: rolled back to the content of version 1 as version 3`)
          const cfg = (await adminRequest(tb.adminPort!, pki, 'GET', `/v1/devices/${d.deviceId}/config`)).body
          const history = (await adminRequest(tb.adminPort!, pki, 'GET', `/v1/devices/${d.deviceId}/config/history`)).body.items as Array<{ version: number, config: unknown }>
          const first = history.find((v) => v.version === 1)!
          t.match(cfg, { version: 3, lastKnownGood: 3, status: 'current' }, `${d.deviceId}: the registry's last known good is the rollback`)
          t.same(cfg.config, first.config, `${d.deviceId}: whose content is version 1's`)
          t.notSame(history.find((v) => v.version === 2)?.config, first.config, `${d.deviceId}: the failed version 2 had another content`)
        }
        t.ok(neverApplies.every((d) => d.status === 'quarantined' && d.quarantineCheck === 'config'), `never applies: quarantined for config (${JSON.stringify(neverApplies.map((d) => [d.status, d.quarantineCheck]))})`)
        for (const d of neverApplies) {
          // the first version failed: there is no last known good to go back to, and the broker says so
          const said = tb.events('config.acknowledged').find((l) => l.deviceId === d.deviceId)
          t.match(said, { version: 1, reason: /device reported failed.*not rolled back: no version was ever applied/, errorCode: 'NoLastKnownGood' }, `${d.deviceId}: failure audited, rollback refused with its reason`)
          t.same({ update: d.configUpdateVersion, rolledBack: d.rolledBack, applied: d.configApplied }, { update: null, rolledBack: 0, applied: 0 }, `${d.deviceId}: no update, nothing rolled back`)
        }
        const healthy = s.perDevice.filter((d) => d.configFail === null && d.configUpdateVersion !== null)
        t.ok(healthy.length === 45 && healthy.every((d) => d.configApplied === d.configUpdateVersion && d.configFailed.length === 0), 'the other devices applied the update')
        const modes = s.faults['config-fail']!.modes!
        t.match(modes['fails-updates'], { devices: 3, failedAcks: 3, rolledBack: 3, outcome: { active: 3 } }, 'the fault report: fails updates → rolled back, active')
        t.match(modes['never-applies'], { devices: 2, failedAcks: 2, rolledBack: 0, outcome: { quarantined: 2 }, quarantinedByReason: { config: 2 } }, 'never applies → quarantined for config')
        t.ok(bad.every((d) => d.status === 'active'), 'bad payloads: those devices still activate')
        t.ok(bad.every((d) => d.messages.badPayloads >= 1 && d.messages.rejected >= d.messages.badPayloads), 'every bad payload was reported on devices/<id>/errors')
        const rejectedLines = tb.events('payload.rejected').filter((l) => bad.some((d) => d.deviceId === l.deviceId)).length
        t.equal(rejectedLines, s.faults['bad-payload']!.injected, `each bad payload audited once (${rejectedLines})`)
        t.equal(s.faults['bad-payload']!.audit['payload.rejected SchemaViolation']! + s.faults['bad-payload']!.audit['payload.rejected InvalidJson']!, rejectedLines, 'and the summary says so')
        t.ok(clean.every((d) => d.status === 'active'), 'the devices without a fault are active')
        t.same(s.quarantinedByReason, { state: 10, config: 2 }, 'quarantined by reason')
        t.equal(s.faults.silent!.quarantinedByReason.state, 10)
        t.equal(s.faults['config-fail']!.audit['device.quarantined check=config'], 2, 'the fault report quotes the audit')
        t.equal(s.faults['config-fail']!.audit['config.rolledback'], 3, 'and its rollbacks')
        await agreesWithRegistry(t, tb, s)
      })
    })
  }
})

t.test('aedes-jitp simulate --devices 200 --faults disconnect-storm=1 against `aedes-jitp start`', async (t) => {
  const pki = await devPki()
  const [mqttsPort, httpPort, adminPort] = [await freePort(), await freePort(), await freePort()]
  const env = {
    CERTS_DIR: pki.dir, MQTTS_PORT: String(mqttsPort), HTTP_PORT: String(httpPort), ADMIN_PORT: String(adminPort), HOST: '127.0.0.1',
    TEMPLATES_DIR: templatesDir(), REDIS_URL: '', AUDIT_LOG: 'stdout', LOG_LEVEL: 'warn'
  }
  const broker = await startChildBroker(env, httpPort)
  t.teardown(() => { if (broker.exitCode === null) broker.kill('SIGKILL') })
  const started = Date.now()
  // spawned with pipes: not a TTY
  const run = await cli(['simulate', '--devices', '200', '--concurrency', '16', '--faults', 'disconnect-storm=1', '--duration', '1',
    '--mqtt-url', `mqtts://127.0.0.1:${mqttsPort}`], { CERTS_DIR: pki.dir, ADMIN_PORT: String(adminPort) })
  t.comment(`200 devices with a disconnect storm: ${((Date.now() - started) / 1000).toFixed(1)} s`)
  t.equal(run.code, 0, `exit 0${run.code === 0 ? '' : `: ${run.stderr.slice(-2000)}`}`)
  t.match(run.stdout, /^provisioned\s+200 of 200,/m, 'summary: all provisioned')
  t.match(run.stdout, /^active\s+200$/m, 'summary: all active')
  t.match(run.stdout, /^storm\s+200 connections dropped at once, 200 back/m, 'summary: the storm and the recovery')
  t.match(run.stdout, /^claim connect \(TLS \+ CONNACK\)\s+200\s/m, 'summary: latency of each step')
  t.match(run.stderr, /^simulate [\d.]+s provisioning: /m, 'plain progress lines on stderr')
  for (const [name, text] of [['stdout', run.stdout], ['stderr', run.stderr]] as const) {
    const control = [...text].map((ch) => ch.charCodeAt(0)).filter((code) => code !== 10 && (code < 0x20 || (code >= 0x7f && code <= 0x9f)))
    t.same(control, [], `no control characters on ${name} without a TTY`)
  }
  // the registry, asked apart from the simulator
  const list = await adminRequest(adminPort, pki, 'GET', '/v1/devices?template=sensor&limit=1000')
  const ours = (list.body.items as Array<{ deviceId: string, status: string }>).filter((d) => d.deviceId.startsWith('sensor-SIM'))
  t.equal(ours.length, 200, 'the registry has the 200 devices')
  t.ok(ours.every((d) => d.status === 'active'), 'every one active in the registry')
})
