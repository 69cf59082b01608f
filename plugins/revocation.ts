/**
 * Revocation (CONTRACT §2, §11): every certificate of every role can be revoked,
 * by certificate id, by issuer + serial, or with its whole CA, in the registry's
 * durable revocation list or in a CRL file next to the role CA.
 *
 * First among the authenticators: a revoked certificate is denied before anyone
 * looks it up. A live session goes as soon as this process hears the notice (Redis
 * pub/sub, at most once); because a notice can be lost (subscriber reconnecting,
 * partition), every live session is also checked against the durable list every
 * SESSION_REVALIDATE_SECONDS and at once when the subscriber comes back (its
 * device's status too: a quarantine travels as a notice as well). A notice
 * that lands while a connect is in flight is caught by an epoch: the connect
 * remembers the epoch it started under and, once registered, looks again if it moved.
 *
 * The `certificate.revoked` / `ca.revoked` / `device.revoked` line is written once,
 * by whoever revoked (CLI, admin API); brokers audit only the sessions they close.
 */
import type { Client } from 'aedes'
import { watchCrls } from '../broker/crl.js'
import { Errors } from '../broker/errors.js'
import { DEFER, deny, type Plugin, type PluginHooks } from '../broker/plugin.js'
import { liveClients, stateOf, type ConnectionState, type Identity, type PeerCertificate } from '../broker/session.js'
import type { DeviceStatus, RevocationNotice, RevocationQuery } from '../broker/store/registry.js'

/** sessions checked per registry round trip during a re-validation */
const BATCH = 500

type CloseCode = 'CertificateRevoked' | 'DeviceRevoked' | 'SessionRevalidated'

function queryOf (peer: PeerCertificate): RevocationQuery {
  return { certificateId: peer.certificateId, issuerFingerprint: peer.issuerFingerprint, serialNumber: peer.serialNumber }
}

/**
 * CONTRACT §3.7: whether a device session was built under another fence than its
 * status now says (quarantined, or not): it must reconnect under the right one.
 */
function fenceChanged (status: DeviceStatus, identity: Identity): boolean {
  return (status === 'quarantined') !== (identity.quarantined === true)
}

/** which live sessions a notice concerns, and why */
function matchNotice (notice: RevocationNotice, state: ConnectionState, peer: PeerCertificate): CloseCode | null {
  const { identity } = state
  if (notice.deviceId !== null && identity?.role === 'device' && identity.name === notice.deviceId) {
    // a quarantine or reinstatement (CONTRACT §3.7): the device reconnects under its new status
    return notice.statusChanged === true ? 'SessionRevalidated' : 'DeviceRevoked'
  }
  if (notice.certificateId !== null && peer.certificateId === notice.certificateId) return 'CertificateRevoked'
  if (notice.caFingerprint !== undefined && peer.issuerFingerprint === notice.caFingerprint) return 'CertificateRevoked'
  if (notice.issuerFingerprint !== undefined && peer.issuerFingerprint === notice.issuerFingerprint && peer.serialNumber === notice.serialNumber) return 'CertificateRevoked'
  return null
}

