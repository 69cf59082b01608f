/**
 * The admin API (CONTRACT §8) as an attacker and an operator meet it: real
 * HTTPS with real certificates from the dev PKI, on both stores.
 * - who gets in: only admin-CA certificates; no certificate, a service, claim,
 *   device or manufacturer certificate gets nothing; an admin certificate gets
 *   nothing over MQTT; a revoked admin certificate is stopped on its next request
 * - /openapi.json is a valid OpenAPI 3 document listing every route
 * - every route answers a request that breaks its schema with 400 InvalidRequest
 * - every request is audited `admin.request` with the operator's CN
 */
import t from 'tap'
import { Validator } from '@seriousme/openapi-schema-validator'
import { adminCredentials, adminRequest } from '../helpers/admin.js'
import { connect, credentials, registerDevice, startBroker, STORES, waitFor, type TestBroker } from '../helpers/broker.js'

const ROUTES = [
  'GET /v1/devices', 'GET /v1/devices/{id}', 'POST /v1/devices/{id}/revoke', 'POST /v1/devices/{id}/quarantine', 'POST /v1/devices/{id}/reinstate',
  'GET /v1/certificates', 'POST /v1/certificates/revoke', 'GET /v1/revocations',
  'GET /v1/templates', 'GET /v1/templates/{name}', 'GET /v1/audit'
]

function port (tb: TestBroker): number {
  if (tb.adminPort === null) throw new Error('the admin API did not start (no admin-ca.pem in the dev PKI?)')
  return tb.adminPort
}

