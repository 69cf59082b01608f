/**
 * Micro-benchmark of inline PII detection's quick walk (`mayHoldPii`) over the
 * bench's telemetry, parsed: what every valid message of a topic with detection
 * on pays when it holds nothing, the common case (docs/PERFORMANCE.md).
 * Run: npm run build && node dist/bench/pii-walk.js [durationMs]
 */
import { pathToFileURL } from 'node:url'
import { mayHoldPii } from '../broker/pii-detect.js'
import { telemetryPayload } from './telemetry.js'

const PAYLOADS = 1000 // distinct payloads (their seq and time stamps differ, as on the wire)
const MAX_ROUNDS = 100_000

export function benchPiiWalk (durationMs: number): { nsPerMessage: number, messages: number } {
  const parsed = Array.from({ length: PAYLOADS }, (_, i) => JSON.parse(telemetryPayload(i, Date.now() * 1000 + i).toString()) as unknown)
  let messages = 0
  let found = 0
  const start = process.hrtime.bigint()
  const deadline = start + BigInt(durationMs) * 1_000_000n
  for (let round = 0; round < MAX_ROUNDS; round++) {
    for (const data of parsed) if (mayHoldPii(data)) found++
    messages += PAYLOADS
    if (process.hrtime.bigint() >= deadline) break
  }
  // the telemetry holds no personal data: a finding would mean the benchmark measures the wrong path
  if (found > 0) throw new Error(`the bench telemetry was judged to hold personal data ${found} times`)
  return { nsPerMessage: Number(process.hrtime.bigint() - start) / messages, messages }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const durationMs = Number(process.argv[2] ?? 3000)
  const { nsPerMessage, messages } = benchPiiWalk(durationMs)
  console.log(`mayHoldPii over ${messages} parsed telemetry payloads: ${nsPerMessage.toFixed(0)} ns per message`)
}
