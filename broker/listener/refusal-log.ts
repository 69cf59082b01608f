/**
 * Audit of refusals that come before any authentication (failed handshakes,
 * timeouts, limits at accept, protocol garbage), aggregated so that nobody can
 * flood the log (CONTRACT §6): per remote address and reason, the first refusal
 * of an interval is written at once; the others of that interval are written
 * once, when it ends, as one line with their `count`. Every refusal is counted
 * in the metrics, aggregated or not.
 */
import { budgetKeyOf } from '../address-budget.js'
import type { Counter } from 'prom-client'
import type { Audit } from '../audit.js'
import { Errors, type ErrorCode } from '../errors.js'
import type { Metrics } from '../metrics.js'

/** distinct (address, reason) pairs kept per interval; beyond, refusals are pooled per reason */
export const MAX_AGGREGATED_KEYS = 10_000
const POOLED = '*'

interface Aggregate {
  readonly remoteAddress: string | undefined
  readonly code: ErrorCode
  reason: string
  /** refusals after the first, written when the interval ends */
  more: number
}

export interface RefusalLog {
  refuse (remoteAddress: string | undefined, code: ErrorCode, reason?: string): void
  /** writes the pending counts now (the interval timer calls it; close too) */
  flush (): void
  close (): void
}

export function createRefusalLog (audit: Audit, metrics: Metrics, intervalMs: number, maxKeys = MAX_AGGREGATED_KEYS): RefusalLog {
  const aggregates = new Map<string, Aggregate>()
  // bound once per reason: a label lookup per refusal would cost more under a flood
  const counters = new Map<ErrorCode, Counter.Internal>()
  const timer = setInterval(flush, intervalMs)
  timer.unref()

  function counter (code: ErrorCode): Counter.Internal {
    let c = counters.get(code)
    if (!c) {
      c = metrics.connectRefusals.labels(code)
      counters.set(code, c)
    }
    return c
  }

  function write (a: Aggregate, count: number): void {
    audit.write('connect.refused', { remoteAddress: a.remoteAddress, errorCode: a.code, reason: a.reason, count }, 'warn')
  }

  function refuse (remoteAddress: string | undefined, code: ErrorCode, reason: string = Errors[code].message): void {
    counter(code).inc()
    // per address means per budget, as for the limits (broker/address-budget.ts): every address of an IPv6 /64
    // is one host's, and aggregated one by one a single /64 filled the log with a line per address
    let key = `${code}\u0000${remoteAddress === undefined ? POOLED : budgetKeyOf(remoteAddress)}`
    let a = aggregates.get(key)
    if (a === undefined && aggregates.size >= maxKeys) {
      // too many addresses this interval: pool the rest per reason, without an address
      key = `${code}\u0000${POOLED}`
      a = aggregates.get(key)
      remoteAddress = undefined
    }
    if (a !== undefined) {
      a.more++
      a.reason = reason
      return
    }
    a = { remoteAddress, code, reason, more: 0 }
    aggregates.set(key, a)
    write(a, 1)
  }

  function flush (): void {
    for (const a of aggregates.values()) if (a.more > 0) write(a, a.more)
    aggregates.clear()
  }

  return {
    refuse,
    flush,
    close () {
      clearInterval(timer)
      flush()
    }
  }
}
