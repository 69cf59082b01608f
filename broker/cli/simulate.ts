/**
 * `aedes-jitp simulate` (CONTRACT §7, issue 13): virtual devices through the whole
 * life of §3 and §9 against a broker, with injected faults; a pre-onboarding
 * sandbox that talks only MQTT and the admin API (broker/simulate/run.ts).
 * Progress on stderr (a bar on a terminal, plain lines otherwise); the summary on
 * stdout, `--json` for scripts. Exit 0 when every device was provisioned and the
 * run ended by itself, 2 when the summary shows failures or a bound was hit.
 */
import { readFileSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { parseArgs } from 'node:util'
import { ADMIN_OPTIONS, adminTarget } from './admin-client.js'
import { parseFaults } from '../simulate/faults.js'
import { progressWriter } from '../simulate/render.js'

const USAGE = [
  'usage: aedes-jitp simulate --devices N [--concurrency C] [--template NAME] [--param name=value ...]',
  '  [--claim-cert F --claim-key F] [--mqtt-url mqtts://host:port] [--admin-url URL] [--cert F --key F --ca F] [--no-admin]',
  '  [--telemetry-rate MSG_PER_S] [--duration S] [--faults kind=rate,...] [--seed N] [--provision-only] [--json]',
  '  [--config-update | --no-config-update] [--config-override JSON]',
  '  faults: bad-payload, config-fail, config-silent, silent, disconnect-storm, slow-subscriber (rate 0..1 of the devices)',
  '  --config-update: one configuration update per device once it applied its first (default: on with config-fail)'
].join('\n')

function number (flag: string, raw: string | undefined, fallback: number, opts: { integer?: boolean, min?: number, max?: number } = {}): number {
  if (raw === undefined) return fallback
  const n = Number(raw)
  if (raw.trim() === '' || !Number.isFinite(n) || (opts.integer === true && !Number.isInteger(n)) || n < (opts.min ?? -Infinity) || n > (opts.max ?? Infinity)) {
    throw new Error(`--${flag}: '${raw}' is not ${opts.integer === true ? 'a whole number' : 'a number'}${opts.min !== undefined ? ` of at least ${opts.min}` : ''}${opts.max !== undefined ? ` up to ${opts.max}` : ''}`)
  }
  return n
}

function readPem (path: string, flag: string): string {
  try {
    return readFileSync(path, 'utf8')
  } catch (err) {
    throw new Error(`cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? 'error'}): pass ${flag}, or run 'aedes-jitp certs dev' for a development PKI`)
  }
}

export async function simulateCommand (args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      ...ADMIN_OPTIONS,
      devices: { type: 'string' },
      concurrency: { type: 'string' },
      template: { type: 'string' },
      param: { type: 'string', multiple: true },
      'claim-cert': { type: 'string' },
      'claim-key': { type: 'string' },
      'mqtt-url': { type: 'string' },
      'no-admin': { type: 'boolean', default: false },
      'telemetry-rate': { type: 'string' },
      duration: { type: 'string' },
      faults: { type: 'string' },
      seed: { type: 'string' },
      'config-update': { type: 'boolean' },
      'no-config-update': { type: 'boolean', default: false },
      'config-override': { type: 'string' },
      'provision-only': { type: 'boolean', default: false },
      help: { type: 'boolean', default: false }
    }
  })
  if (values.help) {
    process.stdout.write(USAGE + '\n')
    return 0
  }
  if (positionals.length > 0 || values.devices === undefined) throw new Error(USAGE.split('\n')[0]!)
  const parameters: Record<string, string> = {}
  for (const p of values.param ?? []) {
    const at = p.indexOf('=')
    if (at < 1) throw new Error(`--param: '${p}' is not name=value ({run} and {n} are filled in per device)`)
    parameters[p.slice(0, at)] = p.slice(at + 1)
  }
  if (values['config-update'] === true && values['no-config-update']) throw new Error('--config-update and --no-config-update: one or the other')
  let configOverride: Record<string, unknown> | undefined
  if (values['config-override'] !== undefined) {
    let parsed: unknown
    try {
      parsed = JSON.parse(values['config-override'])
    } catch {
      parsed = null
    }
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw new Error(`--config-override: '${values['config-override']}' is not a JSON object (e.g. '{"telemetryIntervalSeconds": 30}')`)
    if (values['no-config-update']) throw new Error('--config-override with --no-config-update: the override is what the update sends')
    configOverride = parsed as Record<string, unknown>
  }
  const configUpdate = values['no-config-update'] ? false : values['config-update'] === true || configOverride !== undefined ? true : undefined
  const certsDir = resolve(process.env.CERTS_DIR || 'certs-dev')
  const admin = values['no-admin'] ? null : adminTarget(values)
  const ca = admin?.ca ?? readPem(values.ca ?? join(certsDir, 'root-ca.pem'), '--ca')
  const claim = {
    cert: readPem(values['claim-cert'] ?? join(certsDir, 'claim-chain.pem'), '--claim-cert'),
    key: readPem(values['claim-key'] ?? join(certsDir, 'claim.key'), '--claim-key')
  }
  const options = {
    devices: number('devices', values.devices, 0, { integer: true, min: 1, max: 1_000_000 }),
    concurrency: number('concurrency', values.concurrency, 8, { integer: true, min: 1, max: 10_000 }),
    template: values.template ?? 'sensor',
    ...(Object.keys(parameters).length > 0 ? { parameters } : {}),
    claim,
    ca,
    mqttUrl: values['mqtt-url'] ?? process.env.MQTT_URL ?? `mqtts://127.0.0.1:${process.env.MQTTS_PORT || '8883'}`,
    admin,
    telemetryRate: number('telemetry-rate', values['telemetry-rate'], 1, { min: 0, max: 1000 }),
    durationSeconds: number('duration', values.duration, 5, { min: 0, max: 86_400 }),
    faults: values.faults === undefined ? {} : parseFaults(values.faults),
    seed: number('seed', values.seed, 1, { integer: true }),
    ...(configUpdate !== undefined ? { configUpdate } : {}),
    ...(configOverride !== undefined ? { configOverride } : {}),
    lifecycle: values['provision-only'] ? 'provision' as const : 'full' as const
  }
  // loaded here: the other commands do not pay for MQTT.js
  const { runSimulation } = await import('../simulate/run.js')
  const { renderSummary } = await import('../simulate/render.js')
  const progress = progressWriter(process.stderr)
  const aborter = new AbortController()
  const interrupt = (): void => aborter.abort()
  process.once('SIGINT', interrupt)
  let summary
  try {
    summary = await runSimulation({ ...options, signal: aborter.signal, onProgress: (p) => progress.update(p) })
  } finally {
    process.removeListener('SIGINT', interrupt)
    progress.done()
  }
  process.stdout.write(values.json ? JSON.stringify(summary) + '\n' : renderSummary(summary))
  return summary.failed > 0 || summary.provisioned < summary.devices || summary.boundsHit.length > 0 ? 2 : 0
}
