/**
 * WORKERS=N (CONTRACT §1): N broker processes on one host sharing its listeners,
 * each a whole broker (`buildBroker`) on the shared Redis.
 *
 * The primary serves nothing itself. It generates the dev PKI once (before any
 * worker could race on it), forks the workers with node:cluster, restarts one
 * that dies (with backoff, at most MAX_RESTARTS_PER_MINUTE per worker before it
 * gives up and stops everything, so a supervisor sees the crash loop), audits
 * `worker.started` / `worker.exited`, merges /metrics, forwards SIGHUP, and on
 * SIGTERM/SIGINT stops every worker (each closes like a single broker) and
 * exits 0.
 *
 * Listeners: every server a worker opens (MQTTS, token, HTTP, admin) ends in
 * net.Server.listen, which in a cluster worker asks the primary for the
 * listening socket; with round-robin scheduling (Linux's default, set here for
 * every platform) the primary accepts each connection and hands it to the next
 * worker. A worker that dies takes its connections with it; its devices
 * reconnect and are handed to the others. Per-process limits
 * (MAX_CONNECTIONS, MAX_CONCURRENT_HANDSHAKES, the per-address counts at
 * accept) apply to each worker.
 *
 * /metrics: whichever worker gets the scrape asks the primary, which collects
 * every live worker's registry over IPC (each worker looks at its store first,
 * as a single broker does before a scrape) and merges them with prom-client's
 * `AggregatorRegistry.aggregate`: counters and per-process gauges summed; the
 * fleet-wide gauges every process counts alike take the max, `store_up` the
 * min (broker/metrics.ts). The primary adds `jitp_workers{state}` and
 * `jitp_worker_restarts_total`. A worker that does not answer within
 * METRICS_TIMEOUT_MS is left out (`jitp_workers{state="scraped"}` says so).
 *
 * Audit: one file and one hash chain per process. The primary writes AUDIT_LOG
 * (its worker.* events), worker i writes `AUDIT_LOG.w<i>` (i = 1..N, its slot,
 * kept across restarts); every line also goes to the shared Redis stream. With
 * AUDIT_LOG=stdout all processes write whole lines to the one stdout.
 */
import cluster, { type Worker } from 'node:cluster'
import { AggregatorRegistry, Counter, Gauge, Registry, type MetricObjectWithValues, type MetricValue } from 'prom-client'
import { devPkiComplete, generateDevPki } from '../certs-dev/generate.js'
import { createAudit, type Audit } from './audit.js'
import type { BrokerHandle } from './build.js'
import type { Config } from './config.js'
import { JitpError } from './errors.js'
import { createAppLogger, type AppLogger } from './logger.js'

/** the worker's slot (1..N), set by the primary in the worker's environment */
export const WORKER_SLOT_ENV = 'AEDES_JITP_WORKER_SLOT'
/** a worker that dies is started again after this, doubled for each death of its slot in the last minute */
const RESTART_BASE_MS = 250
const RESTART_MAX_MS = 30_000
/** beyond this many deaths of one slot within a minute, the primary stops everything and exits 1 */
export const MAX_RESTARTS_PER_MINUTE = 5
/** a worker closes within 10 s or exits anyway (broker/cli/start.ts); after this it is killed */
const STOP_TIMEOUT_MS = 15_000
const METRICS_TIMEOUT_MS = 3000

type ToPrimary =
  | { type: 'jitp:ready', brokerId: string, mqttsPort: number, httpPort: number, adminPort: number | null }
  | { type: 'jitp:metrics', id: number }
  | { type: 'jitp:collected', id: number, metrics?: MetricObjectWithValues<MetricValue<string>>[], error?: string }
type ToWorker =
  | { type: 'jitp:metrics', id: number, text?: string, error?: string }
  | { type: 'jitp:collect', id: number }

function isMessage<T extends { type: string }> (msg: unknown): msg is T {
  return typeof msg === 'object' && msg !== null && typeof (msg as { type?: unknown }).type === 'string' && (msg as { type: string }).type.startsWith('jitp:')
}

