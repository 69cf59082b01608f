/**
 * Attack: a holder of the claim certificate provisions a device, and its final
 * certificate leaks (or the operator revokes it) before the device has ever
 * connected with it. Provisioning put that certificate's classification into
 * the trust's cache (Trust.noteIssued), so its first connect skips the X.509
 * parse: the cache must shorten the parse only, never the per-connect
 * revocation check. The revoked certificate gets CONNACK 5 and an audit line
 * naming it; an unrevoked one, noted the same way, connects as its device.
 * Both stores.
 */
import t from 'tap'
import { publish, startBroker, STORES, waitFor, connect, endClient } from '../helpers/broker.js'
import { provision } from '../helpers/provisioning.js'
import { connackOf } from '../helpers/revocation.js'
import { certificateIdOf } from '../../pki/certificate.js'

for (const store of STORES) {
  t.test(`${store}: a provisioned certificate revoked before its first connect is refused, cache or not`, async (t) => {
    const tb = await startBroker({ store })
    t.teardown(() => tb.close())

    const revoked = await provision(tb, 'NOTED-REV-1', 'ec')
    const revokedId = certificateIdOf(revoked.creds.cert)
    t.equal(await tb.handle.registry.revoke({ certificateId: revokedId }), true, 'revoked before any connect with it')
    t.equal(await connackOf(tb, revoked.creds, revoked.deviceId), 5, 'CONNACK 5')
    await waitFor(() => tb.events('connect.refused').some((l) => l.certificateId === revokedId), 5000, 'the refusal audited')
    t.match(tb.events('connect.refused').find((l) => l.certificateId === revokedId), { errorCode: 'CertificateRevoked', role: 'device' }, 'audited with the reason and the role')
    t.notOk(tb.events('connect.accepted').some((l) => l.certificateId === revokedId), 'never accepted')

    // the control: noted the same way, not revoked, it connects as its device and may publish as one
    const fine = await provision(tb, 'NOTED-REV-2', 'ec')
    const device = await connect(tb, fine.creds, { clientId: fine.deviceId })
    await publish(device, `devices/${fine.deviceId}/telemetry`, JSON.stringify({ ts: 1763769600000, seq: 1, values: { t: 21.5 } }), { qos: 1 })
    await endClient(device)
    t.match(tb.events('connect.accepted').find((l) => l.clientId === fine.deviceId), { role: 'device', deviceId: fine.deviceId, certificateId: certificateIdOf(fine.creds.cert) }, 'the unrevoked one: its device, by its certificate')
  })
}
