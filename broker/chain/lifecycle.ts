/**
 * The broker events around a connection: `clientReady` (after CONNACK, once Aedes
 * registered the client) and `clientDisconnect`; the plugins' `ready` and
 * `disconnected` hooks run from here.
 */
import type { Client } from 'aedes'
import { refusalFields } from '../errors.js'
import { authMethodOf, stateOf } from '../session.js'
import { auditFields } from './audit-fields.js'
import type { ChainContext } from './context.js'
import { coarseKeepalive } from './keepalive.js'

export function clientReady (chain: ChainContext, client: Client): void {
  const { audit, metrics } = chain.ctx
  // no timer refresh per packet from here on (chain/keepalive.ts)
  coarseKeepalive(client)
  const state = stateOf(client)
  const role = state?.identity?.role ?? 'unknown'
  const authMethod = authMethodOf(state?.identity)
  chain.connections.get(role)?.inc()
  metrics.connectsAccepted.inc({ role })
  metrics.authentications.inc({ method: authMethod, outcome: 'accepted' })
  audit.write('connect.accepted', { ...auditFields(client, state), authMethod, reason: state?.identity?.registeredOnConnect ? 'registered on first connect' : undefined })
  if (state?.identity) for (const plugin of chain.hooks.ready) plugin.ready!(client, state)
}

/**
 * Whether `client`'s stored messages may be handed out now (broker/store/queue-gate.ts):
 * every plugin's beforeQueue must agree. A client without an identity gets nothing.
 */
export async function beforeQueue (chain: ChainContext, client: Client): Promise<boolean> {
  const state = stateOf(client)
  if (!state?.identity) return false
  for (const plugin of chain.hooks.beforeQueue) {
    if (!await plugin.beforeQueue!(client, state)) return false
  }
  return true
}

export function clientDisconnect (chain: ChainContext, client: Client): void {
  const state = stateOf(client)
  if (!state?.identity) return
  chain.connections.get(state.identity.role)?.dec()
  chain.ctx.audit.write('disconnect', { ...auditFields(client, state), ...state.closeReason })
  for (const plugin of chain.hooks.disconnected) plugin.disconnected!(client, state)
}

/** An idle cut-off is a decision too: the disconnect line says why. */
export function keepaliveTimeout (_chain: ChainContext, client: Client): void {
  const state = stateOf(client)
  if (state && !state.closeReason) state.closeReason = refusalFields('KeepaliveTimeout')
}
