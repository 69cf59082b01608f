/**
 * The CLI's way to the fleet (CONTRACT §7): every command that reads or changes
 * it is a client of the admin API, so it works the same against `npm start`'s
 * in-memory broker and a Redis cluster. Mutual TLS with the operator's admin
 * certificate (default: the dev one in CERTS_DIR); every failure becomes one
 * line that says what to do.
 */
import { readFileSync } from 'node:fs'
import { request, type Agent } from 'node:https'
import { join, resolve } from 'node:path'

export interface AdminTarget {
  readonly url: URL
  readonly cert: string
  readonly key: string
  readonly ca: string
  /** keep-alive connections for a client that makes many calls (aedes-jitp simulate); default: one connection per call */
  readonly agent?: Agent
}

/** the options every fleet command takes */
export const ADMIN_OPTIONS = {
  'admin-url': { type: 'string' },
  cert: { type: 'string' },
  key: { type: 'string' },
  ca: { type: 'string' },
  json: { type: 'boolean', default: false }
} as const

export interface AdminFlags { 'admin-url'?: string | undefined, cert?: string | undefined, key?: string | undefined, ca?: string | undefined }

function readPem (path: string, what: string, flag: string): string {
  try {
    return readFileSync(path, 'utf8')
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'error'
    throw new Error(`cannot read the ${what} ${path} (${code}): pass ${flag}, or run 'aedes-jitp certs dev' for a development PKI`)
  }
}

/** --admin-url, else ADMIN_URL, else https://127.0.0.1:$ADMIN_PORT (9443); certificates from --cert/--key/--ca, else the dev admin ones in CERTS_DIR */
export function adminTarget (flags: AdminFlags, env: NodeJS.ProcessEnv = process.env): AdminTarget {
  const raw = flags['admin-url'] ?? env.ADMIN_URL ?? `https://127.0.0.1:${env.ADMIN_PORT || '9443'}`
  let url: URL
  try {
    url = new URL(raw)
  } catch {
    throw new Error(`--admin-url: '${raw}' is not a URL (e.g. https://127.0.0.1:9443)`)
  }
  if (url.protocol !== 'https:') throw new Error(`--admin-url: the admin API speaks HTTPS only, not ${url.protocol.replace(':', '')}`)
  const dir = resolve(env.CERTS_DIR || 'certs-dev')
  return {
    url,
    cert: readPem(flags.cert ?? join(dir, 'admin-chain.pem'), 'admin certificate', '--cert'),
    key: readPem(flags.key ?? join(dir, 'admin.key'), 'admin key', '--key'),
    ca: readPem(flags.ca ?? join(dir, 'root-ca.pem'), 'CA that signed the broker\'s certificate', '--ca')
  }
}

/** a refusal of the API, with its catalogue code */
export class AdminApiError extends Error {
  constructor (readonly statusCode: number, readonly errorCode: string, message: string) {
    super(message)
  }
}

const TIMEOUT_MS = 15_000

/** why a connection failed, in words an operator can act on */
function explain (err: NodeJS.ErrnoException, target: AdminTarget, answered: boolean): string {
  const where = target.url.origin
  switch (err.code) {
    case 'ECONNREFUSED': return `cannot reach the admin API at ${where} (connection refused): is the broker running, and is ADMIN_PORT right?`
    case 'ENOTFOUND':
    case 'EAI_AGAIN': return `cannot resolve ${target.url.hostname}`
    case 'ETIMEDOUT': return `the admin API at ${where} did not answer in time`
    case 'DEPTH_ZERO_SELF_SIGNED_CERT':
    case 'UNABLE_TO_VERIFY_LEAF_SIGNATURE':
    case 'SELF_SIGNED_CERT_IN_CHAIN':
    case 'ERR_TLS_CERT_ALTNAME_INVALID':
    case 'CERT_HAS_EXPIRED': return `the broker's certificate at ${where} is not trusted (${err.code}): pass --ca with the CA that signed it`
  }
  // the server ends the handshake, or the connection right after it, when the admin CA did not issue our certificate
  if (!answered && (err.code === 'ECONNRESET' || /alert|handshake|socket hang up/i.test(err.message))) {
    return `the admin API at ${where} refused the client certificate (only certificates from the admin CA are accepted): pass --cert/--key of an operator`
  }
  return `admin API at ${where}: ${err.message}`
}

