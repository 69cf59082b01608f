/**
 * Turns the benchmark results into the markdown tables printed at the end of a
 * run and kept in docs/PERFORMANCE.md.
 */
import type { AdminApiPagesResult } from './admin-pages.js'
import { renderPiiDetect, type PiiDetectBenchResult } from './pii-detect.js'
import type { RolloutBenchResult } from './rollout.js'
import type { RetainedLookupResult } from './retained-lookup.js'
import type { WorkersResult } from './workers.js'
import type { OverloadResult, ScenarioResult } from './scenarios.js'

export type TargetKey = 'aedes-memory' | 'jitp-memory' | 'aedes-redis' | 'jitp-redis' | 'mosquitto'

export interface BenchResults {
  startedAt: string
  machine: { nproc: number, cpuModel: string, node: string, payloadBytes: number, loadAverageAtStart: string, loadAverageAtEnd: string }
  targets: Partial<Record<TargetKey, { scenarios: Record<string, ScenarioResult>, exit: string | null }>>
  issuance: { perSecond: number, count: number } | null
  retainedLookup: RetainedLookupResult | null
  noDelayOff: ScenarioResult | null
  /** the admin API's device listing over HTTPS at fleet scale (bench/admin-pages.ts), Redis store */
  adminPages: AdminApiPagesResult | null
  /** a configuration rollout to a fleet on Redis (bench/rollout.ts) */
  rollout: RolloutBenchResult | null
  overload: Partial<Record<TargetKey, OverloadResult>>
  /** every connect and fan-in round, keyed `<target> connects|qos0|qos1`: connects/s or delivered msg/s, broker and Redis CPU % */
  fanInRounds: Record<string, Array<{ value: number | null, brokerCpu: number | null, redisCpu?: number | null }>>
  provisioningBuilt: boolean
  /** BENCH_AB_DIST: the other build whose aedes-jitp ran in the bare-Aedes slots, or null */
  abDist?: string | null
  /** WORKERS=1 against WORKERS=2 on Redis through the real CLI (bench/workers.ts) */
  workers?: WorkersResult | null
  durationSeconds: number
  /** inline personal-data detection: flag against off, and µs per payload (bench/pii-detect.ts) */
  piiDetect?: PiiDetectBenchResult | null
}

interface Row {
  readonly scenario: string
  readonly label: string
  readonly pick: (r: ScenarioResult) => number | null
}

