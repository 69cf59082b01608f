/**
 * Expiry-driven renewal (CONTRACT §3.4, issue 12 item 2). An observer: it never
 * answers a check.
 *
 * A device (role `device`, not quarantined) whose connection presented a
 * certificate expiring within ROTATE_BEFORE_DAYS is sent
 * `{"name": "rotate-certificate", "args": {"notAfter": <ms>}}` on
 * `devices/<id>/commands/rotate-certificate`, published by the broker itself
 * (QoS 1, not retained), audited `certificate.rotation.requested`.
 *
 * When: after CONNACK (`ready`) if the session already holds a subscription that
 * covers the command topic (a persistent session's restored ones), else at the
 * device's first SUBSCRIBE that covers it (a clean session subscribes after
 * CONNACK; a publish before that would reach nobody and still use up the day).
 *
 * At most once a day per device, on every broker process: the reminder claims a
 * marker that lives for a day before it publishes — with REDIS_URL a key
 * `jitp:rotate-reminder:<deviceId>` (SET NX PX, one winner across processes),
 * without it a map in this process (the in-memory store is one process by
 * contract). A marker that cannot be claimed (store away) skips the reminder:
 * the device gets it at a later connect. Operators' on-demand commands
 * (`sendRotateCommand` from `POST /v1/devices/{id}/rotate`) are not limited and
 * do not use up the day.
 *
 * Also here: the gauge `certificatesByExpiry` of active device certificates by
 * time to expiry (7d, 30d, 90d, later), refreshed every GAUGE_REFRESH_MS by one
 * pass over the registry in pages of MAX_PAGE_LIMIT, at most MAX_GAUGE_PAGES pages.
 */
import type { Aedes, Client, Subscription } from 'aedes'
import type { Redis } from 'ioredis'
import { JitpError } from '../broker/errors.js'
import type { Plugin, PluginContext, PluginHooks } from '../broker/plugin.js'
import type { ConnectionState } from '../broker/session.js'
import { connectRedis } from '../broker/store/redis.js'
import { MAX_PAGE_LIMIT } from '../broker/store/registry.js'
import { matchesTopic } from './topic-filters.js'

const DAY_MS = 86_400_000
const GAUGE_REFRESH_MS = 60_000
/** one refresh reads at most this many pages (a million certificates); beyond, the gauge says what it counted */
const MAX_GAUGE_PAGES = 1000
/** the largest Date: every notAfter is before it */
const END_OF_TIME = 8_640_000_000_000_000
const BUCKETS = [['7d', 7 * DAY_MS], ['30d', 30 * DAY_MS], ['90d', 90 * DAY_MS]] as const
export const ROTATE_COMMAND = 'rotate-certificate'

export function rotateCommandTopic (deviceId: string): string {
  return `devices/${deviceId}/commands/${ROTATE_COMMAND}`
}

export interface CertExpiry {
  /** recounts the gauge now (the timer does it every minute) */
  refreshGauge (): Promise<void>
  /** resolves once every reminder decided so far was sent or skipped (tests synchronise on it) */
  settled (): Promise<void>
}

/** the instance set up for a broker, for tests and the operator path */
const instances = new WeakMap<Aedes, CertExpiry>()

export function certExpiryOf (broker: Aedes): CertExpiry | undefined {
  return instances.get(broker)
}

/**
 * Publishes the rotate command to one device as the broker (QoS 1, not retained:
 * queued for its persistent session when it is offline) and audits it. `reason`
 * is `expires <iso>` for a reminder, `operator` for an admin request.
 */
export async function sendRotateCommand (ctx: PluginContext, deviceId: string, notAfter: number, reason: string, who: { actor?: string, certificateId?: string } = {}): Promise<void> {
  const topic = rotateCommandTopic(deviceId)
  const payload = Buffer.from(JSON.stringify({ name: ROTATE_COMMAND, args: { notAfter } }))
  await new Promise<void>((resolve, reject) => {
    ctx.broker.publish({ cmd: 'publish', topic, payload, qos: 1, retain: false, dup: false }, function rotateCommandPublished (err?: Error) {
      if (err) reject(err)
      else resolve()
    })
  })
  ctx.audit.write('certificate.rotation.requested', { deviceId, topic, reason, actor: who.actor, certificateId: who.certificateId })
}

/**
 * The operator's request (`POST /v1/devices/{id}/rotate`): the command carries the
 * expiry of the device's latest active certificate, the one it would be locked out
 * at. The caller checked that the device exists and is not revoked.
 */
export async function requestRotation (ctx: PluginContext, deviceId: string, actor: string): Promise<void> {
  const active = (await ctx.registry.certificatesOfDevice(deviceId)).filter((c) => c.status === 'active')
  if (active.length === 0) throw new JitpError('DeviceRevoked', 'the device has no active certificate to rotate')
  const notAfter = Math.max(...active.map((c) => c.notAfter))
  await sendRotateCommand(ctx, deviceId, notAfter, 'operator', { actor })
}

/** the once-a-day marker */
interface Reminders {
  /** true when this caller may send the reminder now (and no one else may for a day) */
  claim (deviceId: string): Promise<boolean>
  /** a claimed reminder that could not be sent: the next connect may try again */
  release (deviceId: string): Promise<void>
  prune (): void
}

