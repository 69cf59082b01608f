/**
 * Identity: turns the verified client certificate into who the connection is.
 * - device: CN is the device id; the certificate must be active in the registry,
 *   the device provisioned (in its health window, full device rights), active or
 *   quarantined (CONTRACT §3.7: it may still connect, and its rules are fenced,
 *   see policy.ts), and the MQTT client id the device id.
 * - manufacturer: a factory certificate acts as a device once registered; an
 *   unregistered one is deferred to provisioning (JITP on first connect).
 * - claim: anonymous, may only provision; clean sessions only.
 * - service: CN is the service name.
 * Username and password are ignored: the certificate alone authenticates.
 * A client id in use by another identity is refused (plugins/session-owners.ts).
 */
import type { Identity, PeerCertificate } from '../broker/session.js'
import type { DeviceStatus } from '../broker/store/registry.js'
import { DEFER, deny, type AuthenticateAnswer, type AuthenticateEvent, type Plugin, type PluginContext, type PluginHooks } from '../broker/plugin.js'
import type { Policy } from './policy.js'
import { permissionsFor } from './policy.js'
import { holdSession, keepLiveOwnersAlive } from './session-owners.js'

export interface IdentityOptions { readonly policy: Policy }

/** the device statuses that may connect; any other (revoked, or one added later) may not */
const MAY_CONNECT: ReadonlySet<DeviceStatus> = new Set<DeviceStatus>(['provisioned', 'active', 'quarantined'])

async function authenticateDevice (ctx: PluginContext, policy: Policy, ev: AuthenticateEvent, peer: PeerCertificate): Promise<AuthenticateAnswer> {
  // the certificate's record and its device in the connect's one read (revocation made it)
  const { certificate: cert, device } = await (ev.records?.() ?? ctx.registry.certificateRecords({
    certificateId: peer.certificateId, issuerFingerprint: peer.issuerFingerprint, serialNumber: peer.serialNumber
  }))
  if (!cert) {
    // a factory certificate nobody registered yet is provisioning's business
    return peer.issuerRole === 'manufacturer' ? DEFER : deny('UnknownCertificate')
  }
  if (cert.deviceId === null) return deny('UnknownCertificate', undefined, 'certificate not bound to a device')
  if (!device) return deny('DeviceUnknown')
  if (!MAY_CONNECT.has(device.status)) return deny('DeviceRevoked')
  if (cert.status !== 'active') return deny('CertificateRevoked')
  // CONTRACT §3.4: replaced by a rotation and past its grace period (the rotation sweep revokes it too)
  if (cert.retiresAt !== undefined && cert.retiresAt <= ctx.now()) return deny('CertificateRevoked', undefined, 'replaced by rotation; grace period over')
  if (ev.clientId !== device.deviceId) return deny('ClientIdMismatch', undefined, `expected client id ${device.deviceId}`)
  const identity: Identity = {
    role: 'device',
    clientId: ev.clientId,
    certificateId: peer.certificateId,
    name: device.deviceId,
    permissions: permissionsFor(policy, 'device'),
    quarantined: device.status === 'quarantined',
    // the health plugin looks at these sessions only: an active device costs it nothing
    ...(device.status === 'provisioned' ? { provisioned: true } : {}),
    // read here with the record anyway: the rotation plugin settles only these, no store call for the rest
    ...(cert.replaces !== undefined ? { rotationPending: true } : {})
  }
  return { verdict: 'allow', identity }
}

export const identityPlugin: Plugin<IdentityOptions> = {
  name: 'identity',
  setup (ctx, { policy }): PluginHooks {
    async function identify (ev: AuthenticateEvent): Promise<AuthenticateAnswer> {
      const { peer } = ev
      // a token-listener connection: its token is read by plugins/token-identity.ts
      if (peer === null) return DEFER
      switch (peer.issuerRole) {
        case 'device':
        case 'manufacturer':
          return authenticateDevice(ctx, policy, ev, peer)
        case 'claim':
          if (!ev.clean) return deny('ClaimSessionNotClean')
          return {
            verdict: 'allow',
            identity: { role: 'claim', clientId: ev.clientId, certificateId: peer.certificateId, name: null, permissions: permissionsFor(policy, 'claim') }
          }
        case 'service':
          if (!peer.commonName) return deny('UnknownCertificate', undefined, 'service certificate without CN')
          return {
            verdict: 'allow',
            identity: { role: 'service', clientId: ev.clientId, certificateId: peer.certificateId, name: peer.commonName, permissions: permissionsFor(policy, 'service') }
          }
      }
      return DEFER
    }

    // the records of live clean sessions (this process's, token holders' included) outlive them by a day
    const owners = keepLiveOwnersAlive(ctx, ctx.config.sessionRevalidateSeconds * 1000)

    return {
      name: 'identity',
      async authenticate (ev) {
        const answer = await identify(ev)
        if (answer.verdict !== 'allow') return answer
        // sessions belong to identities: no takeover of another identity's client id (plugins/session-owners.ts)
        return (await holdSession(ctx, answer.identity, ev)) ?? answer
      },
      async close () {
        owners.close()
      }
    }
  }
}