const ROWS: readonly Row[] = [
  { scenario: 'connects', label: 'mTLS connects/s, 64 concurrent', pick: (r) => r.value },
  { scenario: 'connectLatency', label: 'connect time p50, one at a time, ms ↓', pick: (r) => r.value },
  { scenario: 'qos0', label: 'QoS 0 fan-in, msg/s delivered', pick: (r) => r.value },
  { scenario: 'qos1', label: 'QoS 1 fan-in, msg/s delivered', pick: (r) => r.value },
  { scenario: 'connects', label: 'connects per broker CPU-second', pick: perCpuSecond },
  { scenario: 'qos0', label: 'QoS 0 msg per broker CPU-second', pick: perCpuSecond },
  { scenario: 'qos1', label: 'QoS 1 msg per broker CPU-second', pick: perCpuSecond },
  { scenario: 'connects', label: 'Redis CPU per connect, µs ↓', pick: (r) => redisCpuPer(r, 1e6) },
  { scenario: 'qos0', label: 'Redis CPU per message, QoS 0, µs ↓', pick: (r) => redisCpuPer(r, 1e6) },
  { scenario: 'qos1', label: 'Redis CPU per message, QoS 1, µs ↓', pick: (r) => redisCpuPer(r, 1e6) },
  { scenario: 'paced', label: 'paced 5,000 msg/s QoS 1: p50 ms ↓', pick: (r) => num(r.detail.p50Ms) },
  { scenario: 'paced', label: 'paced 5,000 msg/s QoS 1: p99 ms ↓', pick: (r) => r.value },
  { scenario: 'idle', label: 'RSS per idle mTLS connection (2,000), KB ↓', pick: (r) => r.value },
  // the same less V8's young generation, whose size is a GC heuristic's state, not the connections' (docs/PERFORMANCE.md)
  { scenario: 'idle', label: 'RSS per idle mTLS connection, young generation excluded, KB ↓', pick: (r) => num(r.detail.rssExYoungKBPerConnection) },
  // the live objects alone, after a full GC: what the code keeps per connection, apart from what the allocator holds on to
  { scenario: 'idle', label: 'JS heap per idle mTLS connection, after a full GC, KB ↓', pick: (r) => num(r.detail.heapKBPerConnection) },
  { scenario: 'provisioning', label: 'JIT provisioning, devices/s end to end (`aedes-jitp simulate`)', pick: (r) => r.value },
  { scenario: 'provisioning lean', label: 'JIT provisioning, devices/s end to end (the bench\'s lean client, 2 threads)', pick: (r) => r.value },
  { scenario: 'provisioning', label: 'certificates issued/s during provisioning', pick: (r) => num(r.detail.certificatesPerSecond) },
  // what one broker CPU-second buys in every scenario (issue 16)
  { scenario: 'paced', label: 'paced: msg per broker CPU-second', pick: (r) => perCpu(num(r.detail.deliveredPerSecond), r) },
  { scenario: 'idle', label: 'opening 2,000 connections: connects per broker CPU-second', pick: (r) => perCpu(num(r.detail.connectsPerSecond), r) },
  { scenario: 'provisioning', label: 'provisioned devices per broker CPU-second (`aedes-jitp simulate`)', pick: perCpuSecond },
  { scenario: 'provisioning lean', label: 'provisioned devices per broker CPU-second (lean client)', pick: perCpuSecond },
  { scenario: 'storm', label: 'reconnect storm of 2,000: all back after, ms ↓', pick: (r) => r.value },
  { scenario: 'storm', label: 'storm: steady publishers p99 before, ms ↓', pick: (r) => num(r.detail.beforeP99Ms) },
  { scenario: 'storm', label: 'storm: steady publishers p99 during, ms ↓', pick: (r) => num(r.detail.duringP99Ms) },
  { scenario: 'storm', label: 'storm: reconnects per broker CPU-second', pick: (r) => num(r.detail.reconnectsPerCpuSecond) }
]

const COLUMNS: ReadonlyArray<{ key: TargetKey, title: string }> = [
  { key: 'aedes-memory', title: 'bare Aedes, memory' },
  { key: 'jitp-memory', title: 'aedes-jitp, memory' },
  { key: 'aedes-redis', title: 'bare Aedes, Redis' },
  { key: 'jitp-redis', title: 'aedes-jitp, Redis' },
  { key: 'mosquitto', title: 'Mosquitto' }
]

/** a rate (per second) divided by the broker's CPU use over the same window */
function perCpu (perSecond: number | null, r: ScenarioResult): number | null {
  const cpu = r.cpu?.broker
  return perSecond === null || !cpu ? null : (perSecond * 100) / cpu
}

/** throughput divided by the broker's CPU use: what one core of broker buys, whatever the hypervisor took */
function perCpuSecond (r: ScenarioResult): number | null {
  const cpu = r.cpu?.broker
  return r.value === null || !cpu ? null : (r.value * 100) / cpu
}

/** the broker's redis-server CPU per unit of throughput (`unit` 1e6: µs), over the same window */
function redisCpuPer (r: ScenarioResult, unit: number): number | null {
  const cpu = r.cpu?.redis
  return r.value === null || !r.value || cpu === undefined || cpu === null ? null : (cpu / 100) * unit / r.value
}

function num (v: unknown): number | null {
  return typeof v === 'number' && Number.isFinite(v) ? v : null
}

function fmt (v: number | null): string {
  if (v === null) return 'n/a'
  if (Math.abs(v) >= 100) return Math.round(v).toLocaleString('en-US')
  if (Math.abs(v) >= 10) return v.toFixed(1)
  return v.toFixed(2)
}

function median (values: readonly number[]): number | null {
  if (values.length === 0) return null
  const sorted = [...values].sort((x, y) => x - y)
  const mid = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2
}

function ratio (a: number | null, b: number | null): string {
  return a === null || b === null || b === 0 ? 'n/a' : `${(a / b).toFixed(2)}×`
}

function valueOf (results: BenchResults, key: TargetKey, row: Row): number | null {
  const r = results.targets[key]?.scenarios[row.scenario]
  return r ? row.pick(r) : null
}

