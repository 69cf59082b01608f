/**
 * OAuth2 access tokens (JWT) on the token listener (CONTRACT §10), verified with
 * jose, from two issuers:
 * - an external authorization server: keys from OAUTH_JWKS_URL (fetched with a
 *   timeout, cached, refreshed in the background; a fetch that fails keeps the
 *   keys already held) or OAUTH_JWKS_FILE; `iss` = OAUTH_ISSUER, `aud` contains
 *   OAUTH_AUDIENCE; RS256, ES256 or EdDSA only;
 * - the broker itself (POST /oauth/token, broker/token-keys.ts): its own ES256
 *   keys, and the OAuth2 client must still exist, so a deleted client is refused
 *   on its next connect. Its scopes are also cut to what the client holds now.
 * Both: `exp` required, `exp`/`nbf`/`iat` with CLOCK_TOLERANCE_SECONDS, and `exp`
 * at most MAX_TOKEN_LIFETIME_SECONDS (24 h, the ceiling of TOKEN_LIFETIME_SECONDS
 * too) ahead: a token is meant to be short-lived, and one an issuer minted for
 * years (by mistake, or by a leaked signing key) would otherwise open a session
 * that no expiry ever closes. Keys come from the configured key sets only: a
 * header's `jwk`, `jku`, `x5u` or `x5c` is never looked at (jose reads `alg` and
 * `kid` only, and `kid` is matched in memory, never used as a path), and a
 * `crit` header is refused, since this verifier understands no extension.
 * Every refusal is a catalogue code with a fixed reason; the token itself is
 * never echoed.
 */
import { readFileSync } from 'node:fs'
import {
  createLocalJWKSet, createRemoteJWKSet, customFetch, decodeJwt, decodeProtectedHeader, errors, jwtVerify,
  type JWTPayload, type JWTVerifyGetKey, type JSONWebKeySet
} from 'jose'
import { JitpError, type ErrorCode } from '../../broker/errors.js'
import type { AppLogger } from '../../broker/logger.js'
import type { OAuthClients } from '../../broker/store/oauth-clients.js'
import type { TokenKeys } from '../../broker/token-keys.js'
import { jwksFetch } from './jwks-fetch.js'

/** asymmetric algorithms only: an HS256 token "signed" with a public key must never verify */
export const ALLOWED_ALGORITHMS = Object.freeze(['RS256', 'ES256', 'EdDSA'])
const BROKER_ALGORITHMS = ['ES256']
export const CLOCK_TOLERANCE_SECONDS = 5
/** the furthest ahead a token's `exp` may be (docs/AUTH.md): TOKEN_LIFETIME_SECONDS' own maximum */
export const MAX_TOKEN_LIFETIME_SECONDS = 86_400
/** how long a JWKS fetch may take; a connect waits on it only while no key is cached */
const JWKS_TIMEOUT_MS = 5000
/** an unknown `kid` may fetch the set again at most this often (a key rotated in at the issuer) */
const JWKS_COOLDOWN_MS = 30_000
/** the keys are fetched again in the background this often; a failed fetch keeps the keys held */
export const JWKS_REFRESH_MS = 300_000
/** the broker's own key directory is read again on an unknown kid at most this often */
const BROKER_RELOAD_COOLDOWN_MS = 30_000
const MAX_SCOPES = 64
/** a token's subject names a service: printable, bounded */
// eslint-disable-next-line no-control-regex -- control characters are exactly what it refuses
const SUBJECT = /^[^\u0000-\u001f\u007f]{1,256}$/
const ALG_SHAPE = /^[A-Za-z0-9+-]{1,16}$/

export type TokenMethod = 'oauth2' | 'broker-token'

export interface VerifiedToken {
  readonly method: TokenMethod
  readonly issuer: string
  /** `sub`, or `client_id` when there is no `sub`: the service's name */
  readonly subject: string
  readonly oauthClientId: string | undefined
  /** the granted scopes (`scope`, or `scp`), for broker tokens only those the client still holds */
  readonly scopes: readonly string[]
  /** `exp`, in ms */
  readonly expiresAt: number
}

export type TokenVerdict =
  | { readonly ok: true, readonly token: VerifiedToken }
  | { readonly ok: false, readonly method: TokenMethod, readonly code: ErrorCode, readonly reason: string, readonly oauthClientId?: string | undefined }

export interface ExternalIssuer {
  readonly jwksUrl: string | undefined
  readonly jwksFile: string | undefined
  readonly jwksCa: string | undefined
  readonly issuer: string
  readonly audience: string
}

export interface TokenVerifierOptions {
  /** null: no external authorization server configured */
  readonly external: ExternalIssuer | null
  /** null: the broker issues no tokens of its own */
  readonly broker: { readonly keys: TokenKeys, readonly clients: OAuthClients } | null
  readonly now: () => number
  readonly log: AppLogger
}

export interface TokenVerifier {
  verify (token: string): Promise<TokenVerdict>
  close (): void
}

/** a key source failed (fetch, timeout, bad set): not the token's fault */
class KeysUnavailable extends Error {}

