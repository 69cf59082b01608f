/**
 * Operations endpoints: /healthz (the process answers), /readyz (listeners up and
 * the store reachable), /metrics (Prometheus text); and the broker's OAuth2
 * token endpoint, POST /oauth/token (CONTRACT §10, broker/token-endpoint.ts).
 */
import { createServer, type Server } from 'node:http'
import type { Socket } from 'node:net'
import type { ErrorCode } from './errors.js'
import type { Admission } from './listener/admission.js'
import type { Metrics } from './metrics.js'
import type { TokenEndpoint } from './token-endpoint.js'

export interface HttpDeps {
  readonly metrics: Metrics
  ready (): Promise<{ ready: boolean, checks: Record<string, boolean> }>
  /** what /metrics answers when it is more than this registry (WORKERS > 1: every worker's, merged by the primary, broker/cluster.ts) */
  readonly metricsText?: (() => Promise<string>) | undefined
  readonly tokenEndpoint?: Pick<TokenEndpoint, 'handle'> | undefined
  /**
   * The limits at accept, as on the MQTT listener but a budget of their own (this port needs
   * no certificate): HTTP_MAX_CONNECTIONS open, and per address the pending-connection and
   * connect-rate limits; an HTTP connection counts against its address until it closes
   */
  readonly admission: Admission
  /** each connection closed at accept (the caller audits, aggregated, and counts) */
  readonly refused: (remoteAddress: string, code: ErrorCode) => void
}

/**
 * A slow client (headers or body dribbled in) must not hold a socket of this
 * unauthenticated port for long; one that sends nothing at all counts as slow
 * headers too (Node answers 408 and closes).
 */
const HEADERS_TIMEOUT_MS = 10_000
const REQUEST_TIMEOUT_MS = 30_000
/** how often Node looks for those timeouts (its default, 30 s, would let an idle socket live 40 s) */
const TIMEOUT_CHECK_MS = 1_000

export function createHttpServer (deps: HttpDeps): Server {
  const server = createServer({ connectionsCheckingInterval: TIMEOUT_CHECK_MS }, function onRequest (req, res) {
    const path = (req.url ?? '/').split('?')[0]
    if (path === '/oauth/token' && deps.tokenEndpoint) {
      if (req.method !== 'POST') {
        res.writeHead(405, { allow: 'POST' }).end()
        return
      }
      deps.tokenEndpoint.handle(req, res)
      return
    }
    if (req.method !== 'GET') {
      res.writeHead(405).end()
      return
    }
    if (path === '/healthz') {
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"status":"ok"}')
      return
    }
    if (path === '/readyz') {
      deps.ready().then(({ ready, checks }) => {
        res.writeHead(ready ? 200 : 503, { 'content-type': 'application/json' })
          .end(JSON.stringify({ status: ready ? 'ready' : 'unready', checks }))
      }, () => res.writeHead(503).end('{"status":"unready"}'))
      return
    }
    if (path === '/metrics') {
      // jitp_store_up is what ready() last saw: look again, so a scrape never reads a stale (or the initial 0) value
      const scrape = deps.metricsText ? deps.metricsText() : deps.ready().catch(() => undefined).then(() => deps.metrics.registry.metrics())
      scrape.then((text) => {
        res.writeHead(200, { 'content-type': deps.metrics.registry.contentType }).end(text)
      }, () => res.writeHead(500).end())
      return
    }
    res.writeHead(404).end()
  })
  server.headersTimeout = HEADERS_TIMEOUT_MS
  server.requestTimeout = REQUEST_TIMEOUT_MS
  server.on('connection', function admitConnection (socket: Socket) {
    const address = socket.remoteAddress ?? 'unknown'
    const refusal = deps.admission.admit(address)
    if (refusal !== null) {
      socket.destroy()
      deps.refused(address, refusal)
      return
    }
    socket.once('close', () => {
      deps.admission.settle(address)
      deps.admission.closed()
    })
  })
  return server
}
