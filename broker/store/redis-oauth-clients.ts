/**
 * OAuth2 clients shared by every broker process through Redis: one hash,
 * `<prefix>oauth:clients`, client id → the record's JSON with its secret hash.
 * A handful of clients per fleet: a listing reads the hash whole. A deletion is
 * seen by every process's next verify at once (nothing is cached).
 * Calls fail fast while Redis is away (the registry's connection options).
 */
import { randomBytes } from 'node:crypto'
import type { Redis } from 'ioredis'
import { clientSecretMatches, hashClientSecret, newClientSecret, spendVerifyTime } from './client-secrets.js'
import { checkScopes, pageOfClients, type CreatedOAuthClient, type OAuthClientRecord, type OAuthClients, type VerifyOutcome } from './oauth-clients.js'
import { connectRedis, quitGracefully, waitReady } from './redis.js'
import type { Page } from './registry.js'

/** how long a call waits for a (re)connecting Redis before it rejects */
const COMMAND_WAIT_MS = 1000

interface Stored extends OAuthClientRecord { readonly secretHash: string }

function parse (json: string | null | undefined): Stored | null {
  if (!json) return null
  try {
    const v = JSON.parse(json) as Partial<Stored>
    if (typeof v.clientId !== 'string' || typeof v.secretHash !== 'string' || !Array.isArray(v.scopes)) return null
    return { clientId: v.clientId, name: String(v.name ?? ''), scopes: v.scopes.map(String), createdAt: Number(v.createdAt ?? 0), secretHash: v.secretHash }
  } catch {
    return null
  }
}

function record (s: Stored): OAuthClientRecord {
  return { clientId: s.clientId, name: s.name, scopes: s.scopes, createdAt: s.createdAt }
}

export class RedisOAuthClients implements OAuthClients {
  readonly #key: string
  readonly #now: () => number
  readonly #cmd: Redis
  #closed = false

  constructor (opts: { url: string, onError?: ((err: Error) => void) | undefined, now?: (() => number) | undefined, keyPrefix?: string | undefined }) {
    this.#key = `${opts.keyPrefix ?? 'jitp:'}oauth:clients`
    this.#now = opts.now ?? Date.now
    const onError = opts.onError ?? (() => {})
    this.#cmd = connectRedis(opts.url, 'registry', onError)
  }

  async create (name: string, scopes: readonly string[]): Promise<CreatedOAuthClient> {
    const granted = checkScopes(scopes)
    const clientId = randomBytes(16).toString('hex')
    const clientSecret = newClientSecret()
    const stored: Stored = { clientId, name, scopes: granted, createdAt: this.#now(), secretHash: await hashClientSecret(clientSecret) }
    const conn = await this.#ready()
    // 128 random bits do not collide; HSETNX makes sure nothing is ever overwritten anyway
    if (await conn.hsetnx(this.#key, clientId, JSON.stringify(stored)) !== 1) throw new Error('oauth clients: client id collision')
    return { clientId, clientSecret, scopes: granted, name }
  }

  async get (clientId: string): Promise<OAuthClientRecord | null> {
    const s = await this.#stored(clientId)
    return s ? record(s) : null
  }

  async list (): Promise<OAuthClientRecord[]> {
    const conn = await this.#ready()
    const all = Object.values(await conn.hgetall(this.#key)).map(parse).filter((s): s is Stored => s !== null)
    return all.map(record).sort((a, b) => a.clientId < b.clientId ? -1 : 1)
  }

  async listPage (q: { limit: number, cursor?: string | undefined }): Promise<Page<OAuthClientRecord>> {
    return pageOfClients(await this.list(), q)
  }

  async delete (clientId: string): Promise<boolean> {
    const conn = await this.#ready()
    return await conn.hdel(this.#key, clientId) === 1
  }

  async verify (clientId: string, secret: string): Promise<VerifyOutcome> {
    const stored = await this.#stored(clientId)
    if (!stored) {
      await spendVerifyTime(secret)
      return 'unknown'
    }
    if (!(await clientSecretMatches(secret, stored.secretHash))) return 'bad-secret'
    // deleted (by any process) while the hash was being checked: the secret is no longer worth anything
    const conn = await this.#ready()
    return await conn.hexists(this.#key, clientId) === 1 ? 'ok' : 'unknown'
  }

  async close (): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    await quitGracefully(this.#cmd)
  }

  async #stored (clientId: string): Promise<Stored | null> {
    const conn = await this.#ready()
    return parse(await conn.hget(this.#key, clientId))
  }

  async #ready (): Promise<Redis> {
    if (this.#closed) throw new Error('oauth clients: closed')
    if (await waitReady(this.#cmd, COMMAND_WAIT_MS)) return this.#cmd
    throw new Error(`oauth clients: Redis is unavailable (connection ${this.#cmd.status})`)
  }
}
