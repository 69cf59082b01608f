/**
 * Who may open a TCP connection (CONTRACT §11), decided at accept, before any
 * TLS work: at most MAX_CONNECTIONS in all, at most
 * MAX_PENDING_CONNECTIONS_PER_ADDRESS not yet authenticated per remote address,
 * and CONNECT_RATE_PER_ADDRESS connects per minute per address (a token bucket).
 * Every map is bounded: pending counts live only while a connection does, and
 * the buckets are capped and swept.
 */
import type { ErrorCode } from '../errors.js'

/** addresses whose connect rate is tracked at once; the oldest bucket goes first */
export const MAX_RATE_BUCKETS = 100_000

export interface AdmissionLimits {
  readonly maxConnections: number
  readonly maxPendingPerAddress: number
  /** connects per minute per address */
  readonly connectRatePerAddress: number
}

interface Bucket { tokens: number, at: number }

export class Admission {
  /** live connections, authenticated or not */
  open = 0
  private readonly pending = new Map<string, number>()
  private readonly buckets = new Map<string, Bucket>()
  private readonly perMs: number

  constructor (private readonly limits: AdmissionLimits, private readonly now: () => number = Date.now, private readonly maxBuckets = MAX_RATE_BUCKETS) {
    this.perMs = limits.connectRatePerAddress / 60_000
  }

  /** null when admitted (and counted as open and pending), else why not */
  admit (address: string): ErrorCode | null {
    if (this.open >= this.limits.maxConnections) return 'TooManyConnections'
    const pending = this.pending.get(address) ?? 0
    if (pending >= this.limits.maxPendingPerAddress) return 'TooManyPendingConnections'
    if (!this.takeToken(address)) return 'ConnectRateExceeded'
    this.open++
    this.pending.set(address, pending + 1)
    return null
  }

  /** the connection authenticated, or closed before it did */
  settle (address: string): void {
    const pending = (this.pending.get(address) ?? 0) - 1
    if (pending > 0) this.pending.set(address, pending)
    else this.pending.delete(address)
  }

  closed (): void {
    this.open--
  }

  pendingCount (): number {
    let n = 0
    for (const v of this.pending.values()) n += v
    return n
  }

  /** drops buckets that have refilled: they hold nothing a new bucket would not */
  sweep (): void {
    const t = this.now()
    const capacity = this.limits.connectRatePerAddress
    for (const [address, b] of this.buckets) {
      if (b.tokens + (t - b.at) * this.perMs >= capacity) this.buckets.delete(address)
    }
  }

  private takeToken (address: string): boolean {
    const t = this.now()
    const capacity = this.limits.connectRatePerAddress
    let b = this.buckets.get(address)
    if (b === undefined) {
      if (this.buckets.size >= this.maxBuckets) {
        const oldest = this.buckets.keys().next().value
        if (oldest !== undefined) this.buckets.delete(oldest)
      }
      b = { tokens: capacity, at: t }
      this.buckets.set(address, b)
    } else {
      b.tokens = Math.min(capacity, b.tokens + (t - b.at) * this.perMs)
      b.at = t
    }
    if (b.tokens < 1) return false
    b.tokens--
    return true
  }
}
