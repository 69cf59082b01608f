/**
 * The measured scenarios. Each drives load-generator worker threads
 * (bench/load-worker.ts) against one broker under test and reads the broker's
 * and the generator's CPU over the measured window, so a generator bottleneck
 * shows in the results.
 */
import { Worker } from 'node:worker_threads'
import { setTimeout as sleep } from 'node:timers/promises'
import type { Identity, WorkerTask } from './load-worker.js'
import { cpuPercent, machineTicks, selfUsage, stealPercent, type ProcUsage } from './proc.js'
import { NicedLoadWorker } from './niced-worker.js'
import type { Target } from './processes.js'
import { WorkerMailbox, type FromWorker } from './worker-mailbox.js'

export interface BenchEnv {
  /** what clients trust: the dev root */
  readonly ca: string
  /** device identities from the dev device CA (registered in this broker's registry) */
  readonly devices: readonly Identity[]
  /** the dev service certificate, allowed to read every device's telemetry */
  readonly service: Identity
  /** the dev claim certificate */
  readonly claim: Identity
  /** device keys and CSRs for the provisioning scenario (bounds how many devices it provisions) */
  readonly provisioningRequests: ReadonlyArray<{ key: string, csr: string }>
}

export interface Cpu {
  /** percent of one core over the measured window */
  readonly broker: number | null
  /** the broker's private redis-server, percent of one core (absent without Redis) */
  readonly redis?: number | null
  readonly generator: number
  /** percent of the whole machine's CPU time taken by the hypervisor (noisy neighbours) */
  readonly steal: number
  readonly wallMs: number
}

export interface ScenarioResult {
  readonly value: number | null
  readonly detail: Record<string, number | string | null>
  readonly cpu: Cpu | null
  readonly error?: string
}

export const WARMUP_MS = 1000
export const MEASURE_MS = 5000
const FAN_IN_DEVICES = 50
const GENERATOR_THREADS = 2
const CONNECT_CONCURRENCY = 64
const PACED_RATE = 5000
const IDLE_CONNECTIONS = 2000
const STEP_TIMEOUT_MS = 60_000
/** flat-out publishers stay at most this many messages ahead of the subscriber (about 1 MB: more overflows Redis pub/sub buffers with QoS 0) */
const MAX_AHEAD = 5_000

/** A worker thread running one task, with a mailbox to await its messages by type. */
class LoadWorker {
  private readonly worker: Worker
  private readonly mailbox = new WorkerMailbox('load worker')

  constructor (task: WorkerTask) {
    this.worker = new Worker(new URL('./load-worker.js', import.meta.url), { workerData: task })
    this.worker.on('message', (msg: FromWorker) => this.mailbox.deliver(msg))
    this.worker.on('error', (err) => this.mailbox.fail(err))
    this.worker.on('exit', () => this.mailbox.fail(new Error('load worker exited')))
  }

  send (cmd: string): void {
    this.worker.postMessage({ cmd })
  }

  next<T = FromWorker> (type: string, timeoutMs = STEP_TIMEOUT_MS): Promise<T> {
    return this.mailbox.next<T>(type, timeoutMs)
  }

  async stop (): Promise<void> {
    this.worker.removeAllListeners('exit')
    await this.worker.terminate()
  }
}

export interface Snapshot { t: number, broker: ProcUsage | null, store: ProcUsage | null, gen: ProcUsage, machine: { steal: number, total: number } }

export function snapshot (target: Target): Snapshot {
  return { t: performance.now(), broker: target.usage(), store: target.storeUsage?.() ?? null, gen: selfUsage(), machine: machineTicks() }
}

export function cpuBetween (a: Snapshot, b: Snapshot): Cpu {
  const wallMs = b.t - a.t
  return {
    broker: a.broker && b.broker ? round(cpuPercent(a.broker, b.broker, wallMs)) : null,
    ...(a.store && b.store ? { redis: round(cpuPercent(a.store, b.store, wallMs), 1) } : {}),
    generator: round(cpuPercent(a.gen, b.gen, wallMs)),
    steal: round(stealPercent(a.machine, b.machine)),
    wallMs: Math.round(wallMs)
  }
}

export function round (n: number, digits = 0): number {
  const f = 10 ** digits
  return Math.round(n * f) / f
}

