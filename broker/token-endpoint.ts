/**
 * The broker's own OAuth2 token endpoint (CONTRACT §10), `POST /oauth/token` on
 * HTTP_PORT, for fleets without an OAuth2 server: the client credentials grant
 * of RFC 6749 §4.4. A backend service made through the admin API (§8) trades
 * its client id and secret for a short-lived JWT access token signed by the
 * broker's own key (broker/token-keys.ts), which it presents on
 * MQTTS_TOKEN_PORT as its MQTT password.
 *
 * One request, in order (`tokenActions`): read the form → the grant type →
 * the client's credentials (HTTP Basic, RFC 6749 §2.3.1, or the body; never
 * both) → the requested scope's syntax → the address's failure budget → the
 * client's request budget → the secret (scrypt, off the event loop) → the
 * scope granted → sign. Everything before the secret is cheap, so what an
 * attacker can make the broker hash is bounded by the two budgets.
 *
 * Budgets (per minute, shared by every process through Redis when REDIS_URL
 * is set): every attempt from an address is counted before its secret is
 * checked and given back when the secret was right, so at most
 * TOKEN_FAILURES_PER_ADDRESS wrong secrets per address reach scrypt, even
 * when they arrive at once; each client id gets TOKEN_RATE_PER_CLIENT requests
 * with its right secret. A client's request is counted before its secret is
 * checked too (a burst cannot outrun the budget) but given back when the secret
 * was wrong: client ids are no secret (a token's `sub`, the audit), and wrong
 * guesses from anyone must not lock the real client out of its tokens.
 * The remote address is the socket's: X-Forwarded-For and the like are never
 * read, so a header cannot pick the budget a request is counted against.
 * Credentials are read from the header or the body only; a `client_secret` in
 * the query string (RFC 6749 §2.3.1: MUST NOT) is refused, not ignored, so a
 * client that leaks its secret into URLs and proxy logs learns it at once.
 *
 * Answers: RFC 6749 §5.1 JSON with `Cache-Control: no-store`, or a §5.2 error.
 * Audit: `token.issued` (client id, scope, address), `token.refused` (reason,
 * catalogue code). The secret and the token are never written anywhere.
 * Refusals that check no secret (malformed, throttled) are aggregated per
 * address and code, as the listener's pre-authentication refusals are.
 */
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Audit } from './audit.js'
import type { Config } from './config.js'
import { Errors, type ErrorCode } from './errors.js'
import { budgetKeyOf } from './address-budget.js'
import type { AppLogger } from './logger.js'
import type { Metrics } from './metrics.js'
import { CLIENT_ID_PATTERN, OAUTH_SCOPES, type OAuthClients } from './store/oauth-clients.js'
import { HashingBusy } from './store/client-secrets.js'
import type { TokenKeys } from './token-keys.js'
import { createRateLimit, type RateLimit } from '../plugins/provisioning/throttle.js'

export interface TokenEndpointDeps {
  readonly config: Pick<Config, 'tokenLifetimeSeconds' | 'tokenRatePerClient' | 'tokenFailuresPerAddress' | 'redisUrl' | 'auditAggregateSeconds'>
  readonly clients: Pick<OAuthClients, 'verify' | 'get'>
  readonly keys: Pick<TokenKeys, 'sign'>
  readonly audit: Audit
  readonly metrics: Metrics
  readonly log: Pick<AppLogger, 'warn' | 'error'>
  readonly now: () => number
  readonly onStoreError?: ((err: Error) => void) | undefined
}

export interface TokenEndpoint {
  /** answers one `POST /oauth/token` */
  handle (req: IncomingMessage, res: ServerResponse): void
  close (): Promise<void>
}

/** a token request is a few short fields; anything bigger is not one */
const BODY_LIMIT = 4096
const WINDOW_MS = 60_000
const CLIENT_ID = new RegExp(CLIENT_ID_PATTERN)
const SCOPE_TOKEN = /^[\x21\x23-\x5B\x5D-\x7E]+$/
const FORM = /^application\/x-www-form-urlencoded\s*(;|$)/i
const REALM = 'Basic realm="aedes-jitp", charset="UTF-8"'