export function adminCall<T = unknown> (target: AdminTarget, method: 'GET' | 'POST' | 'PUT' | 'DELETE', path: string, body?: unknown): Promise<T> {
  const payload = body === undefined ? undefined : JSON.stringify(body)
  const url = new URL(path, target.url)
  return callOnce<T>(target, method, url, payload).catch((err: unknown) => {
    // a kept-alive connection the server closed as idle (ADMIN keepAliveTimeout) just as this
    // request went out on it: the request never reached the API, so it is sent once more on a
    // connection of its own, outside the pool (what Node's http docs advise for `reusedSocket`).
    // Never once an answer began
    if (err instanceof StaleConnection) return callOnce<T>({ url: target.url, cert: target.cert, key: target.key, ca: target.ca }, method, url, payload)
    throw err
  })
}

/** the request went out on a reused keep-alive connection that was closed before any answer */
class StaleConnection extends Error {}

function callOnce<T> (target: AdminTarget, method: string, url: URL, payload: string | undefined): Promise<T> {
  return new Promise<T>((resolve_, reject) => {
    let answered = false
    const req = request(url, {
      method,
      cert: target.cert,
      key: target.key,
      ca: target.ca,
      agent: target.agent ?? false,
      timeout: TIMEOUT_MS,
      headers: { accept: 'application/json', ...(payload === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) }) }
    }, (res) => {
      answered = true
      let raw = ''
      res.setEncoding('utf8')
      res.on('data', (d: string) => { raw += d })
      res.on('error', (err) => reject(new Error(explain(err, target, true))))
      res.on('end', () => {
        let parsed: unknown
        try {
          parsed = JSON.parse(raw)
        } catch {
          return reject(new Error(`admin API answered ${res.statusCode ?? '?'} with something that is not JSON`))
        }
        const status = res.statusCode ?? 0
        if (status >= 200 && status < 300) return resolve_(parsed as T)
        const e = parsed as { errorCode?: string, errorMessage?: string }
        reject(new AdminApiError(status, e.errorCode ?? 'Error', `${e.errorCode ?? status}: ${e.errorMessage ?? 'request refused'}`))
      })
    })
    req.on('timeout', () => req.destroy(Object.assign(new Error('timed out'), { code: 'ETIMEDOUT' })))
    req.on('error', (err: NodeJS.ErrnoException) => {
      if (!answered && req.reusedSocket && (err.code === 'ECONNRESET' || err.code === 'EPIPE')) return reject(new StaleConnection(err.message))
      reject(new Error(explain(err, target, answered)))
    })
    req.end(payload)
  })
}

/** every page of a collection, following `nextCursor` (bounded, so a server bug cannot loop forever) */
export async function allPages<T> (target: AdminTarget, path: string, query: Record<string, string | number | undefined>): Promise<T[]> {
  const items: T[] = []
  let cursor: string | null | undefined
  for (let pages = 0; pages < 100_000; pages++) {
    const page = await adminCall<{ items: T[], nextCursor: string | null }>(target, 'GET', withQuery(path, { ...query, limit: query.limit ?? 1000, cursor: cursor ?? undefined }))
    items.push(...page.items)
    cursor = page.nextCursor
    if (!cursor) break
  }
  return items
}

export function withQuery (path: string, query: Record<string, string | number | undefined>): string {
  const params = new URLSearchParams()
  for (const [k, v] of Object.entries(query)) if (v !== undefined) params.set(k, String(v))
  const q = params.toString()
  return q ? `${path}?${q}` : path
}

/** a plain-text table: columns padded to their widest cell */
export function table (head: readonly string[], rows: ReadonlyArray<readonly string[]>): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)))
  const line = (cells: readonly string[]): string => cells.map((c, i) => i === cells.length - 1 ? c : c.padEnd(widths[i] ?? 0)).join('  ').trimEnd()
  return [line(head), ...rows.map(line)].join('\n') + '\n'
}

export function iso (ms: number | null | undefined): string {
  return typeof ms === 'number' ? new Date(ms).toISOString() : '-'
}
