/**
 * Adversarial review of the token listener and the broker's token endpoint
 * (CONTRACT §10, §3.6, §11), one attack per assertion group:
 * - JWT headers: `crit` (refused, its own reason), an embedded `jwk` and a `jku`/`x5u`
 *   pointing at the attacker (never used, never fetched), `kid` path tricks,
 *   RS256 against an EC kid, the external issuer's key claiming the broker's `iss`;
 * - lifetime: `exp` ten years ahead (refused: at most 24 h), `iat` in the future;
 * - identities never cross methods: an external token naming a broker client, a
 *   service certificate, an enrollment whose registration id is a device id;
 * - an enrollment registers with its group's template only, whatever its
 *   parameters look like (a non-object used to skip the template check; the
 *   default topic schema refuses one first, an operator's SCHEMAS_DIR may not);
 * - a 60 KB password on the token listener: closed from the CONNECT's fixed header;
 * - POST /oauth/token: a secret in the query string is refused, a JSON body too;
 *   X-Forwarded-For picks no budget; wrong secrets from another address do not
 *   lock the real client out, whose own requests stay budgeted;
 * - nothing secret in the audit log; a JWKS URL over plain HTTP refused at start.
 * Each attacker gets nothing: no session, no device, no token.
 */
import t, { type Test } from 'tap'
import { request as httpRequest } from 'node:http'
import { cpSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { connect as tlsConnect } from 'node:tls'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { exportJWK, generateKeyPair, SignJWT } from 'jose'
import { deriveDeviceKey, signSas } from '../../plugins/token/sas.js'
import { loadConfig } from '../../broker/config.js'
import { TOKEN_AUDIENCE, TOKEN_ISSUER } from '../../broker/token-keys.js'
import { connect, credentials, endClient, registerDevice, startBroker, waitFor, type TestBroker } from '../helpers/broker.js'
import { request } from '../helpers/provisioning.js'
import { accessToken, issuerKey, jwksServer, oauthOverrides, tokenConnect, writeGroup, AUDIENCE, ISSUER } from '../helpers/tokens.js'

const templatesDir = mkdtempSync(join(tmpdir(), 'jitp-review-templates-'))
writeFileSync(join(templatesDir, 'sas-sensor.json'), JSON.stringify({
  parameters: { type: 'object', required: ['registrationId'], properties: { registrationId: { type: 'string' } } },
  deviceId: 'sas-${registrationId}',
  configuration: { interval: 5 }
}))
// another fleet's template: any parameters, one fixed device id
writeFileSync(join(templatesDir, 'gateway.json'), JSON.stringify({ parameters: {}, deviceId: 'gateway-1', configuration: { interval: 5 } }))
// an operator's SCHEMAS_DIR that lets any JSON through as registration parameters: the
// enrollment's template binding must not depend on the topic schema refusing non-objects
const schemasDir = mkdtempSync(join(tmpdir(), 'jitp-review-schemas-'))
cpSync(resolve('schemas'), schemasDir, { recursive: true })
const registerSchema = JSON.parse(readFileSync(join(schemasDir, 'provision-register.json'), 'utf8')) as { properties: Record<string, unknown> }
registerSchema.properties.parameters = {}
writeFileSync(join(schemasDir, 'provision-register.json'), JSON.stringify(registerSchema))
const enrollmentDir = mkdtempSync(join(tmpdir(), 'jitp-review-enrollment-'))
const groupKey = Buffer.alloc(64, 5)
writeGroup(enrollmentDir, { name: 'factory', groupKey: groupKey.toString('base64'), template: 'sas-sensor' })

const FAILURES_PER_ADDRESS = 6
const RATE_PER_CLIENT = 3
const nowSeconds = (): number => Math.floor(Date.now() / 1000)
const sas = (registrationId: string): string => signSas(deriveDeviceKey(groupKey, registrationId), registrationId, nowSeconds() + 300)

/** a refused connect: CONNACK 5, one token.refused line for it, never accepted */
async function refused (t: Test, tb: TestBroker, password: string, clientId: string): Promise<Record<string, unknown>> {
  const r = await tokenConnect(tb, password, { clientId })
  t.equal(r.client, null, `${clientId}: no session`)
  t.equal(r.returnCode, 5, `${clientId}: CONNACK 5`)
  await waitFor(() => tb.events('token.refused').some((l) => l.clientId === clientId), 5000, `token.refused for ${clientId}`)
  t.notOk(tb.events('connect.accepted').some((l) => l.clientId === clientId), `${clientId}: never accepted`)
  return tb.events('token.refused').find((l) => l.clientId === clientId)!
}

/** a plain HTTP request as curl makes it, from a chosen loopback address */
function post (port: number, path: string, body: string, headers: Record<string, string>, localAddress = '127.0.0.1'): Promise<{ status: number, body: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, path, method: 'POST', localAddress, headers: { 'content-length': String(Buffer.byteLength(body)), ...headers } }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => {
        let parsed: Record<string, unknown> = {}
        try { parsed = JSON.parse(Buffer.concat(chunks).toString('utf8')) as Record<string, unknown> } catch { /* the assertions say so */ }
        resolve({ status: res.statusCode ?? 0, body: parsed })
      })
    })
    req.on('error', reject)
    req.end(body)
  })
}