function refusal (method: TokenMethod, code: ErrorCode, reason: string, oauthClientId?: string): TokenVerdict {
  return { ok: false, method, code, reason, oauthClientId }
}

/** jose's verdicts, as catalogue codes and fixed reasons */
function classify (method: TokenMethod, err: unknown, alg: string): TokenVerdict {
  if (err instanceof KeysUnavailable) return refusal(method, 'TokenKeysUnavailable', 'the key set could not be fetched')
  if (err instanceof errors.JWTExpired) return refusal(method, 'TokenExpired', 'exp is in the past')
  if (err instanceof errors.JWTClaimValidationFailed) {
    switch (err.claim) {
      case 'nbf': return refusal(method, 'TokenNotYetValid', 'nbf is in the future')
      case 'iat': return refusal(method, 'TokenNotYetValid', 'iat is in the future')
      case 'iss': return refusal(method, 'TokenWrongIssuer', 'iss is not the trusted issuer')
      case 'aud': return refusal(method, 'TokenWrongAudience', 'aud does not name this broker')
      default: return refusal(method, 'TokenMalformed', `claim ${ALG_SHAPE.test(err.claim) ? err.claim : '?'} ${err.reason === 'missing' ? 'is missing' : 'is invalid'}`)
    }
  }
  if (err instanceof errors.JOSEAlgNotAllowed) return refusal(method, 'TokenAlgorithmNotAllowed', `algorithm ${ALG_SHAPE.test(alg) ? alg : '?'} is not allowed`)
  if (err instanceof errors.JWSSignatureVerificationFailed) return refusal(method, 'TokenBadSignature', 'signature does not verify')
  if (err instanceof errors.JWKSNoMatchingKey) return refusal(method, 'TokenUnknownKey', 'no key of the set matches the kid and algorithm')
  if (err instanceof errors.JWKSMultipleMatchingKeys) return refusal(method, 'TokenUnknownKey', 'several keys match and the token names no kid')
  if (err instanceof errors.JOSENotSupported) return refusal(method, 'TokenAlgorithmNotAllowed', `algorithm ${ALG_SHAPE.test(alg) ? alg : '?'} is not supported`)
  return refusal(method, 'TokenMalformed', 'not a well-formed signed JWT')
}

function scopesOf (payload: JWTPayload): string[] {
  const raw = typeof payload.scope === 'string' ? payload.scope : payload.scp
  const list = typeof raw === 'string' ? raw.split(' ') : Array.isArray(raw) ? raw : []
  return list.filter((s): s is string => typeof s === 'string' && s.length > 0).slice(0, MAX_SCOPES)
}

/** One key source for the external issuer: a remote JWKS kept warm, or a file. */
function externalKeys (external: ExternalIssuer, log: AppLogger): { getKey: JWTVerifyGetKey, close (): void } {
  if (external.jwksFile !== undefined) {
    let set: JSONWebKeySet
    try {
      set = JSON.parse(readFileSync(external.jwksFile, 'utf8')) as JSONWebKeySet
    } catch (err) {
      throw new JitpError('InvalidConfig', `OAUTH_JWKS_FILE: cannot read ${external.jwksFile} as JSON (${(err as Error).message})`)
    }
    try {
      return { getKey: createLocalJWKSet(set), close () {} }
    } catch (err) {
      throw new JitpError('InvalidConfig', `OAUTH_JWKS_FILE: ${external.jwksFile}: ${(err as Error).message}`)
    }
  }
  const ca = external.jwksCa === undefined ? undefined : readFileSync(external.jwksCa, 'utf8')
  const remote = createRemoteJWKSet(new URL(external.jwksUrl!), {
    timeoutDuration: JWKS_TIMEOUT_MS,
    cooldownDuration: JWKS_COOLDOWN_MS,
    // never dropped for age: jose would then refetch before verifying, and an issuer that is
    // down would refuse every token although its keys are held. The refresh below renews them.
    cacheMaxAge: Infinity,
    [customFetch]: jwksFetch({ ca })
  })
  function refresh (when: string): void {
    remote.reload().catch((err: unknown) => {
      log.warn({ err: (err as Error).message, url: external.jwksUrl }, `OAUTH_JWKS_URL: ${when} fetch failed; the keys already held (if any) keep verifying`)
    })
  }
  // warm at start; an issuer that is down must not stop the broker
  refresh('first')
  const timer = setInterval(refresh, JWKS_REFRESH_MS, 'periodic')
  timer.unref()
  return {
    async getKey (header, token) {
      try {
        return await remote(header, token)
      } catch (err) {
        if (err instanceof errors.JWKSNoMatchingKey || err instanceof errors.JWKSMultipleMatchingKeys || err instanceof errors.JOSENotSupported) throw err
        // a fetch that failed, timed out or brought no usable set
        throw new KeysUnavailable((err as Error).message)
      }
    },
    close () {
      clearInterval(timer)
    }
  }
}

