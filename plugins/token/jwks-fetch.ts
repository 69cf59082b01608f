/**
 * The fetch jose uses for OAUTH_JWKS_URL (its `customFetch` option), over Node's
 * own https client so that OAUTH_JWKS_CA can be trusted: Node 20's global fetch
 * takes a custom CA only through an undici dispatcher, and undici is not a
 * dependency of ours. Without OAUTH_JWKS_CA the default trust store applies.
 *
 * It answers what jose needs and nothing more: a GET, no redirects (jose asks
 * for `redirect: 'manual'`; a 3xx is handed back and refused as not 200), the
 * abort signal carrying jose's timeout, and a body cap so a hostile or broken
 * endpoint cannot make the broker buffer without bound.
 */
import type { IncomingMessage } from 'node:http'
import { request as httpsRequest } from 'node:https'
import type { FetchImplementation } from 'jose'

/** a JWKS is a few keys: 1 MiB is far beyond any real one */
export const MAX_JWKS_BYTES = 1024 * 1024

export function jwksFetch (opts: { readonly ca?: string | undefined }): FetchImplementation {
  return function fetchJwks (url, init) {
    return new Promise<Response>((resolve, reject) => {
      const target = new URL(url)
      // OAUTH_JWKS_URL is https:// (broker/config.ts): a key set read in clear could be rewritten on the way
      if (target.protocol !== 'https:') return reject(new Error('a JWKS is fetched over HTTPS only'))
      const headers: Record<string, string> = {}
      init.headers.forEach((value, name) => { headers[name] = value })
      const req = httpsRequest(target, { method: 'GET', headers, signal: init.signal, ...(opts.ca !== undefined ? { ca: opts.ca } : {}) }, answered)
      req.on('error', reject)
      req.end()

      function answered (res: IncomingMessage): void {
        if (res.statusCode !== 200) {
          // jose refuses anything but 200 and never reads the body; Response cannot carry every status (1xx, 204, 304)
          res.resume()
          resolve(new Response(null, { status: 502 }))
          return
        }
        const chunks: Buffer[] = []
        let size = 0
        res.on('data', (chunk: Buffer) => {
          size += chunk.length
          if (size > MAX_JWKS_BYTES) {
            res.destroy()
            reject(new Error(`JWKS response larger than ${MAX_JWKS_BYTES} bytes`))
            return
          }
          chunks.push(chunk)
        })
        res.on('error', reject)
        res.on('end', () => {
          resolve(new Response(Buffer.concat(chunks), { status: 200 }))
        })
      }
    })
  }
}
