/**
 * Operations endpoints: /healthz (the process answers), /readyz (listeners up and
 * the store reachable), /metrics (Prometheus text).
 */
import { createServer, type Server } from 'node:http'
import type { Metrics } from './metrics.js'

export interface HttpDeps {
  readonly metrics: Metrics
  ready (): Promise<{ ready: boolean, checks: Record<string, boolean> }>
}

export function createHttpServer (deps: HttpDeps): Server {
  return createServer(function onRequest (req, res) {
    const path = (req.url ?? '/').split('?')[0]
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
      deps.ready().catch(() => undefined).then(() => deps.metrics.registry.metrics()).then((text) => {
        res.writeHead(200, { 'content-type': deps.metrics.registry.contentType }).end(text)
      }, () => res.writeHead(500).end())
      return
    }
    res.writeHead(404).end()
  })
}
