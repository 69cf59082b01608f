/**
 * Health verification on the wire (CONTRACT §3.7), both stores, real MQTT.js
 * devices over mutual TLS provisioned through the claim flow with a 3 s window
 * (the test's TEMPLATES_DIR):
 * - a device that connects with its own certificate, acks its config `applied` and
 *   sends one valid state becomes `active` (`device.activated`), a bad payload on the
 *   way notwithstanding, and keeps its session (same rights);
 * - a silent device (no state) and one whose config never applies are `quarantined`
 *   with `check` naming what they missed, and their sessions are closed;
 * - a quarantined device's telemetry reaches no service and a command to it is not
 *   delivered; `reinstate` makes it `provisioned` again with a new window, and a
 *   healthy report then makes it `active`;
 * - Redis: progress and windows survive a broker restart inside the window; two
 *   brokers on one Redis audit each transition once.
 */
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import type { MqttClient } from 'mqtt'
import t, { type Test } from 'tap'
import { adminRequest } from '../helpers/admin.js'
import {
  STORES, collect, connect, credentials, endClient, publish, sleep, startBroker, subscribe, waitFor, type Pki, type StoreKind, type TestBroker
} from '../helpers/broker.js'
import { cli } from '../helpers/cli.js'
import { provision, type Provisioned } from '../helpers/provisioning.js'
import { startRedisServer } from '../helpers/redis-server.js'

const WINDOW_S = 5
/** the window of the devices that live through a broker restart (which takes a few seconds on a loaded machine) */
const RESTART_WINDOW_S = 7
/** the health plugin's sweep interval (plugins/health.ts) */
const SWEEP_MS = 1000

/** the repository's templates, with the health window of `sensor` cut to WINDOW_S, and `restart` (RESTART_WINDOW_S) */
const TEMPLATES_DIR = mkdtempSync(join(tmpdir(), 'jitp-health-templates-'))
cpSync(resolve('templates'), TEMPLATES_DIR, { recursive: true })
const sensor = JSON.parse(readFileSync(join(TEMPLATES_DIR, 'sensor.json'), 'utf8')) as Record<string, unknown>
writeFileSync(join(TEMPLATES_DIR, 'sensor.json'), JSON.stringify({ ...sensor, healthCheck: { withinSeconds: WINDOW_S } }))
writeFileSync(join(TEMPLATES_DIR, 'restart.json'), JSON.stringify({ ...sensor, deviceId: 'restart-${serialNumber}', healthCheck: { withinSeconds: RESTART_WINDOW_S } }))
// telemetry on any stream, no config ack asked for
writeFileSync(join(TEMPLATES_DIR, 'streams.json'), JSON.stringify({ ...sensor, deviceId: 'streams-${serialNumber}', healthCheck: { withinSeconds: WINDOW_S, requires: ['telemetry'], configAck: false } }))
process.once('exit', () => rmSync(TEMPLATES_DIR, { recursive: true, force: true }))

type Target = { port: number, pki: Pki }

/** firmware as a device runs it: acks every config version as told, reports state when asked */
class Firmware {
  client: MqttClient | null = null
  received: Array<{ topic: string, payload: string }> = []
  constructor (readonly p: Provisioned, readonly answer: 'applied' | 'failed') {}
  get id (): string { return this.p.deviceId }

  async connect (tb: Target): Promise<MqttClient> {
    const client = await connect(tb, this.p.creds, { clientId: this.id })
    this.client = client
    this.received = collect(client)
    client.on('message', (topic, payload) => {
      if (topic !== `devices/${this.id}/config` || payload.length === 0) return
      const { version } = JSON.parse(payload.toString()) as { version: number }
      const ack = this.answer === 'applied' ? { version, status: 'applied' } : { version, status: 'failed', error: 'cannot apply' }
      publish(client, `devices/${this.id}/config/ack`, JSON.stringify(ack)).catch(() => {})
    })
    await subscribe(client, [`devices/${this.id}/config`, `devices/${this.id}/errors`])
    return client
  }