type OAuthError = 'invalid_request' | 'invalid_client' | 'invalid_grant' | 'invalid_scope' | 'unsupported_grant_type' | 'temporarily_unavailable' | 'server_error'

/** the RFC 6749 answer of each catalogue code this endpoint refuses with */
const ANSWERS: Partial<Record<ErrorCode, { readonly status: number, readonly error: OAuthError, readonly outcome: string }>> = {
  InvalidRequest: { status: 400, error: 'invalid_request', outcome: 'invalid_request' },
  UnknownClient: { status: 401, error: 'invalid_client', outcome: 'invalid_client' },
  BadClientSecret: { status: 401, error: 'invalid_client', outcome: 'invalid_client' },
  UnsupportedGrantType: { status: 400, error: 'unsupported_grant_type', outcome: 'unsupported_grant_type' },
  InvalidScope: { status: 400, error: 'invalid_scope', outcome: 'invalid_scope' },
  // RFC 6749 has no code for a rate limit; 429 with Retry-After says it, and the error says "try later"
  Throttled: { status: 429, error: 'temporarily_unavailable', outcome: 'throttled' },
  StoreUnavailable: { status: 503, error: 'temporarily_unavailable', outcome: 'unavailable' },
  InternalError: { status: 500, error: 'server_error', outcome: 'server_error' }
}

/** a refusal: its catalogue code, the audit reason, and (when it differs from the code's) the RFC error */
class TokenRefusal extends Error {
  constructor (readonly code: ErrorCode, readonly reason: string, readonly error?: OAuthError, readonly status?: number) {
    super(reason)
  }
}

interface TokenRequest {
  readonly req: IncomingMessage
  readonly remoteAddress: string
  /** the failed-attempts budget it spends: its IPv6 /64, or the address (broker/address-budget.ts) */
  readonly addressBudget: string
  form: URLSearchParams
  /** client authentication by HTTP Basic: a 401 then names the scheme (RFC 6749 §5.2) */
  basic: boolean
  clientId: string
  secret: string
  /** the `scope` parameter, split; undefined: every scope of the client */
  requested: string[] | undefined
  /** this address's attempt is counted (given back when the secret is right) */
  addressCounted: boolean
  /** this client's request is counted (given back unless the secret was right) */
  clientCounted: boolean
  /** the secret was checked and is right */
  authenticated: boolean
  granted: string[]
}

type TokenAction = (r: TokenRequest, deps: Steps) => Promise<void> | void

interface Steps {
  readonly clients: Pick<OAuthClients, 'verify' | 'get'>
  readonly failuresPerAddress: RateLimit
  readonly requestsPerClient: RateLimit
}

function readBody (req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length'] ?? 0)
    if (declared > BODY_LIMIT) return reject(new TokenRefusal('InvalidRequest', 'request body too large', 'invalid_request', 413))
    const chunks: Buffer[] = []
    let size = 0
    req.on('data', (chunk: Buffer) => {
      size += chunk.length
      if (size > BODY_LIMIT) {
        req.removeAllListeners('data')
        reject(new TokenRefusal('InvalidRequest', 'request body too large', 'invalid_request', 413))
        return
      }
      chunks.push(chunk)
    })
    req.once('end', () => resolve(Buffer.concat(chunks).toString('utf8')))
    req.once('error', reject)
  })
}

/** application/x-www-form-urlencoded decoding of one Basic credential part (RFC 6749 §2.3.1) */
function formDecode (s: string): string {
  return decodeURIComponent(s.replace(/\+/g, ' '))
}

/** the parameter's only value; RFC 6749 §3.2: parameters MUST NOT be included more than once */
function single (form: URLSearchParams, name: string): string | undefined {
  const values = form.getAll(name)
  if (values.length > 1) throw new TokenRefusal('InvalidRequest', `parameter ${name} repeated`)
  return values[0]
}