const FORM = { 'content-type': 'application/x-www-form-urlencoded' }
const form = (fields: Record<string, string>): string => new URLSearchParams(fields).toString()

/** the attacker's own web server: counts what the broker would fetch from it */
async function attackerServer (): Promise<{ url: string, hits: () => number, close: () => Promise<void> }> {
  let hits = 0
  const server: Server = createServer((_req, res) => { hits++; res.writeHead(404).end() })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/jwks.json`,
    hits: () => hits,
    close: () => new Promise((resolve) => server.close(() => resolve()))
  }
}

t.test('OAUTH_JWKS_URL over plain HTTP is refused at start: the key set must not be rewritable in transit', async (t) => {
  const base = { MQTTS_TOKEN_PORT: 0, OAUTH_ISSUER: ISSUER, OAUTH_AUDIENCE: AUDIENCE }
  t.throws(() => loadConfig({ env: {}, overrides: { ...base, OAUTH_JWKS_URL: 'http://auth.example/jwks.json' } }), /OAUTH_JWKS_URL/, 'http:// refused, naming the key')
  t.equal(loadConfig({ env: {}, overrides: { ...base, OAUTH_JWKS_URL: 'https://auth.example/jwks.json' } }).oauthJwksUrl, 'https://auth.example/jwks.json', 'https:// accepted')
})

t.test('token listener and endpoint review', async (t) => {
  const jwks = await jwksServer()
  t.teardown(() => jwks.stop())
  const key = await issuerKey('k1')
  jwks.setKeys([key.publicJwk])
  const tb = await startBroker({
    store: 'memory',
    overrides: {
      ...oauthOverrides(jwks),
      TEMPLATES_DIR: templatesDir,
      SCHEMAS_DIR: schemasDir,
      ENROLLMENT_DIR: enrollmentDir,
      TOKEN_FAILURES_PER_ADDRESS: FAILURES_PER_ADDRESS,
      TOKEN_RATE_PER_CLIENT: RATE_PER_CLIENT,
      AUDIT_AGGREGATE_SECONDS: 2
    }
  })
  t.teardown(() => tb.close())
  const attacker = await generateKeyPair('ES256', { extractable: true })
  const attackerJwk = { ...await exportJWK(attacker.publicKey), kid: 'k1' }

  t.test('JWT headers: crit refused; embedded jwk, jku and x5u never used; kid never a path', async (t) => {
    const crit = await new SignJWT({ scope: 'telemetry:read' })
      .setProtectedHeader({ alg: 'ES256', kid: 'k1', crit: ['urn:example:ext'], 'urn:example:ext': 1 })
      .setIssuer(ISSUER).setAudience(AUDIENCE).setSubject('svc').setExpirationTime(nowSeconds() + 300)
      .sign(key.privateKey, { crit: { 'urn:example:ext': true } })
    t.match(await refused(t, tb, crit, 'rv-crit'), { errorCode: 'TokenMalformed', reason: /crit/ }, 'a crit extension: refused as such, not as an algorithm')

    const site = await attackerServer()
    t.teardown(() => site.close())
    const embedded = await new SignJWT({ scope: 'telemetry:read commands:write' })
      .setProtectedHeader({ alg: 'ES256', kid: 'k1', jwk: attackerJwk, jku: site.url, x5u: site.url })
      .setIssuer(ISSUER).setAudience(AUDIENCE).setSubject('svc').setExpirationTime(nowSeconds() + 300)
      .sign(attacker.privateKey)
    t.match(await refused(t, tb, embedded, 'rv-embedded'), { errorCode: 'TokenBadSignature' }, 'the header\'s own key is not trusted')
    t.equal(site.hits(), 0, 'jku / x5u never fetched')

    const traversal = await new SignJWT({ client_id: 'x', scope: 'telemetry:read' })
      .setProtectedHeader({ alg: 'ES256', kid: '../../../token-keys/../etc/passwd' })
      .setIssuer(TOKEN_ISSUER).setAudience(TOKEN_AUDIENCE).setSubject('x').setExpirationTime(nowSeconds() + 300)
      .sign(attacker.privateKey)
    t.match(await refused(t, tb, traversal, 'rv-kid-path'), { errorCode: 'TokenUnknownKey', authMethod: 'broker-token' }, 'a kid is matched, never opened')

    const rsa = await generateKeyPair('RS256')
    const mismatch = await new SignJWT({ scope: 'telemetry:read' }).setProtectedHeader({ alg: 'RS256', kid: 'k1' })
      .setIssuer(ISSUER).setAudience(AUDIENCE).setSubject('svc').setExpirationTime(nowSeconds() + 300).sign(rsa.privateKey)
    t.match(await refused(t, tb, mismatch, 'rv-rs-on-ec'), { errorCode: 'TokenUnknownKey' }, 'RS256 never meets the EC key k1')

    // the external issuer's genuine key cannot mint broker tokens
    const posing = await accessToken(key, { sub: 'svc', scope: 'telemetry:read', iss: TOKEN_ISSUER, aud: TOKEN_AUDIENCE, extra: { client_id: 'svc' } })
    t.match(await refused(t, tb, posing, 'rv-posing'), { errorCode: 'TokenUnknownKey', authMethod: 'broker-token' }, 'iss urn:aedes-jitp:broker is verified against the broker\'s keys only')
  })

  t.test('lifetime: exp at most 24 h ahead, iat not in the future', async (t) => {
    t.match(await refused(t, tb, await accessToken(key, { sub: 'svc', scope: 'telemetry:read', exp: 10 * 365 * 86400 }), 'rv-decade'),
      { errorCode: 'TokenLifetimeTooLong', reason: /24 h/ }, 'a token for ten years: refused')
    const day = await tokenConnect(tb, await accessToken(key, { sub: 'svc', scope: 'telemetry:read', exp: 23 * 3600 }), { clientId: 'rv-day' })
    t.equal(day.returnCode, 0, 'a 23 h token is accepted')
    await endClient(day.client!)
    const future = await new SignJWT({ scope: 'telemetry:read' }).setProtectedHeader({ alg: 'ES256', kid: 'k1' })
      .setIssuer(ISSUER).setAudience(AUDIENCE).setSubject('svc').setIssuedAt(nowSeconds() + 3600).setExpirationTime(nowSeconds() + 7200).sign(key.privateKey)
    t.match(await refused(t, tb, future, 'rv-iat'), { errorCode: 'TokenNotYetValid', reason: /iat/ })
  })

  t.test('identities never cross methods: a client id belongs to the identity holding it', async (t) => {
    const made = await tb.handle.oauthClients.create('analytics', ['telemetry:read'])
    const { token } = await tb.handle.tokenKeys.sign({ sub: made.clientId, client_id: made.clientId, scope: 'telemetry:read' }, 120)
    const owner = await tokenConnect(tb, token, { clientId: 'rv-shared', clean: false })
    t.equal(owner.returnCode, 0, 'the broker client holds rv-shared')
    // the external issuer names the same client: another identity (oauth2:<iss>#<sub>), never the broker client's session
    const lookalike = await tokenConnect(tb, await accessToken(key, { sub: made.clientId, scope: 'telemetry:read', extra: { client_id: made.clientId } }), { clientId: 'rv-shared' })
    t.equal(lookalike.returnCode, 2, 'an external token naming the broker client: CONNACK 2')
    await t.rejects(connect(tb, credentials(tb.pki, 'service'), { clientId: 'rv-shared' }), 'a service certificate: refused too')
    t.ok(owner.client!.connected, 'the owner keeps its session')
    await endClient(owner.client!)

    await registerDevice(tb, 'rv-device-1')
    const r = await tokenConnect(tb, sas('rv-device-1'), { clientId: 'rv-device-1', username: 'enroll/factory' })
    t.equal(r.returnCode, 2, 'a registration id that is a device id: CONNACK 2')
    t.match(tb.events('enrollment.refused').find((l) => l.clientId === 'rv-device-1'), { errorCode: 'ClientIdInUse' })
  })

  t.test('an enrollment registers with its group\'s template only, whatever its parameters', async (t) => {
    const { client, returnCode } = await tokenConnect(tb, sas('rv-unit-1'), { clientId: 'rv-unit-1', username: 'enroll/factory' })
    t.equal(returnCode, 0)
    const created = await request(client!, '$provision/certificates/create/json', {})
    t.equal(created.outcome, 'accepted')
    const ownership = created.body.certificateOwnershipToken
    for (const parameters of [[], 'x', 7]) {
      const reg = await request(client!, '$provision/templates/gateway/provision/json', { certificateOwnershipToken: ownership, parameters })
      t.match(reg.body, { statusCode: 403, errorCode: 'ProvisioningDenied' }, `parameters ${JSON.stringify(parameters)}: another template refused`)
    }
    t.equal(await tb.handle.registry.getDevice('gateway-1'), null, 'the other fleet\'s device was not registered')
    const own = await request(client!, '$provision/templates/sas-sensor/provision/json', { certificateOwnershipToken: ownership, parameters: [] })
    t.match(own.body, { statusCode: 400, errorCode: 'InvalidParameters' }, 'its own template: parameters must be an object')
    const ok = await request(client!, '$provision/templates/sas-sensor/provision/json', { certificateOwnershipToken: ownership })
    t.equal(ok.outcome, 'accepted', 'the token was not used up by the refusals')
    t.equal(ok.body.deviceId, 'sas-rv-unit-1')
    await endClient(client!)
  })

  t.test('a 60 KB password (MQTT allows 65535): the token listener closes the CONNECT from its fixed header', async (t) => {
    const socket = tlsConnect({ host: '127.0.0.1', port: tb.handle.mqttsTokenPort!, ca: tb.pki.read('root-ca.pem') })
    socket.on('error', () => {})
    await new Promise((resolve) => socket.once('secureConnect', resolve))
    let closed = false
    socket.once('close', () => { closed = true })
    const field = (b: Buffer): Buffer => Buffer.concat([Buffer.from([b.length >> 8, b.length & 0xff]), b])
    // CONNECT, MQTT 3.1.1, clean session + username + password, keep-alive 60
    const body = Buffer.concat([field(Buffer.from('MQTT')), Buffer.from([4, 0xc2, 0, 60]),
      field(Buffer.from('rv-huge')), field(Buffer.from('service')), field(Buffer.alloc(60_000, 0x61))])
    const size = body.length
    // remaining length as a variable byte integer [MQTT-2.2.3]
    const packet = Buffer.concat([Buffer.from([0x10, (size & 0x7f) | 0x80, ((size >> 7) & 0x7f) | 0x80, size >> 14]), body])
    let sent = 0
    while (!closed && sent < packet.length) {
      const chunk = packet.subarray(sent, sent + 4096)
      await new Promise((resolve) => socket.write(chunk, resolve))
      sent += chunk.length
      await new Promise((resolve) => setImmediate(resolve))
    }
    if (!closed) await new Promise((resolve) => socket.once('close', resolve))
    t.ok(sent < packet.length, `closed after ${sent} of the CONNECT's ${packet.length} bytes`)
    await waitFor(() => tb.events('connect.refused').some((l) => l.errorCode === 'PacketTooLarge'), 5000, 'connect.refused PacketTooLarge')
    t.notOk(tb.events('token.refused').some((l) => l.clientId === 'rv-huge'), 'the password never reached the verifier')
  })

  t.test('POST /oauth/token: no secret in the URL, no JSON, X-Forwarded-For ignored, no lockout by others', async (t) => {
    const victim = await tb.handle.oauthClients.create('victim', ['telemetry:read'])
    const grant = { grant_type: 'client_credentials', client_id: victim.clientId, client_secret: victim.clientSecret }

    const inQuery = await post(tb.httpPort, `/oauth/token?client_secret=${victim.clientSecret}`, form(grant), FORM)
    t.match(inQuery, { status: 400, body: { error: 'invalid_request', error_description: /query/ } }, 'a secret in the query string: refused, no token')
    const json = await post(tb.httpPort, '/oauth/token', JSON.stringify(grant), { 'content-type': 'application/json' })
    t.match(json, { status: 400, body: { error: 'invalid_request' } }, 'a JSON body: refused')

    // another address guesses the victim's secret, a new X-Forwarded-For on each try
    const statuses: number[] = []
    for (let i = 0; i < FAILURES_PER_ADDRESS + 2; i++) {
      const r = await post(tb.httpPort, '/oauth/token', form({ ...grant, client_secret: `guess-${i}` }), { ...FORM, 'x-forwarded-for': `10.9.8.${i}` }, '127.0.0.2')
      statuses.push(r.status)
    }
    t.same(statuses, [...Array(FAILURES_PER_ADDRESS).fill(401), 429, 429], 'the socket\'s address is throttled, whatever the header says')
    const guessLines = tb.events('token.refused').filter((l) => l.errorCode === 'BadClientSecret' && l.oauthClientId === victim.clientId)
    t.equal(guessLines.length, FAILURES_PER_ADDRESS, 'each checked guess audited')
    t.ok(guessLines.every((l) => l.remoteAddress === '127.0.0.2'), 'under the socket\'s address')
    t.notOk(tb.audit.raw.some((l) => l.includes('10.9.8.')), 'the forwarded addresses are nowhere')

    // the real client is not locked out by those guesses, and its own requests are still budgeted
    const own: number[] = []
    for (let i = 0; i < RATE_PER_CLIENT + 1; i++) own.push((await post(tb.httpPort, '/oauth/token', form(grant), FORM)).status)
    t.same(own, [...Array(RATE_PER_CLIENT).fill(200), 429], `the client gets its ${RATE_PER_CLIENT} tokens, then 429`)
    t.notOk(tb.audit.raw.some((l) => l.includes(victim.clientSecret)), 'the victim\'s secret is not in the audit log')
  })

  t.test('the audit log holds no token, secret or SAS', async (t) => {
    const raw = tb.audit.raw.join('\n')
    t.notMatch(raw, /eyJ[A-Za-z0-9_-]+\.eyJ/, 'no JWT')
    t.notMatch(raw, /SharedAccessSignature|sig=/, 'no SAS')
    t.notOk(raw.includes('guess-'), 'no secret, not even a wrong one')
  })
})
