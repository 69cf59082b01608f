/** Latency samples of each step of a virtual device's life, and their percentiles. */

/** the timed steps, in the order a device goes through them */
export const STEPS = ['claimConnect', 'csr', 'register', 'reconnect', 'config', 'ack', 'firstState'] as const
export type Step = typeof STEPS[number]

export const STEP_LABELS: Readonly<Record<Step, string>> = {
  claimConnect: 'claim connect (TLS + CONNACK)',
  csr: 'certificate from CSR',
  register: 'register',
  reconnect: 'reconnect with its certificate',
  config: 'configuration received',
  ack: 'config ack (PUBACK)',
  firstState: 'first state (PUBACK)'
}

export interface Percentiles {
  readonly count: number
  readonly p50: number
  readonly p95: number
  readonly p99: number
  readonly max: number
}

/** nearest-rank percentiles, in ms rounded to 0.1; null for no samples */
export function percentiles (values: readonly number[]): Percentiles | null {
  if (values.length === 0) return null
  const sorted = Float64Array.from(values).sort()
  const at = (p: number): number => round1(sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!)
  return { count: sorted.length, p50: at(50), p95: at(95), p99: at(99), max: round1(sorted[sorted.length - 1]!) }
}

export function round1 (n: number): number {
  return Math.round(n * 10) / 10
}