/** how long one scenario may take before it is reported as failed */
const SCENARIO_TIMEOUT_MS = 150_000

/** bounded: a scenario that hangs is reported as failed, and the run goes on */
export async function bounded (fn: () => Promise<ScenarioResult>): Promise<ScenarioResult> {
  let timer: NodeJS.Timeout | undefined
  const r = await Promise.race([
    fn(),
    new Promise<ScenarioResult>((resolve) => { timer = setTimeout(() => resolve({ value: null, detail: {}, cpu: null, error: `no result within ${SCENARIO_TIMEOUT_MS / 1000} s` }), SCENARIO_TIMEOUT_MS) })
  ])
  clearTimeout(timer)
  return r
}

/** waits (bounded) until the broker (a cluster: all its processes) is idle, so one scenario's tail does not run into the next */
export async function settle (target: Pick<Target, 'usage'>): Promise<void> {
  const deadline = Date.now() + 10_000
  while (Date.now() < deadline) {
    const a = target.usage()
    await sleep(250)
    const b = target.usage()
    if (!a || !b || cpuPercent(a, b, 250) < 15) return
  }
}

/** the result whose value is the median (the lower middle one of an even count) */
export function medianResult (list: readonly ScenarioResult[]): ScenarioResult | null {
  const ok = list.filter((r) => r.value !== null).sort((a, b) => a.value! - b.value!)
  return ok[Math.floor((ok.length - 1) / 2)] ?? list[0] ?? null
}

export function percentile (values: ArrayLike<number>, p: number): number | null {
  if (values.length === 0) return null
  const sorted = Float64Array.from(values).sort()
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!
}

function split<T> (items: readonly T[], parts: number): T[][] {
  const out: T[][] = Array.from({ length: parts }, () => [])
  items.forEach((item, i) => out[i % parts]!.push(item))
  return out
}

async function withWorkers<T> (workers: LoadWorker[], body: () => Promise<T>): Promise<T> {
  try {
    return await body()
  } finally {
    await Promise.all(workers.map((w) => w.stop()))
  }
}

function failed (err: unknown): ScenarioResult {
  return { value: null, detail: {}, cpu: null, error: (err as Error).message.split('\n')[0] }
}

/** mTLS connects per second: CONNECT → CONNACK 0 → DISCONNECT, 64 at a time, full handshakes. */
export async function connectRate (target: Target, env: BenchEnv): Promise<ScenarioResult> {
  const lanes = split(env.devices.slice(0, CONNECT_CONCURRENCY), GENERATOR_THREADS)
  const workers = lanes.map((identities) => new LoadWorker({
    task: 'connects', port: target.port, ca: env.ca, identities, concurrency: identities.length, durationMs: MEASURE_MS, maxCount: 100_000
  }))
  return withWorkers(workers, async () => {
    try {
      await Promise.all(workers.map((w) => w.next('ready')))
      const a = snapshot(target)
      for (const w of workers) w.send('go')
      const results = await Promise.all(workers.map((w) => w.next<{ count: number, errors: number, firstError: string | null, latencies: number[] }>('result')))
      const b = snapshot(target)
      const count = results.reduce((s, r) => s + r.count, 0)
      const latencies = results.flatMap((r) => r.latencies)
      return {
        value: round(count / ((b.t - a.t) / 1000)),
        detail: { connects: count, errors: results.reduce((s, r) => s + r.errors, 0), firstError: results.find((r) => r.firstError)?.firstError ?? null, p50Ms: round(percentile(latencies, 50) ?? 0, 2), p99Ms: round(percentile(latencies, 99) ?? 0, 2) },
        cpu: cpuBetween(a, b)
      }
    } catch (err) {
      return failed(err)
    }
  })
}

/** Connect latency one at a time (no queueing): shows a Nagle/delayed-ACK stall if TCP_NODELAY were off. */
export async function connectLatency (target: Target, env: BenchEnv): Promise<ScenarioResult> {
  const worker = new LoadWorker({ task: 'connects', port: target.port, ca: env.ca, identities: [env.devices[0]!], concurrency: 1, durationMs: 3000, maxCount: 300 })
  return withWorkers([worker], async () => {
    try {
      await worker.next('ready')
      const a = snapshot(target)
      worker.send('go')
      const r = await worker.next<{ count: number, errors: number, latencies: number[] }>('result')
      const b = snapshot(target)
      return {
        value: round(percentile(r.latencies, 50) ?? 0, 2),
        detail: { connects: r.count, errors: r.errors, p99Ms: round(percentile(r.latencies, 99) ?? 0, 2), maxMs: round(Math.max(...r.latencies), 2) },
        cpu: cpuBetween(a, b)
      }
    } catch (err) {
      return failed(err)
    }
  })
}

