/**
 * Provisioning rate limits (CONTRACT §3.3, §11): per remote address and per claim
 * certificate, so a leaked claim certificate cannot mint devices at will.
 *
 * The address is checked first, and a request refused by either limit consumes
 * neither: one address flooding cannot drain the claim certificate's budget,
 * which the whole fleet shares (every device ships the same claim certificate).
 *
 * With REDIS_URL the counters live in Redis, so the limits hold across every
 * broker process (fixed one-minute windows, checked and counted in one script).
 * A Redis error fails closed, as 429 `Throttled`: provisioning cannot succeed
 * without the registry in the same Redis anyway, and 429 tells firmware to back
 * off, where failing open would let a flood through to CSR parsing and signing
 * (the expensive part) at the moment the system is degraded. Without Redis the
 * buckets are this process's own (token buckets).
 */
import type { Redis } from 'ioredis'
import { budgetKeyOf } from '../../broker/address-budget.js'
import { connectRedis, quitGracefully } from '../../broker/store/redis.js'

export type ThrottleVerdict = 'allow' | 'address' | 'claimCertificate'

export interface ProvisionThrottle {
  /** counts one request unless a limit refuses it */
  take (remoteAddress: string, claimCertificateId: string): Promise<ThrottleVerdict>
  close (): Promise<void>
}

export interface ThrottleOptions {
  /** requests per minute per remote address */
  readonly perAddress: number
  /** requests per minute per claim certificate */
  readonly perClaimCertificate: number
  readonly now: () => number
  readonly redisUrl?: string | undefined
  readonly keyPrefix?: string
  readonly onError?: (err: Error) => void
}

const WINDOW_MS = 60_000
const MAX_KEYS = 100_000

export function createThrottle (opts: ThrottleOptions): ProvisionThrottle {
  const throttle = opts.redisUrl ? redisThrottle(opts, opts.redisUrl) : memoryThrottle(opts)
  return {
    // per address means per budget: an IPv6 /64 is one (broker/address-budget.ts)
    take: (remoteAddress, claimCertificateId) => throttle.take(budgetKeyOf(remoteAddress), claimCertificateId),
    close: () => throttle.close()
  }
}

interface Bucket { tokens: number, at: number }

function memoryThrottle (opts: ThrottleOptions): ProvisionThrottle {
  const addresses = new Map<string, Bucket>()
  const claims = new Map<string, Bucket>()

  /** the bucket refilled to now; bounded memory under a spray of addresses: forget everyone, start fresh */
  function bucket (buckets: Map<string, Bucket>, key: string, perMinute: number, t: number): Bucket {
    let b = buckets.get(key)
    if (!b) {
      if (buckets.size >= MAX_KEYS) buckets.clear()
      b = { tokens: perMinute, at: t }
      buckets.set(key, b)
    }
    b.tokens = Math.min(perMinute, b.tokens + (t - b.at) * (perMinute / WINDOW_MS))
    b.at = t
    return b
  }

  return {
    async take (remoteAddress, claimCertificateId) {
      const t = opts.now()
      const address = bucket(addresses, remoteAddress, opts.perAddress, t)
      if (address.tokens < 1) return 'address'
      const claim = bucket(claims, claimCertificateId, opts.perClaimCertificate, t)
      if (claim.tokens < 1) return 'claimCertificate'
      address.tokens -= 1
      claim.tokens -= 1
      return 'allow'
    },
    async close () {
      addresses.clear()
      claims.clear()
    }
  }
}

// KEYS: address counter, claim-certificate counter; ARGV: address limit, claim limit, window ms.
// Both checked before either is counted; a counter's window starts with its first request.
const TAKE = `
local address = tonumber(redis.call('GET', KEYS[1]) or '0')
if address >= tonumber(ARGV[1]) then return 1 end
local claim = tonumber(redis.call('GET', KEYS[2]) or '0')
if claim >= tonumber(ARGV[2]) then return 2 end
if redis.call('INCR', KEYS[1]) == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
if redis.call('INCR', KEYS[2]) == 1 then redis.call('PEXPIRE', KEYS[2], ARGV[3]) end
return 0`

