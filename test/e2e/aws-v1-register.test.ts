/**
 * AWS IoT Device SDK's older identity client (v1 API, `IotIdentityClient`) puts
 * `templateName` into the register payload: `publishRegisterThing` publishes
 * `JSON.stringify(request)` of a `RegisterThingRequest` `{parameters, templateName,
 * certificateOwnershipToken}`. It is accepted when it names the topic's template,
 * and refused with 400 `InvalidRequest` otherwise, keeping the token (CONTRACT §3.3).
 * Real TLS, real MQTT.js clients, both stores.
 */
import t from 'tap'
import { cpSync, mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { STORES, connect, endClient, startBroker, subscribe, type TestBroker } from '../helpers/broker.js'
import { claimConnect, newCsr, request } from '../helpers/provisioning.js'

// a second claim template, so that a mismatched templateName can name one that exists
const templatesDir = mkdtempSync(join(tmpdir(), 'jitp-templates-'))
cpSync(resolve('templates'), templatesDir, { recursive: true })
writeFileSync(join(templatesDir, 'gateway.json'), JSON.stringify({
  parameters: { type: 'object', required: ['serialNumber'], properties: { serialNumber: { type: 'string', pattern: '^[A-Z0-9-]{4,32}$' } } },
  deviceId: 'gateway-${serialNumber}',
  configuration: { uplink: 'lte' }
}))

/** The device's first connect with the certificate it was given: it is registered and may read its config. */
async function connectsAsDevice (tb: TestBroker, deviceId: string, cert: string, key: string): Promise<number[]> {
  const device = await connect(tb, { cert, key }, { clientId: deviceId })
  try {
    return await subscribe(device, `devices/${deviceId}/config`)
  } finally {
    await endClient(device)
  }
}

for (const store of STORES) {
  t.test(`AWS v1 identity client register payload (${store})`, async (t) => {
    const tb = await startBroker({ store, overrides: { TEMPLATES_DIR: templatesDir, PROVISIONING_AWS_TOPICS: true } })
    t.teardown(() => tb.close())

    t.test('$aws topics: CreateKeysAndCertificate then RegisterThing with templateName registers the thing', async (t) => {
      const claim = await claimConnect(tb, `aws-v1-${store}`)
      t.teardown(() => claim.end(true))
      // publishCreateKeysAndCertificate: JSON.stringify of an empty CreateKeysAndCertificateRequest
      const created = await request(claim, '$aws/certificates/create/json', '{}')
      t.equal(created.outcome, 'accepted', 'keys and certificate created')
      const serial = `AWS-${store.toUpperCase()}-1`
      const registerThingRequest = { parameters: { serialNumber: serial }, templateName: 'sensor', certificateOwnershipToken: String(created.body.certificateOwnershipToken) }
      const reg = await request(claim, `$aws/provisioning-templates/${registerThingRequest.templateName}/provision/json`, JSON.stringify(registerThingRequest))
      t.equal(reg.outcome, 'accepted', `registered: ${JSON.stringify(reg.body.errorMessage ?? '')}`)
      t.equal(reg.body.thingName, `sensor-${serial}`)
      t.equal(reg.body.deviceId, `sensor-${serial}`)
      t.equal((await tb.handle.registry.getDevice(`sensor-${serial}`))?.template, 'sensor', 'in the registry under the topic\'s template')
      // AWS firmware keeps the certificate of the create step
      const chain = String(created.body.certificatePem) + tb.pki.read('device-ca.pem')
      t.same(await connectsAsDevice(tb, `sensor-${serial}`, chain, String(created.body.privateKey)), [1], 'the new thing connects with its certificate')
    })

    t.test('$provision topics: a templateName other than the topic\'s is 400 and keeps the token; the right one then registers', async (t) => {
      const claim = await claimConnect(tb, `aws-v1-mismatch-${store}`)
      t.teardown(() => claim.end(true))
      const { csr, keyPem } = newCsr('ec')
      const created = await request(claim, '$provision/certificates/create-from-csr/json', { certificateSigningRequest: csr })
      t.equal(created.outcome, 'accepted')
      const token = String(created.body.certificateOwnershipToken)
      const serial = `MISMATCH-${store.toUpperCase()}`
      const topic = '$provision/templates/sensor/provision/json'
      const rejectionsBefore = tb.events('provision.rejected').length

      // the other template exists: the payload still does not say what the topic says
      const wrong = await request(claim, topic, { certificateOwnershipToken: token, parameters: { serialNumber: serial }, templateName: 'gateway' })
      t.equal(wrong.outcome, 'rejected')
      t.equal(wrong.body.statusCode, 400)
      t.equal(wrong.body.errorCode, 'InvalidRequest')
      t.match(String(wrong.body.errorMessage), /templateName 'gateway' does not match the topic's template 'sensor'/)
      const typed = await request(claim, topic, { certificateOwnershipToken: token, parameters: { serialNumber: serial }, templateName: 7 })
      t.same([typed.body.statusCode, typed.body.errorCode], [400, 'InvalidRequest'], 'a templateName that is not a string is refused by the schema')
      const audited = tb.events('provision.rejected').slice(rejectionsBefore)
      t.same(audited.map((l) => l.errorCode), ['InvalidRequest', 'InvalidRequest'], 'both refusals audited')
      t.equal(await tb.handle.registry.getDevice(`sensor-${serial}`), null, 'nothing registered')
      t.equal(await tb.handle.registry.getDevice(`gateway-${serial}`), null, 'not under the payload\'s template either')

      const right = await request(claim, topic, { certificateOwnershipToken: token, parameters: { serialNumber: serial }, templateName: 'sensor' })
      t.equal(right.outcome, 'accepted', `the same token still registers: ${JSON.stringify(right.body.errorMessage ?? '')}`)
      t.equal(right.body.deviceId, `sensor-${serial}`)
      t.same(await connectsAsDevice(tb, `sensor-${serial}`, String(right.body.certificatePem), keyPem), [1], 'the device connects with its certificate')

      const again = await request(claim, topic, { certificateOwnershipToken: token, parameters: { serialNumber: `${serial}-2` }, templateName: 'sensor' })
      t.same([again.body.statusCode, again.body.errorCode], [400, 'InvalidCertificateOwnershipToken'], 'and it was used up by that registration')
    })
  })
}
