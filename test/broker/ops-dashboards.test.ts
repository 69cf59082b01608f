/**
 * The Grafana dashboard and the Prometheus alerting rules shipped in docs/
 * (docs/OPERATIONS.md) load, are shaped as Grafana and Prometheus expect, and
 * name only metrics that a running broker exports on HTTP_PORT /metrics: a
 * metric renamed in broker/metrics.ts breaks this test, not an operator's pager.
 */
import t from 'tap'
import { readFileSync } from 'node:fs'
import { parse } from 'yaml'
import { startBroker } from '../helpers/broker.js'

const DASHBOARD = 'docs/grafana/aedes-jitp-dashboard.json'
const ALERTS = 'docs/prometheus/aedes-jitp-alerts.yml'

interface Target { expr?: unknown, datasource?: { type?: unknown, uid?: unknown } }
interface Panel { id?: unknown, type?: unknown, title?: unknown, datasource?: { type?: unknown, uid?: unknown }, targets?: Target[] }
interface Dashboard {
  __inputs?: Array<{ name?: unknown, type?: unknown, pluginId?: unknown }>
  panels?: Panel[]
  templating?: { list?: Array<{ name?: unknown, query?: unknown, definition?: unknown }> }
  uid?: unknown
  title?: unknown
}
interface Rule { alert?: unknown, expr?: unknown, for?: unknown, labels?: Record<string, unknown>, annotations?: Record<string, unknown> }
interface RuleFile { groups?: Array<{ name?: unknown, rules?: Rule[] }> }

const dashboard = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as Dashboard
const ruleFile = parse(readFileSync(ALERTS, 'utf8')) as RuleFile
const panels = dashboard.panels ?? []
const alerts = (ruleFile.groups ?? []).flatMap((g) => g.rules ?? []).filter((r) => r.alert !== undefined)

const panelExprs = panels.flatMap((p) => (p.targets ?? []).map((target) => target.expr).filter((e): e is string => typeof e === 'string'))
// the instance variable's query names a metric too
const variableExprs = (dashboard.templating?.list ?? []).flatMap((v) => {
  const q = v.query
  return [typeof q === 'string' ? q : typeof q === 'object' && q !== null ? (q as { query?: unknown }).query : undefined, v.definition]
}).filter((e): e is string => typeof e === 'string')
const alertExprs = alerts.map((r) => r.expr).filter((e): e is string => typeof e === 'string')

function metricNames (exprs: readonly string[]): Set<string> {
  return new Set(exprs.flatMap((e) => e.match(/jitp_[a-z_]+/g) ?? []))
}

/** parentheses and brackets balance, and every rate()/increase() has a range selector */
function shapeProblems (expr: string): string[] {
  const problems: string[] = []
  for (const [open, close] of [['(', ')'], ['[', ']'], ['{', '}']] as const) {
    if (expr.split(open).length !== expr.split(close).length) problems.push(`unbalanced ${open}${close}`)
  }
  for (const m of expr.matchAll(/\b(rate|irate|increase)\(/g)) {
    let depth = 1
    let i = m.index + m[0].length
    for (; i < expr.length && depth > 0; i++) depth += expr[i] === '(' ? 1 : expr[i] === ')' ? -1 : 0
    if (!/\[[^\]]+\]/.test(expr.slice(m.index, i))) problems.push(`${m[1]}() without a range`)
  }
  return problems
}

