/**
 * Audit of refusals that come before any authentication (failed handshakes,
 * timeouts, limits at accept, protocol garbage), aggregated so that nobody can
 * flood the log (CONTRACT §6): per remote address (its budget) and reason, the
 * first refusal of an interval is written at once; the others of that interval
 * are written once, when it ends, as one line with their `count` (the audit's
 * one aggregation, `Audit.refusal`). Every refusal is counted in the metrics,
 * aggregated or not.
 */
import type { Counter } from 'prom-client'
import type { Audit } from '../audit.js'
import { Errors, type ErrorCode } from '../errors.js'
import type { Metrics } from '../metrics.js'

export interface RefusalLog {
  refuse (remoteAddress: string | undefined, code: ErrorCode, reason?: string): void
  /** writes the pending counts now (the audit's interval does; close too) */
  flush (): void
  close (): void
}

export function createRefusalLog (audit: Audit, metrics: Metrics): RefusalLog {
  // bound once per reason: a label lookup per refusal would cost more under a flood
  const counters = new Map<ErrorCode, Counter.Internal>()

  function counter (code: ErrorCode): Counter.Internal {
    let c = counters.get(code)
    if (!c) {
      c = metrics.connectRefusals.labels(code)
      counters.set(code, c)
    }
    return c
  }

  return {
    refuse (remoteAddress, code, reason = Errors[code].message) {
      counter(code).inc()
      audit.refusal('connect.refused', { remoteAddress, errorCode: code, reason, count: 1 }, 'warn', 1)
    },
    flush: () => audit.flushRefusals(),
    close: () => audit.flushRefusals()
  }
}
