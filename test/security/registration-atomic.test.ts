/**
 * Attack and fault on registration (CONTRACT §3.3): a request refused before the
 * device is registered does not use the ownership token up (before, every
 * refusal after the token lookup burned it, and a stolen token presented by
 * another connection burned it too), and registration is atomic: a failure
 * leaves no device record and no bound certificate behind.
 */
import t, { type Test } from 'tap'
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { Redis } from 'ioredis'
import type { MqttClient } from 'mqtt'
import { STORES, connect, endClient, startBroker, type TestBroker } from '../helpers/broker.js'
import { claimConnect, newCsr, request } from '../helpers/provisioning.js'

const CSR_TOPIC = '$provision/certificates/create-from-csr/json'
const registerTopic = (template: string): string => `$provision/templates/${template}/provision/json`

/** sensor (the shipped template), an allow-listed one, and one whose pre-check injects a fault */
function templatesDir (): string {
  const dir = mkdtempSync(join(tmpdir(), 'jitp-atomic-templates-'))
  writeFileSync(join(dir, 'sensor.json'), readFileSync(resolve('templates/sensor.json')))
  const parameters = { type: 'object', additionalProperties: false, required: ['serialNumber'], properties: { serialNumber: { type: 'string', pattern: '^[A-Z0-9-]{4,32}$' } } }
  writeFileSync(join(dir, 'listed.json'), JSON.stringify({ parameters, deviceId: 'listed-${serialNumber}', configuration: { a: 1 }, preProvisioningCheck: { allow: { serialNumber: ['OK-0001'] } } }))
  writeFileSync(join(dir, 'faulty.json'), JSON.stringify({ parameters, deviceId: 'faulty-${serialNumber}', configuration: { b: 2 }, preProvisioningCheck: { module: './fault.mjs' } }))
  // the test process hosts the broker: the hook calls whatever fault the test installed
  writeFileSync(join(dir, 'fault.mjs'), 'export default async function fault (req) { await globalThis.__jitpRegistrationFault?.(req); return { allow: true } }\n')
  return dir
}

async function newToken (claim: MqttClient): Promise<{ token: string, certificateId: string }> {
  const created = await request(claim, CSR_TOPIC, { certificateSigningRequest: newCsr('ec').csr })
  if (created.outcome !== 'accepted') throw new Error(`create rejected: ${JSON.stringify(created.body)}`)
  return { token: String(created.body.certificateOwnershipToken), certificateId: String(created.body.certificateId) }
}