t.test('the dashboard: a Grafana JSON model with a templated Prometheus datasource, one query at least per panel', async (t) => {
  t.match(dashboard.__inputs, [{ name: 'DS_PROMETHEUS', type: 'datasource', pluginId: 'prometheus' }], 'Prometheus datasource is an import input')
  t.ok(typeof dashboard.uid === 'string' && typeof dashboard.title === 'string', 'uid and title')
  t.ok(panels.length >= 10, `${panels.length} panels`)
  t.equal(new Set(panels.map((p) => p.id)).size, panels.length, 'panel ids are unique')
  for (const p of panels) {
    const name = String(p.title)
    const exprs = (p.targets ?? []).filter((target) => typeof target.expr === 'string' && target.expr.trim() !== '')
    t.ok(exprs.length >= 1, `${name}: at least one target with an expr`)
    t.same(p.datasource, { type: 'prometheus', uid: '${DS_PROMETHEUS}' }, `${name}: templated datasource`)
    for (const target of p.targets ?? []) {
      t.same(target.datasource, { type: 'prometheus', uid: '${DS_PROMETHEUS}' }, `${name}: target datasource templated`)
      t.same(shapeProblems(String(target.expr)), [], `${name}: ${String(target.expr)}`)
    }
  }
  const shown = metricNames(panelExprs)
  for (const metric of ['jitp_connections', 'jitp_connects_accepted_total', 'jitp_connect_refusals_total', 'jitp_publishes_total',
    'jitp_payload_rejections_total', 'jitp_queue_drops_total', 'jitp_store_up', 'jitp_registrations_total', 'jitp_provisioning_rejections_total']) {
    t.ok(shown.has(metric), `a panel shows ${metric}`)
  }
})

t.test('the alerting rules: every alert has expr, for, labels.severity and annotations.summary', async (t) => {
  t.ok((ruleFile.groups ?? []).length >= 1 && (ruleFile.groups ?? []).every((g) => typeof g.name === 'string'), 'named groups')
  t.ok(alerts.length >= 7, `${alerts.length} alerts`)
  t.equal(new Set(alerts.map((r) => r.alert)).size, alerts.length, 'alert names are unique')
  for (const r of alerts) {
    const name = String(r.alert)
    t.ok(typeof r.expr === 'string' && r.expr.trim() !== '', `${name}: expr`)
    t.match(r.for, /^(\d+(ms|s|m|h|d|w|y))+$/, `${name}: for is a Prometheus duration`)
    t.ok(['critical', 'warning', 'info'].includes(String(r.labels?.severity)), `${name}: labels.severity`)
    t.ok(typeof r.annotations?.summary === 'string' && r.annotations.summary !== '', `${name}: annotations.summary`)
    t.same(shapeProblems(String(r.expr)), [], `${name}: expression shape`)
  }
  const watched = metricNames(alertExprs)
  for (const metric of ['jitp_store_up', 'jitp_connect_refusals_total', 'jitp_payload_rejections_total', 'jitp_revocations_total',
    'jitp_queue_drops_total', 'jitp_publishes_not_stored_total', 'jitp_offenders_disconnected_total']) {
    t.ok(watched.has(metric), `an alert watches ${metric}`)
  }
})

t.test('every metric the dashboard and the alerts name is exported by a running broker', async (t) => {
  const tb = await startBroker({ store: 'memory' })
  t.teardown(() => tb.close())
  const res = await fetch(`http://127.0.0.1:${tb.httpPort}/metrics`)
  t.equal(res.status, 200)
  const types = new Map<string, string>()
  for (const m of (await res.text()).matchAll(/^# TYPE (\S+) (\S+)$/gm)) types.set(m[1]!, m[2]!)
  t.ok(types.size > 0, `${types.size} metric families exported`)

  /** a histogram's (or summary's) series carry suffixes its TYPE line does not */
  function family (name: string): string {
    if (types.has(name)) return name
    const base = name.replace(/_(bucket|sum|count)$/, '')
    return base !== name && ['histogram', 'summary'].includes(types.get(base) ?? '') ? base : name
  }
  const referenced = metricNames([...panelExprs, ...variableExprs, ...alertExprs])
  t.ok(referenced.size >= 10, `${referenced.size} metrics referenced`)
  for (const name of [...referenced].sort()) {
    t.ok(types.has(family(name)), `${name} is exported (# TYPE line)`)
  }
})
