/**
 * The broker's token-signing keys (broker/token-keys.ts, docs/AUTH.md):
 * generated once (0600) in an empty directory and shared by every process that
 * reads it; kid = JWK thumbprint; rotation: a key dropped in under a name that
 * sorts last signs after reload(), and tokens of the previous key still verify;
 * a file that is not an EC P-256 key stops the start with the file's name.
 */
import t from 'tap'
import { generateKeyPairSync } from 'node:crypto'
import { mkdtempSync, readdirSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { calculateJwkThumbprint, createLocalJWKSet, decodeProtectedHeader, jwtVerify } from 'jose'
import { loadTokenKeys } from '../../broker/token-keys.js'

const claims = { sub: 'svc', client_id: 'svc', scope: 'state:read' }

function p256Pem (): string {
  return generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey.export({ type: 'pkcs8', format: 'pem' }) as string
}

t.test('generated once, private, shared by every process reading the directory', async (t) => {
  const dir = join(mkdtempSync(join(tmpdir(), 'jitp-token-keys-')), 'token-keys')
  const [a, b] = await Promise.all([loadTokenKeys(dir), loadTokenKeys(dir)])
  const files = readdirSync(dir).filter((f) => f.endsWith('.pem'))
  t.ok(files.length >= 1 && files.every((f) => /^es256-\d{8}T\d{6}Z\.pem$/.test(f)), `generated: ${files.join(', ')}`)
  t.notOk(readdirSync(dir).some((f) => f.startsWith('.tmp-')), 'no temporary file left')
  for (const f of files) t.equal(statSync(join(dir, f)).mode & 0o777, 0o600, `${f} is 0600`)
  t.equal(statSync(dir).mode & 0o777, 0o700, 'the directory is 0700')
  await a.reload()
  await b.reload()
  t.equal(a.signingKid, b.signingKid, 'two processes sign with the same key')
  const c = await loadTokenKeys(dir)
  t.equal(readdirSync(dir).filter((f) => f.endsWith('.pem')).length, files.length, 'a later start generates nothing')
  t.equal(c.signingKid, a.signingKid)
  const jwk = c.publicJwks().keys.find((k) => k.kid === c.signingKid)!
  t.equal(jwk.kid, await calculateJwkThumbprint({ kty: jwk.kty!, crv: jwk.crv, x: jwk.x, y: jwk.y }), 'kid = RFC 7638 thumbprint')
  t.match(jwk, { kty: 'EC', crv: 'P-256', alg: 'ES256', use: 'sig' })
  t.notOk('d' in jwk, 'public part only')
  const { token, expiresIn } = await a.sign(claims, 120)
  t.equal(expiresIn, 120)
  const { payload, protectedHeader } = await jwtVerify(token, createLocalJWKSet(b.publicJwks()), { issuer: b.issuer, audience: b.audience })
  t.match(protectedHeader, { alg: 'ES256', typ: 'at+jwt', kid: a.signingKid })
  t.match(payload, { sub: 'svc', client_id: 'svc', scope: 'state:read', iss: 'urn:aedes-jitp:broker', aud: 'urn:aedes-jitp:mqtt', jti: String })
  t.equal(payload.exp! - payload.iat!, 120)
})

t.test('rotation: the key sorting last signs after reload, the previous one still verifies', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'jitp-token-keys-'))
  writeFileSync(join(dir, 'es256-20260101T000000Z.pem'), p256Pem(), { mode: 0o600 })
  const keys = await loadTokenKeys(dir)
  const oldKid = keys.signingKid
  const old = await keys.sign(claims, 60)
  writeFileSync(join(dir, 'es256-20270101T000000Z.pem'), p256Pem(), { mode: 0o600 })
  t.equal(keys.signingKid, oldKid, 'nothing changes before reload')
  await keys.reload()
  t.not(keys.signingKid, oldKid, 'the new key signs')
  const fresh = await keys.sign(claims, 60)
  t.equal(decodeProtectedHeader(fresh.token).kid, keys.signingKid)
  const jwks = createLocalJWKSet(keys.publicJwks())
  t.equal(keys.publicJwks().keys.length, 2)
  await t.resolves(jwtVerify(old.token, jwks, { issuer: keys.issuer, audience: keys.audience }), 'a token of the previous key verifies')
  await t.resolves(jwtVerify(fresh.token, jwks, { issuer: keys.issuer, audience: keys.audience }))
  // a broken file dropped in: reload refuses, the keys in use stay
  writeFileSync(join(dir, 'es256-20280101T000000Z.pem'), 'not a key')
  await t.rejects(keys.reload(), /es256-20280101T000000Z\.pem: not a PEM private key/)
  t.equal(keys.publicJwks().keys.length, 2, 'unchanged after a failed reload')
})

t.test('a key that is not EC P-256 stops the start, naming the file', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'jitp-token-keys-'))
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs8', format: 'pem' }) as string
  writeFileSync(join(dir, 'rsa.pem'), rsa)
  await t.rejects(loadTokenKeys(dir), /rsa\.pem: must be an EC P-256 key/)
})