export function createTokenVerifier (opts: TokenVerifierOptions): TokenVerifier {
  const { external, broker, now, log } = opts
  const externalSource = external === null ? null : externalKeys(external, log)
  let brokerSet: { jwks: object, getKey: JWTVerifyGetKey } | null = null
  let brokerReloadedAt = -Infinity

  /** the broker's keys as jose wants them, rebuilt only when the set changed (a rotation) */
  function brokerKeys (keys: TokenKeys): JWTVerifyGetKey {
    const jwks = keys.publicJwks()
    if (brokerSet?.jwks !== jwks) brokerSet = { jwks, getKey: createLocalJWKSet(jwks) }
    return brokerSet.getKey
  }

  async function verifyBrokerToken (token: string, alg: string): Promise<TokenVerdict> {
    const { keys, clients } = broker!
    const options = { issuer: keys.issuer, audience: keys.audience, algorithms: BROKER_ALGORITHMS, clockTolerance: CLOCK_TOLERANCE_SECONDS, requiredClaims: ['exp'], currentDate: new Date(now()) }
    let payload: JWTPayload
    try {
      payload = (await jwtVerify(token, brokerKeys(keys), options)).payload
    } catch (err) {
      if (!(err instanceof errors.JWKSNoMatchingKey) || now() - brokerReloadedAt < BROKER_RELOAD_COOLDOWN_MS) return classify('broker-token', err, alg)
      // another broker process may have rotated a key in: read the directory once, then try again
      brokerReloadedAt = now()
      try {
        await keys.reload()
        payload = (await jwtVerify(token, brokerKeys(keys), options)).payload
      } catch (again) {
        return classify('broker-token', again, alg)
      }
    }
    const clientId = typeof payload.client_id === 'string' ? payload.client_id : undefined
    if (clientId === undefined) return refusal('broker-token', 'TokenMalformed', 'claim client_id is missing')
    // a store that does not answer throws: the chain answers StoreUnavailable (CONNACK 3)
    const client = await clients.get(clientId)
    if (client === null) return refusal('broker-token', 'UnknownClient', 'the OAuth2 client no longer exists', clientId)
    const held = new Set(client.scopes)
    return accepted('broker-token', keys.issuer, payload, scopesOf(payload).filter((s) => held.has(s)))
  }

  async function verifyExternalToken (token: string, alg: string): Promise<TokenVerdict> {
    if (external === null || externalSource === null) return refusal('oauth2', 'TokenWrongIssuer', 'no external issuer is configured')
    try {
      const { payload } = await jwtVerify(token, externalSource.getKey, {
        issuer: external.issuer,
        audience: external.audience,
        algorithms: [...ALLOWED_ALGORITHMS],
        clockTolerance: CLOCK_TOLERANCE_SECONDS,
        requiredClaims: ['exp'],
        currentDate: new Date(now())
      })
      return accepted('oauth2', external.issuer, payload, scopesOf(payload))
    } catch (err) {
      return classify('oauth2', err, alg)
    }
  }

  function accepted (method: TokenMethod, issuer: string, payload: JWTPayload, scopes: string[]): TokenVerdict {
    const oauthClientId = typeof payload.client_id === 'string' && SUBJECT.test(payload.client_id) ? payload.client_id : undefined
    // jose checked that exp is a number in the future, and iat a number when present
    const nowSeconds = now() / 1000
    if (payload.exp! - nowSeconds > MAX_TOKEN_LIFETIME_SECONDS + CLOCK_TOLERANCE_SECONDS) {
      return refusal(method, 'TokenLifetimeTooLong', 'exp is more than 24 h ahead', oauthClientId)
    }
    // jose looks at iat only with maxTokenAge: a token issued in the future is not valid yet either
    if (payload.iat !== undefined && payload.iat - nowSeconds > CLOCK_TOLERANCE_SECONDS) {
      return refusal(method, 'TokenNotYetValid', 'iat is in the future', oauthClientId)
    }
    const subject = typeof payload.sub === 'string' ? payload.sub : oauthClientId
    if (subject === undefined || !SUBJECT.test(subject)) return refusal(method, 'TokenMalformed', 'no usable sub or client_id', oauthClientId)
    return { ok: true, token: { method, issuer, subject, oauthClientId, scopes, expiresAt: payload.exp! * 1000 } }
  }

  return {
    async verify (token) {
      // read unverified only to pick the issuer's keys; everything is verified after
      let iss: unknown
      let alg = ''
      let crit: unknown
      try {
        iss = decodeJwt(token).iss
        const header = decodeProtectedHeader(token)
        alg = typeof header.alg === 'string' ? header.alg : ''
        crit = header.crit
      } catch {
        return refusal('oauth2', 'TokenMalformed', 'not a well-formed JWT')
      }
      // RFC 7515 §4.1.11: an extension the recipient does not understand makes the token invalid; this one understands none
      if (crit !== undefined) return refusal('oauth2', 'TokenMalformed', 'a crit header names an extension this broker does not support')
      if (broker !== null && iss === broker.keys.issuer) return verifyBrokerToken(token, alg)
      return verifyExternalToken(token, alg)
    },
    close () {
      externalSource?.close()
    }
  }
}