export const revocationPlugin: Plugin<undefined> = {
  name: 'revocation',
  setup (ctx): PluginHooks {
    const { registry, broker, log, metrics, config } = ctx
    /** moves on every notice and every possible loss of notices */
    let epoch = 0
    const startedUnder = new WeakMap<Client, number>()
    let sweeping: Promise<void> | null = null
    let sweepAgain = false
    let closed = false

    /** live sessions authenticated by a certificate: a token-listener session has none to revoke */
    function sessions (): Array<[Client, ConnectionState, PeerCertificate]> {
      const out: Array<[Client, ConnectionState, PeerCertificate]> = []
      for (const client of Object.values(liveClients(broker))) {
        const state = stateOf(client)
        if (client && state?.identity && state.peer && !state.closeReason) out.push([client, state, state.peer])
      }
      return out
    }

    function closeSession (client: Client, state: ConnectionState, errorCode: CloseCode, reason: string): void {
      if (state.closeReason) return
      // read by the chain's `disconnect` audit line
      state.closeReason = { errorCode, reason }
      client.close()
    }

    function onRevocation (notice: RevocationNotice): void {
      epoch++
      const statusChanged = notice.statusChanged === true
      if (!statusChanged) metrics.revocations.inc()
      for (const [client, state, peer] of sessions()) {
        const code = matchNotice(notice, state, peer)
        if (code !== null) closeSession(client, state, code, statusChanged ? 'device status changed' : 'revocation notice')
      }
    }

    /** every live session against the CRLs and the durable list, one round trip per batch */
    async function sweep (reason: string): Promise<void> {
      const live = sessions()
      for (let i = 0; i < live.length && !closed; i += BATCH) {
        const batch = live.slice(i, i + BATCH).filter(([client, state, peer]) => {
          if (!crls.has(peer.issuerFingerprint, peer.serialNumber)) return true
          closeSession(client, state, 'CertificateRevoked', `${reason}: CRL`)
          return false
        })
        const revoked = await registry.areRevoked(batch.map(([, , peer]) => queryOf(peer)))
        const devices: Array<[Client, ConnectionState, string]> = []
        batch.forEach(([client, state], j) => {
          if (revoked[j] === true) closeSession(client, state, 'CertificateRevoked', reason)
          else if (state.identity?.role === 'device' && state.identity.name !== null) devices.push([client, state, state.identity.name])
        })
        await recheckStatuses(devices, reason)
      }
    }

    /**
     * A quarantine or a reinstatement reaches live sessions as a status notice, as
     * much at most once as a revocation notice: a session that missed it would keep
     * the rights of its old status (a quarantined device its telemetry and commands)
     * for as long as it stays connected. So the status is re-read too (one round
     * trip per batch: the reads go out together).
     */
    async function recheckStatuses (devices: ReadonlyArray<[Client, ConnectionState, string]>, reason: string): Promise<void> {
      if (devices.length === 0) return
      const records = await Promise.all(devices.map(([, , deviceId]) => registry.getDevice(deviceId)))
      records.forEach((device, j) => {
        const [client, state] = devices[j]!
        if (device !== null && state.identity && fenceChanged(device.status, state.identity)) {
          closeSession(client, state, 'SessionRevalidated', `${reason}: device status changed to ${device.status}`)
        }
      })
    }

    /** one sweep at a time; a request during a sweep runs one more after it (its reads may predate the change) */
    function revalidate (reason: string): void {
      if (closed) return
      if (sweeping) {
        sweepAgain = true
        return
      }
      sweeping = sweep(reason).catch((err: unknown) => {
        // the store is away: sessions stay (a Redis blip must not drop the fleet); the next sweep retries
        log.warn({ err: (err as Error).message }, 'session re-validation failed')
      }).finally(() => {
        sweeping = null
        if (sweepAgain) {
          sweepAgain = false
          revalidate(reason)
        }
      })
    }

    function guarded<A extends unknown[]> (name: string, fn: (...args: A) => void): (...args: A) => void {
      return function guardedListener (...args: A): void {
        try {
          fn(...args)
        } catch (err) {
          // a bug here must never take the broker (and every session on it) down
          log.error({ err }, `${name} failed`)
        }
      }
    }

    const crls = watchCrls({
      certsDir: config.certsDir,
      audit: ctx.audit,
      log,
      onChange: guarded('CRL change', function onCrlChange () {
        epoch++
        for (const [client, state, peer] of sessions()) {
          if (crls.has(peer.issuerFingerprint, peer.serialNumber)) closeSession(client, state, 'CertificateRevoked', 'CRL')
        }
      })
    })
    registry.onRevocation(guarded('revocation listener', onRevocation))
    registry.onRevocationGap(guarded('revocation gap listener', function onGap () {
      epoch++
      revalidate(`${Errors.SessionRevalidated.message} (revocation notices may have been missed)`)
    }))
    const timer = setInterval(function periodicRevalidation () {
      revalidate(Errors.SessionRevalidated.message)
    }, config.sessionRevalidateSeconds * 1000)
    timer.unref()

    /** false when the session was closed: revoked, or its device's status changed, while the connect was in flight */
    async function recheck (client: Client, state: ConnectionState, peer: PeerCertificate): Promise<boolean> {
      // areRevoked, not isRevoked: a device revoked meanwhile counts too
      if (crls.has(peer.issuerFingerprint, peer.serialNumber) || (await registry.areRevoked([queryOf(peer)]))[0] === true) {
        closeSession(client, state, 'CertificateRevoked', 'revoked while connecting')
        return false
      }
      // a status notice during the connect: the status the identity was built from may be stale
      const identity = state.identity
      if (identity?.role === 'device' && identity.name !== null) {
        const device = await registry.getDevice(identity.name)
        if (device !== null && fenceChanged(device.status, identity)) {
          closeSession(client, state, 'SessionRevalidated', 'device status changed while connecting')
          return false
        }
      }
      return true
    }

    return {
      name: 'revocation',
      async authenticate (ev) {
        const { peer } = ev
        // a token-listener connection has no certificate: its token is checked where it is read
        if (peer === null) return DEFER
        startedUnder.set(ev.client, epoch)
        if (crls.has(peer.issuerFingerprint, peer.serialNumber)) return deny('CertificateRevoked', 'crl')
        // the connect's one read of the store, shared with identity (AuthenticateEvent.records)
        const records = await (ev.records?.() ?? registry.certificateRecords(queryOf(peer)))
        if (records.revoked) return deny('CertificateRevoked', 'revocation-list')
        return DEFER
      },
      async beforeQueue (client, state) {
        // nothing changed since the connect read the registry: the common case, no store call
        if (state.peer === null || startedUnder.get(client) === epoch) return true
        const checkedAt = epoch
        try {
          if (!await recheck(client, state, state.peer)) return false
        } catch (err) {
          // could not look, and the queue would go to a certificate that may be revoked: the session
          // is closed (the client reconnects and is checked in full), its queue stays stored
          log.warn({ err: (err as Error).message }, 'revocation re-check before the session queue failed')
          closeSession(client, state, 'SessionRevalidated', 'could not re-check a revocation that landed while connecting')
          return false
        }
        // ready looks again only if another revocation lands from here on
        startedUnder.set(client, checkedAt)
        return true
      },
      ready (client, state) {
        if (state.peer === null || startedUnder.get(client) === epoch) return
        recheck(client, state, state.peer).catch((err: unknown) => {
          // could not look: the next re-validation will
          log.warn({ err: (err as Error).message }, 'revocation re-check after connect failed')
        })
      },
      async close () {
        closed = true
        clearInterval(timer)
        crls.close()
        await sweeping
      }
    }
  }
}