interface FanInOptions { qos: 0 | 1, ratePerSecond: number, latency: boolean }

/** 50 devices → `devices/<id>/telemetry` → one service subscriber on `devices/+/telemetry`. */
async function fanIn (target: Target, env: BenchEnv, opts: FanInOptions): Promise<ScenarioResult> {
  const progress = new SharedArrayBuffer(12)
  const subscriber = new LoadWorker({
    task: 'subscriber', port: target.port, ca: env.ca, identity: env.service, clean: true, topic: 'devices/+/telemetry', qos: opts.qos,
    maxLatencies: opts.latency ? Math.ceil((opts.ratePerSecond * MEASURE_MS) / 1000) * 2 : 0, progress
  })
  const groups = split(env.devices.slice(0, FAN_IN_DEVICES), GENERATOR_THREADS)
  const publishers = groups.map((identities) => new LoadWorker({
    task: 'publishers', port: target.port, ca: env.ca, identities, qos: opts.qos, window: 32,
    ratePerSecond: opts.ratePerSecond / GENERATOR_THREADS, durationMs: WARMUP_MS + MEASURE_MS, maxCount: 10_000_000,
    progress, maxAhead: MAX_AHEAD
  }))
  return withWorkers([subscriber, ...publishers], async () => {
    try {
      await subscriber.next('ready')
      const ready = await Promise.all(publishers.map((w) => w.next<{ connected: number, errors: number, firstError: string | null }>('ready')))
      const connected = ready.reduce((s, r) => s + r.connected, 0)
      if (connected < FAN_IN_DEVICES) throw new Error(`only ${connected} of ${FAN_IN_DEVICES} devices connected: ${ready.find((r) => r.firstError)?.firstError ?? ''}`)
      for (const w of publishers) w.send('go')
      await sleep(WARMUP_MS)
      const mark = async (): Promise<{ received: number, sent: number, at: number, snap: Snapshot }> => {
        for (const w of [subscriber, ...publishers]) w.send('mark')
        const [s, ...p] = await Promise.all([subscriber, ...publishers].map((w) => w.next<{ received?: number, sent?: number, at: number }>('mark')))
        return { received: s!.received ?? 0, sent: p.reduce((sum, m) => sum + (m.sent ?? 0), 0), at: s!.at, snap: snapshot(target) }
      }
      const m0 = await mark()
      if (opts.latency) subscriber.send('record')
      await sleep(MEASURE_MS)
      const m1 = await mark()
      const latencies = opts.latency ? (subscriber.send('latencies'), (await subscriber.next<{ values: Float64Array }>('latencies')).values) : new Float64Array(0)
      const done = await Promise.all(publishers.map((w) => w.next<{ sent: number, acked: number }>('done', 15_000)))
      for (const w of publishers) w.send('close')
      await Promise.all(publishers.map((w) => w.next('closed', 15_000)))
      subscriber.send('close')
      const closed = await subscriber.next<{ received: number }>('closed', 15_000)
      const seconds = (m1.at - m0.at) / 1000
      const sent = done.reduce((s, d) => s + d.sent, 0)
      const detail: ScenarioResult['detail'] = {
        sentPerSecond: round((m1.sent - m0.sent) / seconds),
        sent,
        acked: opts.qos === 1 ? done.reduce((s, d) => s + d.acked, 0) : null,
        receivedTotal: closed.received,
        givenUpAsLost: new Int32Array(progress)[2] ?? 0
      }
      if (opts.latency) {
        detail.p50Ms = round(percentile(latencies, 50) ?? 0, 3)
        detail.p99Ms = round(percentile(latencies, 99) ?? 0, 3)
        detail.maxMs = round(latencies.length > 0 ? Math.max(...latencies) : 0, 3)
        detail.samples = latencies.length
      }
      return { value: round((m1.received - m0.received) / seconds), detail, cpu: cpuBetween(m0.snap, m1.snap) }
    } catch (err) {
      return failed(err)
    }
  })
}

