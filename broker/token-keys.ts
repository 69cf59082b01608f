/**
 * The broker's own token-signing keys (CONTRACT §10: tokens issued at
 * `POST /oauth/token` on HTTP_PORT, verified on MQTTS_TOKEN_PORT like any other).
 *
 * One PEM file per key (PKCS#8, EC P-256, algorithm ES256) in TOKEN_KEYS_DIR
 * (default CERTS_DIR/token-keys). Every key in the directory verifies; the key
 * whose file name sorts last signs. The broker names the keys it generates
 * `es256-<UTC YYYYMMDDTHHMMSSZ>.pem`, so the newest signs. When the directory
 * holds no key, one is generated (mode 0600, directory 0700): several broker
 * processes sharing CERTS_DIR therefore share their keys.
 *
 * The key id (`kid`) is the key's RFC 7638 JWK thumbprint: the same key gets
 * the same id in every process, with nothing to configure.
 *
 * Rotation (docs/AUTH.md): drop a new key in, named to sort last, and call
 * reload() (SIGHUP, or a restart); processes that have not reloaded yet keep
 * signing with the previous key, which still verifies everywhere. A verifier
 * meeting an unknown `kid` of this issuer may reload() first: the new key may
 * just have been added by another process.
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, randomUUID, type KeyObject } from 'node:crypto'
import { link, mkdir, readdir, readFile, unlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { calculateJwkThumbprint, exportJWK, SignJWT, type JWK } from 'jose'

export const TOKEN_ISSUER = 'urn:aedes-jitp:broker'
export const TOKEN_AUDIENCE = 'urn:aedes-jitp:mqtt'

export interface TokenClaims {
  /** the OAuth2 client id: the service's name on the token listener */
  readonly sub: string
  readonly client_id: string
  /** granted scopes, space separated (RFC 6749 §3.3) */
  readonly scope: string
}

export interface TokenKeys {
  readonly issuer: string
  readonly audience: string
  /** every verifying key, public parts only, each with `kid`, `alg: ES256`, `use: sig` */
  publicJwks (): { keys: JWK[] }
  /** a JWT access token (RFC 9068 claims) signed by the current signing key */
  sign (claims: TokenClaims, lifetimeSeconds: number): Promise<{ token: string, expiresIn: number }>
  /** reads the directory again (a key added or removed); the set is replaced only when it reads cleanly */
  reload (): Promise<void>
  /** the signing key's id */
  readonly signingKid: string
}

interface LoadedKey { readonly file: string, readonly kid: string, readonly privateKey: KeyObject, readonly jwk: JWK }

const KEY_FILE = /\.pem$/

/** the name a generated key gets: sorts after every key generated before it */
function generatedName (at: Date): string {
  return `es256-${at.toISOString().replace(/[-:]/g, '').replace(/\.\d{3}/, '')}.pem`
}

async function readKey (dir: string, file: string): Promise<LoadedKey> {
  const pem = await readFile(join(dir, file), 'utf8')
  let privateKey: KeyObject
  try {
    privateKey = createPrivateKey(pem)
  } catch (err) {
    throw new Error(`token key ${join(dir, file)}: not a PEM private key (${(err as Error).message})`)
  }
  if (privateKey.asymmetricKeyType !== 'ec' || privateKey.asymmetricKeyDetails?.namedCurve !== 'prime256v1') {
    throw new Error(`token key ${join(dir, file)}: must be an EC P-256 key (ES256)`)
  }
  const publicJwk = await exportJWK(createPublicKey(privateKey))
  const kid = await calculateJwkThumbprint(publicJwk, 'sha256')
  return Object.freeze({ file, kid, privateKey, jwk: Object.freeze({ ...publicJwk, kid, alg: 'ES256', use: 'sig' }) })
}

async function keyFiles (dir: string): Promise<string[]> {
  return (await readdir(dir, { withFileTypes: true }))
    .filter((e) => e.isFile() && KEY_FILE.test(e.name))
    .map((e) => e.name)
    .sort()
}

/**
 * A first key, written so a process reading the directory never sees half of
 * it: the PEM goes to a private temporary file, which is then hard-linked to
 * its final name (atomic; EEXIST when a sibling process won the same second,
 * whose key is then used).
 */
async function generateFirstKey (dir: string): Promise<void> {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
  const pem = privateKey.export({ type: 'pkcs8', format: 'pem' }) as string
  const tmp = join(dir, `.tmp-${randomUUID()}`)
  await writeFile(tmp, pem, { mode: 0o600, flag: 'wx' })
  try {
    await link(tmp, join(dir, generatedName(new Date())))
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
  } finally {
    await unlink(tmp).catch(() => undefined)
  }
}

async function readAll (dir: string): Promise<LoadedKey[]> {
  const keys = await Promise.all((await keyFiles(dir)).map((f) => readKey(dir, f)))
  if (keys.length === 0) throw new Error(`token keys: no key in ${dir}`)
  return keys
}

export async function loadTokenKeys (dir: string): Promise<TokenKeys> {
  await mkdir(dir, { recursive: true, mode: 0o700 })
  if ((await keyFiles(dir)).length === 0) await generateFirstKey(dir)
  let keys = await readAll(dir)
  let jwks: { keys: JWK[] } = Object.freeze({ keys: Object.freeze(keys.map((k) => k.jwk)) as JWK[] })

  function signer (): LoadedKey {
    return keys[keys.length - 1]!
  }

  return {
    issuer: TOKEN_ISSUER,
    audience: TOKEN_AUDIENCE,
    get signingKid () { return signer().kid },
    publicJwks: () => jwks,
    async sign (claims, lifetimeSeconds) {
      const key = signer()
      const token = await new SignJWT({ client_id: claims.client_id, scope: claims.scope })
        // RFC 9068: a JWT access token says so in its header
        .setProtectedHeader({ alg: 'ES256', kid: key.kid, typ: 'at+jwt' })
        .setIssuer(TOKEN_ISSUER)
        .setAudience(TOKEN_AUDIENCE)
        .setSubject(claims.sub)
        .setIssuedAt()
        .setExpirationTime(`${lifetimeSeconds}s`)
        .setJti(randomUUID())
        .sign(key.privateKey)
      return { token, expiresIn: lifetimeSeconds }
    },
    async reload () {
      const next = await readAll(dir)
      keys = next
      jwks = Object.freeze({ keys: Object.freeze(next.map((k) => k.jwk)) as JWK[] })
    }
  }
}