// ---------------------------------------------------------------- worker side

export function isClusterWorker (): boolean {
  return cluster.isWorker
}

export function workerSlot (): number {
  return Number(process.env[WORKER_SLOT_ENV] ?? cluster.worker?.id ?? 0)
}

/** what a worker's configuration changes: its own audit file (one hash chain per process) */
export function workerOverrides (config: Config, slot = workerSlot()): Record<string, unknown> {
  return config.auditLog === 'stdout' ? {} : { AUDIT_LOG: `${config.auditLog}.w${slot}` }
}

let nextRequest = 0
const pendingScrapes = new Map<number, { resolve: (text: string) => void, reject: (err: Error) => void, timer: NodeJS.Timeout }>()

/** /metrics of a worker: the whole cluster's, merged by the primary */
export function clusterMetricsText (): Promise<string> {
  return new Promise((resolve, reject) => {
    const id = ++nextRequest
    const timer = setTimeout(() => {
      pendingScrapes.delete(id)
      reject(new Error('the primary did not answer the metrics request'))
    }, METRICS_TIMEOUT_MS + 1000)
    pendingScrapes.set(id, { resolve, reject, timer })
    process.send?.({ type: 'jitp:metrics', id } satisfies ToPrimary)
  })
}

/** a worker's side of the IPC: the primary's metrics answers and collection requests; then tells it the broker listens */
export function serveWorker (handle: BrokerHandle): void {
  process.on('message', function fromPrimary (msg: unknown) {
    if (!isMessage<ToWorker>(msg)) return
    if (msg.type === 'jitp:metrics') {
      const pending = pendingScrapes.get(msg.id)
      if (!pending) return
      pendingScrapes.delete(msg.id)
      clearTimeout(pending.timer)
      if (msg.text !== undefined) pending.resolve(msg.text)
      else pending.reject(new Error(msg.error ?? 'metrics unavailable'))
    } else if (msg.type === 'jitp:collect') {
      // jitp_store_up is what ready() last saw: look again first, as a single broker does before a scrape
      handle.ready().catch(() => undefined)
        .then(() => handle.metrics.registry.getMetricsAsJSON())
        .then((metrics) => process.send?.({ type: 'jitp:collected', id: msg.id, metrics } satisfies ToPrimary),
          (err: unknown) => process.send?.({ type: 'jitp:collected', id: msg.id, error: (err as Error).message } satisfies ToPrimary))
    }
  })
  process.send?.({ type: 'jitp:ready', brokerId: handle.broker.id, mqttsPort: handle.mqttsPort, httpPort: handle.httpPort, adminPort: handle.adminPort } satisfies ToPrimary)
}

// --------------------------------------------------------------- primary side

interface Slot {
  readonly index: number
  worker: Worker | null
  ready: boolean
  /** times of this slot's deaths within the last minute */
  deaths: number[]
  restartTimer: NodeJS.Timeout | null
}

export interface PrimaryOptions {
  log?: AppLogger
  /** audit destination override (tests) */
  auditStream?: NodeJS.WritableStream
}

export interface Primary {
  /** stops every worker (bounded), then the primary's audit */
  stop (): Promise<void>
  /** resolves when the cluster is down for good: stopped, or given up after a crash loop (then with an error) */
  readonly done: Promise<void>
}

function whyExited (code: number | null, signal: string | null): string {
  return signal ? `signal ${signal}` : `exit code ${code ?? '?'}`
}

/**
 * Forks config.workers workers and resolves once every one listens; rejects
 * (after stopping the others) when one exits before it does: a port in use, a
 * bad file, anything that would stop a single broker at start.
 */
