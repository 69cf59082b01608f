/** OAuth2 clients in this process only (no REDIS_URL): gone at restart, like the rest of the in-memory store. */
import { randomBytes } from 'node:crypto'
import { clientSecretMatches, hashClientSecret, newClientSecret, spendVerifyTime } from './client-secrets.js'
import { checkScopes, pageOfClients, type CreatedOAuthClient, type OAuthClientRecord, type OAuthClients, type VerifyOutcome } from './oauth-clients.js'
import type { Page } from './registry.js'

interface Stored { readonly record: OAuthClientRecord, readonly secretHash: string }

export class MemoryOAuthClients implements OAuthClients {
  readonly #clients = new Map<string, Stored>()
  readonly #now: () => number

  constructor (opts: { now?: (() => number) | undefined } = {}) {
    this.#now = opts.now ?? Date.now
  }

  async create (name: string, scopes: readonly string[]): Promise<CreatedOAuthClient> {
    const granted = checkScopes(scopes)
    const clientId = randomBytes(16).toString('hex')
    const clientSecret = newClientSecret()
    const record = Object.freeze({ clientId, name, scopes: Object.freeze(granted), createdAt: this.#now() })
    this.#clients.set(clientId, { record, secretHash: await hashClientSecret(clientSecret) })
    return { clientId, clientSecret, scopes: record.scopes, name }
  }

  async get (clientId: string): Promise<OAuthClientRecord | null> {
    return this.#clients.get(clientId)?.record ?? null
  }

  async list (): Promise<OAuthClientRecord[]> {
    return [...this.#clients.values()].map((s) => s.record).sort((a, b) => a.clientId < b.clientId ? -1 : 1)
  }

  async listPage (q: { limit: number, cursor?: string | undefined }): Promise<Page<OAuthClientRecord>> {
    return pageOfClients(await this.list(), q)
  }

  async delete (clientId: string): Promise<boolean> {
    return this.#clients.delete(clientId)
  }

  async verify (clientId: string, secret: string): Promise<VerifyOutcome> {
    const stored = this.#clients.get(clientId)
    if (!stored) {
      await spendVerifyTime(secret)
      return 'unknown'
    }
    if (!(await clientSecretMatches(secret, stored.secretHash))) return 'bad-secret'
    // deleted while the hash was being checked: the secret is no longer worth anything
    return this.#clients.has(clientId) ? 'ok' : 'unknown'
  }

  async close (): Promise<void> {
    this.#clients.clear()
  }
}