  state (): Promise<void> {
    return publish(this.client!, `devices/${this.id}/state`, JSON.stringify({ ts: Date.now(), status: 'ok' }))
  }

  async close (): Promise<void> {
    if (this.client) await endClient(this.client)
    this.client = null
  }
}

function linesOf (brokers: readonly TestBroker[], event: string, deviceId: string): Array<Record<string, unknown>> {
  return brokers.flatMap((b) => b.events(event)).filter((l) => l.deviceId === deviceId)
}

async function audited (brokers: readonly TestBroker[], event: string, deviceId: string, ms = 10_000): Promise<Record<string, unknown>> {
  try {
    await waitFor(() => linesOf(brokers, event, deviceId).length > 0, ms, `${event} of ${deviceId}`)
  } catch (err) {
    // what the brokers said of the device instead
    const said = brokers.flatMap((b) => b.audit.lines).filter((l) => l.deviceId === deviceId).map((l) => `${String(l.event)} ${String(l.reason ?? l.errorCode ?? '')}`)
    throw new Error(`${(err as Error).message}; audited for it: ${said.join(' | ')}`)
  }
  return linesOf(brokers, event, deviceId)[0]!
}

async function quarantineDenials (tb: TestBroker): Promise<number> {
  const { values } = await tb.handle.metrics.denials.get()
  return values.find((v) => v.labels.action === 'forward' && v.labels.rule === 'quarantine')?.value ?? 0
}

async function statusOf (tb: TestBroker, deviceId: string): Promise<string | undefined> {
  return (await tb.handle.registry.getDevice(deviceId))?.status
}

/**
 * The operator's side: `aedes-jitp devices ...` as an operator runs it (dist/, built by
 * npm test) on the memory store; its admin API calls straight on Redis (the CLI is a
 * client of the same routes, and each run costs a Node start).
 */
async function operator (tb: TestBroker, store: StoreKind, args: string[], method: string, path: string): Promise<unknown> {
  if (store === 'redis') return (await adminRequest(tb.adminPort!, tb.pki, method, path)).body
  const r = await cli(['devices', ...args, '--json'], { CERTS_DIR: tb.pki.dir, ADMIN_PORT: String(tb.adminPort) })
  if (r.code !== 0) throw new Error(`devices ${args.join(' ')} failed (${String(r.code)}): ${r.stderr}`)
  return JSON.parse(r.stdout)
}

async function listed (tb: TestBroker, store: StoreKind, status: string): Promise<string[]> {
  const body = await operator(tb, store, ['list', '--status', status], 'GET', `/v1/devices?status=${status}`)
  return ((store === 'redis' ? (body as { items: unknown }).items : body) as Array<{ deviceId: string }>).map((d) => d.deviceId).sort()
}

async function reinstate (tb: TestBroker, store: StoreKind, deviceId: string): Promise<string> {
  return (await operator(tb, store, ['reinstate', deviceId], 'POST', `/v1/devices/${deviceId}/reinstate`) as { status: string }).status
}

const serial = (store: StoreKind, name: string): string => `${name}-${store === 'memory' ? 'M' : 'R'}`

