/**
 * Sessions belong to identities (CONTRACT §2 "Client ids and sessions"): no
 * connection takes over, or cleans, a session that belongs to another identity.
 * MQTT lets any connection with a client id take the live session of that id
 * over and, with clean=1, wipe what is stored for it [MQTT-3.1.4-2]; with the
 * claim certificate public and device ids predictable, that would hand every
 * device's session (and its queued commands) to anyone. So, once the identity is
 * known and before Aedes touches the session (authenticate is its first connect
 * step), a claim or service connection is refused with CONNACK 2 when its client
 * id is
 *   - live on this process for another identity,
 *   - a registered device id (a device's client id is its device id), or
 *   - recorded in the registry for another identity (any process, any restart).
 * The same identity reconnecting takes its own session over, as MQTT requires;
 * that is audited too. A device is owned through its registration, so it always
 * takes its own id back.
 */
import type { Client } from 'aedes'
import { deny, type AuthenticateEvent, type Deny, type PluginContext } from '../broker/plugin.js'
import { liveClients, stateOf, type Identity } from '../broker/session.js'

/**
 * How long the record of a clean service session lasts after it was last seen
 * live: nothing is stored for a clean session once it ends, and services with
 * random client ids must not leave a record per connect behind. While the session
 * lives, keepLiveOwnersAlive renews it. A persistent session's record is kept.
 */
export const CLEAN_SESSION_OWNER_TTL_MS = 24 * 3600_000

/**
 * The claim certificate is shared by the whole fleet (and public), so it names no
 * one: a claim connection is "the same identity" only as that certificate from the
 * same remote address (a device reconnecting after a drop). Another address never
 * takes a provisioning device's claim session over.
 */
export function ownerOf (identity: Identity, remoteAddress: string): string {
  // a token names its holder as surely as a certificate does, but in another namespace: a
  // service certificate CN and a token subject of the same text are two identities
  // (CONTRACT §10), and an enrollment is its group's registration id wherever it connects from
  const auth = identity.auth
  if (auth?.method === 'sas') return `sas:${auth.group}/${auth.registrationId}`
  if (auth !== undefined) return `${auth.method}:${auth.method === 'oauth2' ? `${auth.issuer}#` : ''}${identity.name ?? ''}`
  switch (identity.role) {
    case 'device': return `device:${identity.name ?? ''}`
    case 'service': return `service:${identity.name ?? ''}`
    case 'claim': return `claim:${identity.certificateId}@${remoteAddress}`
  }
}

const isClaimOwner = (owner: string | null): boolean => owner?.startsWith('claim:') === true

function liveOwner (client: Client): string | null {
  const state = stateOf(client)
  return state?.identity ? ownerOf(state.identity, state.remoteAddress) : null
}

/**
 * Claims the client id of `identity` for its session. Returns null when the
 * connection may go on, or the refusal (ClientIdInUse, CONNACK 2).
 */
export async function holdSession (ctx: PluginContext, identity: Identity, ev: AuthenticateEvent): Promise<Deny | null> {
  const { clientId } = identity
  // an empty client id gets a fresh `aedes_<uuid>` from Aedes (clean sessions only, see
  // chain.ts): there is no session to take over
  if (clientId === '') return null
  const owner = ownerOf(identity, ev.remoteAddress)
  const live = liveClients(ctx.broker)[clientId]
  const previous = live ? liveOwner(live) : null
  if (identity.role !== 'device') {
    // a claim session (clean, anonymous, nothing stored) yields to any certificate that
    // names someone, so the public claim certificate cannot squat a service's client id
    const yields = isClaimOwner(previous) && identity.role !== 'claim'
    if (live && previous !== owner && !yields) return deny('ClientIdInUse', 'live-session', 'in use by a live session of another identity')
    if (await ctx.registry.getDevice(clientId)) return deny('ClientIdInUse', 'device-id', 'a registered device id')
    // claims too: one atomic record makes two identities racing for one id a single winner;
    // a claim session lives at most CLAIM_SESSION_MAX_SECONDS, a clean one is not kept
    const ttlMs = identity.role === 'claim'
      ? ctx.config.claimSessionMaxSeconds * 1000
      : ev.clean ? CLEAN_SESSION_OWNER_TTL_MS : undefined
    if (!(await ctx.registry.claimSessionOwner(clientId, owner, ttlMs))) {
      return deny('ClientIdInUse', 'recorded-owner', 'recorded for another identity')
    }
  }
  if (live) {
    ctx.audit.write('session.takeover', {
      clientId,
      deviceId: identity.role === 'device' ? identity.name ?? undefined : undefined,
      role: identity.role,
      certificateId: identity.certificateId ?? undefined,
      authMethod: identity.auth?.method,
      remoteAddress: ev.remoteAddress,
      reason: previous === owner ? 'the same identity takes its live session over' : `a ${identity.role} takes its client id back from ${previous?.split(':')[0] ?? 'an unidentified'} session`
    })
  }
  return null
}

/**
 * Renews the records of this process's live clean sessions (services and token
 * holders; a claim session ends with its own record, CLAIM_SESSION_MAX_SECONDS).
 * The live-session check in holdSession sees this process only: on another
 * process the record is all that stands between a live session and a connection
 * of another identity using its client id, and Aedes closes the older client of
 * an id when a newer one connects anywhere in the cluster. A record that lapsed
 * while its session lived (24 h after the connect) let any identity, the public
 * claim certificate included, knock a long-lived service off and keep its id.
 * Every `periodMs` (SESSION_REVALIDATE_SECONDS), one atomic claim per session:
 * it extends the session's own record and never takes another identity's.
 */
export function keepLiveOwnersAlive (ctx: PluginContext, periodMs: number): { close (): void } {
  // SESSION_REVALIDATE_SECONDS has no ceiling: a record must be renewed well within its own lifetime
  const everyMs = Math.min(periodMs, CLEAN_SESSION_OWNER_TTL_MS / 4)
  let running = false
  async function renew (): Promise<void> {
    const sessions: Array<[clientId: string, owner: string]> = []
    for (const client of Object.values(liveClients(ctx.broker))) {
      const state = client ? stateOf(client) : undefined
      const identity = state?.identity
      if (!client || !state || !identity || !client.clean || client.id === '') continue
      if (identity.role === 'device' || identity.role === 'claim') continue
      sessions.push([client.id, ownerOf(identity, state.remoteAddress)])
    }
    for (const [clientId, owner] of sessions) {
      if (!await ctx.registry.claimSessionOwner(clientId, owner, CLEAN_SESSION_OWNER_TTL_MS)) {
        // the record names someone else (it lapsed while Redis was away, and was taken): this session
        // goes on, and the other identity is refused wherever the record is read
        ctx.log.warn({ clientId }, 'session owner record held by another identity while this session is live')
      }
    }
  }
  const timer = setInterval(function renewLiveOwners () {
    if (running) return
    running = true
    renew().catch((err: unknown) => {
      // Redis away: the records have hours left; the next turn renews them
      ctx.log.debug({ err: (err as Error).message }, 'session owner renewal failed')
    }).finally(() => { running = false })
  }, everyMs)
  timer.unref()
  return { close: () => clearInterval(timer) }
}
