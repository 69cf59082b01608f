/**
 * Attacks on the token listener (CONTRACT §10, §3.6), one each: forged, stale
 * and misdirected OAuth2 tokens, algorithm confusion, and forged, stale and
 * misdirected SAS enrollments. Each gets CONNACK 5 (nothing: no session, no
 * subscription, no message) and one `token.refused` line with its own code and
 * reason, and no line of the audit log holds the token. The issuer's JWKS server
 * is down when the broker starts: the broker starts anyway, and once it fetched
 * the keys they keep verifying after the issuer goes away again.
 */
import t, { type Test } from 'tap'
import { createPublicKey } from 'node:crypto'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { SignJWT, type JWK } from 'jose'
import { deriveDeviceKey, signSas } from '../../plugins/token/sas.js'
import { endClient, startBroker, subscribe, waitFor, type TestBroker } from '../helpers/broker.js'
import { accessToken, issuerKey, jwksServer, oauthOverrides, tokenConnect, writeGroup, ISSUER, AUDIENCE } from '../helpers/tokens.js'

const templatesDir = mkdtempSync(join(tmpdir(), 'jitp-attack-templates-'))
writeFileSync(join(templatesDir, 'sas-sensor.json'), JSON.stringify({
  parameters: { type: 'object', required: ['registrationId'], properties: { registrationId: { type: 'string' } } },
  deviceId: 'sas-${registrationId}',
  configuration: { interval: 5 }
}))
const enrollmentDir = mkdtempSync(join(tmpdir(), 'jitp-attack-enrollment-'))
const groupKey = Buffer.alloc(64, 3)
writeGroup(enrollmentDir, { name: 'factory', groupKey: groupKey.toString('base64'), template: 'sas-sensor' })
const MAX_SAS_SECONDS = 600

const b64url = (v: unknown): string => Buffer.from(JSON.stringify(v)).toString('base64url')
const nowSeconds = (): number => Math.floor(Date.now() / 1000)

/** a refused connect: CONNACK code, the one token.refused line for it, and nothing else for the attacker */
async function refused (t: Test, tb: TestBroker, password: string, clientId: string, opts: { username?: string } = {}): Promise<Record<string, unknown>> {
  const r = await tokenConnect(tb, password, { clientId, ...(opts.username ? { username: opts.username } : {}) })
  t.equal(r.client, null, `${clientId}: no session`)
  t.equal(r.returnCode, 5, `${clientId}: CONNACK 5`)
  await waitFor(() => tb.events('token.refused').some((l) => l.clientId === clientId), 5000, `token.refused for ${clientId}`)
  const lines = tb.events('token.refused').filter((l) => l.clientId === clientId)
  t.equal(lines.length, 1, `${clientId}: one audit line`)
  t.notOk(tb.events('connect.accepted').some((l) => l.clientId === clientId), `${clientId}: never accepted`)
  t.notOk(tb.audit.raw.some((l) => l.includes(password.slice(-24))), `${clientId}: the token is not in the audit log`)
  return lines[0]!
}