async function lifecycle (t: Test, tb: TestBroker, store: StoreKind): Promise<void> {
  const [healthy, silent, failing] = await Promise.all([
    provision(tb, serial(store, 'HEALTHY'), 'ec').then((p) => new Firmware(p, 'applied')),
    provision(tb, serial(store, 'SILENT'), 'ec').then((p) => new Firmware(p, 'applied')),
    provision(tb, serial(store, 'FAILING'), 'ec').then((p) => new Firmware(p, 'failed'))
  ])
  t.teardown(() => Promise.all([healthy, silent, failing].map((f) => f.close())))
  const service = await connect(tb, credentials(tb.pki, 'service'), { clientId: `health-service-${store}` })
  t.teardown(() => endClient(service))
  const seen = collect(service)
  t.same(await subscribe(service, ['devices/+/telemetry', 'devices/+/state']), [1, 1])

  t.equal(await statusOf(tb, healthy.id), 'provisioned', 'a registered device starts provisioned')
  const shown = await adminRequest(tb.adminPort!, tb.pki, 'GET', `/v1/devices/${healthy.id}`)
  t.match(shown.body, { status: 'provisioned', health: { checks: ['connect', 'config', 'state'], met: [], missing: ['connect', 'config', 'state'] } }, 'its window, in the admin API')

  await t.test('healthy: own certificate, config applied, one valid state → active, session kept', async (t) => {
    await Promise.all([healthy.connect(tb), silent.connect(tb), failing.connect(tb)])
    // a bad payload first: rejected and reported, it does not count and does not stop the device
    await publish(healthy.client!, `devices/${healthy.id}/state`, JSON.stringify({ ts: 'yesterday' }))
    await healthy.state()
    await failing.state()
    const activated = await audited([tb], 'device.activated', healthy.id)
    t.match(activated, { deviceId: healthy.id, role: 'device' })
    t.ok(linesOf([tb], 'payload.rejected', healthy.id).length === 1, 'the bad payload was rejected')
    await waitFor(() => healthy.received.some((m) => m.topic === `devices/${healthy.id}/errors`), 5000, 'the error report')
    t.equal(await statusOf(tb, healthy.id), 'active')
    const detail = await adminRequest(tb.adminPort!, tb.pki, 'GET', `/v1/devices/${healthy.id}`)
    t.match(detail.body, { deviceId: healthy.id, status: 'active', health: null }, 'GET /v1/devices/{id}: active, no window')

    // provisioned → active changes no right: the live session stays and carries on
    await publish(healthy.client!, `devices/${healthy.id}/telemetry`, JSON.stringify({ ts: 1, seq: 1, values: { t: 20 } }))
    await waitFor(() => seen.some((m) => m.topic === `devices/${healthy.id}/telemetry`), 5000, 'its telemetry at the service')
    t.ok(healthy.client!.connected, 'still connected')
    t.same(linesOf([tb], 'disconnect', healthy.id), [], 'never disconnected')
  })

  await t.test('silent → quarantined (state); config never applied → quarantined (config); their sessions closed', async (t) => {
    const s = await audited([tb], 'device.quarantined', silent.id, WINDOW_S * 1000 + 5000)
    const f = await audited([tb], 'device.quarantined', failing.id, WINDOW_S * 1000 + 5000)
    t.equal(s.check, 'state', 'the silent device missed its state')
    t.equal(f.check, 'config', 'the failing device missed its config (its state came)')
    t.equal(await statusOf(tb, silent.id), 'quarantined')
    t.equal(await statusOf(tb, failing.id), 'quarantined')
    for (const f of [silent, failing]) {
      const closed = await audited([tb], 'disconnect', f.id)
      t.equal(closed.errorCode, 'SessionRevalidated', `${f.id}: its session is closed, to reconnect under the fence`)
    }
    t.same(await listed(tb, store, 'quarantined'), [failing.id, silent.id].sort(), 'devices list --status quarantined')
    t.same(linesOf([tb], 'device.activated', silent.id), [], 'never activated')
    t.equal(linesOf([tb], 'device.quarantined', healthy.id).length, 0, 'the healthy one is left alone')
    // counted for the operators' dashboards: one activation, one quarantine per missed check
    const counted = (await tb.handle.metrics.healthTransitions.get()).values
    t.equal(counted.find((v) => v.labels.outcome === 'activated')?.value, 1, 'jitp_health_transitions_total{outcome="activated"}')
    t.equal(counted.find((v) => v.labels.outcome === 'quarantined' && v.labels.check === 'state')?.value, 1, 'quarantined for state, counted')
    t.equal(counted.find((v) => v.labels.outcome === 'quarantined' && v.labels.check === 'config')?.value, 1, 'quarantined for config, counted')
  })

  await t.test('quarantined: telemetry reaches no service, commands are not delivered; reinstate → provisioned → active', async (t) => {
    await silent.close()
    const client = await silent.connect(tb)
    t.same(await subscribe(client, `devices/${silent.id}/#`), [1], 'its namespace (filtered at delivery)')
    await publish(client, `devices/${silent.id}/telemetry`, JSON.stringify({ ts: 2, seq: 1, values: { t: 21 } }))
    const before = await quarantineDenials(tb)
    await publish(service, `devices/${silent.id}/commands/reboot`, JSON.stringify({ name: 'reboot' }))
    const start = Date.now()
    while (await quarantineDenials(tb) <= before) {
      if (Date.now() - start > 5000) throw new Error('the command was never refused at delivery')
      await sleep(10)
    }
    // state goes through, and after the telemetry on the same connection: once it is at the service, the telemetry was decided
    await silent.state()
    await waitFor(() => seen.some((m) => m.topic === `devices/${silent.id}/state`), 5000, 'the quarantined device\'s state')
    t.same(seen.filter((m) => m.topic === `devices/${silent.id}/telemetry`), [], 'its telemetry reached no service')
    t.ok(linesOf([tb], 'publish.denied', silent.id).some((l) => l.topic === `devices/${silent.id}/telemetry` && l.reason === 'quarantine'), 'telemetry refused, audited')
    t.same(silent.received.filter((m) => m.topic.includes('/commands/')), [], 'the command was not delivered')

    const disconnectsBefore = linesOf([tb], 'disconnect', silent.id).length
    t.equal(await reinstate(tb, store, silent.id), 'provisioned', 'devices reinstate: provisioned again')
    const reinstated = await audited([tb], 'device.reinstated', silent.id)
    t.match(reinstated, { actor: 'admin-dev', reason: /quarantined → provisioned/ })
    await waitFor(() => linesOf([tb], 'disconnect', silent.id).length > disconnectsBefore, 5000, 'the quarantined session closed')
    t.same(await listed(tb, store, 'provisioned'), [silent.id], 'devices list --status provisioned')

    // a healthy report in its new window: its config was applied before, so its state is what was missing
    await silent.connect(tb)
    await silent.state()
    await audited([tb], 'device.activated', silent.id)
    t.equal(await statusOf(tb, silent.id), 'active', 'active after reinstatement and a healthy report')
    t.equal(await reinstate(tb, store, silent.id), 'active', 'reinstating an active device changes nothing')
    t.equal(linesOf([tb], 'device.reinstated', silent.id).length, 1, 'and audits nothing')
  })
}

