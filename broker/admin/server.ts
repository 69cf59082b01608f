/**
 * The admin API (CONTRACT §8): HTTPS with mutual TLS on ADMIN_PORT, for
 * operators only. The flow of a request, in order:
 *   TLS handshake (admin CA + root only) → secureConnection: the admin CA vouches
 *   for the certificate, or the socket is destroyed → onRequest: not revoked,
 *   actor = CN → route (input validated by its JSON Schema) → onResponse: audited
 *   `admin.request`.
 * Every refusal is an entry of the error catalogue: `{statusCode, errorCode, errorMessage}`.
 * Later lifecycle routes (config, rollouts, clients) register in `routes` below
 * with the same conventions.
 */
import Fastify, { type FastifyError, type FastifyInstance } from 'fastify'
import swagger from '@fastify/swagger'
import type { AddressInfo } from 'node:net'
import type { TLSSocket } from 'node:tls'
import type { Audit } from '../audit.js'
import type { AuditSource } from '../audit-query.js'
import type { Config } from '../config.js'
import { Errors, httpStatusOf, isJitpError, JitpError, type ErrorCode } from '../errors.js'
import type { AppLogger } from '../logger.js'
import type { Registry } from '../store/registry.js'
import type { AedesPersistence } from '../store/wrappers.js'
import type { AdminPeer, Trust } from '../trust.js'
import type { Template } from '../../plugins/provisioning/templates.js'
import { errorSchema } from './schemas.js'
import { auditRoutes } from './routes/audit.js'
import { certificateRoutes } from './routes/certificates.js'
import { configRoutes, type ConfigApi } from './routes/config.js'
import { rolloutRoutes, type RolloutsApi } from './routes/rollouts.js'
import { clientRoutes, type OAuthClientsApi } from './routes/clients.js'
import { deviceRoutes } from './routes/devices.js'
import { templateRoutes } from './routes/templates.js'

export interface AdminDeps {
  readonly config: Config
  readonly trust: NonNullable<Trust['admin']>
  readonly serverCertPem: string
  readonly serverKeyPem: string
  readonly registry: Registry
  readonly audit: Audit
  /** the audit log's read side (broker/audit-query.ts): Redis stream, file or in-process ring */
  readonly auditSource: Pick<AuditSource, 'query'>
  readonly templates: ReadonlyMap<string, Template>
  /** the session store (wrapped), for retained configuration versions */
  readonly persistence: Pick<AedesPersistence, 'createRetainedStreamCombi'>
  readonly log: AppLogger
  readonly now: () => number
  /** the configuration lifecycle (CONTRACT §9): each one's routes are served when it is given */
  readonly configs?: ConfigApi | undefined
  readonly rollouts?: RolloutsApi | undefined
  /** the credential lifecycle (CONTRACT §3.4): sends the rotate command to a device (plugins/cert-expiry.ts requestRotation); the rotate route is served when it is given */
  readonly rotate?: ((deviceId: string, actor: string) => Promise<void>) | undefined
  /** OAuth2 clients of the broker's token endpoint (CONTRACT §10); their routes are served when it is given */
  readonly oauthClients?: OAuthClientsApi | undefined
}

declare module 'fastify' {
  interface FastifyRequest {
    /** the operator, set by onRequest; every route runs with one */
    admin: AdminPeer | null
  }
}

export interface AdminServer {
  readonly app: FastifyInstance
  listen (port: number, host: string): Promise<number>
  close (): Promise<void>
}

/** admin requests are small JSON documents; anything bigger is not ours */
const BODY_LIMIT = 64 * 1024

function send (reply: { code (n: number): { send (b: unknown): unknown } }, code: ErrorCode, detail?: string, status = httpStatusOf(code)): void {
  reply.code(status).send({ statusCode: status, errorCode: code, errorMessage: detail ? `${Errors[code].message}: ${detail}` : Errors[code].message })
}

