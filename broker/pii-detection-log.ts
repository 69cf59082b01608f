/**
 * The `pii.detected` audit lines of inline detection (CONTRACT §5, §6), bounded
 * per client so that a device cannot flood the audit log: a payload can carry
 * eight findings, and a device can send thousands of payloads a second.
 *
 * Per client and interval (AUDIT_AGGREGATE_SECONDS), the first
 * MAX_LINES_PER_CLIENT findings are written at once, one line each (topic,
 * path, kind: what an operator needs to find the field); the others are counted
 * per kind and written once, when the interval ends, as one line per client and
 * kind with their `count` (and the last topic, no path). Beyond MAX_CLIENTS
 * clients with findings in one interval, the rest are pooled per kind without a
 * client. The metric (jitp_pii_detections_total) counts every finding; this
 * bounds only the lines. As broker/listener/refusal-log.ts does for refusals
 * before authentication.
 */
import type { Audit, AuditFields } from './audit.js'

/** lines written one by one per client and interval: two payloads' worth of findings */
export const MAX_LINES_PER_CLIENT = 16
/** clients tracked per interval; beyond, findings are pooled per kind */
export const MAX_CLIENTS = 10_000
const POOLED = '\u0000*'

export interface PiiDetection {
  readonly topic: string
  readonly path: string
  readonly kind: string
  /** `flagged` or `redacted` */
  readonly action: string
}

interface Pending { fields: AuditFields, topic: string, action: string, count: number }

interface ClientWindow {
  written: number
  /** per kind, the findings held back */
  readonly held: Map<string, Pending>
}

export interface PiiDetectionLog {
  write (fields: AuditFields, d: PiiDetection): void
  /** writes the held-back counts now (the interval timer calls it; close too) */
  flush (): void
  close (): void
}

export function createPiiDetectionLog (audit: Audit, intervalMs: number): PiiDetectionLog {
  const windows = new Map<string, ClientWindow>()
  const timer = setInterval(flush, intervalMs)
  timer.unref()

  function write (fields: AuditFields, d: PiiDetection): void {
    let key = fields.clientId ?? POOLED
    let w = windows.get(key)
    if (w === undefined && windows.size >= MAX_CLIENTS) {
      key = POOLED
      w = windows.get(key)
    }
    if (w === undefined) windows.set(key, w = { written: 0, held: new Map() })
    if (key !== POOLED && w.written < MAX_LINES_PER_CLIENT) {
      w.written++
      audit.write('pii.detected', { ...fields, topic: d.topic, path: d.path, kind: d.kind, reason: d.action }, 'warn')
      return
    }
    const held = w.held.get(d.kind)
    if (held !== undefined) {
      held.count++
      held.topic = d.topic
      held.action = d.action
      return
    }
    w.held.set(d.kind, { fields: key === POOLED ? {} : fields, topic: d.topic, action: d.action, count: 1 })
  }

  function flush (): void {
    for (const w of windows.values()) {
      for (const [kind, h] of w.held) {
        audit.write('pii.detected', { ...h.fields, topic: h.topic, kind, count: h.count, reason: `${h.action} (${h.count} more, aggregated)` }, 'warn')
      }
    }
    windows.clear()
  }

  return {
    write,
    flush,
    close () {
      clearInterval(timer)
      flush()
    }
  }
}