async function readForm (r: TokenRequest): Promise<void> {
  const query = (r.req.url ?? '').indexOf('?')
  if (query >= 0 && new URLSearchParams(r.req.url!.slice(query + 1)).has('client_secret')) {
    throw new TokenRefusal('InvalidRequest', 'credentials in the query string')
  }
  if (!FORM.test(r.req.headers['content-type'] ?? '')) throw new TokenRefusal('InvalidRequest', 'content type must be application/x-www-form-urlencoded')
  r.form = new URLSearchParams(await readBody(r.req))
}

function checkGrantType (r: TokenRequest): void {
  const grant = single(r.form, 'grant_type')
  if (grant === undefined || grant === '') throw new TokenRefusal('InvalidRequest', 'grant_type missing')
  if (grant !== 'client_credentials') throw new TokenRefusal('UnsupportedGrantType', 'unsupported grant type')
}

function readCredentials (r: TokenRequest): void {
  const header = r.req.headers.authorization
  const bodyId = single(r.form, 'client_id')
  const bodySecret = single(r.form, 'client_secret')
  if (header !== undefined) {
    const [scheme, value] = header.trim().split(/\s+/, 2)
    if (scheme?.toLowerCase() !== 'basic' || value === undefined) throw new TokenRefusal('InvalidRequest', 'unsupported authentication scheme', 'invalid_client', 401)
    r.basic = true
    // RFC 6749 §2.3: one authentication method per request
    if (bodyId !== undefined || bodySecret !== undefined) throw new TokenRefusal('InvalidRequest', 'credentials both in the Authorization header and in the body')
    const decoded = Buffer.from(value, 'base64').toString('utf8')
    const colon = decoded.indexOf(':')
    if (colon < 0) throw new TokenRefusal('InvalidRequest', 'malformed Basic credentials', 'invalid_client', 401)
    try {
      r.clientId = formDecode(decoded.slice(0, colon))
      r.secret = formDecode(decoded.slice(colon + 1))
    } catch {
      throw new TokenRefusal('InvalidRequest', 'malformed Basic credentials', 'invalid_client', 401)
    }
  } else {
    if (bodyId === undefined && bodySecret === undefined) throw new TokenRefusal('InvalidRequest', 'no client credentials', 'invalid_client', 401)
    if (!bodyId || !bodySecret) throw new TokenRefusal('InvalidRequest', 'client_id and client_secret are both required', 'invalid_client', 401)
    r.clientId = bodyId
    r.secret = bodySecret
  }
  if (r.clientId === '' || r.secret === '') throw new TokenRefusal('InvalidRequest', 'empty client id or secret', 'invalid_client', 401)
}

function parseScope (r: TokenRequest): void {
  const scope = single(r.form, 'scope')
  if (scope === undefined) return
  const tokens = scope.split(' ').filter((s) => s !== '')
  if (tokens.length === 0 || tokens.some((s) => !SCOPE_TOKEN.test(s))) throw new TokenRefusal('InvalidScope', 'malformed scope')
  const unknown = tokens.find((s) => !(OAUTH_SCOPES as readonly string[]).includes(s))
  if (unknown !== undefined) throw new TokenRefusal('InvalidScope', 'unknown scope')
  r.requested = [...new Set(tokens)]
}

async function throttleAddress (r: TokenRequest, s: Steps): Promise<void> {
  if (!(await s.failuresPerAddress.take(r.addressBudget))) throw new TokenRefusal('Throttled', 'too many failed attempts from this address')
  r.addressCounted = true
}