async function waitFor (check: () => Promise<boolean>, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

async function nothingOf (t: Test, tb: TestBroker, deviceId: string, provisionalId: string): Promise<void> {
  const registry = tb.handle.registry
  t.equal(await registry.getDevice(deviceId), null, `no device record for ${deviceId}`)
  t.same(await registry.certificatesOfDevice(deviceId), [], 'no certificate bound to it')
  t.equal((await registry.getCertificate(provisionalId))?.status, 'pending', 'the certificate from the create step is still pending, unbound')
}

declare global {
  var __jitpRegistrationFault: ((req: unknown) => Promise<void>) | undefined
}

for (const store of STORES) {
  t.test(`a refused registration keeps the token; the same token then registers (${store})`, async (t) => {
    const tb = await startBroker({ store, overrides: { TEMPLATES_DIR: templatesDir() } })
    t.teardown(() => tb.close())
    // the device id the DeviceExists case collides with
    const now = Date.now()
    await tb.handle.registry.putDevice({ deviceId: 'sensor-TAKEN-1', status: 'active', template: 'sensor', createdAt: now, updatedAt: now, attributes: {} })
    const claim = await claimConnect(tb, 'atomic-claim')
    const { token, certificateId } = await newToken(claim)

    const refusals: Array<[string, string, Record<string, unknown>, number, string]> = [
      ['unknown template', 'nosuch', { serialNumber: 'ABCD-1' }, 404, 'TemplateNotFound'],
      ['invalid parameters', 'sensor', { serialNumber: 'not valid!' }, 400, 'InvalidParameters'],
      ['pre-check denial', 'listed', { serialNumber: 'NOT-LISTED' }, 403, 'ProvisioningDenied'],
      ['device exists (reprovision deny)', 'sensor', { serialNumber: 'TAKEN-1' }, 400, 'DeviceExists']
    ]
    for (const [what, template, parameters, statusCode, errorCode] of refusals) {
      const r = await request(claim, registerTopic(template), { certificateOwnershipToken: token, parameters })
      t.same({ outcome: r.outcome, statusCode: r.body.statusCode, errorCode: r.body.errorCode }, { outcome: 'rejected', statusCode, errorCode }, `${what}: refused`)
      t.ok(tb.events('provision.rejected').some((l) => l.errorCode === errorCode), `${what}: audited`)
    }
    t.same((await tb.handle.registry.getDevice('sensor-TAKEN-1'))?.template, 'sensor', 'the existing device is untouched')

    // a stolen token presented by another connection is refused and not burned either
    const thief = await claimConnect(tb, 'atomic-thief')
    const stolen = await request(thief, registerTopic('sensor'), { certificateOwnershipToken: token, parameters: { serialNumber: 'STOLEN-1' } })
    t.equal(stolen.body.errorCode, 'InvalidCertificateOwnershipToken', 'another connection cannot use the token')
    await endClient(thief)
    t.equal(await tb.handle.registry.getDevice('sensor-STOLEN-1'), null)

    const ok = await request(claim, registerTopic('sensor'), { certificateOwnershipToken: token, parameters: { serialNumber: 'GOOD-1' } })
    t.equal(ok.outcome, 'accepted', 'after five refusals the same token registers a valid request')
    t.equal(ok.body.deviceId, 'sensor-GOOD-1')
    t.equal((await tb.handle.registry.getCertificate(certificateId))?.deviceId, 'sensor-GOOD-1', 'the certificate from the create step is bound')
    const again = await request(claim, registerTopic('sensor'), { certificateOwnershipToken: token, parameters: { serialNumber: 'GOOD-2' } })
    t.equal(again.body.errorCode, 'InvalidCertificateOwnershipToken', 'and then it is used up')
    t.equal(await tb.handle.registry.getDevice('sensor-GOOD-2'), null)
    await endClient(claim)
  })
}

t.test('a store failure in the middle of a registration leaves nothing of the device; the token works afterwards (redis)', async (t) => {
  const tb = await startBroker({ store: 'redis', overrides: { TEMPLATES_DIR: templatesDir() } })
  t.teardown(() => tb.close())
  const admin = new Redis(tb.redis!.url, { maxRetriesPerRequest: 1 })
  t.teardown(() => admin.disconnect())
  t.teardown(() => { globalThis.__jitpRegistrationFault = undefined })
  const claim = await claimConnect(tb, 'faulty-claim')
  const { token, certificateId } = await newToken(claim)

  // once the checks have passed, Redis stops taking writes (out of memory): the initial
  // config and the registration itself can no longer be written
  globalThis.__jitpRegistrationFault = async () => { await admin.config('SET', 'maxmemory', '1') }
  const failed = await request(claim, registerTopic('faulty'), { certificateOwnershipToken: token, parameters: { serialNumber: 'FAULT-1' } })
  await admin.config('SET', 'maxmemory', '0')
  globalThis.__jitpRegistrationFault = undefined
  t.equal(failed.outcome, 'rejected', 'the registration fails')
  t.equal(failed.body.statusCode, 500, `refused as a server-side failure (${String(failed.body.errorCode)}: ${String(failed.body.errorMessage)})`)
  await nothingOf(t, tb, 'faulty-FAULT-1', certificateId)
  t.equal(await admin.exists('jitp:device:faulty-FAULT-1'), 0, 'no device key in Redis')

  const ok = await request(claim, registerTopic('faulty'), { certificateOwnershipToken: token, parameters: { serialNumber: 'FAULT-1' } })
  t.equal(ok.outcome, 'accepted', 'the same token registers once the store is back')
  t.equal((await tb.handle.registry.getDevice('faulty-FAULT-1'))?.status, 'provisioned')
  await endClient(claim)
})

for (const store of STORES) {
  t.test(`a certificate never registered expires with its token (${store})`, async (t) => {
    // memory follows the injected clock; Redis expires the keys itself (PEXPIRE), so its TTL is real
    let clock = Date.now()
    const tb = await startBroker({ store, now: () => clock, overrides: { TOKEN_TTL_SECONDS: 1 } })
    t.teardown(() => tb.close())
    const claim = await claimConnect(tb, 'expiring-claim')
    const created = await request(claim, '$provision/certificates/create/json', '')
    const certificateId = String(created.body.certificateId)
    const token = String(created.body.certificateOwnershipToken)
    t.equal((await tb.handle.registry.getCertificate(certificateId))?.status, 'pending', 'pending after the create step')
    clock += 1500
    await waitFor(async () => await tb.handle.registry.getCertificate(certificateId) === null, 5000, 'the pending certificate to expire')
    t.pass('the pending certificate is gone with its token lifetime')
    if (tb.redis) {
      const admin = new Redis(tb.redis.url, { maxRetriesPerRequest: 1 })
      await waitFor(async () => await admin.exists(`jitp:cert:${certificateId}`) === 0, 5000, 'the key to expire')
      t.pass('no key left in Redis (PEXPIRE)')
      admin.disconnect()
    }
    const r = await request(claim, registerTopic('sensor'), { certificateOwnershipToken: token, parameters: { serialNumber: 'LATE-1' } })
    t.equal(r.body.errorCode, 'InvalidCertificateOwnershipToken', 'and the token with it')
    const device = await connect(tb, { cert: String(created.body.certificatePem) + tb.pki.read('device-ca.pem'), key: String(created.body.privateKey) }, { clientId: 'provisional' })
      .then(() => 'connected', (err: Error & { code?: number }) => err.code)
    t.equal(device, 5, 'the expired certificate does not connect')
    await endClient(claim)
  })
}
