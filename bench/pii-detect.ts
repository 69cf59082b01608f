/**
 * Inline detection of personal data (broker/pii-detect.ts, issue 15), measured two ways:
 * - micro: µs of the detection pass per ~200-byte telemetry payload (already
 *   parsed, as validation hands it over), with nothing to find and with one
 *   e-mail address, next to the parse + schema validation every payload costs anyway;
 * - fan-in: QoS 1 fan-in on two brokers of this build, in memory, side by side in
 *   the same run, one with telemetry on `"detect": "flag"` (the default) and one
 *   with `"detect": "off"`, taking turns round after round; the median ratio is
 *   the cost of detection on the hot path (goal ≥ 0.95).
 * Run alone: BENCH_ONLY=pii-detect npm run bench
 */
import { cpSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { mayHoldPii, scanJson } from '../broker/pii-detect.js'
import { loadSchemaCatalogue } from '../plugins/schema-catalogue.js'
import { validatePayload } from '../plugins/validation.js'
import type { BrokerChildOptions } from './broker-child.js'
import type { Target } from './processes.js'
import { fanInThroughput, round, type BenchEnv, type ScenarioResult } from './scenarios.js'
import { telemetryPayload } from './telemetry.js'

export interface PiiDetectBenchResult {
  readonly micro: {
    readonly payloadBytes: number
    readonly iterations: number
    /** µs per payload: the quick walk the hot path runs first (mayHoldPii) over distinct payloads, nothing found: all a clean payload costs */
    readonly quickCleanUs: number
    /** µs per payload: the full detection pass (scanJson), nothing found */
    readonly detectCleanUs: number
    /** µs per payload: the detection pass, one e-mail address found */
    readonly detectEmailUs: number
    /** µs per payload: parse + schema validation, for scale */
    readonly validateUs: number
  }
  readonly fanIn: {
    readonly flag: ReadonlyArray<number | null>
    readonly off: ReadonlyArray<number | null>
    readonly flagCpu: ReadonlyArray<number | null>
    readonly offCpu: ReadonlyArray<number | null>
    /** flag ÷ off, per round and the median */
    readonly ratios: readonly number[]
    readonly medianRatio: number | null
    readonly medianRatioPerCpu: number | null
  } | null
}

export interface PiiDetectBenchOptions {
  readonly projectDir: string
  readonly env: BenchEnv
  readonly rounds: number
  /** starts one broker child of this build (bench/run.ts's `child`) */
  readonly child: (key: string, opts: BrokerChildOptions) => Promise<Target>
  /** the options of a jitp-memory child, SCHEMAS_DIR aside */
  readonly jitp: (auditName: string) => BrokerChildOptions
  /** runs one bounded scenario (settled first), null when skipped */
  readonly run: (label: string, target: Target, fn: () => Promise<ScenarioResult>) => Promise<ScenarioResult | null>
  readonly log: (line: string) => void
}

function timeUs (iterations: number, fn: () => void): number {
  for (let i = 0; i < Math.min(iterations, 10_000); i++) fn()
  const start = process.hrtime.bigint()
  for (let i = 0; i < iterations; i++) fn()
  return round(Number(process.hrtime.bigint() - start) / 1000 / iterations, 3)
}

export function measureDetection (projectDir: string, iterations = 200_000): PiiDetectBenchResult['micro'] {
  const clean = telemetryPayload(123456, 1763769600000.123)
  // about the same size, one value swapped for a note with an address
  const withEmail = Buffer.from(clean.toString().replace('"door":"closed"', '"note":"mail jane.doe@example.com"'))
  const cleanData = JSON.parse(clean.toString()) as unknown
  const emailData = JSON.parse(withEmail.toString()) as unknown
  const opts = { redact: false, limit: 8 }
  if (scanJson(cleanData, opts).findings.length !== 0 || scanJson(emailData, opts).findings.length !== 1 || mayHoldPii(cleanData)) throw new Error('pii-detect bench: the payloads do not give the expected findings')
  const catalogue = loadSchemaCatalogue(join(projectDir, 'schemas'))
  let sink = 0
  // the quick walk over distinct payloads, as on the wire (its memory of clean keys is warm after the first)
  const distinct = Array.from({ length: 1000 }, (_, i) => JSON.parse(telemetryPayload(i, 1763769600000.123 + i).toString()) as unknown)
  let next = 0
  const quickCleanUs = timeUs(iterations, () => { sink += mayHoldPii(distinct[next++ % distinct.length]) ? 1 : 0 })
  const detectCleanUs = timeUs(iterations, () => { sink += scanJson(cleanData, opts).findings.length })
  const detectEmailUs = timeUs(iterations, () => { sink += scanJson(emailData, opts).findings.length })
  const validateUs = timeUs(iterations / 4, () => { sink += validatePayload(catalogue, 65536, 'devices/bench-0000/telemetry', clean).verdict.length })
  if (sink < 0) throw new Error('unreachable')
  return { payloadBytes: clean.length, iterations, quickCleanUs, detectCleanUs, detectEmailUs, validateUs }
}

/** a copy of schemas/ with detection off on the telemetry topics */
function detectOffSchemas (projectDir: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'jitp-bench-detect-off-'))
  cpSync(join(projectDir, 'schemas'), dir, { recursive: true })
  const file = join(dir, 'topics.json')
  const map = JSON.parse(readFileSync(file, 'utf8')) as { topics: Record<string, Record<string, unknown>> }
  for (const filter of ['devices/+/telemetry', 'devices/+/telemetry/+']) map.topics[filter] = { ...map.topics[filter], detect: 'off' }
  writeFileSync(file, JSON.stringify(map, null, 2))
  return dir
}

