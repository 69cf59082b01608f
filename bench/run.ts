/**
 * `npm run bench`: this broker (every plugin on) against bare Aedes 1.2 (same
 * version, same persistence, same mutual-TLS listener, no hooks) and Mosquitto
 * (require_certificate), each in its own process on loopback, in memory and with
 * Redis. Prints markdown tables (docs/PERFORMANCE.md holds the latest) and
 * writes every figure to bench/results-<timestamp>.json.
 *
 *   npm run bench                       the whole run (about 12 minutes)
 *   BENCH_ONLY=jitp-memory npm run bench    one target (comma-separated keys; also nodelay, admin, rollout, overload, workers)
 *   BENCH_SCENARIOS=provisioning npm run bench   some scenarios only (idle, connects, connectLatency, qos0, qos1, paced, provisioning, storm)
 *   BENCH_HANDSHAKES=32 npm run bench   MAX_CONCURRENT_HANDSHAKES for the aedes-jitp brokers (default: the broker's)
 *   BENCH_HANDSHAKE_BUDGET=0 npm run bench   HANDSHAKE_TURN_BUDGET_MS for the aedes-jitp brokers (default: the broker's)
 *   BENCH_KEEP_WORK=1 npm run bench     keep the temporary folder (PKI, the brokers' audit logs)
 *   BENCH_CPU_PROF=1 npm run bench      also write V8 CPU profiles of the broker children to bench/profiles/
 *   BENCH_HEAP_SNAPSHOTS=/dir npm run bench   a heap snapshot of a broker child at each of its full GCs (before and after the idle
 *                                       connections); the heap row still holds, the RSS row then measures the snapshots
 *   BENCH_AB_DIST=/other/dist npm run bench   the bare-Aedes slots run aedes-jitp from another build instead (a worktree of another
 *                                       commit, its node_modules linked to this one's): the two builds side by side, round by round
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { cpus, loadavg, tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { loadConfig } from '../broker/config.js'
import { generateDevPki } from '../certs-dev/generate.js'
import { issueCertificate, loadIssuer } from '../pki/certificate.js'
import { generateKeyPair, privateKeyToPem } from '../pki/keys.js'
import { loadSchemaCatalogue } from '../plugins/schema-catalogue.js'
import { validatePayload } from '../plugins/validation.js'
import type { BenchDevice, BrokerChildOptions } from './broker-child.js'
import { benchIssuance } from './issue-certificates.js'
import { benchRetainedLookup } from './retained-lookup.js'
import { deviceRequests, type Identity } from './load-worker.js'
import { telemetryPayload } from './telemetry.js'
import { startBrokerChild, startMosquitto, startRedis, type RedisServer, type Target } from './processes.js'
import { renderReport, type BenchResults, type TargetKey } from './report.js'
import {
  bounded, connectLatency, connectRate, fanInThroughput, idleMemory, medianResult, overload, pacedLatency, provisioningRate, reconnectStorm, settle, STORM_DEVICES,
  type BenchEnv, type ScenarioResult
} from './scenarios.js'
import { benchAdminApiPages } from './admin-pages.js'
import { benchRollout } from './rollout.js'
import { provisioningSimulated } from './simulate-provisioning.js'
import { benchWorkers } from './workers.js'
import { benchPiiDetect } from './pii-detect.js'

/** the storm and WORKERS scenarios (issue 16) take about 4 minutes of it */
const TOTAL_BUDGET_MS = 15 * 60 * 1000
/** the storm scenario's 2,000 plus its 50 steady publishers; the other scenarios use the first 2,000 at most */
const DEVICE_COUNT = STORM_DEVICES + 50
/** at most this many devices are provisioned per target (the scenario also stops after 5 s) */
const PROVISIONING_DEVICES = 2000
/** connect and fan-in windows per broker and scenario, alternating between bare Aedes and this broker */
const FAN_IN_ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3)
/** retained configs (one per provisioned device) in the retained-lookup micro-benchmark */
const RETAINED_CONFIGS = 50_000
const OVERLOAD_MS = 10_000
const OVERLOAD_DISCONNECT_AFTER_MS = 3000
const projectDir = fileURLToPath(new URL('../../', import.meta.url))
const startedAt = Date.now()

