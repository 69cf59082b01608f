/**
 * Attack: the holder of the public claim certificate provisions through a
 * template that an enrollment group names (CONTRACT §3.6). Such a template forms
 * the device id from `registrationId` alone; from an enrollment that parameter
 * is what the SAS proved, from a claim connection it is a free choice. So the
 * claim certificate could register any id of the group before its device
 * (`deny`: the real device then gets `DeviceExists`), register ids outside the
 * group's pattern, and, with a `replace` template, re-register an enrolled
 * device: its certificate revoked, the attacker's certificate the device's.
 * Defence: a template an enrollment group names registers that group's
 * enrollments only; anything else gets `ProvisioningDenied` (403), audited, and
 * its ownership token is untouched. Both stores.
 */
import t from 'tap'
import { deriveDeviceKey, signSas } from '../../plugins/token/sas.js'
import { STORES, connect, endClient, startBroker, waitFor, type TestBroker } from '../helpers/broker.js'
import { claimConnect, request, type Reply } from '../helpers/provisioning.js'
import { enrollmentFixtures, tokenConnect } from '../helpers/tokens.js'

const { templatesDir, enrollmentDir, lineKey, refurbKey } = enrollmentFixtures('jitp-claim-enroll')

const sas = (groupKey: Buffer, registrationId: string): string =>
  signSas(deriveDeviceKey(groupKey, registrationId), registrationId, Math.floor(Date.now() / 1000) + 600)

/** the claim certificate: a certificate and its token, then a registration through `template` naming `registrationId` */
async function claimRegister (tb: TestBroker, clientId: string, template: string, registrationId: string): Promise<{ created: Reply, reg: Reply }> {
  const claim = await claimConnect(tb, clientId)
  try {
    const created = await request(claim, '$provision/certificates/create/json', {})
    const reg = await request(claim, `$provision/templates/${template}/provision/json`, { certificateOwnershipToken: created.body.certificateOwnershipToken, parameters: { registrationId } })
    return { created, reg }
  } finally {
    await endClient(claim)
  }
}

/** a real enrollment: the device key of `registrationId`, a certificate, the group's template */
async function enroll (tb: TestBroker, group: string, groupKey: Buffer, template: string, registrationId: string): Promise<{ reg: Reply, privateKey: string }> {
  const { client, returnCode } = await tokenConnect(tb, sas(groupKey, registrationId), { clientId: registrationId, username: `enroll/${group}` })
  if (client === null) throw new Error(`enrollment of ${registrationId}: CONNACK ${returnCode}`)
  try {
    const created = await request(client, '$provision/certificates/create/json', {})
    const reg = await request(client, `$provision/templates/${template}/provision/json`, { certificateOwnershipToken: created.body.certificateOwnershipToken })
    return { reg, privateKey: String(created.body.privateKey) }
  } finally {
    await endClient(client)
  }
}

for (const store of STORES) {
  t.test(`the claim certificate registers through an enrollment group's template (${store})`, async (t) => {
    const tb = await startBroker({ store, overrides: { MQTTS_TOKEN_PORT: 0, TEMPLATES_DIR: templatesDir, ENROLLMENT_DIR: enrollmentDir } })
    t.teardown(() => tb.close())

    t.test('deny template: the claim certificate cannot squat an id of the group, and the device still enrolls', async (t) => {
      const registrationId = 'line7-0042'
      const { created, reg } = await claimRegister(tb, 'squatter-1', 'sas-sensor', registrationId)
      t.equal(created.outcome, 'accepted', 'the claim certificate still gets a certificate and a token (nothing of the group yet)')
      t.equal(reg.outcome, 'rejected', 'the group\'s template refuses it')
      t.match(reg.body, { statusCode: 403, errorCode: 'ProvisioningDenied' })
      t.equal(await tb.handle.registry.getDevice(`sas-${registrationId}`), null, 'no device registered')
      const token = String(created.body.certificateOwnershipToken)
      t.ok(await tb.handle.registry.peekToken(token), 'the ownership token is untouched (refused before it was read)')
      await waitFor(() => tb.events('provision.rejected').some((l) => l.clientId === 'squatter-1'), 5000, 'provision.rejected for the squatter')
      t.match(tb.events('provision.rejected').find((l) => l.clientId === 'squatter-1'), { errorCode: 'ProvisioningDenied', role: 'claim' })
      t.notOk(tb.events('device.registered').some((l) => l.clientId === 'squatter-1'), 'never audited as registered')

      // an id the group's pattern refuses: the same answer
      const outside = await claimRegister(tb, 'squatter-2', 'sas-sensor', 'not-line-7')
      t.match(outside.reg.body, { statusCode: 403, errorCode: 'ProvisioningDenied' }, 'an id outside the group\'s pattern: refused too')
      t.equal(await tb.handle.registry.getDevice('sas-not-line-7'), null)

      // the real device, with its derived key, enrolls as before
      const real = await enroll(tb, 'line-7', lineKey, 'sas-sensor', registrationId)
      t.equal(real.reg.outcome, 'accepted', `the device enrolls (${String(real.reg.body.errorCode ?? 'ok')})`)
      t.equal(real.reg.body.deviceId, `sas-${registrationId}`)
    })

    t.test('replace template: the claim certificate cannot re-register an enrolled device', async (t) => {
      const registrationId = `unit-${store}`
      const deviceId = `refurb-${registrationId}`
      const legit = await enroll(tb, 'refurb', refurbKey, 'sas-refurb', registrationId)
      t.equal(legit.reg.outcome, 'accepted', 'the device enrolled')
      const device = await connect(tb, { cert: String(legit.reg.body.certificatePem), key: legit.privateKey }, { clientId: deviceId })
      t.teardown(() => { device.end(true) })

      const { reg } = await claimRegister(tb, 'hijacker-1', 'sas-refurb', registrationId)
      t.match(reg.body, { statusCode: 403, errorCode: 'ProvisioningDenied' }, 'the re-registration is refused')
      t.notOk(reg.body.certificatePem, 'the attacker gets no certificate naming the device')
      t.equal((await tb.handle.registry.getCertificate(String(legit.reg.body.certificateId)))?.status, 'active', 'the device\'s certificate is not revoked')
      t.ok(device.connected, 'the device stays connected')
      // and it can still come back
      await endClient(device)
      const again = await connect(tb, { cert: String(legit.reg.body.certificatePem), key: legit.privateKey }, { clientId: deviceId })
      t.ok(again.connected, 'the device reconnects with its certificate')
      await endClient(again)
    })

    t.test('a template no group names still registers claim certificates', async (t) => {
      const claim = await claimConnect(tb, `plain-claim-${store}`)
      const created = await request(claim, '$provision/certificates/create/json', {})
      const reg = await request(claim, '$provision/templates/sensor/provision/json', { certificateOwnershipToken: created.body.certificateOwnershipToken, parameters: { serialNumber: `SER-${store.toUpperCase()}` } })
      await endClient(claim)
      t.equal(reg.outcome, 'accepted', `sensor registers as before (${String(reg.body.errorCode ?? 'ok')})`)
    })
  })
}
