import type { Client } from 'aedes'
import type { ConnectionState } from '../session.js'

/** the allow-listed fields every chain audit line carries about its connection */
export function auditFields (client: Client | null, state: ConnectionState | undefined) {
  const identity = state?.identity
  const auth = identity?.auth
  return {
    clientId: client?.id,
    deviceId: identity?.role === 'device' ? identity.name ?? undefined : undefined,
    role: identity?.role ?? state?.peer?.issuerRole,
    certificateId: state?.peer?.certificateId,
    remoteAddress: state?.remoteAddress,
    // a token connection has no certificate id: how it authenticated, and what its token granted (CONTRACT §10)
    authMethod: auth?.method,
    oauthClientId: auth !== undefined && auth.method !== 'sas' ? auth.oauthClientId : undefined,
    scope: auth !== undefined && auth.method !== 'sas' ? [...auth.scopes].join(' ') : undefined,
    group: auth?.method === 'sas' ? auth.group : undefined
  }
}