function cell (results: BenchResults, key: TargetKey, row: Row): string {
  const target = results.targets[key]
  if (!target) return 'n/a'
  const r = target.scenarios[row.scenario]
  if (row.scenario.startsWith('provisioning') && !results.provisioningBuilt) return 'n/a (provisioning not built yet)'
  if (!r) return key.startsWith('jitp') || !row.scenario.startsWith('provisioning') ? 'n/a' : '—'
  if (r.error) return `failed: ${r.error}`
  return fmt(row.pick(r))
}

export function renderReport (results: BenchResults): string {
  const out: string[] = []
  const m = results.machine
  out.push(`Run ${results.startedAt}, ${results.durationSeconds} s: ${m.nproc} × ${m.cpuModel}, Node ${m.node}; load average ${m.loadAverageAtStart} at the start, ${m.loadAverageAtEnd} at the end; telemetry payload ${m.payloadBytes} bytes (valid against schemas/telemetry.json).`, '')
  out.push(`| scenario | ${COLUMNS.map((c) => c.title).join(' | ')} | jitp/Aedes memory | jitp/Aedes Redis | jitp memory/Mosquitto |`)
  out.push(`|---|${COLUMNS.map(() => '---:').join('|')}|---:|---:|---:|`)
  for (const row of ROWS) {
    const v = (k: TargetKey): number | null => valueOf(results, k, row)
    out.push(`| ${row.label} | ${COLUMNS.map((c) => cell(results, c.key, row)).join(' | ')} | ${ratio(v('jitp-memory'), v('aedes-memory'))} | ${ratio(v('jitp-redis'), v('aedes-redis'))} | ${ratio(v('jitp-memory'), v('mosquitto'))} |`)
  }
  out.push('', '↓ lower is better. Ratios are aedes-jitp ÷ the other broker.', '')

  out.push('CPU over each measured window, % of one core: broker process / load generator (all its threads) / stolen by the hypervisor (% of the whole machine); (Redis: the broker\'s private redis-server).', '')
  out.push(`| scenario | ${COLUMNS.map((c) => c.title).join(' | ')} |`)
  out.push(`|---|${COLUMNS.map(() => '---:').join('|')}|`)
  const cpuRows: Array<[string, string]> = [['connects', 'connects'], ['qos0', 'QoS 0 fan-in'], ['qos1', 'QoS 1 fan-in'], ['paced', 'paced 5,000 msg/s'], ['idle', 'opening 2,000 connections'], ['provisioning', 'provisioning (simulate)'], ['provisioning lean', 'provisioning (lean client)'], ['storm', 'reconnect storm (drop to all back)']]
  for (const [scenario, label] of cpuRows) {
    const cells = COLUMNS.map((c) => {
      const cpu = results.targets[c.key]?.scenarios[scenario]?.cpu
      return cpu ? `${cpu.broker ?? '?'} / ${cpu.generator} / ${cpu.steal ?? '?'}${cpu.redis !== undefined && cpu.redis !== null ? ` (Redis ${cpu.redis})` : ''}` : 'n/a'
    })
    out.push(`| ${label} | ${cells.join(' | ')} |`)
  }
  out.push('')

  const extra: string[] = []
  if (results.issuance) extra.push(`- Certificate issuance alone (bench/issue-certificates.ts, EC P-256 signed by an EC P-256 CA, one thread): **${results.issuance.perSecond.toLocaleString('en-US')} certificates/s**.`)
  if (results.retainedLookup) {
    const { devices, rows } = results.retainedLookup
    extra.push(`- Retained lookups per SUBSCRIBE with ${devices.toLocaleString('en-US')} provisioned devices (one retained config each; bench/retained-lookup.ts), Aedes' memory store → the same store with the retained index: ${rows.map((r) => `${r.label} ${fmt(r.aedesMs)} → ${fmt(r.indexedMs)} ms (${r.indexedMs > 0 ? Math.round(r.aedesMs / r.indexedMs) : 'n/a'}× faster)`).join('; ')}.`)
  }
  const fanIn = (k: TargetKey, s: string): string => {
    const d = results.targets[k]?.scenarios[s]?.detail
    return d ? `${fmt(num(d.sentPerSecond))} sent/s` : 'n/a'
  }
  extra.push(`- Publishers' side of the fan-in (sent/s, QoS 0 | QoS 1): ${COLUMNS.map((c) => `${c.title} ${fanIn(c.key, 'qos0')} | ${fanIn(c.key, 'qos1')}`).join('; ')}.`)
  if (results.noDelayOff) {
    const on = results.targets['aedes-memory']?.scenarios.connectLatency
    extra.push(`- TCP_NODELAY: connect time p50 / p99 one at a time, bare Aedes listener with noDelay **on** ${fmt(on?.value ?? null)} / ${fmt(num(on?.detail.p99Ms))} ms, **off** ${fmt(results.noDelayOff.value)} / ${fmt(num(results.noDelayOff.detail.p99Ms))} ms; aedes-jitp (noDelay on) ${fmt(results.targets['jitp-memory']?.scenarios.connectLatency?.value ?? null)} ms.`)
  }
  if (results.adminPages) {
    const a = results.adminPages
    extra.push(`- Admin API, \`GET /v1/devices?limit=100\` over HTTPS (mutual TLS, one keep-alive connection) with ${a.devices.toLocaleString('en-US')} devices in the Redis registry, every page followed by cursor: ${a.pages} pages, p50 ${fmt(a.p50Ms)} ms, p99 ${fmt(a.p99Ms)} ms, max ${fmt(a.maxMs)} ms per page (bound: 100 ms); first request with its TLS handshake ${fmt(a.firstRequestMs)} ms.`)
  }
  if (results.rollout) {
    const r = results.rollout
    extra.push(`- Configuration rollout to ${r.devices.toLocaleString('en-US')} devices on Redis, waves ${r.waves.join(',')} with no wait (acks recorded by an in-process simulator): every device applied after ${fmt(r.allAppliedMs)} ms, completed after ${fmt(r.completedMs)} ms; ${fmt(r.cpuMsPerDevice)} ms of CPU and ${fmt(r.redisCommandsPerDevice)} Redis commands per device (${Object.entries(r.redisCommandsByName).sort((a, b) => b[1] - a[1]).slice(0, 6).map(([k, v]) => `${k} ${v}`).join(', ')}).`)
  }
  out.push(...extra, '')

  const roundRows: string[] = []
  for (const [store, a, j] of [['memory', 'aedes-memory', 'jitp-memory'], ['Redis', 'aedes-redis', 'jitp-redis']] as const) {
    for (const qos of ['connects', 'qos0', 'qos1']) {
      const ra = results.fanInRounds[`${a} ${qos}`] ?? []
      const rj = results.fanInRounds[`${j} ${qos}`] ?? []
      if (ra.length === 0 || rj.length === 0) continue
      type Round = (typeof ra)[number]
      const pairs = ra.flatMap((x, i): Array<readonly [Round, Round]> => (rj[i] === undefined ? [] : [[x, rj[i]]]))
      const ratios = pairs.map(([x, y]) => (x.value && y.value !== null ? y.value / x.value : null)).filter((v): v is number => v !== null)
      const perCpu = pairs.map(([x, y]) => (x.value && y.value !== null && x.brokerCpu && y.brokerCpu ? (y.value / y.brokerCpu) / (x.value / x.brokerCpu) : null)).filter((v): v is number => v !== null)
      // Redis CPU per delivered message, jitp ÷ Aedes, per round
      const perRedis = pairs.map(([x, y]) => (x.value && y.value && x.redisCpu && y.redisCpu ? (y.redisCpu / y.value) / (x.redisCpu / x.value) : null)).filter((v): v is number => v !== null)
      const list = (r: typeof ra): string => r.map((x) => fmt(x.value)).join(', ')
      roundRows.push(`| ${store} | ${qos === 'connects' ? 'connects' : qos === 'qos0' ? 'QoS 0' : 'QoS 1'} | ${list(ra)} | ${list(rj)} | ${ratios.map((v) => v.toFixed(2)).join(', ')} | **${fmt(median(ratios))}×** | ${fmt(median(perCpu))}× | ${perRedis.length > 0 ? `${fmt(median(perRedis))}×` : 'n/a'} |`)
    }
  }
  if (roundRows.length > 0) {
    out.push('Connect and fan-in rounds (connects/s, msg/s delivered; the brokers of one store take turns, and the tables above show each one\'s median round):', '')
    out.push('| store | scenario | bare Aedes, each round | aedes-jitp, each round | jitp ÷ Aedes, each round | median ratio | median ratio per broker CPU-second | median Redis CPU per connect or message, jitp ÷ Aedes ↓ |')
    out.push('|---|---|---|---|---|---:|---:|---:|')
    out.push(...roundRows, '')
  }

  const bareConnects = results.targets['aedes-memory']?.scenarios.connects
  const provisioned = results.targets['jitp-memory']?.scenarios.provisioning
  // ms of broker CPU per connect / per device: the inverse of what one broker CPU-second buys
  const msEach = (r: ScenarioResult | undefined): number | null => {
    const perSecond = r ? perCpuSecond(r) : null
    return perSecond ? 1000 / perSecond : null
  }
  const bareCpuPerConnect = msEach(bareConnects)
  if (bareCpuPerConnect !== null) {
    const perDevice = msEach(provisioned)
    out.push(`JIT provisioning against its floor: a device costs two full mutual-TLS connects (claim certificate, then its own). Bare Aedes, memory, spends **${fmt(bareCpuPerConnect)} ms** of broker CPU per connect (connect, CONNACK, disconnect), so one broker core tops out at **${fmt(1000 / (2 * bareCpuPerConnect))} devices/s** with no provisioning work at all. aedes-jitp, memory, spends ${perDevice === null ? 'n/a' : `**${fmt(perDevice)} ms** per provisioned device (two connects, CSR check, two certificates, registration, retained config, replies, audit)`}.`, '')
  }
  out.push(...renderFloorShare(results), ...renderStorm(results), ...renderWorkers(results))

  const overloadKeys = Object.keys(results.overload) as TargetKey[]
  if (overloadKeys.length > 0) {
    out.push('Overload: 50 devices publish QoS 1 flat out (64 in flight each) for 10 s to one persistent-session subscriber that stops reading and disconnects after 3 s; then it reconnects for its queue.', '')
    out.push('| broker | outcome | /healthz | peak RSS MB | published | redelivered on reconnect |')
    out.push('|---|---|---|---:|---:|---:|')
    for (const k of overloadKeys) {
      const o = results.overload[k]!
      out.push(`| ${COLUMNS.find((c) => c.key === k)?.title ?? k} | ${o.alive ? 'alive' : `**died** (${o.crash ?? '?'})`} | ${o.healthz ?? 'n/a'} | ${o.peakRssMB} | ${o.published.toLocaleString('en-US')} | ${o.redelivered ?? 'n/a'} |`)
    }
    out.push('')
  }
  if (results.piiDetect) out.push(...renderPiiDetect(results.piiDetect))
  return out.join('\n')
}

