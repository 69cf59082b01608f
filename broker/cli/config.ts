/**
 * `aedes-jitp config get|set|history|rollback` (CONTRACT §7, §9): a device's
 * desired configuration through the admin API, and a template's fleet
 * configuration (which reaches devices through a rollout, or at once with --immediate).
 */
import { readFileSync } from 'node:fs'
import { parseArgs } from 'node:util'
import { ADMIN_OPTIONS, adminCall, adminTarget, iso, table, withQuery } from './admin-client.js'

const USAGE = [
  'usage: aedes-jitp config get <deviceId> | get --template NAME',
  '  config set <deviceId> (JSON | --file F)            replaces the device\'s overrides: a new version at once',
  '  config set --template NAME (JSON | --file F) (--immediate | --waves 5,25,100 [--min-wait S] [--abort-threshold X])',
  '  config history <deviceId> [--limit N]',
  '  config rollback <deviceId> [--to VERSION]          default: the last known good'
].join('\n')

/** a JSON object from the argument or --file, with a message that says which */
export function jsonObjectArg (inline: string | undefined, file: string | undefined, what: string): Record<string, unknown> {
  if ((inline === undefined) === (file === undefined)) throw new Error(`${what}: give the JSON inline or with --file, one of them`)
  let text: string
  try {
    text = file === undefined ? inline! : readFileSync(file, 'utf8')
  } catch (err) {
    throw new Error(`${what}: cannot read ${file ?? ''} (${(err as NodeJS.ErrnoException).code ?? 'error'})`)
  }
  let parsed: unknown
  try {
    parsed = JSON.parse(text)
  } catch {
    throw new Error(`${what}: not valid JSON`)
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw new Error(`${what}: must be a JSON object`)
  return parsed as Record<string, unknown>
}

/** `5,25,100` → [5, 25, 100] */
export function wavesArg (value: string): number[] {
  const waves = value.split(',').map((w) => Number(w.trim()))
  if (waves.length === 0 || waves.some((w) => !Number.isFinite(w) || w <= 0 || w > 100)) throw new Error(`--waves: '${value}' is not a list of percentages such as 5,25,100`)
  return waves
}

interface State { deviceId: string, version: number | null, config: unknown, lastKnownGood: number | null, status: string }
interface Version { version: number, config: unknown, author: string, at: number, hash: string, reason?: string }

export async function configCommand (args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      ...ADMIN_OPTIONS,
      template: { type: 'string' },
      file: { type: 'string' },
      immediate: { type: 'boolean', default: false },
      waves: { type: 'string' },
      'min-wait': { type: 'string' },
      'abort-threshold': { type: 'string' },
      limit: { type: 'string' },
      to: { type: 'string' }
    }
  })
  const [action, ...rest] = positionals
  const out = (s: string): void => { process.stdout.write(s) }
  const target = (): ReturnType<typeof adminTarget> => adminTarget(values)
  const enc = encodeURIComponent
  switch (action) {
    case 'get': {
      if (values.template !== undefined) {
        const r = await adminCall(target(), 'GET', `/v1/templates/${enc(values.template)}/config`)
        out(JSON.stringify(r, null, values.json ? 0 : 2) + '\n')
        return 0
      }
      const [id] = rest
      if (!id || rest.length > 1) throw new Error(USAGE)
      const s = await adminCall<State>(target(), 'GET', `/v1/devices/${enc(id)}/config`)
      if (values.json) out(JSON.stringify(s) + '\n')
      else out(`${s.deviceId}: version ${s.version ?? '-'} (${s.status}), last known good ${s.lastKnownGood ?? '-'}\n${JSON.stringify(s.config, null, 2)}\n`)
      return 0
    }
    case 'set': {
      if (values.template !== undefined) {
        const config = jsonObjectArg(rest[0], values.file, 'config set')
        const body: Record<string, unknown> = { config }
        if (values.immediate) body.immediate = true
        else {
          if (values.waves === undefined) throw new Error('config set --template: give --waves (a staged rollout) or --immediate (every device at once)')
          body.rollout = {
            waves: wavesArg(values.waves),
            ...(values['min-wait'] === undefined ? {} : { minWaitSeconds: Number(values['min-wait']) }),
            ...(values['abort-threshold'] === undefined ? {} : { abortThreshold: Number(values['abort-threshold']) })
          }
        }
        const r = await adminCall<{ template: string, devices?: number, rolloutId?: string }>(target(), 'PUT', `/v1/templates/${enc(values.template)}/config`, body)
        out(values.json ? JSON.stringify(r) + '\n' : r.rolloutId ? `rollout ${r.rolloutId} started for template ${r.template}\n` : `template ${r.template}: applied to ${r.devices ?? 0} devices\n`)
        return 0
      }
      const [id, inline] = rest
      if (!id || rest.length > 2) throw new Error(USAGE)
      const config = jsonObjectArg(inline, values.file, 'config set')
      const r = await adminCall<{ deviceId: string, version: number }>(target(), 'PUT', `/v1/devices/${enc(id)}/config`, { config })
      out(values.json ? JSON.stringify(r) + '\n' : `${r.deviceId}: version ${r.version} published\n`)
      return 0
    }
    case 'history': {
      const [id] = rest
      if (!id || rest.length > 1) throw new Error(USAGE)
      const r = await adminCall<{ items: Version[] }>(target(), 'GET', withQuery(`/v1/devices/${enc(id)}/config/history`, { limit: values.limit }))
      if (values.json) out(JSON.stringify(r.items) + '\n')
      else out(table(['VERSION', 'AT', 'AUTHOR', 'HASH', 'REASON'], r.items.map((v) => [String(v.version), iso(v.at), v.author, v.hash.slice(0, 12), v.reason ?? ''])))
      return 0
    }
    case 'rollback': {
      const [id] = rest
      if (!id || rest.length > 1) throw new Error(USAGE)
      if (values.to !== undefined && !/^\d+$/.test(values.to)) throw new Error('config rollback: --to takes a version number')
      const r = await adminCall<{ deviceId: string, version: number }>(target(), 'POST', `/v1/devices/${enc(id)}/config/rollback`, values.to === undefined ? {} : { toVersion: Number(values.to) })
      out(values.json ? JSON.stringify(r) + '\n' : `${r.deviceId}: rolled back as version ${r.version}\n`)
      return 0
    }
    default:
      throw new Error(USAGE)
  }
}