t.test('a template whose health check cannot be passed stops the start, naming it', async (t) => {
  for (const [name, healthCheck, problem] of [
    ['typo', { requires: ['stat'] }, /healthCheck\.requires 'stat': no schema/],
    ['reserved', { requires: ['config'] }, /healthCheck\/requires\/0/],
    ['zero', { withinSeconds: 0 }, /healthCheck\/withinSeconds/]
  ] as const) {
    const dir = mkdtempSync(join(tmpdir(), 'jitp-health-bad-'))
    t.teardown(() => rmSync(dir, { recursive: true, force: true }))
    writeFileSync(join(dir, 'bad.json'), JSON.stringify({ ...sensor, healthCheck }))
    await t.rejects(startBroker({ store: 'memory', overrides: { TEMPLATES_DIR: dir } }), { code: 'InvalidConfig', message: problem }, name)
  }
})

for (const store of STORES) {
  t.test(`health verification (${store})`, async (t) => {
    const redis = store === 'redis' ? await startRedisServer() : undefined
    t.teardown(() => redis?.stop())
    const overrides = { TEMPLATES_DIR }
    const tb = await startBroker({ store, redis, overrides })
    t.teardown(() => tb.close())
    await t.test('lifecycle', (t) => lifecycle(t, tb, store))
    if (store !== 'redis') {
      await t.test('requires telemetry, no config ack: a message on a stream counts', async (t) => {
        const f = new Firmware(await provision(tb, 'STREAM-1', 'ec', { template: 'streams' }), 'failed')
        t.teardown(() => f.close())
        t.match((await tb.handle.registry.getHealth(f.id))?.checks, ['connect', 'telemetry'], 'its checks')
        await f.connect(tb)
        await f.state()
        await publish(f.client!, `devices/${f.id}/telemetry/engine`, JSON.stringify({ ts: 1, values: { rpm: 900 } }))
        await audited([tb], 'device.activated', f.id)
        t.equal(await statusOf(tb, f.id), 'active', 'active, though it failed its config')
      })
      return
    }

    await t.test('a broker restart inside the window; two brokers on one Redis audit each transition once', async (t) => {
      const [early, mute, never] = await Promise.all(['EARLY', 'MUTE', 'NEVER'].map((s) => provision(tb, s, 'ec', { template: 'restart' }).then((p) => new Firmware(p, 'applied'))))
      t.teardown(() => Promise.all([early, mute].map((f) => f!.close())))
      await Promise.all([early!.connect(tb), mute!.connect(tb)])
      // written as they came: the connect and the ack of each
      for (const f of [early!, mute!]) {
        const start = Date.now()
        while (((await tb.handle.registry.getHealth(f.id))?.met.length ?? 0) < 2) {
          if (Date.now() - start > 5000) throw new Error(`${f.id}: connect and config never recorded`)
          await sleep(10)
        }
      }
      await tb.close()
      await Promise.all([early!.close(), mute!.close()])

      // the broker again, and a second one on the same Redis: both sweep the windows
      const [after, other] = await Promise.all([0, 1].map(() => startBroker({ store, redis, overrides, pki: tb.pki })))
      t.teardown(() => Promise.all([after!.close(), other!.close()]))
      const both = [after!, other!]
      // registered through one broker, reporting to the other
      const [good, quiet] = await Promise.all(['TWO-GOOD', 'TWO-QUIET'].map((s) => provision(after!, s, 'ec').then((p) => new Firmware(p, 'applied'))))
      t.teardown(() => Promise.all([good!.close(), quiet!.close()]))
      await Promise.all([early!.connect(after!), good!.connect(other!), quiet!.connect(after!)])
      await Promise.all([early!.state(), good!.state()])

      await audited(both, 'device.activated', early!.id)
      t.equal(await statusOf(after!, early!.id), 'active', 'connect and config before the restart, state after: active')
      await audited(both, 'device.activated', good!.id)
      await audited(both, 'device.quarantined', quiet!.id, WINDOW_S * 1000 + 5000)
      t.equal(await after!.handle.registry.expireHealth(quiet!.id, Date.now()), null, 'a third evaluation changes nothing')
      t.equal(await statusOf(other!, quiet!.id), 'quarantined')
      const m = await audited(both, 'device.quarantined', mute!.id, RESTART_WINDOW_S * 1000 + 5000)
      t.equal(m.check, 'state', 'after the restart, what missed only its state is quarantined for its state')
      const n = await audited(both, 'device.quarantined', never!.id, RESTART_WINDOW_S * 1000 + 5000)
      t.equal(n.check, 'connect,config,state', 'a device that never came back misses everything')

      // an absence takes time: both brokers sweep once more (a sweep racing the transition has lost by then) before it is counted
      await sleep(SWEEP_MS + 200)
      for (const [event, f] of [['device.activated', early], ['device.activated', good], ['device.quarantined', mute], ['device.quarantined', never], ['device.quarantined', quiet]] as const) {
        t.equal(linesOf(both, event, f!.id).length, 1, `${f!.id}: ${event} once, cluster-wide`)
      }
    })
  })
}
