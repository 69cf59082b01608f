/**
 * The broker's own OAuth2 token endpoint (CONTRACT §10), POST /oauth/token on
 * HTTP_PORT, with plain HTTP requests as curl would send them, on both stores:
 * - a client made through the admin API gets a token with HTTP Basic and with
 *   body credentials; the JWT verifies with jose against the broker's public
 *   JWKS (ES256, kid, iss, aud, exp, scope); a scope narrows, a scope not
 *   granted is invalid_scope
 * - RFC 6749 §5.2 refusals: wrong secret → 401 invalid_client with
 *   WWW-Authenticate, unsupported grant → 400, malformed requests → 400
 * - end to end: the token connects on MQTTS_TOKEN_PORT (MQTT.js, password =
 *   token); after DELETE /v1/clients/{id} the same token's next connect is
 *   refused, and the secret gets no new token
 * - 100 wrong secrets from one address: at most TOKEN_FAILURES_PER_ADDRESS of
 *   them are checked, the rest are 429, and the right secret from that address
 *   gets nothing either until the window ends
 * - no secret and no token in the audit; token.issued / token.refused lines
 */
import t from 'tap'
import { createLocalJWKSet, decodeProtectedHeader, jwtVerify, calculateJwkThumbprint } from 'jose'
import mqtt, { type MqttClient } from 'mqtt'
import { adminRequest } from '../helpers/admin.js'
import { startBroker, STORES, type TestBroker } from '../helpers/broker.js'

interface TokenAnswer { status: number, body: Record<string, unknown>, headers: Headers }

/** RFC 6749 §2.3.1: each part form-url-encoded, then joined by ':' and base64 encoded */
function basic (id: string, secret: string): string {
  const enc = (s: string): string => new URLSearchParams({ s }).toString().slice(2)
  return 'Basic ' + Buffer.from(`${enc(id)}:${enc(secret)}`).toString('base64')
}