function memoryReminders (now: () => number): Reminders {
  const sent = new Map<string, number>()
  return {
    async claim (deviceId) {
      const last = sent.get(deviceId)
      if (last !== undefined && now() - last < DAY_MS) return false
      sent.set(deviceId, now())
      return true
    },
    async release (deviceId) {
      sent.delete(deviceId)
    },
    prune () {
      const t = now()
      for (const [deviceId, at] of sent) if (t - at >= DAY_MS) sent.delete(deviceId)
    }
  }
}

function redisReminders (conn: Redis): Reminders {
  const key = (deviceId: string): string => `jitp:rotate-reminder:${deviceId}`
  return {
    async claim (deviceId) {
      return (await conn.set(key(deviceId), '1', 'PX', DAY_MS, 'NX')) === 'OK'
    },
    async release (deviceId) {
      await conn.del(key(deviceId))
    },
    // keys expire by themselves
    prune () {}
  }
}

function coversCommand (client: Client, deviceId: string): boolean {
  const topic = rotateCommandTopic(deviceId)
  const subscriptions = (client as unknown as { subscriptions: Record<string, unknown> }).subscriptions
  for (const filter of Object.keys(subscriptions)) if (matchesTopic(filter.split('/'), topic)) return true
  return false
}

export const certExpiryPlugin: Plugin<undefined> = {
  name: 'cert-expiry',
  setup (ctx): PluginHooks {
    const { config, registry, metrics, log, now, broker } = ctx
    const windowMs = config.rotateBeforeDays * DAY_MS
    const redis = config.redisUrl
      ? connectRedis(config.redisUrl, 'registry', (err) => log.warn({ err: err.message }, 'cert-expiry: store connection error'))
      : null
    const reminders = redis ? redisReminders(redis) : memoryReminders(now)
    /** devices due a reminder, waiting for a subscription that covers the command topic */
    const waiting = new WeakMap<Client, ConnectionState>()
    const inFlight = new Set<Promise<void>>()

    async function remind (state: ConnectionState, deviceId: string): Promise<void> {
      const peer = state.peer
      if (peer === null) return
      const notAfter = peer.notAfter
      let claimed = false
      try {
        claimed = await reminders.claim(deviceId)
        if (claimed) await sendRotateCommand(ctx, deviceId, notAfter, `expires ${new Date(notAfter).toISOString()}`, { certificateId: peer.certificateId })
      } catch (err) {
        log.warn({ err: (err as Error).message, deviceId }, 'cert-expiry: rotate reminder not sent (a later connect tries again)')
        if (claimed) await reminders.release(deviceId).catch(() => {})
      }
    }

    function track (p: Promise<void>): void {
      inFlight.add(p)
      void p.finally(() => inFlight.delete(p))
    }

    function onSubscribe (_subs: Subscription[], client: Client): void {
      const state = waiting.get(client)
      const deviceId = state?.identity?.name
      if (!state || !deviceId || !coversCommand(client, deviceId)) return
      waiting.delete(client)
      track(remind(state, deviceId))
    }
    broker.on('subscribe', onSubscribe)

    let counting: Promise<void> | null = null
    async function countByExpiry (): Promise<void> {
      const t = now()
      const counts = { '7d': 0, '30d': 0, '90d': 0, later: 0 }
      let cursor: string | undefined
      let pages = 0
      do {
        const page = await registry.listCertificatesPage({ status: 'active', expiringBefore: END_OF_TIME, limit: MAX_PAGE_LIMIT, cursor })
        for (const c of page.items) {
          const bucket = BUCKETS.find(([, ms]) => c.notAfter - t <= ms)
          counts[bucket ? bucket[0] : 'later']++
        }
        cursor = page.nextCursor ?? undefined
      } while (cursor !== undefined && ++pages < MAX_GAUGE_PAGES)
      if (cursor !== undefined) log.warn({ pages }, 'cert-expiry: more active certificates than one gauge refresh reads; the gauge counts the soonest')
      for (const [within, n] of Object.entries(counts)) metrics.certificatesByExpiry.set({ within }, n)
    }
    function refreshGauge (): Promise<void> {
      counting ??= countByExpiry().finally(() => { counting = null })
      return counting
    }
    const timer = setInterval(function refreshExpiryGauge () {
      reminders.prune()
      refreshGauge().catch((err: unknown) => log.warn({ err: (err as Error).message }, 'cert-expiry: gauge not refreshed'))
    }, GAUGE_REFRESH_MS)
    timer.unref()

    instances.set(broker, {
      refreshGauge,
      async settled () {
        while (inFlight.size > 0) await Promise.all(inFlight)
      }
    })

    return {
      name: 'cert-expiry',
      ready (client, state) {
        const identity = state.identity
        // a device always connects with its certificate (the token listener has no device role)
        if (identity?.role !== 'device' || identity.name === null || identity.quarantined || state.peer === null) return
        if (state.peer.notAfter - now() > windowMs) return
        if (coversCommand(client, identity.name)) track(remind(state, identity.name))
        else waiting.set(client, state)
      },
      async close () {
        clearInterval(timer)
        broker.removeListener('subscribe', onSubscribe)
        await Promise.allSettled([...inFlight, counting])
        instances.delete(broker)
        await redis?.quit()
      }
    }
  }
}
