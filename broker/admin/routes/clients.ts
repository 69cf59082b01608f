/**
 * OAuth2 clients (CONTRACT §8, §10): the backend services that get tokens at
 * the broker's own `POST /oauth/token` (broker/token-endpoint.ts). The secret
 * is in the creation answer and nowhere else: the store keeps a salted scrypt
 * hash, no route returns it again, and the audit names the client id only.
 * Deleting a client makes its secret useless at once on every broker process
 * (the store is shared through Redis); the token listener refuses a broker
 * token whose client is gone, and closes the sessions its tokens opened within
 * SESSION_REVALIDATE_SECONDS (plugins/token-identity.ts).
 */
import type { FastifyPluginAsync } from 'fastify'
import { JitpError } from '../../errors.js'
import { CLIENT_ID_PATTERN, OAUTH_SCOPES, type OAuthClientRecord, type OAuthClients } from '../../store/oauth-clients.js'
import type { AdminDeps } from '../server.js'
import { errorResponses, noQuery, notFound, pageOf, pageQuery } from '../schemas.js'

/** what the routes need of the clients store (broker/store/oauth-clients.ts) */
export type OAuthClientsApi = Pick<OAuthClients, 'create' | 'get' | 'listPage' | 'delete'>

const scopes = {
  type: 'array',
  minItems: 1,
  maxItems: OAUTH_SCOPES.length,
  uniqueItems: true,
  items: { type: 'string', enum: [...OAUTH_SCOPES] },
  description: 'what tokens of this client may allow; a token request may narrow them'
} as const

const clientItem = {
  type: 'object',
  required: ['clientId', 'name', 'scopes', 'createdAt'],
  properties: {
    clientId: { type: 'string' },
    name: { type: 'string' },
    scopes: { type: 'array', items: { type: 'string' } },
    createdAt: { type: 'integer', description: 'ms since the epoch' }
  }
} as const

const created = {
  type: 'object',
  required: ['clientId', 'clientSecret', 'scopes', 'name'],
  properties: {
    clientId: { type: 'string' },
    clientSecret: { type: 'string', description: 'shown once: the broker keeps only a salted hash of it' },
    scopes: { type: 'array', items: { type: 'string' } },
    name: { type: 'string' }
  }
} as const

const idParam = { type: 'object', required: ['id'], additionalProperties: false, properties: { id: { type: 'string', pattern: CLIENT_ID_PATTERN } } } as const

function item (c: OAuthClientRecord): Record<string, unknown> {
  return { clientId: c.clientId, name: c.name, scopes: c.scopes, createdAt: c.createdAt }
}

export function clientRoutes (deps: AdminDeps & { oauthClients: OAuthClientsApi }): FastifyPluginAsync {
  const { oauthClients: clients, audit } = deps
  return async (app) => {
    app.post<{ Body: { name: string, scopes: string[] } }>('/v1/clients', {
      schema: {
        tags: ['clients'],
        summary: 'Create an OAuth2 client for POST /oauth/token; the answer holds its secret, once',
        querystring: noQuery,
        body: {
          type: 'object',
          required: ['name', 'scopes'],
          additionalProperties: false,
          properties: {
            // a label for operators: printable, one line
            name: { type: 'string', minLength: 1, maxLength: 128, pattern: '^[^\\u0000-\\u001f\\u007f]+$' },
            scopes
          }
        },
        response: { 201: created, ...errorResponses }
      }
    }, async (req, reply) => {
      const c = await clients.create(req.body.name, req.body.scopes)
      audit.write('client.created', { oauthClientId: c.clientId, scope: c.scopes.join(' '), actor: req.admin?.commonName })
      reply.code(201)
      return { clientId: c.clientId, clientSecret: c.clientSecret, scopes: c.scopes, name: c.name }
    })

    app.get<{ Querystring: { limit: number, cursor?: string } }>('/v1/clients', {
      schema: {
        tags: ['clients'],
        summary: 'List OAuth2 clients, ordered by client id (never their secrets)',
        querystring: { type: 'object', additionalProperties: false, properties: { ...pageQuery } },
        response: { 200: pageOf(clientItem), ...errorResponses }
      }
    }, async (req) => {
      const page = await clients.listPage({ limit: req.query.limit, cursor: req.query.cursor })
      return { items: page.items.map(item), nextCursor: page.nextCursor }
    })

    app.get<{ Params: { id: string } }>('/v1/clients/:id', {
      schema: { tags: ['clients'], summary: 'One OAuth2 client (never its secret)', params: idParam, querystring: noQuery, response: { 200: clientItem, ...errorResponses, ...notFound } }
    }, async (req) => {
      const c = await clients.get(req.params.id)
      if (!c) throw new JitpError('ClientNotFound', req.params.id)
      return item(c)
    })

    app.delete<{ Params: { id: string } }>('/v1/clients/:id', {
      schema: {
        tags: ['clients'],
        summary: 'Delete an OAuth2 client: its secret gets no more tokens, and its tokens no more connections',
        params: idParam,
        querystring: noQuery,
        response: { 200: { type: 'object', required: ['clientId', 'deleted'], properties: { clientId: { type: 'string' }, deleted: { type: 'boolean' } } }, ...errorResponses, ...notFound }
      }
    }, async (req) => {
      const { id } = req.params
      if (!(await clients.delete(id))) throw new JitpError('ClientNotFound', id)
      audit.write('client.deleted', { oauthClientId: id, actor: req.admin?.commonName }, 'warn')
      return { clientId: id, deleted: true }
    })
  }
}
