/**
 * What `aedes-jitp simulate` prints: a one-line progress bar rewritten with \r on a
 * terminal, plain lines when the output is not one (no control character at all),
 * and the final summary for humans. Strings that come from the broker are escaped.
 */
import { escapeControl } from '../cli/audit.js'
import { table } from '../cli/admin-client.js'
import { CONFIG_FAIL_HELP, CONFIG_FAIL_MODES, FAULT_HELP, type FaultKind } from './faults.js'
import type { SimulationPhase, SimulationProgress, SimulationSummary } from './run.js'
import { STEPS, STEP_LABELS } from './stats.js'

const BAR = 20

export interface ProgressWriter {
  update (p: SimulationProgress): void
  /** clears the bar (terminal) before the summary */
  done (): void
}

function progressText (p: SimulationProgress): string {
  const decided = p.phase === 'health' || p.active + p.quarantined > 0
  return [
    `${p.provisioned}/${p.devices} provisioned`,
    `${p.online} online`,
    ...(p.failed > 0 ? [`${p.failed} failed`] : []),
    ...(decided ? [`active ${p.active}`, `quarantined ${p.quarantined}`] : []),
    `msgs ${p.sent} sent ${p.acknowledged} acked ${p.rejected} rejected`
  ].join(', ')
}

/** on a terminal: one line, rewritten; otherwise a plain line at most every `everyMs` and at each phase change */
export function progressWriter (stream: NodeJS.WriteStream, everyMs = 5000): ProgressWriter {
  const tty = stream.isTTY === true
  let lastLength = 0
  let lastPlain = 0
  let lastPhase: SimulationPhase | null = null
  return {
    update (p) {
      const seconds = (p.elapsedMs / 1000).toFixed(1).padStart(5)
      if (tty) {
        const share = p.devices > 0 ? p.provisioned / p.devices : 0
        const filled = Math.round(share * BAR)
        let line = `[${'#'.repeat(filled)}${'.'.repeat(BAR - filled)}] ${seconds}s ${p.phase.padEnd(12)} ${progressText(p)}`
        const columns = stream.columns ?? 120
        if (line.length > columns - 1) line = line.slice(0, columns - 1)
        stream.write('\r' + line + ' '.repeat(Math.max(0, lastLength - line.length)))
        lastLength = line.length
        return
      }
      const now = Date.now()
      if (p.phase === lastPhase && now - lastPlain < everyMs) return
      lastPhase = p.phase
      lastPlain = now
      stream.write(`simulate ${seconds.trim()}s ${p.phase}: ${progressText(p)}\n`)
    },
    done () {
      if (tty && lastLength > 0) stream.write('\r' + ' '.repeat(lastLength) + '\r')
      lastLength = 0
    }
  }
}

const percent = (rate: number): string => `${Math.round(rate * 1000) / 10} %`
const fmtMs = (ms: number | null | undefined): string => ms === null || ms === undefined ? '-' : ms >= 100 ? String(Math.round(ms)) : ms.toFixed(1)
const counts = (m: Record<string, number>): string => Object.entries(m).sort((a, b) => b[1] - a[1]).map(([k, n]) => `${escapeControl(k)} ${n}`).join(', ')

const INJECTED: Readonly<Record<FaultKind, string>> = {
  'bad-payload': 'bad payloads sent',
  'config-fail': 'acks "failed" sent',
  'config-silent': 'config versions left unacknowledged',
  silent: 'states withheld',
  'disconnect-storm': 'connections dropped',
  'slow-subscriber': 'incoming messages held'
}