export async function createAdminServer (deps: AdminDeps): Promise<AdminServer> {
  const { config, trust, registry, audit, log } = deps
  const app = Fastify({
    https: {
      key: deps.serverKeyPem,
      cert: deps.serverCertPem,
      ca: [...trust.caPems],
      requestCert: true,
      rejectUnauthorized: true,
      minVersion: 'TLSv1.2',
      // [CONTRACT §11] a client that never finishes its handshake is cut, as on the MQTT listener
      handshakeTimeout: config.tlsHandshakeTimeoutMs
    },
    logger: false,
    bodyLimit: BODY_LIMIT,
    // Fastify's router refuses a path parameter over 100 characters itself (414, before any hook): neither in
    // the error catalogue nor audited. Longer here, so the route's schema refuses it as every bad input is
    routerOptions: { maxParamLength: 1024 },
    // a half-open or idle operator connection must not hold a socket forever
    connectionTimeout: config.tlsHandshakeTimeoutMs + 30_000,
    requestTimeout: 30_000,
    keepAliveTimeout: 5_000,
    return503OnClosing: true,
    ajv: {
      // reject what breaks the schema (Fastify's default silently strips unknown properties)
      customOptions: { removeAdditional: false, coerceTypes: 'array', useDefaults: true, allErrors: false }
    }
  })
  app.decorateRequest('admin', null)

  // the admin CA decides, as the MQTT listener's classifier does for its roles: a certificate
  // that chains to the shared root through another CA (device, service, claim) gets no request in
  const admins = new WeakMap<TLSSocket, AdminPeer>()
  app.server.on('secureConnection', (socket: TLSSocket) => {
    const peer = trust.classify(socket)
    if (peer) {
      admins.set(socket, peer)
      return
    }
    audit.write('admin.request', { remoteAddress: socket.remoteAddress, statusCode: 403, errorCode: 'AdminCertificateRequired', reason: Errors.AdminCertificateRequired.message }, 'warn')
    socket.destroy()
  })

  app.addSchema(errorSchema)
  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: {
        title: 'aedes-jitp admin API',
        version: '1',
        description: 'Operators\' control plane (CONTRACT §8). HTTPS with mutual TLS: only client certificates issued by the admin CA (admin-ca.pem) are accepted. Errors are `{statusCode, errorCode, errorMessage}` with codes from the broker\'s error catalogue. Collections are paginated with `limit` and `cursor` (the previous page\'s `nextCursor`).'
      },
      tags: [{ name: 'devices' }, { name: 'certificates' }, { name: 'templates' }, { name: 'audit' }, { name: 'config' }, { name: 'rollouts' }, { name: 'clients' }]
    },
    refResolver: { buildLocalReference: (json, _baseUri, _fragment, i) => typeof json.$id === 'string' ? json.$id : `def-${i}` }
  })

  app.addHook('onRequest', async (req) => {
    const peer = admins.get(req.raw.socket as TLSSocket)
    if (!peer) throw new JitpError('AdminCertificateRequired')
    // per request, not per connection: a revoked operator's keep-alive connection stops at once
    let revoked: boolean
    try {
      revoked = await registry.isRevoked(peer)
    } catch {
      throw new JitpError('StoreUnavailable')
    }
    if (revoked) throw new JitpError('CertificateRevoked')
    req.admin = peer
  })

  app.addHook('onResponse', async (req, reply) => {
    audit.write('admin.request', {
      actor: req.admin?.commonName,
      remoteAddress: req.raw.socket.remoteAddress,
      method: req.method,
      url: req.url,
      statusCode: reply.statusCode
    })
  })

  app.setErrorHandler((err: FastifyError, _req, reply) => {
    if (isJitpError(err)) return send(reply, err.code, err.detail)
    if (err.validation) return send(reply, 'InvalidRequest', err.message)
    // Fastify's own 4xx (unsupported media type, body too large, bad JSON): the status it chose, our code
    if (err.statusCode !== undefined && err.statusCode >= 400 && err.statusCode < 500) return send(reply, 'InvalidRequest', err.message, err.statusCode)
    log.error({ err: err.message }, 'admin API: internal error')
    return send(reply, 'InternalError')
  })
  app.setNotFoundHandler((_req, reply) => send(reply, 'NotFound'))

  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger())
  // the routes of CONTRACT §8; lifecycle issues add theirs here
  await app.register(deviceRoutes(deps))
  await app.register(certificateRoutes(deps))
  await app.register(templateRoutes(deps))
  await app.register(auditRoutes(deps))
  if (deps.configs) await app.register(configRoutes({ ...deps, configs: deps.configs }))
  if (deps.rollouts) await app.register(rolloutRoutes({ ...deps, rollouts: deps.rollouts }))
  if (deps.oauthClients) await app.register(clientRoutes({ ...deps, oauthClients: deps.oauthClients }))
  await app.ready()

  return {
    app,
    async listen (port, host) {
      await app.listen({ port, host })
      return (app.server.address() as AddressInfo).port
    },
    async close () {
      // keep-alive connections of an idle CLI must not hold close() up
      app.server.closeAllConnections()
      await app.close()
    }
  }
}
