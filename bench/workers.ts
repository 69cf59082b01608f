/**
 * WORKERS=1 against WORKERS=2 (issue 16, broker/cluster.ts): the real
 * `aedes-jitp start` on a private Redis each, the bench devices registered in
 * it, then mTLS connects/s (alternating rounds, median) and provisioning
 * devices/s. Broker CPU is the primary and all its workers together (a worker
 * restarted meanwhile still counts: bench/proc.ts treeUsage); the primary's own
 * share (its round-robin accept) is reported apart. The load generator shares
 * the machine's cores with them: its CPU is in every result.
 */
import { createRegistry } from '../broker/store/create-registry.js'
import type { BenchDevice } from './broker-child.js'
import type { ProcUsage } from './proc.js'
import { startCliBroker, startRedis, type CliTarget, type RedisServer } from './processes.js'
import { bounded, connectRate, medianResult, provisioningRate, round, settle, type BenchEnv, type ScenarioResult } from './scenarios.js'

export interface WorkersTargetResult {
  readonly workers: number
  /** the median round */
  connects: ScenarioResult | null
  connectRounds: Array<number | null>
  provisioning: ScenarioResult | null
  /** the primary's share of the cluster's CPU over the scenarios, % (its round-robin accept and the metrics; WORKERS=1: 100) */
  primaryShare: number | null
  error: string | null
}

export interface WorkersResult { readonly rounds: number, readonly targets: WorkersTargetResult[] }

export interface WorkersBenchOptions {
  readonly env: BenchEnv
  readonly certsDir: string
  readonly devices: readonly BenchDevice[]
  /** configuration for both (the bench's lifted per-address limits), as env strings */
  readonly config: Record<string, string>
  readonly auditLog: (workers: number) => string
  readonly rounds: number
  readonly withProvisioning: boolean
  readonly log: (line: string) => void
  readonly overBudget: () => boolean
}

async function registerDevices (redisUrl: string, devices: readonly BenchDevice[]): Promise<void> {
  const registry = createRegistry({ redisUrl })
  const now = Date.now()
  try {
    // connected first: 64 commands at once on a connection still opening would each wait for it
    await registry.ping()
    for (let i = 0; i < devices.length; i += 64) {
      await Promise.all(devices.slice(i, i + 64).map(async (d) => {
        await registry.putDevice({ deviceId: d.deviceId, status: 'active', template: 'bench', createdAt: now, updatedAt: now, attributes: {} })
        await registry.putCertificate({ certificateId: d.certificateId, deviceId: d.deviceId, status: 'active', serialNumber: d.serialNumber, notAfter: d.notAfter, createdAt: now, updatedAt: now })
      }))
    }
  } finally {
    await registry.close()
  }
}

export async function benchWorkers (opts: WorkersBenchOptions): Promise<WorkersResult> {
  const counts = [1, 2]
  const live = new Map<number, { target: CliTarget, redis: RedisServer, primaryMs: number, totalMs: number }>()
  const results = new Map<number, WorkersTargetResult>(counts.map((workers) => [workers, { workers, connects: null, connectRounds: [], provisioning: null, primaryShare: null, error: null }]))
  const run = async (workers: number, name: string, fn: (t: CliTarget) => Promise<ScenarioResult>): Promise<ScenarioResult | null> => {
    const entry = live.get(workers)
    if (!entry || opts.overBudget() || entry.target.exitStatus() !== null) return null
    await settle(entry.target)
    opts.log(`WORKERS=${workers} ${name}...`)
    const before: Array<ProcUsage | null> = [entry.target.primaryUsage(), entry.target.usage()]
    const r = await bounded(() => fn(entry.target))
    const after: Array<ProcUsage | null> = [entry.target.primaryUsage(), entry.target.usage()]
    if (before[0] && before[1] && after[0] && after[1]) {
      entry.primaryMs += after[0].cpuMs - before[0].cpuMs
      entry.totalMs += after[1].cpuMs - before[1].cpuMs
    }
    opts.log(`WORKERS=${workers} ${name}: ${r.value ?? 'failed'} ${r.error ?? ''} ${JSON.stringify(r.detail)} cpu ${JSON.stringify(r.cpu)}`)
    return r
  }
  try {
    // both alive side by side, each with its own Redis, so that their rounds alternate
    for (const workers of counts) {
      const redis = await startRedis()
      try {
        await registerDevices(redis.url, opts.devices)
        const target = await startCliBroker(`jitp-redis-workers-${workers}`, {
          ...opts.config, REDIS_URL: redis.url, CERTS_DIR: opts.certsDir, AUDIT_LOG: opts.auditLog(workers)
        }, { workers, storePid: redis.pid })
        opts.log(`WORKERS=${workers}: primary pid ${target.pid}, port ${target.port}`)
        live.set(workers, { target, redis, primaryMs: 0, totalMs: 0 })
      } catch (err) {
        await redis.stop()
        results.get(workers)!.error = (err as Error).message.split('\n')[0] ?? 'failed'
        opts.log(`WORKERS=${workers}: ${(err as Error).message}`)
      }
    }
    const rounds = new Map<number, ScenarioResult[]>(counts.map((w) => [w, []]))
    for (let round = 0; round < opts.rounds; round++) {
      for (const workers of round % 2 === 0 ? counts : [...counts].reverse()) {
        const r = await run(workers, `connects round ${round + 1}`, (t) => connectRate(t, opts.env))
        if (r) rounds.get(workers)!.push(r)
      }
    }
    for (const workers of counts) {
      const list = rounds.get(workers)!
      results.get(workers)!.connects = medianResult(list)
      results.get(workers)!.connectRounds = list.map((r) => r.value)
    }
    if (opts.withProvisioning) {
      for (const workers of counts) {
        results.get(workers)!.provisioning = await run(workers, 'provisioning', (t) => provisioningRate(t, opts.env, `W${workers}${Date.now().toString(36)}`))
      }
    }
  } finally {
    for (const [workers, { target, redis, primaryMs, totalMs }] of live) {
      if (totalMs > 0) results.get(workers)!.primaryShare = round((100 * primaryMs) / totalMs, 1)
      if (target.exitStatus() !== null) results.get(workers)!.error ??= `exited: ${target.exitStatus()}`
      await target.stop()
      await redis.stop()
    }
  }
  return { rounds: opts.rounds, targets: [...results.values()] }
}
