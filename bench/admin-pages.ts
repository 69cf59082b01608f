/**
 * The admin API's device listing at fleet scale (issue 10: 10,000 registered
 * devices, `GET /v1/devices?limit=100` paged through with cursors, each page in
 * well under 100 ms): fills a Redis registry with DEVICES devices under a key
 * prefix of its own, then times every `listDevicesPage({ limit: 100 })` from the
 * first page to the last (the store's share of the request; the HTTPS round trip
 * comes on top). The key prefix is removed afterwards.
 *
 *   npm run build && node dist/bench/admin-pages.js [redis://127.0.0.1:PORT]
 *   (without a URL it starts its own redis-server on a free loopback port)
 */
import { Agent, request as httpsRequest } from 'node:https'
import { performance } from 'node:perf_hooks'
import { pathToFileURL } from 'node:url'
import { Redis } from 'ioredis'
import { RedisRegistry } from '../broker/store/redis-registry.js'
import type { DeviceStatus } from '../broker/store/registry.js'
import { startRedis } from './processes.js'

const DEVICES = 10_000
const PAGE = 100
/** registrations in flight at once while filling (ioredis writes them back to back on one connection) */
const FILL_CONCURRENCY = 500

export interface DevicePagesResult {
  readonly devices: number
  readonly pages: number
  readonly p50Ms: number
  readonly p99Ms: number
  readonly maxMs: number
  /** how long writing the devices took (every write also updates the listing indexes) */
  readonly fillMs: number
}

function percentile (sorted: readonly number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1))] ?? 0
}

const round = (ms: number): number => Math.round(ms * 100) / 100

/** removes the bench's own keys (a SCAN of its prefix: bench clean-up, never a registry path) */
async function removePrefix (url: string, prefix: string): Promise<void> {
  const raw = new Redis(url)
  try {
    let cursor = '0'
    do {
      const [next, keys] = await raw.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000)
      if (keys.length > 0) await raw.unlink(...keys)
      cursor = next
    } while (cursor !== '0')
  } finally {
    await raw.quit()
  }
}

