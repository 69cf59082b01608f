/**
 * Token buckets per key (claim certificate, remote address), so a leaked claim
 * certificate cannot mint devices at will. Per process: with several brokers
 * the effective limit is per broker, which still bounds a single attacker's rate.
 */
export interface Throttle { take (key: string): boolean }

const MAX_KEYS = 100_000

export function createThrottle (perMinute: number, now: () => number): Throttle {
  const buckets = new Map<string, { tokens: number, at: number }>()
  const refillPerMs = perMinute / 60_000
  return {
    take (key) {
      const t = now()
      let b = buckets.get(key)
      if (!b) {
        // bounded memory under a spray of addresses: forget everyone, start fresh
        if (buckets.size >= MAX_KEYS) buckets.clear()
        b = { tokens: perMinute, at: t }
        buckets.set(key, b)
      }
      b.tokens = Math.min(perMinute, b.tokens + (t - b.at) * refillPerMs)
      b.at = t
      if (b.tokens < 1) return false
      b.tokens -= 1
      return true
    }
  }
}
