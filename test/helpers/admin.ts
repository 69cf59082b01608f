/**
 * A real HTTPS client for the admin API: mutual TLS with whatever certificate
 * the test hands it (the admin one, a service one, none), verifying the
 * broker's server certificate against the dev root.
 */
import { request } from 'node:https'
import type { ClientCredentials, Pki } from './broker.js'

export interface AdminResponse { status: number, body: any, raw: string } // eslint-disable-line @typescript-eslint/no-explicit-any -- JSON of many shapes; tests match on it

export function adminCredentials (pki: Pki): ClientCredentials {
  return { cert: pki.read('admin-chain.pem'), key: pki.read('admin.key') }
}

/** one request on a fresh connection (no keep-alive: each call is its own TLS handshake) */
export function adminRequest (port: number, pki: Pki, method: string, path: string, opts: { body?: unknown, rawBody?: string, creds?: ClientCredentials | null } = {}): Promise<AdminResponse> {
  const creds = opts.creds === undefined ? adminCredentials(pki) : opts.creds
  const payload = opts.rawBody ?? (opts.body === undefined ? undefined : JSON.stringify(opts.body))
  return new Promise((resolve, reject) => {
    const req = request({
      host: '127.0.0.1',
      port,
      method,
      path,
      ca: pki.read('root-ca.pem'),
      ...(creds ? { cert: creds.cert, key: creds.key } : {}),
      agent: false,
      timeout: 10_000,
      headers: payload === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) }
    }, (res) => {
      let raw = ''
      res.setEncoding('utf8')
      res.on('data', (d: string) => { raw += d })
      res.on('end', () => {
        let body: unknown = null
        try { body = JSON.parse(raw) } catch { /* not JSON: raw says what */ }
        resolve({ status: res.statusCode ?? 0, body, raw })
      })
    })
    req.on('timeout', () => req.destroy(new Error('admin request timed out')))
    req.on('error', reject)
    req.end(payload)
  })
}