/**
 * Provisioning as a share of its floor (issue 16): devices per broker CPU-second
 * ÷ half of bare Aedes' connects per broker CPU-second, same persistence.
 */
function renderFloorShare (results: BenchResults): string[] {
  const cells: string[] = []
  for (const [store, bare, jitp] of [['memory', 'aedes-memory', 'jitp-memory'], ['Redis', 'aedes-redis', 'jitp-redis']] as const) {
    const connects = results.targets[bare]?.scenarios.connects
    const provisioned = results.targets[jitp]?.scenarios.provisioning
    const floor = connects ? perCpuSecond(connects) : null
    const devices = provisioned ? perCpuSecond(provisioned) : null
    if (floor === null || devices === null) continue
    cells.push(`${store} **${(devices / (floor / 2)).toFixed(2)}** (${fmt(devices)} devices per broker CPU-second against ${fmt(floor / 2)})`)
  }
  return cells.length === 0 ? [] : [`Provisioning as a share of its floor (devices per broker CPU-second ÷ half of bare Aedes' connects per broker CPU-second, same store; goal ≥ 0.8): ${cells.join('; ')}.`, '']
}

function renderStorm (results: BenchResults): string[] {
  const rows: string[] = []
  for (const c of COLUMNS) {
    const r = results.targets[c.key]?.scenarios.storm
    if (!r) continue
    const d = r.detail
    rows.push(`| ${c.title} | ${r.error ? `failed: ${r.error}` : fmt(r.value)} | ${fmt(num(d.halfBackMs))} | ${num(d.attempts) ?? 'n/a'} / ${num(d.failures) ?? 'n/a'} | ${fmt(num(d.beforeP99Ms))} | ${fmt(num(d.duringP99Ms))} | ${fmt(num(d.duringMaxMs))} | ${fmt(num(d.p99Ratio))}× | ${r.cpu ? `${r.cpu.broker ?? '?'} / ${r.cpu.generator} / ${num(d.stormClientsCpu) ?? '?'}` : 'n/a'} | ${fmt(num(d.reconnectsPerCpuSecond))} |`)
  }
  if (rows.length === 0) return []
  const time = (k: TargetKey): number | null => results.targets[k]?.scenarios.storm?.value ?? null
  const ratios = [['memory', 'aedes-memory', 'jitp-memory'], ['Redis', 'aedes-redis', 'jitp-redis']] as const
  return [
    'Reconnect storm: 2,000 connected devices drop at once and reconnect at once (failed attempts retried after 0.5–1 s) while 50 others publish QoS 1 telemetry, 1,000 msg/s in all, to one service. The storm\'s clients run in two processes of their own at `nice 19` (bench/niced-worker.ts), so that their handshakes take only the CPU the broker and the measuring clients leave; latency is the steady publishers\' send-to-receive time.',
    '',
    '| broker | all 2,000 back after, ms ↓ | half back after, ms | connect attempts / failed | steady p99 before, ms | steady p99 during, ms | max during, ms | p99 during ÷ before ↓ | CPU: broker / measuring clients / storm clients, % | reconnects per broker CPU-second |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...rows,
    '',
    `Time until all are back, aedes-jitp ÷ bare Aedes (goal ≤ 2×): ${ratios.map(([store, a, j]) => `${store} ${ratio(time(j), time(a))}`).join(', ')}.`,
    ''
  ]
}

