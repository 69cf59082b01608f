/**
 * Keep-alive without a timer refresh per packet.
 *
 * Aedes 1.2 arms one Timeout per client at CONNECT and calls `refresh()` on it
 * for every packet it reads (lib/handlers/index.js): a libuv clock read and a
 * timer-list re-insert per PUBLISH and per PUBACK, about 0.5 µs each, 3 % of the
 * broker's CPU in the QoS 1 fan-in. Here every client has that timer: keep-alive 0
 * is clamped to MAX_KEEPALIVE_SECONDS (CONTRACT §11, chain/connect.ts).
 *
 * So, once the client is registered, Aedes' Timeout is swapped for an interval
 * that ticks every quarter of Aedes' interval (1.5 × keep-alive + 1 ms,
 * [MQTT-3.1.2-24]) and whose `refresh()`, the call Aedes makes per packet, only
 * marks the client as seen. Four silent ticks in a row run Aedes' own timeout
 * (the `keepaliveTimeout` event, then the client's error): a silent client is cut
 * after 1 to 1.25 × Aedes' interval of silence, never before. It is still a Node
 * Timeout, so Aedes' `clearTimeout` on close stops it, and it holds nothing per
 * client but its arguments.
 */
import type { Client } from 'aedes'

/** the two fields of Aedes' client this replaces (lib/client.js, lib/handlers/connect.js) */
interface KeepaliveFields {
  _keepaliveTimer: NodeJS.Timeout | null
  _keepaliveInterval: number
}

const TICKS = 4

interface Ticker extends NodeJS.Timeout {
  /** a packet arrived since the last tick */
  jitpSeen: boolean
  /** ticks in a row with no packet */
  jitpSilent: number
}

/** Aedes' per-packet call: only a mark */
function markSeen (this: Ticker): Ticker {
  this.jitpSeen = true
  return this
}

function tick (client: Client, onTimeout: () => void): void {
  const ticker = (client as unknown as KeepaliveFields)._keepaliveTimer as Ticker | null
  if (ticker === null) return
  if (ticker.jitpSeen) {
    ticker.jitpSeen = false
    ticker.jitpSilent = 0
    return
  }
  if (++ticker.jitpSilent < TICKS) return
  clearInterval(ticker)
  onTimeout()
}

/** Swaps the keep-alive timer Aedes armed for `client` (none when keep-alive is 0) for a ticker. */
export function coarseKeepalive (client: Client): void {
  const fields = client as unknown as KeepaliveFields
  const timer = fields._keepaliveTimer
  const interval = fields._keepaliveInterval
  // Aedes' timeout function (its `keepaliveTimeout` closure), read before clearTimeout drops it
  const onTimeout = (timer as unknown as { _onTimeout?: unknown } | null)?._onTimeout
  if (timer === null || !(interval > 0) || typeof onTimeout !== 'function') return
  clearTimeout(timer)
  const ticker = setInterval(tick, Math.max(1, Math.ceil(interval / TICKS)), client, onTimeout) as unknown as Ticker
  ticker.jitpSeen = false
  ticker.jitpSilent = 0
  ticker.refresh = markSeen
  fields._keepaliveTimer = ticker
}