t.test('token listener attacks', async (t) => {
  // the issuer is down when the broker starts
  const jwks = await jwksServer({ listening: false })
  t.teardown(() => jwks.stop())
  const key = await issuerKey('k1')
  jwks.setKeys([key.publicJwk])
  const tb = await startBroker({ store: 'memory', overrides: { ...oauthOverrides(jwks), TEMPLATES_DIR: templatesDir, ENROLLMENT_DIR: enrollmentDir, ENROLLMENT_TOKEN_MAX_SECONDS: MAX_SAS_SECONDS } })
  t.teardown(() => tb.close())
  const good = (opts: Parameters<typeof accessToken>[1] = {}): Promise<string> => accessToken(key, { sub: 'svc', scope: 'telemetry:read', ...opts })

  t.test('JWKS down at start: the broker is up, a valid token gets CONNACK 3, then verifies once the issuer is back', async (t) => {
    t.ok(tb.handle.mqttsTokenPort, 'the token listener is up')
    const down = await tokenConnect(tb, await good(), { clientId: 'while-down' })
    t.equal(down.returnCode, 3, 'keys unavailable: CONNACK 3 (server unavailable), not a verdict on the token')
    await waitFor(() => tb.events('token.refused').some((l) => l.clientId === 'while-down'), 5000, 'token.refused')
    t.match(tb.events('token.refused').find((l) => l.clientId === 'while-down'), { errorCode: 'TokenKeysUnavailable', authMethod: 'oauth2' })
    await jwks.start()
    const up = await tokenConnect(tb, await good(), { clientId: 'after-up' })
    t.equal(up.returnCode, 0, 'the keys are fetched on the next connect')
    await endClient(up.client!)
  })

  const cases: Array<[name: string, make: () => Promise<string>, code: string, reason: RegExp]> = [
    ['expired', () => good({ exp: -60 }), 'TokenExpired', /exp/],
    ['not yet valid', () => good({ nbf: 120 }), 'TokenNotYetValid', /nbf/],
    ['wrongly signed (another key, the same kid)', async () => accessToken(await issuerKey('k1'), { sub: 'svc', scope: 'telemetry:read' }), 'TokenBadSignature', /signature/],
    ['unknown kid', async () => accessToken(await issuerKey('k-unknown'), { sub: 'svc', scope: 'telemetry:read' }), 'TokenUnknownKey', /key/],
    ['wrong issuer', () => good({ iss: 'https://evil.example/' }), 'TokenWrongIssuer', /iss/],
    ['wrong audience', () => good({ aud: 'another-api' }), 'TokenWrongAudience', /aud/],
    ['alg none', async () => `${b64url({ alg: 'none', kid: 'k1' })}.${b64url({ iss: ISSUER, aud: AUDIENCE, sub: 'svc', scope: 'telemetry:read commands:write', exp: nowSeconds() + 300 })}.`, 'TokenAlgorithmNotAllowed', /none/],
    ['HS256 signed with the public key as secret', async () => {
      // the classic confusion: a verifier that takes the key's bytes as an HMAC secret would accept this
      const pem = createPublicKey({ key: key.publicJwk as JWK & { kty: string }, format: 'jwk' }).export({ type: 'spki', format: 'pem' }) as string
      return new SignJWT({ scope: 'telemetry:read commands:write' }).setProtectedHeader({ alg: 'HS256', kid: 'k1' })
        .setIssuer(ISSUER).setAudience(AUDIENCE).setSubject('svc').setExpirationTime(nowSeconds() + 300).sign(new TextEncoder().encode(pem))
    }, 'TokenAlgorithmNotAllowed', /HS256/],
    ['no scope that allows anything', () => good({ scope: 'admin:everything pii' }), 'TokenNoScope', /scope/],
    ['no exp', async () => new SignJWT({ scope: 'telemetry:read' }).setProtectedHeader({ alg: 'ES256', kid: 'k1' }).setIssuer(ISSUER).setAudience(AUDIENCE).setSubject('svc').sign(key.privateKey), 'TokenMalformed', /exp/],
    ['not a JWT', async () => 'hunter2-not-a-token-at-all', 'TokenMalformed', /JWT/]
  ]
  t.test('forged, stale and misdirected tokens: each CONNACK 5 with its own code and reason', async (t) => {
    const reasons = new Set<string>()
    let i = 0
    for (const [name, make, code, reason] of cases) {
      const line = await refused(t, tb, await make(), `attack-${i++}`)
      t.equal(line.errorCode, code, `${name}: ${code}`)
      t.match(String(line.reason), reason, `${name}: reason names it`)
      t.equal(line.authMethod, 'oauth2')
      reasons.add(String(line.reason))
    }
    t.equal(reasons.size, cases.length, 'every refusal has its own reason')
    const empty = await tokenConnect(tb, '', { clientId: 'no-token' })
    t.equal(empty.returnCode, 5, 'no token at all: CONNACK 5')
  })

  t.test('a valid telemetry:read token gets only what its scope allows', async (t) => {
    const { client } = await tokenConnect(tb, await good(), { clientId: 'narrow' })
    t.same(await subscribe(client!, ['#', 'devices/+/commands/+', '$SYS/#', 'devices/+/state', 'devices/+/telemetry']), [128, 128, 128, 128, 1], 'only the telemetry filter is granted')
    await endClient(client!)
  })

  const sas = (registrationId: string, expiry: number): string => signSas(deriveDeviceKey(groupKey, registrationId), registrationId, expiry)
  t.test('SAS: other registration id, expired, too far ahead, group key instead of device key, unknown group: refused', async (t) => {
    const soon = nowSeconds() + 300
    const attacks: Array<[name: string, password: string, clientId: string, reason: RegExp, username?: string, code?: string]> = [
      ['a SAS for another registration id', sas('dev-b', soon), 'dev-a', /another registration id/],
      ['dev-a\'s device key signing for dev-b', signSas(deriveDeviceKey(groupKey, 'dev-a'), 'dev-b', soon), 'dev-b', /signature/],
      ['expired', sas('dev-c', nowSeconds() - 10), 'dev-c', /expired/],
      ['too far in the future', sas('dev-d', nowSeconds() + MAX_SAS_SECONDS + 120), 'dev-d', /too far/],
      ['signed with the group key instead of the derived key', signSas(groupKey, 'dev-e', soon), 'dev-e', /signature/],
      ['malformed', 'SharedAccessSignature sr=dev-f&sig=AAAA&se=1', 'dev-f', /malformed/],
      ['unknown group', sas('dev-g', soon), 'dev-g', /no such enrollment group/, 'enroll/nope', 'EnrollmentGroupNotFound']
    ]
    for (const [name, password, clientId, reason, username, code] of attacks) {
      const line = await refused(t, tb, password, clientId, { username: username ?? 'enroll/factory' })
      t.equal(line.errorCode, code ?? 'BadSas', `${name}: ${code ?? 'BadSas'}`)
      t.match(String(line.reason), reason, `${name}: reason`)
      t.equal(line.authMethod, 'sas')
    }
    const ok = await tokenConnect(tb, sas('dev-h', soon), { clientId: 'dev-h', username: 'enroll/factory' })
    t.equal(ok.returnCode, 0, 'the same group\'s genuine SAS is accepted')
    await endClient(ok.client!)
    t.equal((await tb.handle.registry.listDevices()).length, 0, 'no attack registered anything')
  })

  t.test('the issuer goes away: keys already fetched keep verifying', async (t) => {
    await jwks.stop()
    const hits = jwks.hits
    const { client, returnCode } = await tokenConnect(tb, await good(), { clientId: 'after-down' })
    t.equal(returnCode, 0, 'verified with the cached key')
    t.equal(jwks.hits, hits, 'without asking the issuer')
    await endClient(client!)
  })

  t.test('the audit log holds no JWT, SAS or key', async (t) => {
    const raw = tb.audit.raw.join('\n')
    t.notMatch(raw, /eyJ[A-Za-z0-9_-]+\.eyJ/, 'no JWT')
    t.notMatch(raw, /SharedAccessSignature|sig=/, 'no SAS')
    t.notOk(raw.includes(groupKey.toString('base64')), 'no group key')
  })
})