for (const store of STORES) {
  t.test(`admin API on the ${store} store`, async (t) => {
    const tb = await startBroker({ store })
    t.teardown(() => tb.close())
    const p = port(tb)
    const device = await registerDevice(tb, 'sensor-ADMIN-1')

    t.test('no client certificate: the handshake fails, nothing is answered', async (t) => {
      await t.rejects(adminRequest(p, tb.pki, 'GET', '/v1/devices', { creds: null }))
    })

    t.test('service, claim, device and manufacturer certificates are refused, and audited', async (t) => {
      const before = tb.events('admin.request').length
      for (const [name, creds] of [
        ['service', credentials(tb.pki, 'service')],
        ['claim', credentials(tb.pki, 'claim')],
        ['manufacturer', credentials(tb.pki, 'manufacturer-device')],
        ['device', device]
      ] as const) {
        // they chain to the same root as the admin CA, so TLS may complete: the socket is then destroyed unanswered
        await t.rejects(adminRequest(p, tb.pki, 'GET', '/v1/devices', { creds }), `${name} certificate gets no answer`)
      }
      await waitFor(() => tb.events('admin.request').length >= before + 4, 5000, 'refusals audited')
      const refused = tb.events('admin.request').slice(before)
      t.ok(refused.every((l) => l.errorCode === 'AdminCertificateRequired' && l.statusCode === 403), 'each refusal audited with the catalogue code')
    })

    t.test('an admin certificate gets nothing over MQTT', async (t) => {
      await t.rejects(connect(tb, adminCredentials(tb.pki), { clientId: 'admin-dev', reconnectPeriod: 0 }))
      await waitFor(() => tb.events('connect.refused').length > 0, 5000, 'connect.refused')
      t.notOk(tb.events('connect.accepted').some((l) => l.clientId === 'admin-dev'), 'never accepted')
    })

    t.test('the admin certificate is served and audited with its CN', async (t) => {
      const res = await adminRequest(p, tb.pki, 'GET', '/v1/devices?limit=10')
      t.equal(res.status, 200, res.raw)
      t.match(res.body, { items: [{ deviceId: 'sensor-ADMIN-1', status: 'active' }], nextCursor: null })
      await waitFor(() => tb.events('admin.request').some((l) => l.actor === 'admin-dev' && l.statusCode === 200), 5000, 'admin.request audited')
      const shown = await adminRequest(p, tb.pki, 'GET', '/v1/devices/sensor-ADMIN-1')
      t.equal(shown.status, 200, shown.raw)
      t.match(shown.body, { deviceId: 'sensor-ADMIN-1', certificates: [{ certificateId: device.certificateId, status: 'active' }], activity: { connects: 0 } })
      t.notMatch(shown.raw, /PRIVATE KEY|BEGIN CERTIFICATE/, 'no key or certificate body')
      const missing = await adminRequest(p, tb.pki, 'GET', '/v1/devices/no-such-device')
      t.match(missing, { status: 404, body: { statusCode: 404, errorCode: 'DeviceNotFound' } })
      const unknownRoute = await adminRequest(p, tb.pki, 'GET', '/v1/nothing-here')
      t.match(unknownRoute, { status: 404, body: { statusCode: 404, errorCode: 'NotFound' } })
    })

    t.test('/openapi.json is a valid OpenAPI 3 document listing every route', async (t) => {
      const res = await adminRequest(p, tb.pki, 'GET', '/openapi.json')
      t.equal(res.status, 200)
      const result = await new Validator().validate(res.body as Parameters<Validator['validate']>[0])
      t.ok(result.valid, `valid OpenAPI: ${JSON.stringify(result.errors ?? '').slice(0, 500)}`)
      t.match(res.body, { openapi: /^3\./ })
      const listed = Object.entries(res.body.paths as Record<string, Record<string, unknown>>)
        .flatMap(([path, ops]) => Object.keys(ops).map((m) => `${m.toUpperCase()} ${path}`))
      for (const route of ROUTES) t.ok(listed.includes(route), `lists ${route}`)
    })

    t.test('a request that breaks its route\'s schema is 400 InvalidRequest', async (t) => {
      const bad: Array<[string, string, unknown?]> = [
        ['GET', '/v1/devices?limit=0'],
        ['GET', '/v1/devices?status=sleeping'],
        ['GET', '/v1/devices?unknown=1'],
        ['GET', '/v1/devices/bad%2Fid'],
        // longer than Fastify's own limit for a path parameter (100) and than a device id (128): the schema answers, not the router
        ['GET', `/v1/devices/${'x'.repeat(200)}/config`],
        ['POST', '/v1/devices/bad%23id/revoke'],
        ['POST', '/v1/devices/%20/quarantine'],
        ['POST', '/v1/devices/+/reinstate'],
        ['GET', '/v1/certificates?expiringWithinDays=-1'],
        ['POST', '/v1/certificates/revoke', { certificateId: 'not-hex' }],
        ['POST', '/v1/certificates/revoke', { certificateId: 'a'.repeat(64), caFingerprint: 'b'.repeat(64) }],
        ['POST', '/v1/certificates/revoke', { issuer: 'a'.repeat(64) }],
        ['GET', '/v1/revocations?limit=5'],
        ['GET', '/v1/templates?x=1'],
        ['GET', '/v1/templates/bad.name'],
        ['GET', '/v1/audit?event=bad%20glob'],
        ['GET', '/v1/audit?since=yesterday']
      ]
      for (const [method, path, body] of bad) {
        const res = await adminRequest(p, tb.pki, method, path, { body })
        t.match(res, { status: 400, body: { statusCode: 400, errorCode: 'InvalidRequest', errorMessage: String } }, `${method} ${path}`)
      }
      const notJson = await adminRequest(p, tb.pki, 'POST', '/v1/certificates/revoke', { rawBody: '{"certificateId":' })
      t.match(notJson, { status: 400, body: { errorCode: 'InvalidRequest' } }, 'malformed JSON body')
      const tooBig = await adminRequest(p, tb.pki, 'POST', '/v1/certificates/revoke', { rawBody: JSON.stringify({ certificateId: 'a'.repeat(100_000) }) })
      t.match(tooBig, { status: 413, body: { errorCode: 'InvalidRequest' } }, 'oversized body')
    })

    t.test('templates and the revocation list', async (t) => {
      const list = await adminRequest(p, tb.pki, 'GET', '/v1/templates')
      t.equal(list.status, 200)
      t.ok((list.body.items as Array<{ name: string }>).some((i) => i.name === 'sensor'), 'the sensor template')
      const one = await adminRequest(p, tb.pki, 'GET', '/v1/templates/sensor')
      t.match(one, { status: 200, body: { name: 'sensor', deviceId: 'sensor-${serialNumber}', parameters: { type: 'object' } } })
      t.match(await adminRequest(p, tb.pki, 'GET', '/v1/templates/nope'), { status: 404, body: { errorCode: 'TemplateNotFound' } })
    })

    t.test('a revoked admin certificate is refused on its next request', async (t) => {
      const id = (await import('node:crypto')).createHash('sha256')
        .update(new (await import('node:crypto')).X509Certificate(tb.pki.read('admin.pem')).raw).digest('hex')
      // another operator would do this; here the same one revokes itself, which must still bite
      const r = await adminRequest(p, tb.pki, 'POST', '/v1/certificates/revoke', { body: { certificateId: id } })
      t.match(r, { status: 200, body: { alreadyRevoked: false, revoked: { kind: 'certificate', certificateId: id } } })
      await waitFor(() => tb.events('certificate.revoked').some((l) => l.certificateId === id && l.actor === 'admin-dev'), 5000, 'certificate.revoked audited')
      const after = await adminRequest(p, tb.pki, 'GET', '/v1/devices')
      t.match(after, { status: 403, body: { errorCode: 'CertificateRevoked' } })
    })
  })
}
