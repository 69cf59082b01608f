/**
 * `aedes-jitp rollout start|status|list|pause|resume|abort` (CONTRACT §7, §9):
 * staged configuration rollouts through the admin API; `status --watch` redraws
 * one progress line per wave until the rollout ends.
 */
import { parseArgs } from 'node:util'
import { ADMIN_OPTIONS, adminCall, adminTarget, table, type AdminTarget } from './admin-client.js'
import { jsonObjectArg, wavesArg } from './config.js'

const USAGE = [
  'usage: aedes-jitp rollout start (--template NAME | --devices a,b,c) (--config JSON | --patch JSON | --file F [--patch-file]) (--waves 5,25,100 | --exponential BASE,FACTOR) [--min-wait S] [--abort-threshold X] [--min-sample N]',
  '  rollout status [ID] [--watch] | list | pause ID | resume ID | abort ID'
].join('\n')

interface Wave { percent: number, targeted: number, published: number, applied: number, failed: number, timedOut: number, pending: number }
interface Rollout { id: string, status: string, waves: Wave[], reason?: string }

function render (r: Rollout): string {
  return `rollout ${r.id}: ${r.status}${r.reason ? ` (${r.reason})` : ''}\n` + table(
    ['WAVE', 'TARGETED', 'PUBLISHED', 'APPLIED', 'FAILED', 'TIMED OUT', 'PENDING'],
    r.waves.map((w) => [`${w.percent}%`, String(w.targeted), String(w.published), String(w.applied), String(w.failed), String(w.timedOut), String(w.pending)])
  )
}

const WATCH_MS = 1000

async function watch (target: AdminTarget, id: string): Promise<number> {
  let lines = 0
  for (;;) {
    const r = await adminCall<Rollout>(target, 'GET', `/v1/rollouts/${encodeURIComponent(id)}`)
    const text = render(r)
    // on a terminal the block is redrawn in place; piped, each state is printed once it changes
    if (process.stdout.isTTY && lines > 0) process.stdout.write(`\x1b[${lines}A\x1b[J`)
    process.stdout.write(text)
    lines = text.split('\n').length - 1
    if (r.status === 'completed' || r.status === 'aborted') return r.status === 'completed' ? 0 : 2
    await new Promise((resolve) => setTimeout(resolve, WATCH_MS))
  }
}

export async function rolloutCommand (args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      ...ADMIN_OPTIONS,
      template: { type: 'string' },
      devices: { type: 'string' },
      config: { type: 'string' },
      patch: { type: 'string' },
      file: { type: 'string' },
      'patch-file': { type: 'boolean', default: false },
      waves: { type: 'string' },
      exponential: { type: 'string' },
      'min-wait': { type: 'string' },
      'abort-threshold': { type: 'string' },
      'min-sample': { type: 'string' },
      watch: { type: 'boolean', default: false }
    }
  })
  const [action, id, ...extra] = positionals
  if (extra.length > 0) throw new Error(USAGE)
  const out = (s: string): void => { process.stdout.write(s) }
  switch (action) {
    case 'start': {
      if (values.template === undefined && values.devices === undefined) throw new Error(USAGE)
      const target: Record<string, unknown> = {}
      if (values.template !== undefined) target.template = values.template
      if (values.devices !== undefined) target.deviceIds = values.devices.split(',').map((d) => d.trim()).filter(Boolean)
      const isPatch = values.patch !== undefined || values['patch-file']
      const change = jsonObjectArg(values.patch ?? values.config, values.file, 'rollout start')
      if ((values.waves === undefined) === (values.exponential === undefined)) throw new Error('rollout start: give --waves 5,25,100 or --exponential BASE,FACTOR')
      let waves: number[] | { base: number, factor: number }
      if (values.waves !== undefined) waves = wavesArg(values.waves)
      else {
        const [base, factor] = values.exponential!.split(',').map(Number)
        if (!base || !factor || base <= 0 || factor <= 1) throw new Error('--exponential: BASE,FACTOR such as 1,4 (1 %, then ×4 until 100 %)')
        waves = { base, factor }
      }
      const body = {
        target,
        ...(isPatch ? { patch: change } : { config: change }),
        waves,
        ...(values['min-wait'] === undefined ? {} : { minWaitSeconds: Number(values['min-wait']) }),
        ...(values['abort-threshold'] === undefined ? {} : { abortThreshold: Number(values['abort-threshold']) }),
        ...(values['min-sample'] === undefined ? {} : { minSample: Number(values['min-sample']) })
      }
      const r = await adminCall<Rollout>(adminTarget(values), 'POST', '/v1/rollouts', body)
      out(values.json ? JSON.stringify(r) + '\n' : `rollout ${r.id} started\n`)
      return 0
    }
    case 'list': {
      const r = await adminCall<{ items: Rollout[] }>(adminTarget(values), 'GET', '/v1/rollouts')
      if (values.json) out(JSON.stringify(r.items) + '\n')
      else out(table(['ROLLOUT', 'STATUS', 'WAVES'], r.items.map((x) => [x.id, x.status, x.waves.map((w) => `${w.percent}%:${w.applied}/${w.targeted}`).join(' ')])))
      return 0
    }
    case 'status': {
      const target = adminTarget(values)
      let rolloutId = id
      if (rolloutId === undefined) {
        const all = await adminCall<{ items: Rollout[] }>(target, 'GET', '/v1/rollouts')
        rolloutId = all.items[0]?.id
        if (rolloutId === undefined) throw new Error('rollout status: there is no rollout')
      }
      if (values.watch) return watch(target, rolloutId)
      const r = await adminCall<Rollout>(target, 'GET', `/v1/rollouts/${encodeURIComponent(rolloutId)}`)
      out(values.json ? JSON.stringify(r) + '\n' : render(r))
      return 0
    }
    case 'pause':
    case 'resume':
    case 'abort': {
      if (!id) throw new Error(USAGE)
      const r = await adminCall<Rollout>(adminTarget(values), 'POST', `/v1/rollouts/${encodeURIComponent(id)}/${action}`)
      out(values.json ? JSON.stringify(r) + '\n' : `rollout ${r.id}: ${r.status}\n`)
      return 0
    }
    default:
      throw new Error(USAGE)
  }
}
