/**
 * The faults `aedes-jitp simulate` injects (issue 13) and which virtual devices
 * get them. `--faults silent=0.2,config-fail=0.1` gives round(rate × devices)
 * devices each kind, picked by a seeded shuffle so a run can be repeated.
 *
 * The kinds that decide a device's health outcome (silent, config-fail,
 * config-silent, bad-payload) never fall on the same device: a quarantined device
 * then has one cause, and the summary can say which fault the broker caught. The
 * connection kinds (disconnect-storm, slow-subscriber) come on top of any other.
 *
 * `config-fail` devices are of two kinds, alternately in device order
 * (configFailModes): the first, third, ... fail updates (a firmware that applies
 * the configuration it got first and fails any later content it has not applied
 * before, so the broker's rollback to its last known good applies), the second,
 * fourth, ... never apply any version (nothing to roll back to: quarantined).
 */

export const FAULT_KINDS = ['bad-payload', 'config-fail', 'config-silent', 'silent', 'disconnect-storm', 'slow-subscriber'] as const
export type FaultKind = typeof FAULT_KINDS[number]
export type FaultRates = Partial<Record<FaultKind, number>>

/** at most one of these per device */
const OUTCOME_KINDS: readonly FaultKind[] = ['silent', 'config-fail', 'config-silent', 'bad-payload']
const CONNECTION_KINDS: readonly FaultKind[] = ['disconnect-storm', 'slow-subscriber']

export const FAULT_HELP: Readonly<Record<FaultKind, string>> = {
  'bad-payload': 'also sends telemetry that breaks schemas/telemetry.json (and some that is not JSON)',
  'config-fail': 'acks "failed": every other such device for the updates after its first configuration, the others for every version',
  'config-silent': 'never acknowledges its configuration',
  silent: 'never publishes its state',
  'disconnect-storm': 'loses its connection together with every other such device, and all reconnect at once',
  'slow-subscriber': 'reads what the broker sends it slowly (each incoming message holds the connection for 500 ms)'
}

/**
 * How a config-fail device fails:
 *   `fails-updates`  applies the first configuration it receives and any version whose content it has applied
 *                    before (a rollback to its last known good), acks `failed` for any other content
 *   `never-applies`  acks `failed` for every version
 */
export const CONFIG_FAIL_MODES = ['fails-updates', 'never-applies'] as const
export type ConfigFailMode = typeof CONFIG_FAIL_MODES[number]

export const CONFIG_FAIL_HELP: Readonly<Record<ConfigFailMode, string>> = {
  'fails-updates': 'applies its first configuration, fails any later content it never applied, applies a rollback to content it applied',
  'never-applies': 'fails every version, its first included'
}

/** the config-fail devices alternate, in device order: fails-updates, never-applies, fails-updates, ... (null: no config-fail) */
export function configFailModes (faults: ReadonlyArray<ReadonlySet<FaultKind>>): Array<ConfigFailMode | null> {
  let n = 0
  return faults.map((f) => f.has('config-fail') ? CONFIG_FAIL_MODES[n++ % 2]! : null)
}

function isFaultKind (s: string): s is FaultKind {
  return (FAULT_KINDS as readonly string[]).includes(s)
}

/** `kind=rate,...`, each rate in [0, 1]; the outcome kinds together at most 1 */
export function parseFaults (spec: string): FaultRates {
  const rates: FaultRates = {}
  for (const part of spec.split(',').map((s) => s.trim()).filter(Boolean)) {
    const [kind = '', raw, ...rest] = part.split('=')
    if (!isFaultKind(kind)) throw new Error(`--faults: unknown kind '${kind}' (one of ${FAULT_KINDS.join(', ')})`)
    const rate = raw === undefined ? 1 : Number(raw)
    if (rest.length > 0 || !Number.isFinite(rate) || rate < 0 || rate > 1) throw new Error(`--faults: '${part}': the rate is a number from 0 to 1 (0.1 = 10 % of the devices)`)
    if (rates[kind] !== undefined) throw new Error(`--faults: '${kind}' given twice`)
    rates[kind] = rate
  }
  checkRates(rates)
  return rates
}

export function checkRates (rates: FaultRates): void {
  for (const [kind, rate] of Object.entries(rates)) {
    if (!isFaultKind(kind)) throw new Error(`faults: unknown kind '${kind}'`)
    if (typeof rate !== 'number' || !(rate >= 0 && rate <= 1)) throw new Error(`faults: the rate of ${kind} is a number from 0 to 1`)
  }
  const outcome = OUTCOME_KINDS.reduce((sum, k) => sum + (rates[k] ?? 0), 0)
  if (outcome > 1 + 1e-9) throw new Error(`faults: ${OUTCOME_KINDS.join(', ')} fall on different devices, so their rates add up to at most 1 (here ${outcome})`)
}

/** mulberry32: small, seedable, good enough to pick devices */
export function seededRandom (seed: number): () => number {
  let a = seed >>> 0
  return function next (): number {
    a = (a + 0x6D2B79F5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

function shuffled (count: number, random: () => number): number[] {
  const order = Array.from({ length: count }, (_, i) => i)
  for (let i = count - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1))
    ;[order[i], order[j]] = [order[j]!, order[i]!]
  }
  return order
}

/** the faults of each device, index by index */
export function assignFaults (count: number, rates: FaultRates, seed: number): Array<ReadonlySet<FaultKind>> {
  checkRates(rates)
  const faults = Array.from({ length: count }, () => new Set<FaultKind>())
  const random = seededRandom(seed)
  // outcome kinds: consecutive slices of one shuffle, so they never overlap
  const order = shuffled(count, random)
  let next = 0
  for (const kind of OUTCOME_KINDS) {
    const n = Math.min(count - next, Math.round((rates[kind] ?? 0) * count))
    for (let i = 0; i < n; i++) faults[order[next++]!]!.add(kind)
  }
  for (const kind of CONNECTION_KINDS) {
    const n = Math.round((rates[kind] ?? 0) * count)
    for (const i of shuffled(count, random).slice(0, n)) faults[i]!.add(kind)
  }
  return faults
}