function median (values: readonly number[]): number | null {
  if (values.length === 0) return null
  const s = [...values].sort((a, b) => a - b)
  return s[Math.floor((s.length - 1) / 2)]!
}

export async function benchPiiDetect (opts: PiiDetectBenchOptions): Promise<PiiDetectBenchResult> {
  opts.log('inline PII detection: µs per 200-byte payload (bench/pii-detect.ts)')
  const micro = measureDetection(opts.projectDir)
  opts.log(`inline PII detection: ${JSON.stringify(micro)}`)
  const flagOpts = opts.jitp('audit-detect-flag.log')
  const offOpts = opts.jitp('audit-detect-off.log')
  const targets: Array<[string, Target]> = []
  let fanIn: PiiDetectBenchResult['fanIn'] = null
  try {
    targets.push(['detect-flag', await opts.child('jitp-memory-detect-flag', flagOpts)])
    targets.push(['detect-off', await opts.child('jitp-memory-detect-off', { ...offOpts, overrides: { ...offOpts.overrides, SCHEMAS_DIR: detectOffSchemas(opts.projectDir) } })])
    const rounds = new Map<string, ScenarioResult[]>(targets.map(([k]) => [k, []]))
    for (let r = 0; r < opts.rounds; r++) {
      const order = r % 2 === 0 ? targets : [...targets].reverse()
      for (const [key, target] of order) {
        const result = await opts.run(`${key} qos1 round ${r + 1}`, target, () => fanInThroughput(target, opts.env, 1))
        if (result !== null) rounds.get(key)!.push(result)
      }
    }
    const flag = rounds.get('detect-flag')!
    const off = rounds.get('detect-off')!
    const ratios: number[] = []
    const perCpu: number[] = []
    for (let i = 0; i < Math.min(flag.length, off.length); i++) {
      const f = flag[i]!
      const o = off[i]!
      if (f.value !== null && o.value) ratios.push(round(f.value / o.value, 3))
      if (f.value !== null && o.value && f.cpu?.broker && o.cpu?.broker) perCpu.push(round((f.value / f.cpu.broker) / (o.value / o.cpu.broker), 3))
    }
    fanIn = {
      flag: flag.map((x) => x.value),
      off: off.map((x) => x.value),
      flagCpu: flag.map((x) => x.cpu?.broker ?? null),
      offCpu: off.map((x) => x.cpu?.broker ?? null),
      ratios,
      medianRatio: median(ratios),
      medianRatioPerCpu: median(perCpu)
    }
    opts.log(`inline PII detection, QoS 1 fan-in flag ÷ off: ${JSON.stringify(fanIn)}`)
  } finally {
    for (const [, target] of targets) await target.stop()
  }
  return { micro, fanIn }
}

export function renderPiiDetect (r: PiiDetectBenchResult): string[] {
  const m = r.micro
  const out = [
    'Inline personal-data detection (bench/pii-detect.ts):', '',
    '| measure | value |',
    '|---|---:|',
    `| quick walk per ${m.payloadBytes}-byte telemetry payload, nothing found (the hot path's first pass; 1,000 distinct payloads, keys remembered), µs | ${m.quickCleanUs} |`,
    `| full detection pass per ${m.payloadBytes}-byte telemetry payload, nothing found, µs | ${m.detectCleanUs} |`,
    `| the same with one e-mail address found, µs | ${m.detectEmailUs} |`,
    `| parse + schema validation of the same payload, µs (for scale) | ${m.validateUs} |`
  ]
  const f = r.fanIn
  if (f !== null) {
    const list = (v: ReadonlyArray<number | null>): string => v.map((x) => x ?? 'failed').join(', ')
    out.push(
      `| QoS 1 fan-in, msg/s, detect: flag, each round | ${list(f.flag)} |`,
      `| QoS 1 fan-in, msg/s, detect: off, each round | ${list(f.off)} |`,
      `| flag ÷ off, each round | ${f.ratios.join(', ')} |`,
      `| **flag ÷ off, median** (goal ≥ 0.95) | **${f.medianRatio ?? 'n/a'}** |`,
      `| flag ÷ off per broker CPU-second, median | ${f.medianRatioPerCpu ?? 'n/a'} |`
    )
  }
  out.push('')
  return out
}