export async function benchDevicePages (redisUrl: string, devices = DEVICES): Promise<DevicePagesResult> {
  const keyPrefix = `jitp-bench-pages-${process.pid}-${Date.now().toString(36)}:`
  const registry = new RedisRegistry({ url: redisUrl, keyPrefix })
  try {
    if (!(await registry.ping())) throw new Error(`Redis at ${redisUrl} does not answer`)
    const statuses: DeviceStatus[] = ['active', 'active', 'active', 'quarantined', 'revoked']
    const fillStart = performance.now()
    for (let i = 0; i < devices; i += FILL_CONCURRENCY) {
      const now = Date.now()
      await Promise.all(Array.from({ length: Math.min(FILL_CONCURRENCY, devices - i) }, (_, j) => {
        const n = i + j
        return registry.putDevice({
          deviceId: `sensor-${String(n).padStart(6, '0')}`,
          status: statuses[n % statuses.length]!,
          template: n % 2 === 0 ? 'sensor' : 'meter',
          createdAt: now,
          updatedAt: now,
          attributes: { serialNumber: `SN-${n}`, model: 'x1' }
        })
      }))
    }
    const fillMs = performance.now() - fillStart

    await registry.listDevicesPage({ limit: 1 }) // warm-up: connection, scripts, the one-time index check
    const times: number[] = []
    const seen = new Set<string>()
    let cursor: string | undefined
    do {
      const start = performance.now()
      const page = await registry.listDevicesPage({ limit: PAGE, cursor })
      times.push(performance.now() - start)
      for (const d of page.items) seen.add(d.deviceId)
      cursor = page.nextCursor ?? undefined
    } while (cursor !== undefined)
    if (seen.size !== devices) throw new Error(`paging returned ${seen.size} distinct devices, expected ${devices}`)

    const sorted = [...times].sort((a, b) => a - b)
    return { devices, pages: times.length, p50Ms: round(percentile(sorted, 0.5)), p99Ms: round(percentile(sorted, 0.99)), maxMs: round(sorted.at(-1) ?? 0), fillMs: Math.round(fillMs) }
  } finally {
    await registry.close()
    await removePrefix(redisUrl, keyPrefix)
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const given = process.argv[2]
  const own = given === undefined ? await startRedis() : null
  try {
    const r = await benchDevicePages(given ?? own!.url)
    console.log(`${r.devices} devices (written in ${r.fillMs} ms), ${r.pages} pages of ${PAGE}: p50 ${r.p50Ms} ms, p99 ${r.p99Ms} ms, max ${r.maxMs} ms per page`)
  } finally {
    await own?.stop()
  }
}

export interface AdminApiPagesResult extends DevicePagesResult {
  /** the first request of a fresh TLS connection (handshake included), ms */
  readonly firstRequestMs: number
}

/**
 * The same listing through the admin API of a running broker (HTTPS, mutual TLS
 * with the admin certificate, one keep-alive connection as a paging client
 * holds): fills that broker's Redis registry (no key prefix: the broker's own
 * keys) with `devices` devices, then times `GET /v1/devices?limit=100` for every page.
 */
export async function benchAdminApiPages (redisUrl: string, adminPort: number, tls: { cert: string, key: string, ca: string }, devices = DEVICES): Promise<AdminApiPagesResult> {
  const registry = new RedisRegistry({ url: redisUrl })
  const fillStart = performance.now()
  try {
    for (let i = 0; i < devices; i += FILL_CONCURRENCY) {
      const now = Date.now()
      await Promise.all(Array.from({ length: Math.min(FILL_CONCURRENCY, devices - i) }, (_, j) => registry.putDevice({
        deviceId: `fleet-${String(i + j).padStart(6, '0')}`, status: 'active', template: 'sensor', createdAt: now, updatedAt: now, attributes: {}
      })))
    }
  } finally {
    await registry.close()
  }
  const fillMs = performance.now() - fillStart
  const agent = new Agent({ keepAlive: true, maxSockets: 1, ...tls })
  try {
    const get = (path: string): Promise<{ items: Array<{ deviceId: string }>, nextCursor: string | null }> => new Promise((resolve, reject) => {
      const req = httpsRequest({ host: '127.0.0.1', port: adminPort, path, agent, timeout: 10_000 }, (res) => {
        let raw = ''
        res.setEncoding('utf8')
        res.on('data', (d: string) => { raw += d })
        res.on('end', () => res.statusCode === 200 ? resolve(JSON.parse(raw)) : reject(new Error(`GET ${path}: ${res.statusCode ?? '?'} ${raw.slice(0, 200)}`)))
      })
      req.on('timeout', () => req.destroy(new Error(`GET ${path} timed out`)))
      req.on('error', reject)
      req.end()
    })
    const first = performance.now()
    await get('/v1/devices?limit=1')
    const firstRequestMs = performance.now() - first
    const times: number[] = []
    const seen = new Set<string>()
    let cursor: string | null = null
    do {
      const start = performance.now()
      const page: { items: Array<{ deviceId: string }>, nextCursor: string | null } = await get(`/v1/devices?limit=${PAGE}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`)
      times.push(performance.now() - start)
      for (const d of page.items) seen.add(d.deviceId)
      cursor = page.nextCursor
    } while (cursor !== null && times.length < devices)
    if (seen.size < devices) throw new Error(`paging returned ${seen.size} distinct devices, expected at least ${devices}`)
    const sorted = [...times].sort((a, b) => a - b)
    return {
      devices: seen.size, pages: times.length, p50Ms: round(percentile(sorted, 0.5)), p99Ms: round(percentile(sorted, 0.99)),
      maxMs: round(sorted.at(-1) ?? 0), fillMs: Math.round(fillMs), firstRequestMs: round(firstRequestMs)
    }
  } finally {
    agent.destroy()
  }
}
