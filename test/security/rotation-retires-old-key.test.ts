/**
 * Attack: the key of a claim-provisioned device is exposed, so the device
 * rotates to a new key (CONTRACT §3.4). The claim flow binds two certificates
 * to the device, both on the old key: the final one and the provisional one
 * from the create step (AWS firmware keeps that one). Rotation retired only the
 * certificate the connection presented, so whoever held the old key kept
 * connecting with the provisional certificate for its 90 days, and could even
 * rotate with it to a certificate of its own.
 * Defence: when a rotated certificate is settled (its first use, or the end of
 * its grace period), every other certificate still active for the device is
 * revoked with the replaced one, each audited. Both stores.
 */
import t from 'tap'
import { STORES, connect, endClient, startBroker, waitFor } from '../helpers/broker.js'
import { newCsr, provision, request } from '../helpers/provisioning.js'
import { connackOf } from '../helpers/revocation.js'

const ROTATE = '$provision/certificates/rotate/json'

for (const store of STORES) {
  t.test(`a rotation retires the device's old key, the provisional certificate too (${store})`, async (t) => {
    const tb = await startBroker({ store })
    t.teardown(() => tb.close())
    const registry = tb.handle.registry
    const p = await provision(tb, `ROT-${store.toUpperCase()}`, 'ec')
    const provisional = { cert: p.createCertificatePem, key: p.creds.key }
    t.equal((await registry.certificatesOfDevice(p.deviceId)).filter((c) => c.status === 'active').length, 2, 'two certificates on the old key: final and provisional')

    // the device rotates to a new key and connects with its new certificate
    const device = await connect(tb, p.creds, { clientId: p.deviceId })
    const { csr, keyPem } = newCsr('ec')
    const rotated = await request(device, ROTATE, { certificateSigningRequest: csr })
    t.equal(rotated.outcome, 'accepted', JSON.stringify(rotated.body))
    await endClient(device)
    const fresh = await connect(tb, { cert: String(rotated.body.certificatePem), key: keyPem }, { clientId: p.deviceId })
    // settled on this first use: the revocations are written in the one step that settles it, before its audit lines
    await waitFor(() => tb.events('certificate.revoked').some((l) => l.deviceId === p.deviceId), 5000, 'the rotation settled')
    await endClient(fresh)

    const active = (await registry.certificatesOfDevice(p.deviceId)).filter((c) => c.status === 'active')
    t.same(active.map((c) => c.certificateId), [rotated.body.certificateId], 'only the new certificate is active')
    t.equal(await connackOf(tb, p.creds, p.deviceId), 5, 'the old final certificate: CONNACK 5')
    t.equal(await connackOf(tb, provisional, p.deviceId), 5, 'the provisional certificate on the old key: CONNACK 5')
    const lines = tb.events('certificate.revoked').filter((l) => l.deviceId === p.deviceId)
    t.match(lines, [{ reason: 'rotated' }, { reason: /another certificate of the device/ }], 'each audited')
    t.ok(await connackOf(tb, { cert: String(rotated.body.certificatePem), key: keyPem }, p.deviceId) === 0, 'the new one still connects')
  })
}