const VERDICTS: readonly ThrottleVerdict[] = ['allow', 'address', 'claimCertificate']

function redisThrottle (opts: ThrottleOptions, url: string): ProvisionThrottle {
  const prefix = `${opts.keyPrefix ?? 'jitp:'}throttle:`
  const onError = opts.onError ?? (() => {})
  // queued while (re)connecting, rejected after one retry: a request at start-up waits, an outage fails
  const conn: Redis = connectRedis(url, 'failFast', onError)
  return {
    async take (remoteAddress, claimCertificateId) {
      try {
        const reply = await conn.eval(TAKE, 2, `${prefix}address:${remoteAddress}`, `${prefix}claim:${claimCertificateId}`,
          String(opts.perAddress), String(opts.perClaimCertificate), String(WINDOW_MS))
        return VERDICTS[Number(reply)] ?? 'address'
      } catch (err) {
        onError(err as Error)
        // fail closed (see the header): the request is refused as if its address were over the limit
        return 'address'
      }
    },
    close: () => quitGracefully(conn)
  }
}

/**
 * A fixed-window counter per key (CONTRACT §3.4: rotations per device). With
 * REDIS_URL the count is shared by every broker process; a Redis error fails
 * closed, as the provisioning throttle does (see the header).
 */
export interface RateLimit {
  /** counts one request for `key` unless it is over the limit; false when refused */
  take (key: string): Promise<boolean>
  /** gives back one request `take` counted (the token endpoint counts every attempt and refunds the good ones) */
  refund (key: string): Promise<void>
  close (): Promise<void>
}

export interface RateLimitOptions {
  readonly limit: number
  readonly windowMs: number
  readonly now: () => number
  readonly redisUrl?: string | undefined
  /** the key space, e.g. `rotate` */
  readonly name: string
  readonly keyPrefix?: string
  readonly onError?: (err: Error) => void
}

// KEYS: counter; ARGV: limit, window ms. The window starts with the key's first request.
const TAKE_ONE = `
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n >= tonumber(ARGV[1]) then return 0 end
if redis.call('INCR', KEYS[1]) == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1`

// KEYS: counter. The window (the key's TTL) is left as it is.
const REFUND_ONE = `
if tonumber(redis.call('GET', KEYS[1]) or '0') > 0 then redis.call('DECR', KEYS[1]) end
return 1`

export function createRateLimit (opts: RateLimitOptions): RateLimit {
  const onError = opts.onError ?? (() => {})
  if (opts.redisUrl) {
    const prefix = `${opts.keyPrefix ?? 'jitp:'}throttle:${opts.name}:`
    const conn: Redis = connectRedis(opts.redisUrl, 'failFast', onError)
    return {
      async take (key) {
        try {
          return Number(await conn.eval(TAKE_ONE, 1, prefix + key, String(opts.limit), String(opts.windowMs))) === 1
        } catch (err) {
          onError(err as Error)
          return false
        }
      },
      async refund (key) {
        try {
          await conn.eval(REFUND_ONE, 1, prefix + key)
        } catch (err) {
          // the refund is lost: the key stays counted until its window ends, as when it failed
          onError(err as Error)
        }
      },
      close: () => quitGracefully(conn)
    }
  }
  const windows = new Map<string, { start: number, count: number }>()
  return {
    async take (key) {
      const t = opts.now()
      let w = windows.get(key)
      if (w === undefined || t - w.start >= opts.windowMs) {
        // bounded memory: forget everyone, start fresh
        if (w === undefined && windows.size >= MAX_KEYS) windows.clear()
        w = { start: t, count: 0 }
        windows.set(key, w)
      }
      if (w.count >= opts.limit) return false
      w.count++
      return true
    },
    async refund (key) {
      const w = windows.get(key)
      if (w !== undefined && w.count > 0) w.count--
    },
    async close () {
      windows.clear()
    }
  }
}