function renderWorkers (results: BenchResults): string[] {
  const w = results.workers
  if (!w || w.targets.length === 0) return []
  const one = w.targets.find((t) => t.workers === 1)
  const two = w.targets.find((t) => t.workers === 2)
  type Pick = (t: NonNullable<typeof one>) => number | null
  const rows: Array<[string, Pick]> = [
    ['mTLS connects/s, 64 concurrent (median round)', (t) => t.connects?.value ?? null],
    ['connects per broker CPU-second (all processes)', (t) => (t.connects ? perCpuSecond(t.connects) : null)],
    ['broker CPU during connects, % of one core (all processes)', (t) => t.connects?.cpu?.broker ?? null],
    ['load generator CPU during connects, %', (t) => t.connects?.cpu?.generator ?? null],
    ['JIT provisioning, devices/s end to end', (t) => t.provisioning?.value ?? null],
    ['provisioned devices per broker CPU-second', (t) => (t.provisioning ? perCpuSecond(t.provisioning) : null)],
    ['broker CPU during provisioning, %', (t) => t.provisioning?.cpu?.broker ?? null],
    ['load generator CPU during provisioning, %', (t) => t.provisioning?.cpu?.generator ?? null],
    ['Redis CPU during connects, %', (t) => t.connects?.cpu?.redis ?? null],
    ['the primary\'s share of the CPU, %', (t) => t.primaryShare]
  ]
  const cell = (t: typeof one, pick: Pick): string => (t ? (t.error && pick(t) === null ? `failed: ${t.error}` : fmt(pick(t))) : 'n/a')
  return [
    `WORKERS (aedes-jitp on Redis through the real \`aedes-jitp start\`, each with its own redis-server; ${w.rounds} alternating connect rounds, one provisioning window; CPU summed over the primary and its workers):`,
    '',
    '| | WORKERS=1 | WORKERS=2 | 2 ÷ 1 |',
    '|---|---:|---:|---:|',
    ...rows.map(([label, pick]) => `| ${label} | ${cell(one, pick)} | ${cell(two, pick)} | ${one && two ? ratio(pick(two), pick(one)) : 'n/a'} |`),
    '',
    `Connect rounds (connects/s): WORKERS=1 ${one?.connectRounds.map(fmt).join(', ') ?? 'n/a'}; WORKERS=2 ${two?.connectRounds.map(fmt).join(', ') ?? 'n/a'}.`,
    ''
  ]
}
