/**
 * Device activity (CONTRACT §8 `GET /v1/devices/{id}` "activity"): first and last
 * seen, connects, messages in, rejected payloads and the last error code, remote
 * address, certificate expiry. An observer: it never answers a check.
 *
 * Counted here, in memory, one entry per device, and written to the registry in
 * one `recordActivity` call per ACTIVITY_FLUSH_MS for every device seen meanwhile:
 * a message costs a map lookup and an increment, never a store write. The store
 * sees at most one write per device per flush, whatever the message rate.
 *
 * A flush that fails (store away) keeps its counts: they are merged into the
 * entries gathered since, so nothing is lost across a Redis outage and the memory
 * held stays one entry per device, however long the outage. Past
 * MAX_PENDING_DEVICES distinct devices waiting, a device not yet waiting is not
 * counted until the next flush succeeds (logged). close() flushes once more,
 * bounded by CLOSE_FLUSH_MS: a dead store loses that last batch rather than hang
 * the shutdown.
 *
 * firstSeen is the time of the first flush that saw the device (each delta carries
 * the last time seen in its batch), so it is exact to within one flush interval.
 */
import type { Plugin, PluginHooks } from '../broker/plugin.js'
import type { Identity } from '../broker/session.js'
import type { ActivityDelta } from '../broker/store/registry.js'
import { within } from '../broker/store/redis.js'

/** how long close() waits for the last flush */
const CLOSE_FLUSH_MS = 1000
/** distinct devices waiting to be flushed (a long outage with a churning fleet) */
const MAX_PENDING_DEVICES = 200_000

type PendingActivity = { -readonly [K in keyof ActivityDelta]: ActivityDelta[K] }

function deviceIdOf (identity: Identity | null | undefined): string | null {
  return identity?.role === 'device' ? identity.name : null
}

/** what a failed flush saw, added into what came since (the newer optional fields win) */
function merge (into: PendingActivity, older: PendingActivity): void {
  into.seenAt = Math.max(into.seenAt, older.seenAt)
  into.connects += older.connects
  into.messagesIn += older.messagesIn
  into.rejected += older.rejected
  into.lastErrorCode ??= older.lastErrorCode
  into.remoteAddress ??= older.remoteAddress
  into.certificateNotAfter ??= older.certificateNotAfter
}

export const activityPlugin: Plugin<undefined> = {
  name: 'activity',
  setup (ctx): PluginHooks {
    const { registry, log, now, config } = ctx
    let pending = new Map<string, PendingActivity>()
    let flushing: Promise<void> | null = null
    let failing = false
    let uncounted = 0

    function entryOf (deviceId: string): PendingActivity | undefined {
      let entry = pending.get(deviceId)
      if (entry === undefined) {
        if (pending.size >= MAX_PENDING_DEVICES) {
          uncounted++
          return undefined
        }
        entry = { deviceId, seenAt: 0, connects: 0, messagesIn: 0, rejected: 0 }
        pending.set(deviceId, entry)
      }
      return entry
    }

    function requeue (batch: Map<string, PendingActivity>): void {
      for (const [deviceId, older] of batch) {
        const newer = pending.get(deviceId)
        if (newer !== undefined) merge(newer, older)
        else if (pending.size < MAX_PENDING_DEVICES) pending.set(deviceId, older)
        else uncounted++
      }
    }

    /** one flush at a time: what arrives during one waits for the next */
    function flush (): Promise<void> {
      if (flushing !== null) return flushing
      if (pending.size === 0) return Promise.resolve()
      const batch = pending
      pending = new Map()
      flushing = registry.recordActivity([...batch.values()]).then(function flushed () {
        if (failing) log.info({ devices: batch.size }, 'device activity written again')
        failing = false
      }, function flushFailed (err: unknown) {
        requeue(batch)
        // once per outage, not once per interval
        if (!failing) log.warn({ err: (err as Error).message, devices: batch.size }, 'device activity not written; kept for the next flush')
        failing = true
      }).finally(function flushDone () {
        flushing = null
        if (uncounted > 0) {
          log.warn({ uncounted, max: MAX_PENDING_DEVICES }, 'device activity: too many devices waiting for a flush, some events were not counted')
          uncounted = 0
        }
      })
      return flushing
    }

    const timer = setInterval(function periodicFlush () { void flush() }, config.activityFlushMs)
    timer.unref()

    return {
      name: 'activity',
      ready (_client, state) {
        const deviceId = deviceIdOf(state.identity)
        if (deviceId === null) return
        const entry = entryOf(deviceId)
        if (entry === undefined) return
        entry.connects++
        entry.seenAt = now()
        entry.remoteAddress = state.remoteAddress
        // a device always connects with its certificate (the token listener has no device role)
        if (state.peer) entry.certificateNotAfter = state.peer.notAfter
      },
      published ({ identity }) {
        // every routed publish passes here: the cheap test first
        const deviceId = deviceIdOf(identity)
        if (deviceId === null) return
        const entry = entryOf(deviceId)
        if (entry === undefined) return
        entry.messagesIn++
        entry.seenAt = now()
      },
      rejected ({ identity, code }) {
        const deviceId = deviceIdOf(identity)
        if (deviceId === null) return
        const entry = entryOf(deviceId)
        if (entry === undefined) return
        entry.rejected++
        entry.lastErrorCode = code
        entry.seenAt = now()
      },
      disconnected (_client, state) {
        // a device is last seen when it goes, even if it said nothing
        const deviceId = deviceIdOf(state.identity)
        if (deviceId === null) return
        const entry = entryOf(deviceId)
        if (entry !== undefined) entry.seenAt = now()
      },
      async close () {
        clearInterval(timer)
        const deadline = Date.now() + CLOSE_FLUSH_MS
        await within(flush(), CLOSE_FLUSH_MS)
        // what arrived during a flush already running goes in one more
        if (pending.size > 0 && flushing === null) await within(flush(), deadline - Date.now())
        if (pending.size > 0 || flushing !== null) log.warn({ devices: pending.size }, 'device activity not written at shutdown')
      }
    }
  }
}