export function fanInThroughput (target: Target, env: BenchEnv, qos: 0 | 1): Promise<ScenarioResult> {
  return fanIn(target, env, { qos, ratePerSecond: 0, latency: false })
}

/** 5,000 msg/s QoS 1 spread over 50 devices; value = p99 end-to-end latency in ms. */
export async function pacedLatency (target: Target, env: BenchEnv): Promise<ScenarioResult> {
  const r = await fanIn(target, env, { qos: 1, ratePerSecond: PACED_RATE, latency: true })
  if (r.value === null) return r
  return { value: r.detail.p99Ms as number, detail: { ...r.detail, deliveredPerSecond: r.value }, cpu: r.cpu }
}

/** Broker RSS per idle mTLS device connection, 2,000 of them (full GC before each reading). */
export async function idleMemory (target: Target, env: BenchEnv): Promise<ScenarioResult> {
  const groups = split(env.devices.slice(0, IDLE_CONNECTIONS), GENERATOR_THREADS)
  const heapBefore = await target.gc()
  await sleep(500)
  const before = target.usage()
  const a = snapshot(target)
  const workers = groups.map((identities) => new LoadWorker({ task: 'idle', port: target.port, ca: env.ca, identities, concurrency: 32 }))
  return withWorkers(workers, async () => {
    try {
      const ready = await Promise.all(workers.map((w) => w.next<{ connected: number, errors: number, firstError: string | null }>('ready', 120_000)))
      const b = snapshot(target)
      const connected = ready.reduce((s, r) => s + r.connected, 0)
      await sleep(1000)
      const heapAfter = await target.gc()
      await sleep(500)
      const after = target.usage()
      for (const w of workers) w.send('close')
      await Promise.all(workers.map((w) => w.next('closed', 30_000)))
      if (!before || !after) throw new Error('broker process gone')
      return {
        value: round((after.rssBytes - before.rssBytes) / connected / 1024, 1),
        detail: {
          connected,
          errors: ready.reduce((s, r) => s + r.errors, 0),
          firstError: ready.find((r) => r.firstError)?.firstError ?? null,
          rssBeforeMB: round(before.rssBytes / 1048576, 1),
          rssAfterMB: round(after.rssBytes / 1048576, 1),
          // the part of the RSS growth that is live JavaScript objects and Buffers, per connection (Node brokers only)
          heapKBPerConnection: heapBefore && heapAfter ? round((heapAfter.heapUsed - heapBefore.heapUsed) / connected / 1024, 2) : null,
          externalKBPerConnection: heapBefore && heapAfter ? round((heapAfter.external - heapBefore.external) / connected / 1024, 2) : null,
          // the RSS growth less the young generation's: V8 sizes that (up to 32 MB) by allocation rate and idle time,
          // and a broker that idled before the reading had given it back, so it showed as 15 KB "per connection"
          rssExYoungKBPerConnection: heapBefore?.youngBytes != null && heapAfter?.youngBytes != null
            ? round(((after.rssBytes - heapAfter.youngBytes) - (before.rssBytes - heapBefore.youngBytes)) / connected / 1024, 1)
            : null,
          youngMB: heapBefore?.youngBytes != null && heapAfter?.youngBytes != null ? `${round(heapBefore.youngBytes / 1048576, 1)} → ${round(heapAfter.youngBytes / 1048576, 1)}` : null,
          connectsPerSecond: round(connected / ((b.t - a.t) / 1000))
        },
        cpu: cpuBetween(a, b)
      }
    } catch (err) {
      return failed(err)
    }
  })
}

/**
 * Just-in-time provisioning end to end (CONTRACT §3): claim certificate connects,
 * create-from-csr, register with template `sensor`, then the device reconnects with
 * its new certificate and gets CONNACK 0. The broker issues two certificates per
 * device (the create step's and the final one naming the device).
 */
