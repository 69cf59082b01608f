/**
 * Attack: a compromised device whose certificate the operator revoked by issuer
 * and serial (or by its CA) asks for a rotation before its session is closed.
 * Such a revocation leaves the certificate's record 'active': only the
 * revocation list says so, and a broker process whose notice was lost (its
 * pub/sub connection reconnecting, a partition) still holds the session until
 * the next re-validation. The rotation checked the record only, so it issued a
 * fresh certificate naming the device, which then connected with CONNACK 0:
 * the missed window became permanent access.
 * Defence: the rotation script refuses when the presented certificate is on the
 * list in any form, in the same step that stores the new certificate; and a
 * revocation that lands while the rotation is stored revokes the new
 * certificate before any reply. The lost notice is the durable record written
 * straight into Redis, as the revoking process writes it, with no PUBLISH.
 */
import t from 'tap'
import { createHash, X509Certificate } from 'node:crypto'
import { Redis } from 'ioredis'
import type { RotatedCertificate, RotationOutcome, RevocationQuery } from '../../broker/store/registry.js'
import { normalizeSerial } from '../../broker/store/registry.js'
import { connect, endClient, registerDevice, startBroker, waitFor, type ClientCredentials, type TestBroker } from '../helpers/broker.js'
import { newCsr, request } from '../helpers/provisioning.js'
import { connackOf } from '../helpers/revocation.js'

const ROTATE = '$provision/certificates/rotate/json'

/** the list field the registry writes for a revocation by issuer and serial (broker/store/registry.ts listField) */
function serialField (tb: TestBroker, creds: ClientCredentials): string {
  const ca = createHash('sha256').update(new X509Certificate(tb.pki.read('device-ca.pem')).raw).digest('hex')
  return `serial:${ca}:${normalizeSerial(new X509Certificate(creds.cert).serialNumber)}`
}

t.test('a rotation presenting a certificate revoked by issuer and serial, its notice lost (redis)', async (t) => {
  const tb = await startBroker({ store: 'redis' })
  t.teardown(() => tb.close())
  const writer = new Redis(tb.redis!.url, { maxRetriesPerRequest: 1 })
  t.teardown(() => { writer.disconnect() })
  const registry = tb.handle.registry

  t.test('revoked before the request: refused, nothing issued', async (t) => {
    const creds = await registerDevice(tb, 'rot-lost-1')
    const device = await connect(tb, creds, { clientId: 'rot-lost-1' })
    t.teardown(() => { device.end(true) })
    await writer.hset('jitp:revocation-list', serialField(tb, creds), String(Date.now()))
    t.ok(device.connected, 'the notice was lost: the session is still up')
    const reply = await request(device, ROTATE, { certificateSigningRequest: newCsr('ec').csr })
    t.equal(reply.outcome, 'rejected', 'the rotation is refused')
    t.match(reply.body, { errorCode: 'RotationNotAllowed' })
    t.notOk(reply.body.certificatePem, 'no certificate')
    t.same((await registry.certificatesOfDevice('rot-lost-1')).map((c) => c.certificateId), [createHash('sha256').update(new X509Certificate(creds.cert).raw).digest('hex')], 'the device still has only the revoked certificate')
    t.equal(tb.events('certificate.rotated').filter((l) => l.deviceId === 'rot-lost-1').length, 0, 'no certificate.rotated')
    await waitFor(() => tb.events('provision.rejected').some((l) => l.deviceId === 'rot-lost-1' && l.errorCode === 'RotationNotAllowed'), 5000, 'provision.rejected')
    t.equal(await connackOf(tb, creds, 'rot-lost-1'), 5, 'the revoked certificate gets CONNACK 5 on a new connect')
  })

  t.test('revoked while the rotation is stored: the new certificate is revoked before any reply', async (t) => {
    const creds = await registerDevice(tb, 'rot-lost-2')
    const device = await connect(tb, creds, { clientId: 'rot-lost-2' })
    t.teardown(() => { device.end(true) })
    // the record lands right after the rotation script ran (the registry itself, not a stand-in)
    const rotate = registry.rotateCertificate.bind(registry)
    let issued: string | null = null
    registry.rotateCertificate = async (cert: RotatedCertificate, presented: RevocationQuery): Promise<RotationOutcome> => {
      const outcome = await rotate(cert, presented)
      issued = cert.certificateId
      await writer.hset('jitp:revocation-list', serialField(tb, creds), String(Date.now()))
      return outcome
    }
    t.teardown(() => { registry.rotateCertificate = rotate })
    const reply = await request(device, ROTATE, { certificateSigningRequest: newCsr('ec').csr })
    t.equal(reply.outcome, 'rejected', 'refused')
    t.match(reply.body, { errorCode: 'RotationNotAllowed' })
    t.notOk(reply.body.certificatePem, 'no certificate sent')
    t.ok(issued, 'the rotation had been stored')
    t.equal((await registry.getCertificate(issued!))?.status, 'revoked', 'and its new certificate is revoked')
    t.ok(tb.events('certificate.revoked').some((l) => l.certificateId === issued), 'audited certificate.revoked')
  })

  t.test('the control: an unrevoked certificate rotates', async (t) => {
    const creds = await registerDevice(tb, 'rot-lost-3')
    const device = await connect(tb, creds, { clientId: 'rot-lost-3' })
    const reply = await request(device, ROTATE, { certificateSigningRequest: newCsr('ec').csr })
    t.equal(reply.outcome, 'accepted', JSON.stringify(reply.body))
    await endClient(device)
  })
})
