/**
 * OAuth2 clients of the broker's own token endpoint (CONTRACT §8, §10): a
 * backend service holds a client id and secret, made through the admin API,
 * and trades them at `POST /oauth/token` for a short-lived scoped token.
 * The secret is returned once, by create(), and stored only as a salted scrypt
 * hash (broker/store/client-secrets.ts). Redis when a URL is configured (every
 * broker process sees the same clients, and a deletion at once), otherwise in
 * process.
 */
import { JitpError } from '../errors.js'
import { MemoryOAuthClients } from './memory-oauth-clients.js'
import { RedisOAuthClients } from './redis-oauth-clients.js'
import { invalidCursor, pageLimit, type Page } from './registry.js'

/** what a token may allow (CONTRACT §10); the policy maps each to permissions */
export const OAUTH_SCOPES = Object.freeze(['telemetry:read', 'state:read', 'config:read', 'commands:write', 'pii'] as const)
export type OAuthScope = typeof OAUTH_SCOPES[number]

/** random, URL- and Basic-safe (no `:`), so it needs no encoding anywhere */
export const CLIENT_ID_PATTERN = '^[A-Za-z0-9_-]{1,64}$'

export interface OAuthClientRecord {
  readonly clientId: string
  readonly name: string
  readonly scopes: readonly string[]
  /** ms since the epoch */
  readonly createdAt: number
}

export interface CreatedOAuthClient {
  readonly clientId: string
  /** the only time the secret exists outside its holder */
  readonly clientSecret: string
  readonly scopes: readonly string[]
  readonly name: string
}

export type VerifyOutcome = 'ok' | 'unknown' | 'bad-secret'

export interface OAuthClients {
  create (name: string, scopes: readonly string[]): Promise<CreatedOAuthClient>
  get (clientId: string): Promise<OAuthClientRecord | null>
  /** every client, ordered by client id */
  list (): Promise<OAuthClientRecord[]>
  /** a page ordered by client id; `cursor` is the previous page's nextCursor */
  listPage (q: { limit: number, cursor?: string | undefined }): Promise<Page<OAuthClientRecord>>
  /** false when there was no such client */
  delete (clientId: string): Promise<boolean>
  /** the secret checked in constant time against the stored hash; an unknown id costs as much as a known one */
  verify (clientId: string, secret: string): Promise<VerifyOutcome>
  close (): Promise<void>
}

export interface OAuthClientsOptions {
  redisUrl?: string | undefined
  onError?: ((err: Error) => void) | undefined
  now?: (() => number) | undefined
  /** Redis only; default 'jitp:' */
  keyPrefix?: string | undefined
}

export function createOAuthClients (opts: OAuthClientsOptions): OAuthClients {
  if (opts.redisUrl) return new RedisOAuthClients({ url: opts.redisUrl, onError: opts.onError, now: opts.now, keyPrefix: opts.keyPrefix })
  return new MemoryOAuthClients({ now: opts.now })
}

/** checked by both stores: the admin API's schema says the same, this guards other callers */
export function checkScopes (scopes: readonly string[]): string[] {
  const unique = [...new Set(scopes)]
  const bad = unique.find((s) => !(OAUTH_SCOPES as readonly string[]).includes(s))
  if (bad !== undefined) throw new JitpError('InvalidRequest', `unknown scope '${bad}'`)
  if (unique.length === 0) throw new JitpError('InvalidRequest', 'a client needs at least one scope')
  return unique
}

// cursors: base64url of `o` and the last client id of the page, canonical only (as the registry's)
export function encodeClientCursor (clientId: string): string {
  return Buffer.from('o' + clientId, 'utf8').toString('base64url')
}

export function decodeClientCursor (cursor: string | undefined): string | null {
  if (cursor === undefined) return null
  const text = Buffer.from(cursor, 'base64url').toString('utf8')
  if (cursor.length === 0 || Buffer.from(text, 'utf8').toString('base64url') !== cursor || text[0] !== 'o' || text.length < 2) throw invalidCursor()
  return text.slice(1)
}

/** a page of `sorted` (ordered by client id) after the cursor */
export function pageOfClients (sorted: readonly OAuthClientRecord[], q: { limit: number, cursor?: string | undefined }): Page<OAuthClientRecord> {
  const after = decodeClientCursor(q.cursor)
  const limit = pageLimit(q.limit)
  const rest = after === null ? sorted : sorted.filter((c) => c.clientId > after)
  const items = rest.slice(0, limit)
  return { items, nextCursor: rest.length > limit ? encodeClientCursor(items[items.length - 1]!.clientId) : null }
}