export async function provisioningRate (target: Target, env: BenchEnv, prefix: string): Promise<ScenarioResult> {
  const requests = split(env.provisioningRequests, GENERATOR_THREADS)
  const workers = requests.map((devices, i) => new LoadWorker({
    task: 'provision', port: target.port, ca: env.ca, claim: env.claim,
    prefix: `${prefix}${i}`, concurrency: 8, warmupMs: WARMUP_MS, durationMs: MEASURE_MS, devices
  }))
  return withWorkers(workers, async () => {
    try {
      await Promise.all(workers.map((w) => w.next('ready', 120_000)))
      for (const w of workers) w.send('go')
      await sleep(WARMUP_MS)
      const a = snapshot(target)
      const results = await Promise.all(workers.map((w) => w.next<{ count: number, errors: number, firstError: string | null, latencies: number[] }>('result', 120_000)))
      const b = snapshot(target)
      // counted: devices whose reconnect completed inside the measured window
      const devices = results.reduce((s, r) => s + r.count, 0)
      const seconds = MEASURE_MS / 1000
      const latencies = results.flatMap((r) => r.latencies)
      return {
        value: round(devices / seconds, 1),
        detail: {
          devices,
          errors: results.reduce((s, r) => s + r.errors, 0),
          firstError: results.find((r) => r.firstError)?.firstError ?? null,
          certificatesPerSecond: round((2 * devices) / seconds, 1),
          p50Ms: round(percentile(latencies, 50) ?? 0, 1),
          p99Ms: round(percentile(latencies, 99) ?? 0, 1)
        },
        cpu: cpuBetween(a, b)
      }
    } catch (err) {
      return failed(err)
    }
  })
}

export interface OverloadResult {
  readonly alive: boolean
  readonly crash: string | null
  readonly healthz: number | null
  readonly peakRssMB: number
  readonly published: number
  readonly redelivered: number | null
}

/**
 * 50 devices publish QoS 1 flat out to one persistent-session subscriber that
 * stops reading, then disconnects mid-run; afterwards it comes back for its queue.
 */
export async function overload (target: Target, env: BenchEnv, durationMs: number, disconnectAfterMs: number): Promise<OverloadResult> {
  const slowIdentity = { ...env.service, clientId: 'bench-slow-service' }
  const slow = new LoadWorker({ task: 'subscriber', port: target.port, ca: env.ca, identity: slowIdentity, clean: false, topic: 'devices/+/telemetry', qos: 1, maxLatencies: 0 })
  const groups = split(env.devices.slice(0, FAN_IN_DEVICES), GENERATOR_THREADS)
  const publishers = groups.map((identities) => new LoadWorker({
    task: 'publishers', port: target.port, ca: env.ca, identities, qos: 1, window: 64, ratePerSecond: 0, durationMs, maxCount: 2_000_000
  }))
  let peak = target.usage()?.rssBytes ?? 0
  const sampler = setInterval(() => { peak = Math.max(peak, target.usage()?.rssBytes ?? 0) }, 100)
  let published = 0
  try {
    await withWorkers([slow, ...publishers], async () => {
      await slow.next('ready')
      slow.send('pause')
      await slow.next('paused')
      await Promise.all(publishers.map((w) => w.next('ready')))
      for (const w of publishers) w.send('go')
      await sleep(disconnectAfterMs)
      slow.send('destroy')
      await slow.next('closed')
      const done = await Promise.all(publishers.map((w) => w.next<{ sent: number }>('done', durationMs + 30_000)))
      published = done.reduce((s, d) => s + d.sent, 0)
      for (const w of publishers) w.send('close')
      await Promise.all(publishers.map((w) => w.next('closed', 15_000).catch(() => undefined)))
    }).catch(() => undefined)
  } finally {
    clearInterval(sampler)
  }
  await sleep(500)
  const alive = target.exitStatus() === null
  let healthz: number | null = null
  if (alive && target.httpPort !== null) {
    healthz = await fetch(`http://127.0.0.1:${target.httpPort}/healthz`, { signal: AbortSignal.timeout(5000) }).then((r) => r.status, () => null)
  }
  let redelivered: number | null = null
  if (alive) {
    const back = new LoadWorker({ task: 'subscriber', port: target.port, ca: env.ca, identity: slowIdentity, clean: false, topic: 'devices/+/telemetry', qos: 1, maxLatencies: 0 })
    redelivered = await withWorkers([back], async () => {
      await back.next('ready')
      // bounded (15 s): done once nothing more arrived for a second
      let last = -1
      let still = 0
      for (let i = 0; i < 75 && still < 5; i++) {
        await sleep(200)
        back.send('mark')
        const { received } = await back.next<{ received: number }>('mark')
        still = received === last ? still + 1 : 0
        last = received
      }
      return last
    }).catch(() => null)
  }
  const crashLine = target.stderrTail().split('\n').find((l) => /Error|error/.test(l)) ?? null
  return {
    alive,
    crash: alive ? null : `${target.exitStatus() ?? ''}${crashLine ? `: ${crashLine.trim()}` : ''}`,
    healthz,
    peakRssMB: round(peak / 1048576),
    published,
    redelivered
  }
}

