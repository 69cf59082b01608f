/**
 * WORKERS=2 (CONTRACT §1, broker/cluster.ts): the real `aedes-jitp start` as a
 * primary with two broker workers sharing one MQTTS port, one HTTP port and one
 * real redis-server. Devices spread over both workers and a service on one of
 * them gets everyone's telemetry; /metrics merges both workers' counters; a
 * worker killed with SIGKILL is audited, restarted, and its devices reconnect
 * (to the other worker) and keep working; SIGTERM stops them all with exit 0.
 * And WORKERS=2 without REDIS_URL refuses to start with one line.
 * Needs `npm run build` (npm test's pretest does it).
 */
import t, { type Test } from 'tap'
import { spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { MqttClient } from 'mqtt'
import { createRegistry } from '../../broker/store/create-registry.js'
import { collect, connect, credentials, devPki, endClient, registerDeviceIn, subscribe, waitFor, type ClientCredentials } from '../helpers/broker.js'
import { CLI, cli } from '../helpers/cli.js'
import { freePort, startRedisServer } from '../helpers/redis-server.js'

type Line = Record<string, unknown>

/** the JSON lines written so far (a line being written is skipped) */
function auditLines (file: string): Line[] {
  let text = ''
  try {
    text = readFileSync(file, 'utf8')
  } catch {
    return []
  }
  return text.split('\n').flatMap((l) => {
    try {
      return l.startsWith('{') ? [JSON.parse(l) as Line] : []
    } catch {
      return []
    }
  })
}

function alive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

/** the value of one sample line of Prometheus text, e.g. `jitp_workers{state="live"}` */
function sample (text: string, series: string): number | null {
  const line = text.split('\n').find((l) => l.startsWith(series + ' '))
  return line === undefined ? null : Number(line.slice(series.length + 1))
}

const telemetry = (seq: number): string => JSON.stringify({ ts: Date.now(), seq, values: { temperature: 20 + seq } })

t.test('WORKERS=2 without REDIS_URL: refused with one line', async (t) => {
  const r = await cli(['start'], { WORKERS: '2', REDIS_URL: '', MQTTS_PORT: '0', HTTP_PORT: '0', ADMIN_PORT: '0', HOST: '127.0.0.1', CERTS_DIR: (await devPki()).dir, GENERATE_DEV_CERTS: 'false', LOG_LEVEL: 'silent', AUDIT_LOG: '/dev/null' })
  t.not(r.code, 0, 'non-zero exit')
  t.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr.trim()}`)
  t.match(r.stderr, /WORKERS.*REDIS_URL/)
})

t.test('two workers, one Redis: spread, merged metrics, a killed worker restarted, graceful stop', async (t) => {
  const pki = await devPki()
  const redis = await startRedisServer()
  t.teardown(() => redis.stop())
  const registry = createRegistry({ redisUrl: redis.url })
  const ids = ['w-dev-1', 'w-dev-2', 'w-dev-3', 'w-dev-4']
  const creds = new Map<string, ClientCredentials>()
  for (const id of ids) creds.set(id, await registerDeviceIn(registry, pki, id))
  await registry.close()

  const dir = mkdtempSync(join(tmpdir(), 'jitp-workers-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const audit = join(dir, 'audit.log')
  const [port, httpPort, adminPort] = [await freePort(), await freePort(), await freePort()]
  const primary = spawn(process.execPath, [CLI, 'start'], {
    env: {
      ...process.env, WORKERS: '2', REDIS_URL: redis.url, CERTS_DIR: pki.dir, GENERATE_DEV_CERTS: 'false', HOST: '127.0.0.1',
      MQTTS_PORT: String(port), HTTP_PORT: String(httpPort), ADMIN_PORT: String(adminPort), AUDIT_LOG: audit, LOG_LEVEL: 'warn'
    },
    stdio: ['ignore', 'ignore', 'pipe']
  })
  let stderr = ''
  primary.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
  const exited = new Promise<number | null>((resolve) => primary.once('exit', (code) => resolve(code)))
  t.teardown(() => { if (primary.exitCode === null) primary.kill('SIGKILL') })

  const started = (): Line[] => auditLines(audit).filter((l) => l.event === 'worker.started')
  await waitFor(() => started().length >= 2 || primary.exitCode !== null, 30_000, 'two worker.started lines')
  t.equal(primary.exitCode, null, 'the primary runs', { stderr })
  const pidOf = (slot: number): number => started().filter((l) => String(l.reason).startsWith(`worker ${slot} of 2`)).map((l) => l.pid as number).at(-1)!
  const firstPids = [pidOf(1), pidOf(2)]
  t.ok(firstPids.every((pid) => Number.isInteger(pid) && alive(pid)), `worker pids ${firstPids.join(', ')} in the primary's audit`)
  t.not(firstPids[0], firstPids[1])

  const tb = { port, pki }
  const clients: MqttClient[] = []
  t.teardown(() => { for (const c of clients) c.end(true) })
  // mqtt.js reconnects (and resubscribes) by itself, as devices do
  const service = await connect(tb, credentials(pki, 'service'), { clientId: 'w-service', reconnectPeriod: 200 })
  clients.push(service)
  await subscribe(service, 'devices/+/telemetry')
  const seen = collect(service)
  const devices = new Map<string, { client: MqttClient, connects: number }>()
  for (const id of ids) {
    const client = await connect(tb, creds.get(id)!, { clientId: id, reconnectPeriod: 200 })
    const d = { client, connects: 0 }
    client.on('connect', () => { d.connects++ })
    devices.set(id, d)
    clients.push(client)
  }

  /** which worker (slot) accepted each client's last connect, from the workers' own audit files */
  const acceptedBy = (): Map<string, number> => {
    const where = new Map<string, number>()
    for (const slot of [1, 2]) {
      for (const l of auditLines(`${audit}.w${slot}`)) if (l.event === 'connect.accepted') where.set(String(l.clientId), slot)
    }
    return where
  }
  await waitFor(() => acceptedBy().size === 5, 10_000, 'connect.accepted of all five clients in the workers\' audit files')
  const where = acceptedBy()
  const serviceSlot = where.get('w-service')!
  const perSlot = [1, 2].map((slot) => ids.filter((id) => where.get(id) === slot))
  t.comment(`service on worker ${serviceSlot}; devices on worker 1: ${perSlot[0]!.join(', ')}; worker 2: ${perSlot[1]!.join(', ')}`)
  t.ok(perSlot[0]!.length > 0 && perSlot[1]!.length > 0, 'the devices are spread over both workers')

  /** publishes seq from every device until the service has it from each (bounded): a resubscription may still be on its way */
  async function allDeliver (t: Test, seq: number, what: string): Promise<void> {
    const got = (): Set<string> => new Set(seen.filter((m) => JSON.parse(m.payload).seq === seq).map((m) => m.topic.split('/')[1]!))
    const deadline = Date.now() + 10_000
    while (got().size < ids.length && Date.now() < deadline) {
      for (const id of ids) if (!got().has(id)) devices.get(id)!.client.publish(`devices/${id}/telemetry`, telemetry(seq), { qos: 1 })
      await waitFor(() => got().size === ids.length, 500, 'deliveries').catch(() => undefined)
    }
    t.same([...got()].sort(), ids, what)
  }
  await allDeliver(t, 1, `the service on worker ${serviceSlot} gets telemetry from devices on both workers`)

  await t.test('/metrics merges both workers', async (t) => {
    const text = await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text()
    t.equal(sample(text, 'jitp_workers{state="live"}'), 2)
    t.equal(sample(text, 'jitp_workers{state="scraped"}'), 2, 'both workers answered')
    const deviceConnects = sample(text, 'jitp_connects_accepted_total{role="device"}')
    t.equal(deviceConnects, 4, `device connects summed over the workers (${perSlot[0]!.length} + ${perSlot[1]!.length})`)
    t.equal(sample(text, 'jitp_store_up'), 1, 'store_up is the minimum, not a sum')
  })

  await t.test('a worker killed with SIGKILL: audited, restarted, its devices reconnect and keep working', async (t) => {
    // the worker with the most devices (ties: the one without the service)
    const victim = perSlot[0]!.length !== perSlot[1]!.length ? (perSlot[0]!.length > perSlot[1]!.length ? 1 : 2) : (serviceSlot === 1 ? 2 : 1)
    const victimPid = pidOf(victim)
    const moved = perSlot[victim - 1]!
    const before = new Map(moved.map((id) => [id, devices.get(id)!.connects]))
    process.kill(victimPid, 'SIGKILL')
    await waitFor(() => moved.every((id) => devices.get(id)!.connects > before.get(id)!), 15_000, 'the killed worker\'s devices to reconnect')
    t.pass(`${moved.join(', ')} reconnected`)
    await allDeliver(t, 2, 'every device\'s telemetry still reaches the service')

    await waitFor(() => auditLines(audit).some((l) => l.event === 'worker.exited' && l.pid === victimPid), 5000, 'worker.exited')
    const exit = auditLines(audit).find((l) => l.event === 'worker.exited' && l.pid === victimPid)!
    t.match(exit, { level: 'warn', reason: `worker ${victim}: signal SIGKILL` }, 'worker.exited names the pid and how it died')
    await waitFor(() => pidOf(victim) !== victimPid, 20_000, 'the worker to be started again')
    const newPid = pidOf(victim)
    t.ok(alive(newPid) && !alive(victimPid), `worker ${victim} restarted: pid ${victimPid} → ${newPid}`)
    const text = await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text()
    t.equal(sample(text, 'jitp_worker_restarts_total'), 1)
    t.equal(sample(text, 'jitp_workers{state="scraped"}'), 2, 'the new worker answers the metrics collection')
  })

  for (const c of clients) await endClient(c)
  clients.length = 0
  const pids = started().map((l) => l.pid as number)
  primary.kill('SIGTERM')
  const code = await Promise.race([exited, new Promise<'hung'>((resolve) => setTimeout(() => resolve('hung'), 20_000))])
  t.equal(code, 0, 'SIGTERM: the primary exits 0')
  t.same(pids.filter(alive), [], 'no worker left running')
  const lines = auditLines(audit)
  t.equal(lines.filter((l) => l.event === 'worker.exited' && l.level === 'info').length, 2, 'both workers\' exits audited as a stop, not a failure')
  for (const slot of [1, 2]) {
    t.ok(auditLines(`${audit}.w${slot}`).some((l) => l.event === 'broker.stopped'), `worker ${slot} closed like a single broker (broker.stopped in its own file)`)
  }
})