export function renderSummary (s: SimulationSummary): string {
  const out: string[] = []
  out.push(`aedes-jitp simulate: ${s.devices} devices, template ${escapeControl(s.template)}, ${escapeControl(s.mqttUrl)}, run ${escapeControl(s.runId)}, ${s.durationSeconds} s`, '')
  const rows: string[][] = [
    ['provisioned', `${s.provisioned} of ${s.devices}${s.failed > 0 ? ` (${s.failed} failed)` : ''}, ${s.provisioning.devicesPerSecond} devices/s over ${s.provisioning.seconds} s`]
  ]
  if (s.active === null) {
    rows.push(['health', 'not read (no admin API): see the broker\'s registry'])
  } else {
    rows.push(['active', String(s.active)])
    rows.push(['quarantined', `${s.quarantined ?? 0}${Object.keys(s.quarantinedByReason).length > 0 ? ` (check failed: ${counts(s.quarantinedByReason)})` : ''}`])
    if (s.undecided) rows.push(['undecided', `${s.undecided} still provisioned when the wait ended`])
    rows.push(['rolled back', `${s.rolledBack ?? 0} device(s) (config.rolledback)`])
  }
  const u = s.configUpdate
  if (u) {
    rows.push(['config update', `${escapeControl(JSON.stringify(u.override))} to ${u.sent} device(s) once they applied their first version: ${u.applied} applied it, ${u.failed} failed it${u.failed > 0 ? ` (${u.failedThenRolledBack} then applied the broker's rollback)` : ''}${u.unsettled > 0 ? `, ${u.unsettled} applied nothing from it on` : ''}`])
    if (u.refused) rows.push(['', escapeControl(u.refused)])
    for (const e of u.errors) rows.push(['', `not sent${e.index >= 0 ? ` to #${e.index}` : ''}: ${escapeControl(e.message)}`])
  }
  const m = s.messages
  rows.push(['messages', `${m.sent} sent, ${m.acknowledged} acknowledged, ${m.rejected} rejected${m.rejected > 0 ? ` (${counts(m.rejectedByCode)})` : ''}`])
  rows.push(['', `telemetry ${m.telemetry}, state ${m.states}, config acks ${m.configAcks.applied} applied / ${m.configAcks.failed} failed, bad payloads ${m.badPayloads}${m.skippedOffline > 0 ? `, ${m.skippedOffline} telemetry ticks offline` : ''}`])
  rows.push(['connections', `${s.connections.lost} lost, ${s.connections.reconnects} reconnects${s.connections.subscribeRefused > 0 ? `, ${s.connections.subscribeRefused} subscriptions refused` : ''}`])
  if (s.storm) {
    const r = s.storm.recoveryMs
    rows.push(['storm', `${s.storm.dropped} connections dropped at once, ${s.storm.recovered} back${s.storm.allBackMs !== null ? `, all within ${fmtMs(s.storm.allBackMs)} ms` : ''}${r ? ` (p50 ${fmtMs(r.p50)}, p99 ${fmtMs(r.p99)} ms)` : ''}, ${s.storm.refusedByBroker} connects refused by the broker`])
  }
  if (s.rotations.requested > 0) rows.push(['rotations', `${s.rotations.requested} requested, ${s.rotations.completed} completed, ${s.rotations.failed} failed`])
  if (s.healthWindowSeconds !== null) rows.push(['health window', `${s.healthWindowSeconds} s (template ${escapeControl(s.template)})`])
  out.push(table(['', ''], rows).split('\n').slice(1).join('\n'))

  out.push(table(['STEP', 'COUNT', 'P50 MS', 'P95 MS', 'P99 MS', 'MAX MS'], STEPS.map((step) => {
    const p = s.latencyMs[step]
    return [STEP_LABELS[step], String(p?.count ?? 0), fmtMs(p?.p50), fmtMs(p?.p95), fmtMs(p?.p99), fmtMs(p?.max)]
  })))

  const kinds = Object.keys(s.faults) as FaultKind[]
  if (kinds.length > 0) {
    out.push('faults, and what the broker\'s audit said about the devices that had them:')
    for (const kind of kinds) {
      const f = s.faults[kind]!
      out.push(`  ${kind} (${percent(f.rate)}: ${FAULT_HELP[kind]})`)
      out.push(`    ${f.devices} devices, ${f.injected} ${INJECTED[kind]}, ${f.reportedOnErrors} reports on devices/<id>/errors; registry: ${counts(f.outcome) || '-'}${Object.keys(f.quarantinedByReason).length > 0 ? ` (quarantined for: ${counts(f.quarantinedByReason)})` : ''}`)
      for (const mode of CONFIG_FAIL_MODES) {
        const m = f.modes?.[mode]
        if (!m || m.devices === 0) continue
        out.push(`    ${mode} (${CONFIG_FAIL_HELP[mode]}): ${m.devices} devices, ${m.failedAcks} acks "failed", ${m.rolledBack} rolled back; registry: ${counts(m.outcome) || '-'}${Object.keys(m.quarantinedByReason).length > 0 ? ` (quarantined for: ${counts(m.quarantinedByReason)})` : ''}`)
      }
      out.push(`    audit: ${counts(f.audit) || 'nothing beyond the routine lines'}`)
    }
    out.push('')
  }
  for (const b of s.boundsHit) out.push(`note: ${escapeControl(b)}`)
  if (s.errors.length > 0) {
    out.push(`${s.failed} device(s) failed; the first ones:`)
    for (const e of s.errors.slice(0, 5)) out.push(`  #${e.index} at ${e.step}: ${escapeControl(e.message)}`)
  }
  return out.join('\n').replace(/\n*$/, '\n')
}