function log (line: string): void {
  process.stderr.write(`[bench ${((Date.now() - startedAt) / 1000).toFixed(0).padStart(3)}s] ${line}\n`)
}

/** the whole run is bounded: past the budget, the remaining steps are skipped */
function overBudget (): boolean {
  return Date.now() - startedAt > TOTAL_BUDGET_MS - 60_000
}

// a hard stop in case something hangs beyond every per-step timeout
setTimeout(() => {
  log('time budget exceeded: exiting')
  process.exit(2)
}, TOTAL_BUDGET_MS + 60_000).unref()

function loadAverage (): string {
  return loadavg().map((l) => l.toFixed(2)).join(' ')
}

function provisioningBuilt (): boolean {
  try {
    readFileSync(join(projectDir, 'plugins', 'provisioning.ts'))
    return true
  } catch {
    return false
  }
}

async function main (): Promise<void> {
  const work = mkdtempSync(join(tmpdir(), 'jitp-bench-'))
  const certsDir = join(work, 'pki')
  const profileDir = process.env.BENCH_CPU_PROF ? join(projectDir, 'bench', 'profiles') : null
  if (profileDir) mkdirSync(profileDir, { recursive: true })
  const only = process.env.BENCH_ONLY?.split(',').map((s) => s.trim()).filter(Boolean) ?? null
  const onlyScenarios = process.env.BENCH_SCENARIOS?.split(',').map((s) => s.trim()).filter(Boolean) ?? null
  const withProvisioning = provisioningBuilt()

  log('generating the dev PKI and device certificates')
  await generateDevPki({ outDir: certsDir })
  const read = (f: string): string => readFileSync(join(certsDir, f), 'utf8')
  const deviceCaPem = read('device-ca.pem')
  const issuer = loadIssuer(deviceCaPem, read('device-ca.key'))
  const devices: Identity[] = []
  const registry: BenchDevice[] = []
  for (let i = 0; i < DEVICE_COUNT; i++) {
    const deviceId = `bench-${String(i).padStart(4, '0')}`
    const keys = generateKeyPair('ec')
    const issued = issueCertificate({ commonName: deviceId, publicKey: keys.publicKey, issuer, validityDays: 7, extKeyUsage: ['clientAuth'] })
    devices.push({ clientId: deviceId, cert: issued.pem + deviceCaPem, key: privateKeyToPem(keys.privateKey) })
    registry.push({ deviceId, certificateId: issued.certificateId, serialNumber: issued.serialNumber, notAfter: issued.notAfter.getTime() })
  }
  const devicesFile = join(work, 'devices.json')
  writeFileSync(devicesFile, JSON.stringify(registry))
  const env: BenchEnv = {
    ca: read('root-ca.pem'),
    devices,
    service: { clientId: 'bench-service', cert: read('service-chain.pem'), key: read('service.key') },
    claim: { clientId: 'bench-claim', cert: read('claim-chain.pem'), key: read('claim.key') },
    provisioningRequests: withProvisioning ? deviceRequests(PROVISIONING_DEVICES) : []
  }

  // the telemetry the devices send must pass this broker's validation, or nothing would be routed
  const catalogue = loadSchemaCatalogue(loadConfig({ env: {}, overrides: { GENERATE_DEV_CERTS: false } }).schemasDir)
  const sample = telemetryPayload(123456, Date.now() + 0.123)
  const verdict = validatePayload(catalogue, 65536, 'devices/bench-0000/telemetry', sample)
  if (verdict.verdict !== 'valid') throw new Error(`bench telemetry does not validate: ${JSON.stringify(verdict)}`)
  log(`telemetry payload: ${sample.length} bytes, valid against schemas/telemetry.json`)

  const results: BenchResults = {
    startedAt: new Date(startedAt).toISOString(),
    machine: {
      nproc: cpus().length,
      cpuModel: /model name\s*:\s*(.+)/.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? cpus()[0]?.model ?? 'unknown',
      node: process.version,
      payloadBytes: sample.length,
      loadAverageAtStart: loadAverage(),
      loadAverageAtEnd: ''
    },
    targets: {},
    issuance: null,
    retainedLookup: null,
    noDelayOff: null,
    adminPages: null,
    rollout: null,
    overload: {},
    workers: null,
    fanInRounds: {},
    provisioningBuilt: withProvisioning,
    durationSeconds: 0
  }

  log('certificate issuance micro-benchmark (bench/issue-certificates.ts)')
  results.issuance = await benchIssuance(3000)
  log('retained lookups per subscribe with a provisioned fleet (bench/retained-lookup.ts)')
  results.retainedLookup = await benchRetainedLookup(RETAINED_CONFIGS)

  const jitpOverrides = {
    // the provisioning scenario comes from one address and one claim certificate
    PROVISION_RATE_PER_CLAIM_CERT: 100_000_000,
    PROVISION_RATE_PER_ADDRESS: 100_000_000,
    // every load generator connects from 127.0.0.1: the per-address limits of the listener
    // (CONTRACT §11) would measure the limit, not the broker
    CONNECT_RATE_PER_ADDRESS: 100_000_000,
    MAX_PENDING_CONNECTIONS_PER_ADDRESS: 100_000,
    ...(process.env.BENCH_HANDSHAKES ? { MAX_CONCURRENT_HANDSHAKES: Number(process.env.BENCH_HANDSHAKES) } : {}),
    ...(process.env.BENCH_HANDSHAKE_BUDGET ? { HANDSHAKE_TURN_BUDGET_MS: Number(process.env.BENCH_HANDSHAKE_BUDGET) } : {})
  }
  // another build of this broker in the bare-Aedes slots: the ratios then compare two commits, in alternating rounds
  const abDist = process.env.BENCH_AB_DIST ? resolve(process.env.BENCH_AB_DIST) : null
  // its own schemas and templates: an older build may refuse today's (its checkout is dist's parent)
  const abOverrides = abDist
    ? await overridesKnownTo(abDist, { ...jitpOverrides, SCHEMAS_DIR: join(abDist, '..', 'schemas'), TEMPLATES_DIR: join(abDist, '..', 'templates') }, log)
    : null
  if (abDist) log(`BENCH_AB_DIST: the "bare Aedes" columns are aedes-jitp built in ${abDist}`)
  results.abDist = abDist
  const other = (key: TargetKey, store: 'memory' | 'redis', redis: RedisServer | null): Promise<Target> => child(key, {
    kind: 'jitp', store, ...(redis ? { redisUrl: redis.url } : {}), certsDir, devicesFile, auditLog: join(work, `audit-${key}.log`), overrides: abOverrides ?? {}
  }, redis?.pid, join(abDist!, 'bench', 'broker-child.js'))
  const starters: Record<TargetKey, (redis: RedisServer | null) => Promise<Target | null>> = {
    'aedes-memory': () => abDist ? other('aedes-memory', 'memory', null) : child('aedes-memory', { kind: 'aedes', store: 'memory', certsDir }),
    'jitp-memory': () => child('jitp-memory', { kind: 'jitp', store: 'memory', certsDir, devicesFile, auditLog: join(work, 'audit-memory.log'), overrides: jitpOverrides }),
    'aedes-redis': (r) => abDist ? other('aedes-redis', 'redis', r) : child('aedes-redis', { kind: 'aedes', store: 'redis', redisUrl: r!.url, certsDir }, r!.pid),
    'jitp-redis': (r) => child('jitp-redis', { kind: 'jitp', store: 'redis', redisUrl: r!.url, certsDir, devicesFile, auditLog: join(work, 'audit-redis.log'), overrides: jitpOverrides }, r!.pid),
    mosquitto: () => startMosquitto(certsDir)
  }
  // bare Aedes and this broker side by side, both alive, so that their fan-in rounds alternate
  const groups: Array<{ keys: TargetKey[], redis: boolean }> = [
    { keys: ['aedes-memory', 'jitp-memory'], redis: false },
    { keys: ['aedes-redis', 'jitp-redis'], redis: true },
    { keys: ['mosquitto'], redis: false }
  ]

  function child (key: string, opts: BrokerChildOptions, storePid?: number, script?: string): Promise<Target> {
    return startBrokerChild(key, opts, {
      ...(script !== undefined ? { script } : {}),
      execArgv: profileDir ? ['--cpu-prof', `--cpu-prof-dir=${profileDir}`, `--cpu-prof-name=${key}-${Date.now()}.cpuprofile`] : [],
      ...(storePid !== undefined ? { storePid } : {})
    })
  }

  async function runScenario (key: TargetKey, target: Target, name: string, fn: () => Promise<ScenarioResult>): Promise<ScenarioResult | null> {
    const scenario = name.split(' ')[0] ?? name
    if (overBudget() || target.exitStatus() !== null || (onlyScenarios && !onlyScenarios.includes(scenario))) return null
    await settle(target)
    log(`${key} ${name}...`)
    const r = await bounded(fn)
    log(`${key} ${name}: ${r.value ?? 'failed'} ${r.error ?? ''} ${JSON.stringify(r.detail)} cpu ${JSON.stringify(r.cpu)}`)
    return r
  }

  for (const group of groups) {
    const keys = group.keys.filter((k) => !only || only.includes(k))
    if (keys.length === 0) continue
    if (overBudget()) {
      log(`skipping ${keys.join(', ')}: over the time budget`)
      continue
    }
    const redisServers: RedisServer[] = []
    const live = new Map<TargetKey, Target>()
    try {
      for (const key of keys) {
        // each broker its own Redis: neither sees the other's traffic
        const redis = group.redis ? await startRedis() : null
        if (redis) redisServers.push(redis)
        const target = await starters[key](redis)
        if (target === null) {
          log(`${key}: not installed, skipped`)
          continue
        }
        log(`${key}: pid ${target.pid}, port ${target.port}`)
        live.set(key, target)
        results.targets[key] = { scenarios: {}, exit: null }
      }
      const record = async (key: TargetKey, name: string, fn: () => Promise<ScenarioResult>): Promise<void> => {
        const r = await runScenario(key, live.get(key)!, name, fn)
        if (r !== null) results.targets[key]!.scenarios[name] = r
      }
      // memory first, on a fresh process: after the floods the heap would already be grown and the reading flattered
      for (const [key, target] of live) await record(key, 'idle', () => idleMemory(target, env))
      // throughput moves by ±20 % from one window to the next on this machine: the
      // brokers take turns, round after round, and each one's median counts
      const alternate = async (name: string, fn: (target: Target) => Promise<ScenarioResult>): Promise<void> => {
        const rounds = new Map<TargetKey, ScenarioResult[]>([...live.keys()].map((k) => [k, []]))
        for (let round = 0; round < FAN_IN_ROUNDS; round++) {
          const order = round % 2 === 0 ? [...live] : [...live].reverse()
          for (const [key, target] of order) {
            const r = await runScenario(key, target, `${name} round ${round + 1}`, () => fn(target))
            if (r !== null) rounds.get(key)!.push(r)
          }
        }
        for (const [key, list] of rounds) {
          const median = medianResult(list)
          if (median === null) continue
          results.targets[key]!.scenarios[name] = median
          results.fanInRounds[`${key} ${name}`] = list.map((r) => ({ value: r.value, brokerCpu: r.cpu?.broker ?? null, redisCpu: r.cpu?.redis ?? null }))
        }
      }
      // connects too: the first window of a fresh process runs before the JIT has warmed up
      await alternate('connects', (target) => connectRate(target, env))
      for (const [key, target] of live) await record(key, 'connectLatency', () => connectLatency(target, env))
      for (const qos of [0, 1] as const) await alternate(`qos${qos}`, (target) => fanInThroughput(target, env, qos))
      for (const [key, target] of live) await record(key, 'paced', () => pacedLatency(target, env))
      for (const [key, target] of live) {
        if (!withProvisioning || !key.startsWith('jitp')) continue
        // the figure comes from the client users run (aedes-jitp simulate); the bench's lean two-thread client next to it
        await record(key, 'provisioning', () => provisioningSimulated(target, env, `S${Date.now().toString(36)}`))
        await record(key, 'provisioning lean', () => provisioningRate(target, env, `B${Date.now().toString(36)}`))
      }
      // last: it drops and reconnects 2,000 devices (issue 16)
      for (const [key, target] of live) await record(key, 'storm', () => reconnectStorm(target, env))
    } catch (err) {
      log(`${keys.join(', ')}: ${(err as Error).message}`)
      for (const key of keys) results.targets[key] ??= { scenarios: {}, exit: (err as Error).message.split('\n')[0] ?? 'failed' }
    } finally {
      for (const [key, target] of live) {
        results.targets[key]!.exit = target.exitStatus()
        await target.stop()
      }
      for (const redis of redisServers) await redis.stop()
    }
  }

  // TCP_NODELAY: the same bare Aedes listener with it off, connect latency one at a time
  if (!only || only.includes('nodelay')) {
    if (!overBudget()) {
      const t = await child('aedes-memory-nodelay-off', { kind: 'aedes', store: 'memory', certsDir, noDelay: false })
      try {
        results.noDelayOff = await connectLatency(t, env)
        log(`noDelay off: connect p50 ${results.noDelayOff.value} ms ${JSON.stringify(results.noDelayOff.detail)}`)
      } finally {
        await t.stop()
      }
    }
  }

  // the admin API's device listing at fleet scale (issue 10): 10,000 devices, every page of 100 by cursor
  if ((!only || only.includes('admin')) && !overBudget()) {
    const redis = await startRedis()
    const t = await child('jitp-redis-admin', { kind: 'jitp', store: 'redis', redisUrl: redis.url, certsDir })
    try {
      if (t.adminPort === null) throw new Error('the broker child reported no admin port')
      results.adminPages = await benchAdminApiPages(redis.url, t.adminPort, { cert: read('admin-chain.pem'), key: read('admin.key'), ca: read('root-ca.pem') })
      log(`admin API pages: ${JSON.stringify(results.adminPages)}`)
    } catch (err) {
      log(`admin API pages failed: ${(err as Error).message}`)
    } finally {
      await t.stop()
      await redis.stop()
    }
  }

  // a configuration rollout to a fleet (issue 11): 10,000 devices on Redis, zero-wait waves (bench/rollout.ts)
  if ((!only || only.includes('rollout')) && !overBudget()) {
    const redis = await startRedis()
    try {
      results.rollout = await benchRollout(redis.url)
      log(`rollout: ${JSON.stringify(results.rollout)}`)
    } catch (err) {
      log(`rollout bench failed: ${(err as Error).message}`)
    } finally {
      await redis.stop()
    }
  }

  // inline personal-data detection (issue 15): QoS 1 fan-in, detect flag against off in the same run, and µs per payload
  // (bench/pii-detect.ts); BENCH_ONLY=pii-detect runs it alone
  if ((!only || only.includes('pii-detect')) && (!onlyScenarios || onlyScenarios.includes('pii-detect')) && !overBudget()) {
    try {
      results.piiDetect = await benchPiiDetect({
        projectDir,
        env,
        rounds: FAN_IN_ROUNDS,
        child,
        jitp: (auditName) => ({ kind: 'jitp', store: 'memory', certsDir, devicesFile, auditLog: join(work, auditName), overrides: jitpOverrides }),
        run: (label, target, fn) => runScenario('jitp-memory', target, `pii-detect ${label}`, fn),
        log
      })
    } catch (err) {
      log(`pii-detect bench failed: ${(err as Error).message}`)
    }
  }

  // WORKERS=1 against WORKERS=2 on Redis, the real CLI (issue 16, bench/workers.ts)
  if ((!only || only.includes('workers')) && !overBudget()) {
    try {
      results.workers = await benchWorkers({
        env, certsDir, devices: registry, rounds: FAN_IN_ROUNDS, withProvisioning, log, overBudget,
        config: Object.fromEntries(Object.entries(jitpOverrides).map(([k, v]) => [k, String(v)])),
        auditLog: (workers) => join(work, `audit-workers-${workers}.log`)
      })
    } catch (err) {
      log(`workers bench failed: ${(err as Error).message}`)
    }
  }

  // overload: bare Aedes in memory is expected to die; this broker must not
  const overloadPlan: Array<{ key: TargetKey, redis: boolean, opts: (r: RedisServer | null) => BrokerChildOptions }> = [
    { key: 'aedes-memory', redis: false, opts: () => ({ kind: 'aedes', store: 'memory', certsDir }) },
    { key: 'jitp-memory', redis: false, opts: () => ({ kind: 'jitp', store: 'memory', certsDir, devicesFile, auditLog: join(work, 'audit-overload-memory.log') }) },
    { key: 'jitp-redis', redis: true, opts: (r) => ({ kind: 'jitp', store: 'redis', redisUrl: r!.url, certsDir, devicesFile, auditLog: join(work, 'audit-overload-redis.log') }) }
  ]
  for (const step of overloadPlan) {
    if ((only && !only.includes('overload')) || overBudget()) continue
    const redis = step.redis ? await startRedis() : null
    const t = await child(`overload-${step.key}`, step.opts(redis))
    try {
      log(`overload ${step.key}: ${OVERLOAD_MS / 1000} s QoS 1 flood, subscriber stops reading, gone after ${OVERLOAD_DISCONNECT_AFTER_MS / 1000} s`)
      results.overload[step.key] = await overload(t, env, OVERLOAD_MS, OVERLOAD_DISCONNECT_AFTER_MS)
      log(`overload ${step.key}: ${JSON.stringify(results.overload[step.key])}`)
    } finally {
      await t.stop()
      await redis?.stop()
    }
  }

  results.durationSeconds = Math.round((Date.now() - startedAt) / 1000)
  results.machine.loadAverageAtEnd = loadAverage()
  const file = join(projectDir, 'bench', `results-${new Date(startedAt).toISOString().replace(/[:.]/g, '-')}.json`)
  writeFileSync(file, JSON.stringify(results, null, 2) + '\n')
  process.stdout.write(renderReport(results) + '\n')
  log(`results written to ${file}`)
  if (process.env.BENCH_KEEP_WORK) log(`kept the work folder (PKI, audit logs): ${work}`)
  else rmSync(work, { recursive: true, force: true })
}

main().then(() => process.exit(0), (err: unknown) => {
  log(`failed: ${(err as Error).stack ?? String(err)}`)
  process.exit(1)
})

/**
 * The configuration overrides another build accepts: an older commit refuses keys it
 * does not know (its config schema has no additional properties), and each one left
 * out is said.
 */
async function overridesKnownTo (dist: string, overrides: Record<string, unknown>, log: (line: string) => void): Promise<Record<string, unknown>> {
  const { loadConfig: load } = await import(pathToFileURL(join(dist, 'broker', 'config.js')).href) as { loadConfig: typeof loadConfig }
  const known: Record<string, unknown> = {}
  for (const [key, value] of Object.entries(overrides)) {
    try {
      load({ env: {}, overrides: { GENERATE_DEV_CERTS: false, [key]: value } })
      known[key] = value
    } catch (err) {
      if (/unknown configuration key/.test(err instanceof Error ? err.message : String(err))) log(`BENCH_AB_DIST: ${key} is unknown to that build, left out`)
      else known[key] = value
    }
  }
  return known
}