async function throttleClient (r: TokenRequest, s: Steps): Promise<void> {
  // an id that cannot exist gets no bucket of its own: a spray of ids must not grow the key space
  if (!CLIENT_ID.test(r.clientId)) return
  if (!(await s.requestsPerClient.take(r.clientId))) {
    // not a wrong guess: the address's attempt is given back
    await s.failuresPerAddress.refund(r.addressBudget)
    r.addressCounted = false
    throw new TokenRefusal('Throttled', 'too many requests for this client')
  }
  r.clientCounted = true
}

/** a store call (Redis may be away): its failure is 503 temporarily_unavailable, never a guess counted against anyone */
async function fromStore<T> (call: () => Promise<T>): Promise<T> {
  try {
    return await call()
  } catch (err) {
    // too many secrets in the hashing queue (a burst from many addresses): a moment later it is free again
    if (err instanceof HashingBusy) throw new TokenRefusal('Throttled', 'busy checking other secrets', 'temporarily_unavailable', 503)
    throw new TokenRefusal('StoreUnavailable', 'store unavailable')
  }
}

async function authenticateClient (r: TokenRequest, s: Steps): Promise<void> {
  if (!CLIENT_ID.test(r.clientId)) throw new TokenRefusal('UnknownClient', 'unknown client')
  const outcome = await fromStore(() => s.clients.verify(r.clientId, r.secret))
  if (outcome === 'unknown') throw new TokenRefusal('UnknownClient', 'unknown client')
  if (outcome === 'bad-secret') throw new TokenRefusal('BadClientSecret', 'bad secret')
  r.authenticated = true
  await s.failuresPerAddress.refund(r.addressBudget)
  r.addressCounted = false
}

async function grantScope (r: TokenRequest, s: Steps): Promise<void> {
  const client = await fromStore(() => s.clients.get(r.clientId))
  // deleted since verify(): its secret is worth nothing now
  if (!client) throw new TokenRefusal('UnknownClient', 'unknown client')
  if (r.requested === undefined) {
    r.granted = [...client.scopes]
    return
  }
  const notGranted = r.requested.find((x) => !client.scopes.includes(x))
  if (notGranted !== undefined) throw new TokenRefusal('InvalidScope', 'scope not granted to this client')
  r.granted = r.requested
}

/** the flow of one request, in order (see the header) */
const tokenActions: readonly TokenAction[] = [readForm, checkGrantType, readCredentials, parseScope, throttleAddress, throttleClient, authenticateClient, grantScope]

/** codes whose refusal checked a secret: audited one by one (the address budget bounds them); the rest aggregated */
const AUTHENTICATION_CODES: ReadonlySet<ErrorCode> = new Set<ErrorCode>(['UnknownClient', 'BadClientSecret'])

