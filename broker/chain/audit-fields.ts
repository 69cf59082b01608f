import type { Client } from 'aedes'
import type { ConnectionState } from '../session.js'

/** the allow-listed fields every chain audit line carries about its connection */
export function auditFields (client: Client | null, state: ConnectionState | undefined) {
  const identity = state?.identity
  return {
    clientId: client?.id,
    deviceId: identity?.role === 'device' ? identity.name ?? undefined : undefined,
    role: identity?.role ?? state?.peer.issuerRole,
    certificateId: state?.peer.certificateId,
    remoteAddress: state?.remoteAddress
  }
}
