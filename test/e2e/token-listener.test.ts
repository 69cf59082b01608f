/**
 * The token listener (CONTRACT §10, §3.6) over real TLS with MQTT.js, in memory
 * and on a real redis-server: backend services with OAuth2 access tokens from an
 * external issuer (its JWKS over real HTTPS, its own CA) and from the broker's
 * own endpoint, and devices enrolling with a symmetric key.
 */
import t from 'tap'
import type { MqttClient } from 'mqtt'
import { deriveDeviceKey, signSas } from '../../plugins/token/sas.js'
import { STORES, collect, connect, endClient, publish, registerDevice, startBroker, subscribe, waitFor } from '../helpers/broker.js'
import { newCsr, request } from '../helpers/provisioning.js'
import { accessToken, enrollmentFixtures, issuerKey, jwksServer, oauthOverrides, tokenConnect } from '../helpers/tokens.js'

const { templatesDir, enrollmentDir, lineKey, refurbKey } = enrollmentFixtures('jitp-token')

const CSR = '$provision/certificates/create-from-csr/json'
const sas = (groupKey: Buffer, registrationId: string, inSeconds = 600): string =>
  signSas(deriveDeviceKey(groupKey, registrationId), registrationId, Math.floor(Date.now() / 1000) + inSeconds)

function closed (client: MqttClient): Promise<number> {
  return new Promise((resolve) => client.once('close', () => resolve(Date.now())))
}