export function createTokenEndpoint (deps: TokenEndpointDeps): TokenEndpoint {
  const { config, audit, metrics, log } = deps
  const onStoreError = deps.onStoreError ?? ((err: Error) => log.warn({ err: err.message }, 'token endpoint: throttle store error'))
  const steps: Steps = {
    clients: deps.clients,
    failuresPerAddress: createRateLimit({ name: 'token-address', limit: config.tokenFailuresPerAddress, windowMs: WINDOW_MS, now: deps.now, redisUrl: config.redisUrl, onError: onStoreError }),
    requestsPerClient: createRateLimit({ name: 'token-client', limit: config.tokenRatePerClient, windowMs: WINDOW_MS, now: deps.now, redisUrl: config.redisUrl, onError: onStoreError })
  }

  function auditRefusal (r: TokenRequest, refusal: TokenRefusal, status: number): void {
    if (AUTHENTICATION_CODES.has(refusal.code)) {
      // a client id that cannot exist is the attacker's free text: not worth a field
      const oauthClientId = CLIENT_ID.test(r.clientId) ? r.clientId : undefined
      audit.write('token.refused', { oauthClientId, remoteAddress: r.remoteAddress, errorCode: refusal.code, reason: refusal.reason, statusCode: status }, 'warn')
      return
    }
    // aggregated per address budget and code: the first of an interval at once, the others as one line with their count
    audit.refusal('token.refused', { remoteAddress: r.remoteAddress, errorCode: refusal.code, reason: refusal.reason, statusCode: status, count: 1 }, 'warn', 1)
  }

  function answer (res: ServerResponse, status: number, body: object, headers: Record<string, string> = {}): void {
    const text = JSON.stringify(body)
    // RFC 6749 §5.1: a token (or an answer about one) is never cached
    res.writeHead(status, { 'content-type': 'application/json;charset=UTF-8', 'cache-control': 'no-store', pragma: 'no-cache', 'content-length': String(Buffer.byteLength(text)), ...headers })
    res.end(text)
  }

  function refuse (r: TokenRequest, res: ServerResponse, refusal: TokenRefusal): void {
    const mapped = ANSWERS[refusal.code] ?? ANSWERS.InternalError!
    const error = refusal.error ?? mapped.error
    const status = refusal.status ?? (error === 'invalid_client' ? 401 : mapped.status)
    const outcome = error === 'invalid_client' ? 'invalid_client' : mapped.outcome
    metrics.tokenRequests.labels(outcome).inc()
    auditRefusal(r, refusal, status)
    const headers: Record<string, string> = {}
    if (status === 401) headers['www-authenticate'] = REALM
    if (status === 429) headers['retry-after'] = String(WINDOW_MS / 1000)
    if (status === 503) headers['retry-after'] = '1'
    // an unread or oversized body: nothing more is read from this connection
    if (status === 413) headers.connection = 'close'
    const description = refusal.code === 'Throttled' || refusal.code === 'StoreUnavailable' || refusal.code === 'InternalError'
      ? Errors[refusal.code].message
      : refusal.reason
    answer(res, status, { error, error_description: description }, headers)
  }

  async function handle (req: IncomingMessage, res: ServerResponse): Promise<void> {
    const remoteAddress = req.socket.remoteAddress ?? 'unknown'
    const r: TokenRequest = {
      req,
      remoteAddress,
      addressBudget: budgetKeyOf(remoteAddress),
      form: new URLSearchParams(),
      basic: false,
      clientId: '',
      secret: '',
      requested: undefined,
      addressCounted: false,
      clientCounted: false,
      authenticated: false,
      granted: []
    }
    try {
      for (const step of tokenActions) await step(r, steps)
      const scope = r.granted.join(' ')
      const { token, expiresIn } = await deps.keys.sign({ sub: r.clientId, client_id: r.clientId, scope }, config.tokenLifetimeSeconds)
      metrics.tokenRequests.labels('issued').inc()
      audit.write('token.issued', { oauthClientId: r.clientId, scope, remoteAddress: r.remoteAddress, authMethod: r.basic ? 'client_secret_basic' : 'client_secret_post' })
      answer(res, 200, { access_token: token, token_type: 'Bearer', expires_in: expiresIn, scope })
    } catch (err) {
      const refusal = err instanceof TokenRefusal ? err : new TokenRefusal('InternalError', 'internal error')
      if (!(err instanceof TokenRefusal)) log.error({ err: (err as Error).message }, 'token endpoint: internal error')
      // only a wrong guess keeps the address's attempt counted (a store outage, a throttled client are none)
      if (r.addressCounted && !AUTHENTICATION_CODES.has(refusal.code)) await steps.failuresPerAddress.refund(r.addressBudget)
      // only the client's own (right-secret) requests use its budget: someone else's wrong guess is given back
      if (r.clientCounted && !r.authenticated) await steps.requestsPerClient.refund(r.clientId)
      refuse(r, res, refusal)
    }
  }

  return {
    handle (req, res) {
      handle(req, res).catch((err: unknown) => {
        log.error({ err: (err as Error).message }, 'token endpoint: could not answer')
        if (!res.headersSent) res.writeHead(500)
        res.end()
      })
    },
    async close () {
      audit.flushRefusals()
      await Promise.all([steps.failuresPerAddress.close(), steps.requestsPerClient.close()])
    }
  }
}