async function tokenRequest (tb: TestBroker, form: Record<string, string>, headers: Record<string, string> = {}): Promise<TokenAnswer> {
  const res = await fetch(`http://127.0.0.1:${tb.httpPort}/oauth/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers },
    body: new URLSearchParams(form).toString()
  })
  const text = await res.text()
  let body: Record<string, unknown> = {}
  try { body = JSON.parse(text) as Record<string, unknown> } catch { /* not JSON: the assertions say so */ }
  return { status: res.status, body, headers: res.headers }
}

/** MQTT.js as a backend service uses it (docs/AUTH.md): the username is ignored, the password is the token */
function connectWithToken (tb: TestBroker, token: string, clientId: string): Promise<{ client: MqttClient | null, returnCode: number }> {
  return new Promise((resolve, reject) => {
    const client = mqtt.connect({
      protocol: 'mqtts', host: '127.0.0.1', port: tb.handle.mqttsTokenPort!, ca: tb.pki.read('root-ca.pem'),
      protocolVersion: 4, clientId, username: 'ignored', password: token, reconnectPeriod: 0, connectTimeout: 5000
    })
    client.once('connect', () => resolve({ client, returnCode: 0 }))
    client.once('error', (err: Error & { code?: unknown }) => {
      client.end(true)
      if (typeof err.code === 'number') resolve({ client: null, returnCode: err.code })
      else reject(err)
    })
  })
}

const FAILURES_PER_ADDRESS = 20

for (const store of STORES) {
  t.test(`token endpoint on the ${store} store`, async (t) => {
    const tb = await startBroker({ store, overrides: { MQTTS_TOKEN_PORT: 0, TOKEN_LIFETIME_SECONDS: 300, TOKEN_FAILURES_PER_ADDRESS: FAILURES_PER_ADDRESS } })
    t.teardown(() => tb.close())
    const made = await adminRequest(tb.adminPort!, tb.pki, 'POST', '/v1/clients', { body: { name: 'backend analytics', scopes: ['telemetry:read', 'commands:write'] } })
    t.equal(made.status, 201, made.raw)
    const { clientId, clientSecret } = made.body as { clientId: string, clientSecret: string }
    const jwks = createLocalJWKSet(tb.handle.tokenKeys.publicJwks())
    const tokens: string[] = []

    t.test('HTTP Basic credentials get an ES256 token that verifies against the public JWKS', async (t) => {
      const r = await tokenRequest(tb, { grant_type: 'client_credentials' }, { authorization: basic(clientId, clientSecret) })
      t.equal(r.status, 200, JSON.stringify(r.body))
      t.equal(r.headers.get('cache-control'), 'no-store', 'RFC 6749 §5.1: not cached')
      t.match(r.headers.get('content-type'), /^application\/json/)
      t.match(r.body, { token_type: 'Bearer', expires_in: 300, scope: 'telemetry:read commands:write' })
      const token = r.body.access_token as string
      tokens.push(token)
      const header = decodeProtectedHeader(token)
      t.equal(header.alg, 'ES256')
      const keys = tb.handle.tokenKeys.publicJwks().keys
      t.equal(keys.length, 1, 'one key generated on first start')
      t.equal(header.kid, await calculateJwkThumbprint(keys[0]!), 'kid = the JWK thumbprint')
      t.notOk(keys.some((k) => 'd' in k), 'the public JWKS holds no private part')
      const { payload } = await jwtVerify(token, jwks, { issuer: 'urn:aedes-jitp:broker', audience: 'urn:aedes-jitp:mqtt', algorithms: ['ES256'] })
      t.equal(payload.sub, clientId)
      t.equal(payload.client_id, clientId)
      t.equal(payload.scope, 'telemetry:read commands:write')
      t.equal(payload.exp! - payload.iat!, 300, 'lifetime TOKEN_LIFETIME_SECONDS')
      t.ok(Math.abs(payload.iat! - Date.now() / 1000) < 30, 'issued now')
      // a token signed by another key does not verify: the JWKS is the broker's, not anyone's
      await t.rejects(jwtVerify(token, jwks, { issuer: 'urn:other', audience: 'urn:aedes-jitp:mqtt' }))
    })

    t.test('body credentials work too, and a scope narrows the grant', async (t) => {
      const r = await tokenRequest(tb, { grant_type: 'client_credentials', client_id: clientId, client_secret: clientSecret, scope: 'telemetry:read' })
      t.equal(r.status, 200, JSON.stringify(r.body))
      t.equal(r.body.scope, 'telemetry:read')
      tokens.push(r.body.access_token as string)
      const { payload } = await jwtVerify(r.body.access_token as string, jwks, { issuer: tb.handle.tokenKeys.issuer, audience: tb.handle.tokenKeys.audience })
      t.equal(payload.scope, 'telemetry:read', 'the token carries only the narrowed scope')
    })

    t.test('a scope the client was not granted, or that does not exist: invalid_scope, no token', async (t) => {
      for (const scope of ['pii', 'telemetry:read pii', 'admin']) {
        const r = await tokenRequest(tb, { grant_type: 'client_credentials', scope }, { authorization: basic(clientId, clientSecret) })
        t.equal(r.status, 400, scope)
        t.equal(r.body.error, 'invalid_scope', scope)
        t.notOk('access_token' in r.body)
      }
    })

    t.test('a wrong secret: 401 invalid_client, WWW-Authenticate, audited without the secret', async (t) => {
      const before = tb.events('token.refused').length
      const r = await tokenRequest(tb, { grant_type: 'client_credentials' }, { authorization: basic(clientId, 'not-the-secret') })
      t.equal(r.status, 401)
      t.equal(r.body.error, 'invalid_client')
      t.match(r.headers.get('www-authenticate'), /^Basic realm=/)
      t.notOk('access_token' in r.body)
      const inBody = await tokenRequest(tb, { grant_type: 'client_credentials', client_id: clientId, client_secret: 'not-the-secret' })
      t.equal(inBody.status, 401, 'body credentials: 401 as well')
      t.equal(inBody.body.error, 'invalid_client')
      const unknown = await tokenRequest(tb, { grant_type: 'client_credentials' }, { authorization: basic('0123456789abcdef0123456789abcdef', clientSecret) })
      t.equal(unknown.status, 401, 'an unknown client id: the same answer')
      t.equal(unknown.body.error, 'invalid_client')
      const refused = tb.events('token.refused').slice(before)
      t.match(refused, [
        { oauthClientId: clientId, reason: 'bad secret', errorCode: 'BadClientSecret', remoteAddress: '127.0.0.1' },
        { oauthClientId: clientId, reason: 'bad secret', errorCode: 'BadClientSecret' },
        { reason: 'unknown client', errorCode: 'UnknownClient' }
      ])
    })

    t.test('RFC 6749 §5.2 answers for malformed requests', async (t) => {
      const grant = await tokenRequest(tb, { grant_type: 'password', username: 'u', password: 'p' }, { authorization: basic(clientId, clientSecret) })
      t.equal(grant.status, 400)
      t.equal(grant.body.error, 'unsupported_grant_type')
      const noGrant = await tokenRequest(tb, {}, { authorization: basic(clientId, clientSecret) })
      t.equal(noGrant.body.error, 'invalid_request', 'no grant_type')
      const both = await tokenRequest(tb, { grant_type: 'client_credentials', client_id: clientId, client_secret: clientSecret }, { authorization: basic(clientId, clientSecret) })
      t.equal(both.body.error, 'invalid_request', 'two authentication methods at once')
      const noCreds = await tokenRequest(tb, { grant_type: 'client_credentials' })
      t.equal(noCreds.status, 401)
      t.equal(noCreds.body.error, 'invalid_client', 'no credentials')
      const json = await fetch(`http://127.0.0.1:${tb.httpPort}/oauth/token`, {
        method: 'POST', headers: { 'content-type': 'application/json', authorization: basic(clientId, clientSecret) }, body: '{"grant_type":"client_credentials"}'
      })
      t.equal(json.status, 400, 'JSON body refused')
      t.equal(((await json.json()) as { error: string }).error, 'invalid_request')
      const repeated = await fetch(`http://127.0.0.1:${tb.httpPort}/oauth/token`, {
        method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded', authorization: basic(clientId, clientSecret) }, body: 'grant_type=client_credentials&grant_type=client_credentials'
      })
      t.equal(repeated.status, 400, 'a repeated parameter (RFC 6749 §3.2)')
      const big = await fetch(`http://127.0.0.1:${tb.httpPort}/oauth/token`, {
        method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: 'grant_type=client_credentials&x=' + 'a'.repeat(10_000)
      })
      t.equal(big.status, 413, 'an oversized body')
      const get = await fetch(`http://127.0.0.1:${tb.httpPort}/oauth/token`)
      t.equal(get.status, 405, 'GET is not a token request')
      t.equal((await fetch(`http://127.0.0.1:${tb.httpPort}/healthz`)).status, 200, 'the ops endpoints still answer')
    })

    t.test('end to end: the token connects on MQTTS_TOKEN_PORT; after DELETE the next connect is refused', async (t) => {
      const made = await adminRequest(tb.adminPort!, tb.pki, 'POST', '/v1/clients', { body: { name: 'dashboard', scopes: ['telemetry:read'] } })
      const c = made.body as { clientId: string, clientSecret: string }
      const r = await tokenRequest(tb, { grant_type: 'client_credentials' }, { authorization: basic(c.clientId, c.clientSecret) })
      t.equal(r.status, 200)
      const token = r.body.access_token as string
      tokens.push(token)
      const first = await connectWithToken(tb, token, 'dashboard-1')
      t.equal(first.returnCode, 0, 'connected with the token as password')
      t.same(await new Promise((resolve, reject) => first.client!.subscribe('devices/+/telemetry', { qos: 1 }, (err, granted) => err ? reject(err) : resolve(granted?.map((g) => g.qos)))), [1], 'telemetry:read may subscribe to telemetry')
      await new Promise<void>((resolve) => first.client!.end(false, {}, () => resolve()))
      t.match(tb.events('connect.accepted').find((l) => l.clientId === 'dashboard-1'), { role: 'service', authMethod: 'broker-token', oauthClientId: c.clientId })
      t.equal((await adminRequest(tb.adminPort!, tb.pki, 'DELETE', `/v1/clients/${c.clientId}`)).status, 200)
      const again = await connectWithToken(tb, token, 'dashboard-1')
      t.equal(again.returnCode, 5, 'the same, unexpired token: CONNACK 5 once its client is gone')
      t.ok(tb.events('token.refused').some((l) => l.clientId === 'dashboard-1' && l.oauthClientId === c.clientId), 'audited')
    })

    t.test('deleting the client makes its secret useless', async (t) => {
      const other = await adminRequest(tb.adminPort!, tb.pki, 'POST', '/v1/clients', { body: { name: 'to delete', scopes: ['state:read'] } })
      const c = other.body as { clientId: string, clientSecret: string }
      t.equal((await tokenRequest(tb, { grant_type: 'client_credentials' }, { authorization: basic(c.clientId, c.clientSecret) })).status, 200, 'works before')
      t.equal((await adminRequest(tb.adminPort!, tb.pki, 'DELETE', `/v1/clients/${c.clientId}`)).status, 200)
      const after = await tokenRequest(tb, { grant_type: 'client_credentials' }, { authorization: basic(c.clientId, c.clientSecret) })
      t.equal(after.status, 401, 'refused after DELETE')
      t.equal(after.body.error, 'invalid_client')
      t.notOk('access_token' in after.body)
      t.match(tb.events('token.refused').at(-1), { oauthClientId: c.clientId, reason: 'unknown client' })
    })

    t.test('100 wrong secrets from one address are throttled; the right secret then gets nothing either', async (t) => {
      const statuses: number[] = []
      // ten at a time: every attempt is counted before its secret is checked, so a burst gets no more checks than a trickle
      for (let i = 0; i < 10; i++) {
        const batch = await Promise.all(Array.from({ length: 10 }, (_, j) =>
          tokenRequest(tb, { grant_type: 'client_credentials' }, { authorization: basic(clientId, `guess-${i}-${j}`) })))
        statuses.push(...batch.map((r) => r.status))
        t.notOk(batch.some((r) => 'access_token' in r.body), 'no token for a guess')
      }
      const checked = statuses.filter((s) => s === 401).length
      const throttled = statuses.filter((s) => s === 429).length
      t.equal(checked + throttled, 100, `every guess refused (${checked} checked, ${throttled} throttled)`)
      t.ok(checked <= FAILURES_PER_ADDRESS, `at most ${FAILURES_PER_ADDRESS} secrets checked, got ${checked}`)
      t.ok(throttled >= 100 - FAILURES_PER_ADDRESS, 'the rest: 429')
      const right = await tokenRequest(tb, { grant_type: 'client_credentials' }, { authorization: basic(clientId, clientSecret) })
      t.equal(right.status, 429, 'the address stays throttled for the window')
      t.match(right.headers.get('retry-after'), /^\d+$/)
      t.equal(right.body.error, 'temporarily_unavailable')
      t.ok(tb.events('token.refused').some((l) => l.errorCode === 'Throttled' && l.remoteAddress === '127.0.0.1'), 'throttling audited')
      const metrics = await (await fetch(`http://127.0.0.1:${tb.httpPort}/metrics`)).text()
      t.match(metrics, /jitp_token_requests_total\{outcome="throttled"\} \d+/)
    })

    t.test('audit: token.issued lines; neither secret nor token anywhere', async (t) => {
      await tb.handle.audit.flush()
      t.match(tb.events('token.issued')[0], { oauthClientId: clientId, scope: 'telemetry:read commands:write', remoteAddress: '127.0.0.1', authMethod: 'client_secret_basic' })
      t.match(tb.events('token.issued')[1], { oauthClientId: clientId, scope: 'telemetry:read', authMethod: 'client_secret_post' })
      const all = tb.audit.raw.join('\n')
      t.notOk(all.includes(clientSecret), 'no secret')
      for (const token of tokens) {
        t.notOk(all.includes(token), 'no token')
        t.notOk(all.includes(token.split('.')[2]!), 'not even its signature')
      }
    })
  })
}