for (const store of STORES) {
  t.test(`token listener (${store})`, async (t) => {
    const jwks = await jwksServer()
    t.teardown(() => jwks.stop())
    const key = await issuerKey('k1')
    jwks.setKeys([key.publicJwk])
    const tb = await startBroker({ store, overrides: { ...oauthOverrides(jwks), TEMPLATES_DIR: templatesDir, ENROLLMENT_DIR: enrollmentDir } })
    t.teardown(() => tb.close())
    const deviceId = `tl-dev-${store}`
    const device = await connect(tb, await registerDevice(tb, deviceId), { clientId: deviceId })
    t.teardown(() => endClient(device))
    t.same(await subscribe(device, `devices/${deviceId}/commands/+`), [1])
    const inbox = collect(device)

    t.test('telemetry:read: subscribes and receives a device\'s telemetry, cannot publish a command', async (t) => {
      const token = await accessToken(key, { sub: 'analytics', scope: 'telemetry:read' })
      const { client } = await tokenConnect(tb, token, { clientId: 'analytics-1' })
      const svc = client!
      t.same(await subscribe(svc, 'devices/+/telemetry'), [1], 'telemetry granted')
      t.same(await subscribe(svc, 'devices/+/state'), [128], 'state:read not granted: refused')
      const got = collect(svc)
      await publish(device, `devices/${deviceId}/telemetry`, JSON.stringify({ ts: 1, seq: 1, values: { t: 20 } }))
      await waitFor(() => got.length >= 1, 5000, 'telemetry at the token service')
      t.equal(got[0]!.topic, `devices/${deviceId}/telemetry`)
      await publish(svc, `devices/${deviceId}/commands/reboot`, JSON.stringify({ name: 'reboot' }))
      await waitFor(() => tb.events('publish.denied').some((l) => l.clientId === 'analytics-1'), 5000, 'publish.denied')
      const denied = tb.events('publish.denied').find((l) => l.clientId === 'analytics-1')!
      t.equal(denied.authMethod, 'oauth2', 'the denial names how the service authenticated')
      t.equal(denied.role, 'service')
      await waitFor(() => tb.events('connect.accepted').some((l) => l.clientId === 'analytics-1'), 5000, 'connect.accepted')
      const accepted = tb.events('connect.accepted').find((l) => l.clientId === 'analytics-1')!
      t.match(accepted, { role: 'service', authMethod: 'oauth2', scope: 'telemetry:read' }, 'connect.accepted: role, method and scope')
      t.equal(accepted.certificateId, undefined, 'no certificate id for a token identity')
      t.equal(tb.events('connect.accepted').find((l) => l.clientId === deviceId)?.authMethod, 'certificate', 'the mTLS connect says certificate')
      await endClient(svc)
      t.equal(inbox.length, 0, 'the command never reached the device')
    })

    t.test('commands:write: the command reaches the device', async (t) => {
      const token = await accessToken(key, { sub: 'operator', scope: 'commands:write' })
      const { client } = await tokenConnect(tb, token, { clientId: 'operator-1' })
      await publish(client!, `devices/${deviceId}/commands/reboot`, JSON.stringify({ name: 'reboot', id: 'c1' }))
      await waitFor(() => inbox.length >= 1, 5000, 'command at the device')
      t.same(JSON.parse(inbox[0]!.payload), { name: 'reboot', id: 'c1' })
      await endClient(client!)
    })

    t.test('a token that expires while connected: closed within 1 s of exp, audited', async (t) => {
      const exp = Math.floor(Date.now() / 1000) + 2
      const token = await accessToken(key, { sub: 'short-lived', scope: 'telemetry:read', exp: exp - Math.floor(Date.now() / 1000) })
      const { client } = await tokenConnect(tb, token, { clientId: 'short-1' })
      const at = await closed(client!)
      t.ok(at >= exp * 1000 - 50, `not closed before exp (${at - exp * 1000} ms)`)
      t.ok(at - exp * 1000 <= 1000, `closed ${at - exp * 1000} ms after exp`)
      await waitFor(() => tb.events('disconnect').some((l) => l.clientId === 'short-1'), 5000, 'disconnect line')
      t.match(tb.events('disconnect').find((l) => l.clientId === 'short-1'), { errorCode: 'TokenExpired', authMethod: 'oauth2', role: 'service' })
      client!.end(true)
    })

    t.test('a fresh token takes its own session over, never another identity\'s', async (t) => {
      const first = (await tokenConnect(tb, await accessToken(key, { sub: 'ingest', scope: 'telemetry:read' }), { clientId: 'ingest-1', clean: false })).client!
      const firstClosed = closed(first)
      const second = (await tokenConnect(tb, await accessToken(key, { sub: 'ingest', scope: 'telemetry:read' }), { clientId: 'ingest-1', clean: false })).client!
      await firstClosed
      t.ok(second.connected, 'the same subject with a fresh token took its session over')
      t.ok(tb.events('session.takeover').some((l) => l.clientId === 'ingest-1' && l.authMethod === 'oauth2'), 'takeover audited')
      const intruder = await tokenConnect(tb, await accessToken(key, { sub: 'intruder', scope: 'telemetry:read' }), { clientId: 'ingest-1' })
      t.equal(intruder.returnCode, 2, 'another subject: CONNACK 2')
      t.ok(second.connected, 'the owner stays connected')
      // a registered device's id is never a token service's client id
      const byCert = await tokenConnect(tb, await accessToken(key, { sub: 'ingest', scope: 'telemetry:read' }), { clientId: deviceId })
      t.equal(byCert.returnCode, 2, 'a device id is never a service\'s client id')
      await endClient(second)
    })

    t.test('a broker-issued token verifies like any other; its client deleted, it is refused', async (t) => {
      const made = await tb.handle.oauthClients.create('reporting', ['telemetry:read'])
      const { token } = await tb.handle.tokenKeys.sign({ sub: made.clientId, client_id: made.clientId, scope: 'telemetry:read commands:write' }, 60)
      const ok = await tokenConnect(tb, token, { clientId: 'reporting-1' })
      t.equal(ok.returnCode, 0, 'connected')
      await waitFor(() => tb.events('connect.accepted').some((l) => l.clientId === 'reporting-1'), 5000, 'connect.accepted')
      const accepted = tb.events('connect.accepted').find((l) => l.clientId === 'reporting-1')!
      t.match(accepted, { authMethod: 'broker-token', oauthClientId: made.clientId, scope: 'telemetry:read' }, 'scopes cut to what the client holds')
      await endClient(ok.client!)
      t.equal(await tb.handle.oauthClients.delete(made.clientId), true)
      const again = await tokenConnect(tb, token, { clientId: 'reporting-1' })
      t.equal(again.returnCode, 5, 'refused on its next connect')
      t.match(tb.events('token.refused').find((l) => l.clientId === 'reporting-1'), { errorCode: 'UnknownClient', authMethod: 'broker-token', oauthClientId: made.clientId })
    })

    t.test('SAS: a derived key enrolls, gets a certificate, registers, reconnects on MQTTS_PORT and publishes', async (t) => {
      const registrationId = `line7-${store === 'memory' ? '0001' : '0002'}`
      const watcher = (await tokenConnect(tb, await accessToken(key, { sub: 'watcher', scope: 'telemetry:read' }), { clientId: `watcher-${store}` })).client!
      t.same(await subscribe(watcher, 'devices/+/telemetry'), [1])
      const seen = collect(watcher)
      const { client } = await tokenConnect(tb, sas(lineKey, registrationId), { clientId: registrationId, username: 'enroll/line-7' })
      const enrolling = client!
      const { csr, keyPem } = newCsr('ec')
      const created = await request(enrolling, CSR, { certificateSigningRequest: csr })
      t.equal(created.outcome, 'accepted', 'certificate from the CSR')
      const other = await request(enrolling, '$provision/templates/sensor/provision/json', { certificateOwnershipToken: created.body.certificateOwnershipToken, parameters: { serialNumber: 'ABCD-1234' } })
      t.match(other.body, { statusCode: 403, errorCode: 'ProvisioningDenied' }, 'another template than the group\'s: refused')
      const reg = await request(enrolling, '$provision/templates/sas-sensor/provision/json', { certificateOwnershipToken: created.body.certificateOwnershipToken })
      t.equal(reg.outcome, 'accepted', `registered (${String(reg.body.errorCode ?? 'ok')})`)
      t.equal(reg.body.deviceId, `sas-${registrationId}`, 'device id from the registration id')
      t.same((await tb.handle.registry.getDevice(`sas-${registrationId}`))?.attributes, { registrationId }, 'registrationId was the template parameter')
      await endClient(enrolling)
      const dev = await connect(tb, { cert: String(reg.body.certificatePem), key: keyPem }, { clientId: String(reg.body.deviceId) })
      await publish(dev, `devices/${String(reg.body.deviceId)}/telemetry`, JSON.stringify({ ts: 2, seq: 1, values: { t: 21 } }))
      await waitFor(() => seen.some((m) => m.topic === `devices/${String(reg.body.deviceId)}/telemetry`), 5000, 'the enrolled device\'s telemetry')
      await endClient(dev)
      await endClient(watcher)
      t.match(tb.events('enrollment.accepted').find((l) => l.clientId === registrationId), { group: 'line-7', template: 'sas-sensor', authMethod: 'sas' })
      t.match(tb.events('connect.accepted').find((l) => l.clientId === registrationId), { role: 'claim', authMethod: 'sas', group: 'line-7' })

      // a second enrollment of the same registration id: the template says deny
      const second = await tokenConnect(tb, sas(lineKey, registrationId), { clientId: registrationId, username: 'enroll/line-7' })
      t.equal(second.returnCode, 5, 'deny template: a second enrollment is refused')
      t.match(tb.events('enrollment.refused').find((l) => l.clientId === registrationId), { errorCode: 'DeviceExists', group: 'line-7' })
    })

    t.test('SAS: a replace template re-enrolls, and the old certificate stops working', async (t) => {
      const registrationId = `unit-${store}`
      const enrollOnce = async (): Promise<Record<string, unknown>> => {
        const { client } = await tokenConnect(tb, sas(refurbKey, registrationId), { clientId: registrationId, username: 'enroll/refurb' })
        const created = await request(client!, '$provision/certificates/create/json', {})
        const reg = await request(client!, '$provision/templates/sas-refurb/provision/json', { certificateOwnershipToken: created.body.certificateOwnershipToken, parameters: { registrationId } })
        await endClient(client!)
        t.equal(reg.outcome, 'accepted', `registered (${String(reg.body.errorCode ?? 'ok')})`)
        return { ...reg.body, privateKey: created.body.privateKey }
      }
      const first = await enrollOnce()
      const second = await enrollOnce()
      t.equal(second.deviceId, `refurb-${registrationId}`)
      t.not(second.certificateId, first.certificateId)
      t.equal((await tb.handle.registry.getCertificate(String(first.certificateId)))?.status, 'revoked', 'the first enrollment\'s certificate is revoked')
    })

    t.test('no token, SAS or key in the audit log', async (t) => {
      const raw = tb.audit.raw.join('\n')
      t.notMatch(raw, /eyJ[A-Za-z0-9_-]+\.eyJ/, 'no JWT')
      t.notMatch(raw, /SharedAccessSignature|sig=/, 'no SAS')
      t.notOk(raw.includes(lineKey.toString('base64')) || raw.includes(refurbKey.toString('base64')), 'no group key')
    })
  })
}