export async function startPrimary (config: Config, opts: PrimaryOptions = {}): Promise<Primary> {
  if (!config.redisUrl) {
    throw new JitpError('InvalidConfig', `WORKERS: ${config.workers} broker processes need REDIS_URL (sessions, registry, throttles and revocations are shared through it)`)
  }
  const log = opts.log ?? createAppLogger(config.logLevel)
  // once, here: N workers finding no PKI at the same moment would each write their own
  if (config.generateDevCerts && !devPkiComplete(config.certsDir)) {
    log.warn({ dir: config.certsDir }, 'no PKI found: generating a development PKI (never use it in production)')
    await generateDevPki({ outDir: config.certsDir })
  }
  const audit: Audit = createAudit(opts.auditStream ?? config.auditLog, {
    refusalIntervalMs: config.auditAggregateSeconds * 1000,
    redisUrl: config.redisUrl,
    streamMaxLen: config.auditStreamMaxLen,
    memoryLines: config.auditMemoryLines,
    log
  })

  const registry = new Registry()
  const workersGauge = new Gauge({ name: 'jitp_workers', help: 'Broker worker processes (WORKERS): live, and answering the last metrics collection', labelNames: ['state'], registers: [registry] })
  const restarts = new Counter({ name: 'jitp_worker_restarts_total', help: 'Worker processes restarted after they died', registers: [registry] })

  cluster.schedulingPolicy = cluster.SCHED_RR
  const slots: Slot[] = Array.from({ length: config.workers }, (_, i) => ({ index: i + 1, worker: null, ready: false, deaths: [], restartTimer: null }))
  let stopping = false
  let started = false
  let finish: (err?: Error) => void = () => {}
  const done = new Promise<void>((resolve, reject) => {
    finish = (err) => (err ? reject(err) : resolve())
  })
  let startFailed: (err: Error) => void = () => {}
  let allReady: () => void = () => {}
  const startup = new Promise<void>((resolve, reject) => {
    allReady = resolve
    startFailed = reject
  })

  function live (): Worker[] {
    return slots.flatMap((s) => (s.worker && !s.worker.isDead() ? [s.worker] : []))
  }

  function fork (slot: Slot): void {
    slot.ready = false
    const worker = cluster.fork({ [WORKER_SLOT_ENV]: String(slot.index) })
    slot.worker = worker
    worker.on('message', (msg: unknown) => fromWorker(slot, worker, msg))
    worker.once('exit', (code: number | null, signal: string | null) => exited(slot, worker, code, signal))
    workersGauge.set({ state: 'live' }, live().length)
  }

  function fromWorker (slot: Slot, worker: Worker, msg: unknown): void {
    if (!isMessage<ToPrimary>(msg)) return
    if (msg.type === 'jitp:ready') {
      slot.ready = true
      // the line's own brokerId is the primary's (one chain per process): the worker's broker is named in the reason
      audit.write('worker.started', { pid: worker.process.pid, reason: `worker ${slot.index} of ${config.workers}, broker ${msg.brokerId}` })
      log.info({ worker: slot.index, pid: worker.process.pid, mqttsPort: msg.mqttsPort, httpPort: msg.httpPort, adminPort: msg.adminPort }, 'worker listening')
      if (!started && slots.every((s) => s.ready)) {
        started = true
        allReady()
      }
    } else if (msg.type === 'jitp:metrics') {
      collectMetrics().then((text) => send(worker, { type: 'jitp:metrics', id: msg.id, text }),
        (err: unknown) => send(worker, { type: 'jitp:metrics', id: msg.id, error: (err as Error).message }))
    } else if (msg.type === 'jitp:collected') {
      collected(msg)
    }
  }

  function exited (slot: Slot, worker: Worker, code: number | null, signal: string | null): void {
    if (slot.worker === worker) slot.worker = null
    slot.ready = false
    workersGauge.set({ state: 'live' }, live().length)
    audit.write('worker.exited', { pid: worker.process.pid, ...(code !== null ? { code } : {}), reason: `worker ${slot.index}: ${whyExited(code, signal)}` }, stopping ? 'info' : 'warn')
    if (stopping) return
    if (!started) {
      startFailed(new Error(`worker ${slot.index} exited at start (${whyExited(code, signal)})`))
      return
    }
    const now = Date.now()
    slot.deaths = slot.deaths.filter((t) => now - t < 60_000)
    slot.deaths.push(now)
    if (slot.deaths.length > MAX_RESTARTS_PER_MINUTE) {
      log.error({ worker: slot.index, deaths: slot.deaths.length }, 'worker keeps dying: stopping the cluster')
      stop().then(() => finish(new Error(`worker ${slot.index} died ${slot.deaths.length} times within a minute`)), finish)
      return
    }
    const delay = Math.min(RESTART_MAX_MS, RESTART_BASE_MS * 2 ** (slot.deaths.length - 1))
    log.warn({ worker: slot.index, pid: worker.process.pid, code, signal, restartInMs: delay }, 'worker died: restarting it')
    slot.restartTimer = setTimeout(() => {
      slot.restartTimer = null
      if (stopping) return
      restarts.inc()
      fork(slot)
    }, delay)
  }

  function send (worker: Worker, msg: ToWorker): void {
    if (worker.isConnected()) worker.send(msg)
  }

  // one collection at a time per request; answers come back by id
  let nextCollection = 0
  const collections = new Map<number, { answers: MetricObjectWithValues<MetricValue<string>>[][], waiting: number, finish: () => void }>()

  function collected (msg: Extract<ToPrimary, { type: 'jitp:collected' }>): void {
    const c = collections.get(msg.id)
    if (!c) return
    if (msg.metrics) c.answers.push(msg.metrics)
    if (--c.waiting === 0) c.finish()
  }

  async function collectMetrics (): Promise<string> {
    const id = ++nextCollection
    const workers = live().filter((w) => w.isConnected())
    const answers = await new Promise<MetricObjectWithValues<MetricValue<string>>[][]>((resolve) => {
      const c = { answers: [] as MetricObjectWithValues<MetricValue<string>>[][], waiting: workers.length, finish: () => {} }
      const timer = setTimeout(() => c.finish(), METRICS_TIMEOUT_MS)
      c.finish = () => {
        clearTimeout(timer)
        collections.delete(id)
        resolve(c.answers)
      }
      collections.set(id, c)
      if (workers.length === 0) c.finish()
      for (const w of workers) send(w, { type: 'jitp:collect', id })
    })
    workersGauge.set({ state: 'live' }, live().length)
    workersGauge.set({ state: 'scraped' }, answers.length)
    const merged = AggregatorRegistry.aggregate(answers)
    return (await merged.metrics()) + (await registry.metrics())
  }

  let stopped: Promise<void> | undefined
  function stop (): Promise<void> {
    stopped ??= (async () => {
      stopping = true
      for (const slot of slots) {
        if (slot.restartTimer) clearTimeout(slot.restartTimer)
        slot.restartTimer = null
      }
      const workers = live()
      const gone = Promise.all(workers.map((w) => new Promise<void>((resolve) => {
        if (w.isDead()) return resolve()
        w.once('exit', () => resolve())
      })))
      // each worker closes as a single broker does on SIGTERM (broker/cli/start.ts)
      for (const w of workers) w.process.kill('SIGTERM')
      const timer = setTimeout(() => {
        for (const w of live()) w.process.kill('SIGKILL')
      }, STOP_TIMEOUT_MS)
      await gone
      clearTimeout(timer)
      await audit.close()
    })()
    return stopped
  }

  for (const slot of slots) fork(slot)
  try {
    await startup
  } catch (err) {
    await stop()
    throw err
  }
  log.info({ workers: config.workers }, 'aedes-jitp cluster listening')
  return {
    stop: () => stop().then(() => finish()),
    done
  }
}

/** SIGHUP for every worker: each reloads CERTS_DIR */
export function forwardSignal (signal: NodeJS.Signals): void {
  for (const id in cluster.workers) cluster.workers[id]?.process.kill(signal)
}
