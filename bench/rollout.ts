/**
 * A rollout to a fleet (issue 11: 10,000 registered devices on Redis, a
 * zero-wait wave plan 1,10,100): time from start to 100 % applied, per wave, the
 * process's CPU per device, and the Redis commands per device.
 *
 * The broker is built in this process (buildBroker, Redis store); the device
 * simulator sees each version the broker publishes (an in-process subscription to
 * `devices/+/config`, through the Redis emitter like any subscriber) and answers
 * as an ack would be recorded: delivered, then `applied`, straight into the
 * configuration store (no MQTT connection per device: the rollout engine, the
 * service's commit + retained publish and the judging are what is measured; the
 * CPU figure includes the simulator's two store calls per device).
 *
 *   npm run build && node dist/bench/rollout.js [devices] [redis://127.0.0.1:PORT]
 *   (without a URL it starts its own redis-server on a free loopback port)
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { Writable } from 'node:stream'
import { pathToFileURL } from 'node:url'
import { Redis } from 'ioredis'
import pino from 'pino'
import { buildBroker, type BrokerHandle } from '../broker/build.js'
import { loadConfig } from '../broker/config.js'
import type { ConfigService } from '../broker/config-service.js'
import { createRollouts, type Rollouts } from '../broker/rollouts.js'
import type { DeviceConfigStore } from '../broker/store/device-configs.js'
import { generateDevPki } from '../certs-dev/generate.js'
import { startRedis } from './processes.js'

const DEVICES = 10_000
const WAVES = [1, 10, 100]
const FILL_CONCURRENCY = 500
const TEMPLATE = 'bench'

export interface RolloutBenchResult {
  readonly devices: number
  readonly waves: number[]
  readonly fillMs: number
  /** start → every device's version applied */
  readonly allAppliedMs: number
  /** start → status completed */
  readonly completedMs: number
  /** start → each wave started */
  readonly waveStartMs: number[]
  readonly cpuMsPerDevice: number
  readonly redisCommandsPerDevice: number
  readonly redisCommandsByName: Record<string, number>
}

async function eachLimit<T> (items: readonly T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) await fn(items[next++]!)
  }))
}

async function commandStats (raw: Redis): Promise<Map<string, number>> {
  const out = new Map<string, number>()
  for (const line of (await raw.info('commandstats')).split('\n')) {
    const m = /^cmdstat_([^:]+):calls=(\d+)/.exec(line.trim())
    if (m) out.set(m[1]!, Number(m[2]))
  }
  return out
}

export async function benchRollout (redisUrl: string, devices = DEVICES): Promise<RolloutBenchResult> {
  const dir = mkdtempSync(join(tmpdir(), 'jitp-bench-rollout-'))
  let handle: BrokerHandle | null = null
  let own: Rollouts | null = null
  const raw = new Redis(redisUrl)
  try {
    await generateDevPki({ outDir: dir })
    const config = loadConfig({
      env: {},
      overrides: {
        MQTTS_PORT: 0, HTTP_PORT: 0, ADMIN_PORT: 0, HOST: '127.0.0.1', CERTS_DIR: dir, GENERATE_DEV_CERTS: false, REDIS_URL: redisUrl, LOG_LEVEL: 'silent'
      }
    })
    const sink = new Writable({ write (_chunk, _enc, cb) { cb() } })
    handle = await buildBroker(config, { auditStream: sink, log: pino({ level: 'silent' }) })
    const wired = handle as unknown as { configs: ConfigService, configStore: DeviceConfigStore, rollouts?: Rollouts }
    const store = wired.configStore
    const rollouts = wired.rollouts ?? (own = createRollouts({
      store, registry: handle.registry, service: wired.configs, audit: handle.audit, metrics: handle.metrics, log: pino({ level: 'silent' }), now: Date.now, owner: 'bench'
    }))

    const ids = Array.from({ length: devices }, (_, i) => `bench-${String(i).padStart(6, '0')}`)
    const fillStart = performance.now()
    const now = Date.now()
    await eachLimit(ids, FILL_CONCURRENCY, async (deviceId) => {
      await handle!.registry.putDevice({ deviceId, status: 'active', template: TEMPLATE, createdAt: now, updatedAt: now, attributes: {} })
      await store.commit(deviceId, { template: TEMPLATE, config: { interval: 60 }, overrides: {}, author: 'registration', at: now })
      await store.markDelivered(deviceId, 1, now)
      await store.recordAck(deviceId, 1, 'applied', now)
    })
    const fillMs = performance.now() - fillStart

    // the simulator: every version the broker publishes is delivered and applied at once
    let applied = 0
    await new Promise<void>((resolve) => {
      handle!.broker.subscribe('devices/+/config', function simulatedDevice (packet, cb) {
        cb()
        const deviceId = packet.topic.split('/')[1]!
        const version = Number(/^\{"version":(\d+)/.exec(packet.payload.toString())?.[1])
        void (async () => {
          await store.markDelivered(deviceId, version, Date.now())
          const r = await store.recordAck(deviceId, version, 'applied', Date.now())
          if (r.result === 'recorded') applied++
        })().catch(() => undefined)
      }, resolve)
    })

    const statsBefore = await commandStats(raw)
    const cpuBefore = process.cpuUsage()
    const t0 = performance.now()
    const started = await rollouts.start({ target: { template: TEMPLATE }, config: { interval: 30 }, waves: WAVES, minWaitSeconds: 0, abortThreshold: 0.2 }, 'bench')
    const waveStartMs: number[] = []
    let allAppliedMs = 0
    let completedMs = 0
    for (;;) {
      const r = (await rollouts.get(started.id))!
      while (waveStartMs.length < r.currentWave) waveStartMs.push(Math.round(performance.now() - t0))
      if (allAppliedMs === 0 && applied >= devices) allAppliedMs = performance.now() - t0
      if (r.status === 'completed' || r.status === 'aborted') {
        if (r.status === 'aborted') throw new Error(`the bench rollout aborted: ${r.reason ?? ''}`)
        completedMs = performance.now() - t0
        if (allAppliedMs === 0) allAppliedMs = completedMs
        break
      }
      await new Promise((resolve) => setTimeout(resolve, 20))
    }
    const cpu = process.cpuUsage(cpuBefore)
    const statsAfter = await commandStats(raw)
    const byName: Record<string, number> = {}
    let total = 0
    for (const [name, calls] of statsAfter) {
      const d = calls - (statsBefore.get(name) ?? 0)
      if (d > 0 && name !== 'info') {
        byName[name] = Math.round(d / devices * 100) / 100
        total += d
      }
    }
    return {
      devices,
      waves: WAVES,
      fillMs: Math.round(fillMs),
      allAppliedMs: Math.round(allAppliedMs),
      completedMs: Math.round(completedMs),
      waveStartMs,
      cpuMsPerDevice: Math.round((cpu.user + cpu.system) / 1000 / devices * 1000) / 1000,
      redisCommandsPerDevice: Math.round(total / devices * 100) / 100,
      redisCommandsByName: byName
    }
  } finally {
    await own?.close()
    await handle?.close()
    raw.disconnect()
    rmSync(dir, { recursive: true, force: true })
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const devices = Number(process.argv[2] ?? DEVICES)
  const url = process.argv[3]
  const redis = url ? null : await startRedis()
  try {
    console.log(JSON.stringify(await benchRollout(url ?? redis!.url, devices), null, 2))
  } finally {
    await redis?.stop()
  }
}