/** the storm scenario's shape (issue 16) */
export const STORM_DEVICES = 2000
const STORM_STEADY_DEVICES = 50
/** the steady publishers' telemetry, QoS 1, all 50 together */
const STORM_STEADY_RATE = 1000
const STORM_BEFORE_MS = 3000
const STORM_DEADLINE_MS = 60_000
/** a device whose connect failed tries again after 0.5–1 s */
const STORM_RETRY_MS = 500

export interface StormWindow { p50Ms: number | null, p99Ms: number | null, maxMs: number | null, samples: number }

function window (latencies: Float64Array): StormWindow {
  return {
    p50Ms: latencies.length ? round(percentile(latencies, 50)!, 2) : null,
    p99Ms: latencies.length ? round(percentile(latencies, 99)!, 2) : null,
    maxMs: latencies.length ? round(Math.max(...latencies), 1) : null,
    samples: latencies.length
  }
}

/**
 * A reconnect storm: 2,000 connected devices drop and reconnect at once while 50
 * others publish telemetry (QoS 1, 1,000 msg/s in all) to a service. Value: ms
 * until all 2,000 are connected again; detail: the steady publishers' latency
 * before and during the storm, reconnect attempts, failures. The broker CPU
 * window is the storm's (drop to all back). The storm's clients run niced in
 * processes of their own (bench/niced-worker.ts).
 */
export async function reconnectStorm (target: Target, env: BenchEnv): Promise<ScenarioResult> {
  const stormDevices = env.devices.slice(STORM_STEADY_DEVICES, STORM_STEADY_DEVICES + STORM_DEVICES)
  if (stormDevices.length < STORM_DEVICES) return failed(new Error(`the storm needs ${STORM_STEADY_DEVICES + STORM_DEVICES} device identities, the bench has ${env.devices.length}`))
  const subscriber = new LoadWorker({
    task: 'subscriber', port: target.port, ca: env.ca, identity: env.service, clean: true, topic: 'devices/+/telemetry', qos: 1,
    maxLatencies: Math.ceil((STORM_STEADY_RATE * (STORM_BEFORE_MS + STORM_DEADLINE_MS)) / 1000)
  })
  // the storm's clients in niced processes of their own (bench/niced-worker.ts): their handshakes must not starve the measuring clients
  const stormers = split(stormDevices, GENERATOR_THREADS).map((identities) => new NicedLoadWorker({
    task: 'storm', port: target.port, ca: env.ca, identities, concurrency: 32, retryMs: STORM_RETRY_MS, deadlineMs: STORM_DEADLINE_MS
  }))
  const stormersUsage = (): number => stormers.reduce((sum, w) => sum + (w.usage()?.cpuMs ?? 0), 0)
  const publishers = split(env.devices.slice(0, STORM_STEADY_DEVICES), GENERATOR_THREADS).map((identities) => new LoadWorker({
    task: 'publishers', port: target.port, ca: env.ca, identities, qos: 1, window: 32,
    ratePerSecond: STORM_STEADY_RATE / GENERATOR_THREADS, durationMs: WARMUP_MS + STORM_BEFORE_MS + STORM_DEADLINE_MS + 10_000, maxCount: 10_000_000
  }))
  try {
    return await withWorkers([subscriber, ...publishers], () => storm(target, subscriber, stormers, publishers, stormersUsage))
  } finally {
    await Promise.all(stormers.map((w) => w.stop()))
  }
}

async function storm (target: Target, subscriber: LoadWorker, stormers: NicedLoadWorker[], publishers: LoadWorker[], stormersUsage: () => number): Promise<ScenarioResult> {
  try {
    await subscriber.next('ready')
    const ready = await Promise.all(stormers.map((w) => w.next<{ connected: number, firstError: string | null }>('ready', 120_000)))
    const connected = ready.reduce((s, r) => s + r.connected, 0)
    if (connected < STORM_DEVICES) throw new Error(`only ${connected} of ${STORM_DEVICES} storm devices connected: ${ready.find((r) => r.firstError)?.firstError ?? ''}`)
    const steady = await Promise.all(publishers.map((w) => w.next<{ connected: number, firstError: string | null }>('ready')))
    if (steady.reduce((s, r) => s + r.connected, 0) < STORM_STEADY_DEVICES) throw new Error(`steady publishers did not all connect: ${steady.find((r) => r.firstError)?.firstError ?? ''}`)
    for (const w of publishers) w.send('go')
    await sleep(WARMUP_MS)
    subscriber.send('record')
    const a = snapshot(target)
    await sleep(STORM_BEFORE_MS)
    subscriber.send('latencies')
    const before = (await subscriber.next<{ values: Float64Array }>('latencies')).values
    subscriber.send('record')
    const b = snapshot(target)
    const stormersBefore = stormersUsage()
    for (const w of stormers) w.send('drop')
    const results = await Promise.all(stormers.map((w) => w.next<{ back: number, ms: number | null, attempts: number, failures: number, firstError: string | null, backAfter: number[] }>('back', STORM_DEADLINE_MS + 30_000)))
    const c = snapshot(target)
    const stormersCpu = round(cpuPercent({ cpuMs: stormersBefore }, { cpuMs: stormersUsage() }, c.t - b.t))
    subscriber.send('latencies')
    const during = (await subscriber.next<{ values: Float64Array }>('latencies')).values
    for (const w of publishers) w.send('stop')
    await Promise.all(publishers.map((w) => w.next('done', 15_000)))
    for (const w of [...publishers, ...stormers]) w.send('close')
    await Promise.all([...publishers, ...stormers].map((w) => w.next('closed', 15_000)))
    subscriber.send('close')
    await subscriber.next('closed', 15_000)
    const back = results.reduce((s, r) => s + r.back, 0)
    const backAfter = results.flatMap((r) => r.backAfter)
    const allBackMs = back === STORM_DEVICES ? Math.max(...results.map((r) => r.ms ?? 0)) : null
    const w0 = window(before)
    const w1 = window(during)
    const cpuBefore = cpuBetween(a, b)
    const cpuStorm = cpuBetween(b, c)
    return {
      value: allBackMs === null ? null : round(allBackMs),
      detail: {
        back,
        attempts: results.reduce((s, r) => s + r.attempts, 0),
        failures: results.reduce((s, r) => s + r.failures, 0),
        firstError: results.find((r) => r.firstError)?.firstError ?? null,
        halfBackMs: backAfter.length ? round(percentile(backAfter, 50)!) : null,
        beforeP50Ms: w0.p50Ms,
        beforeP99Ms: w0.p99Ms,
        beforeSamples: w0.samples,
        duringP50Ms: w1.p50Ms,
        duringP99Ms: w1.p99Ms,
        duringMaxMs: w1.maxMs,
        duringSamples: w1.samples,
        // the worst latency of each 500 messages in arrival order (about half a second each): where in the storm it hurts
        duringProfileMs: Array.from({ length: Math.ceil(during.length / 500) }, (_, i) => Math.round(Math.max(...during.subarray(i * 500, (i + 1) * 500)))).join(' '),
        p99Ratio: w0.p99Ms && w1.p99Ms !== null ? round(w1.p99Ms / w0.p99Ms, 1) : null,
        brokerCpuBefore: cpuBefore.broker,
        // the niced storm clients' CPU over the storm, % of one core (the generator's figure is the measuring clients')
        stormClientsCpu: stormersCpu,
        // reconnects per broker CPU-second over the storm
        reconnectsPerCpuSecond: cpuStorm.broker ? round((back * 100) / ((cpuStorm.broker * cpuStorm.wallMs) / 1000)) : null
      },
      cpu: cpuStorm,
      ...(allBackMs === null ? { error: `${back} of ${STORM_DEVICES} back within ${STORM_DEADLINE_MS / 1000} s` } : {})
    }
  } catch (err) {
    return failed(err)
  }
}
