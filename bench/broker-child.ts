/**
 * One broker under test, alone in its own process so its CPU and RSS can be
 * measured: either this broker with every plugin on (`buildBroker`), or bare
 * Aedes of the same version with the same persistence behind the same mutual-TLS
 * listener and no hooks at all. Talks to its parent over IPC:
 *   child → parent  {type:'ready', port, httpPort}   {type:'usage', ...}   {type:'gc', heapUsed, external, youngBytes}
 *   parent → child  {type:'usage'}  {type:'gc'}  {type:'stop'}
 * Run: node dist/bench/broker-child.js '<json BrokerChildOptions>'
 */
import { getHeapSpaceStatistics, writeHeapSnapshot } from 'node:v8'
import { Aedes } from 'aedes'
import { readFileSync } from 'node:fs'
import type { AddressInfo } from 'node:net'
import { createServer as createTlsServer } from 'node:tls'
import pino from 'pino'
import { buildBroker } from '../broker/build.js'
import { loadConfig } from '../broker/config.js'
import { createSessionStore } from '../broker/store/session-store.js'
import { tlsServerOptions } from '../broker/tls.js'
import { loadTrust } from '../broker/trust.js'

export interface BenchDevice { deviceId: string, certificateId: string, serialNumber: string, notAfter: number }

export interface BrokerChildOptions {
  kind: 'jitp' | 'aedes'
  store: 'memory' | 'redis'
  redisUrl?: string
  certsDir: string
  /** JSON file of BenchDevice[] to register before ready (jitp only) */
  devicesFile?: string
  /** audit log file (jitp only) */
  auditLog?: string
  /** extra configuration keys (jitp only) */
  overrides?: Record<string, unknown>
  /** bare Aedes only: TCP_NODELAY on the listener (default true, like build.ts) */
  noDelay?: boolean
}

export type ChildMessage =
  | { type: 'ready', port: number, httpPort: number | null, adminPort: number | null }
  | { type: 'usage', rss: number, heapUsed: number, cpuUser: number, cpuSystem: number }
  | { type: 'gc', heapUsed?: number, external?: number, youngBytes?: number }

function send (msg: ChildMessage): void {
  process.send?.(msg)
}

interface Running { port: number, httpPort: number | null, adminPort: number | null, close (): Promise<void> }

async function startJitp (opts: BrokerChildOptions): Promise<Running> {
  const config = loadConfig({
    env: {},
    overrides: {
      MQTTS_PORT: 0,
      HTTP_PORT: 0,
      ADMIN_PORT: 0,
      HOST: '127.0.0.1',
      CERTS_DIR: opts.certsDir,
      GENERATE_DEV_CERTS: false,
      AUDIT_LOG: opts.auditLog ?? '/dev/null',
      LOG_LEVEL: 'silent',
      ...(opts.store === 'redis' && opts.redisUrl ? { REDIS_URL: opts.redisUrl } : {}),
      ...opts.overrides
    }
  })
  const handle = await buildBroker(config, { log: pino({ level: 'silent' }) })
  if (opts.devicesFile) {
    const devices = JSON.parse(readFileSync(opts.devicesFile, 'utf8')) as BenchDevice[]
    const now = Date.now()
    // registered as provisioning would, a few at a time so Redis is not flooded
    for (let i = 0; i < devices.length; i += 64) {
      await Promise.all(devices.slice(i, i + 64).map(async (d) => {
        await handle.registry.putDevice({ deviceId: d.deviceId, status: 'active', template: 'bench', createdAt: now, updatedAt: now, attributes: {} })
        await handle.registry.putCertificate({
          certificateId: d.certificateId, deviceId: d.deviceId, status: 'active', serialNumber: d.serialNumber, notAfter: d.notAfter, createdAt: now, updatedAt: now
        })
      }))
    }
  }
  return { port: handle.mqttsPort, httpPort: handle.httpPort, adminPort: handle.adminPort, close: () => handle.close() }
}

async function startBareAedes (opts: BrokerChildOptions): Promise<Running> {
  const trust = loadTrust(opts.certsDir)
  const store = createSessionStore(opts.store === 'redis' ? opts.redisUrl : undefined, () => undefined)
  const broker = await Aedes.createBroker({ ...store.aedesOptions })
  ;(broker as NodeJS.EventEmitter).on('error', () => undefined)
  const server = createTlsServer(tlsServerOptions(trust, { noDelay: opts.noDelay ?? true }), (socket) => broker.handle(socket))
  server.on('tlsClientError', () => undefined)
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    port: (server.address() as AddressInfo).port,
    httpPort: null,
    adminPort: null,
    async close () {
      server.close()
      await new Promise<void>((resolve) => broker.close(() => resolve()))
      await store.close()
    }
  }
}

async function main (): Promise<void> {
  const opts = JSON.parse(process.argv[2] ?? '{}') as BrokerChildOptions
  const running = opts.kind === 'jitp' ? await startJitp(opts) : await startBareAedes(opts)
  process.on('message', (msg: { type?: string }) => {
    if (msg.type === 'usage') {
      const u = process.cpuUsage()
      const m = process.memoryUsage()
      send({ type: 'usage', rss: m.rss, heapUsed: m.heapUsed, cpuUser: u.user, cpuSystem: u.system })
    } else if (msg.type === 'gc') {
      (globalThis as { gc?: () => void }).gc?.()
      // after the collection: what the heap and Buffers really hold, apart from what the allocator keeps
      const m = process.memoryUsage()
      if (process.env.BENCH_HEAP_SNAPSHOTS) writeHeapSnapshot(`${process.env.BENCH_HEAP_SNAPSHOTS}/${opts.kind}-${opts.store}-${Date.now()}.heapsnapshot`)
      // the young generation's committed size: V8 grows and shrinks it by its own rules (a broker that
      // idled longer gives it back), and at 32 MB it is a fixed cost, not a per-connection one
      const young = getHeapSpaceStatistics().find((s) => s.space_name === 'new_space')?.physical_space_size
      send({ type: 'gc', heapUsed: m.heapUsed, external: m.external, ...(young === undefined ? {} : { youngBytes: young }) })
    } else if (msg.type === 'stop') {
      // bounded: a broker that does not close in 5 s is done anyway
      setTimeout(() => process.exit(0), 5000).unref()
      running.close().finally(() => process.exit(0))
    }
  })
  process.on('disconnect', () => process.exit(0))
  send({ type: 'ready', port: running.port, httpPort: running.httpPort, adminPort: running.adminPort })
}

main().catch((err: unknown) => {
  console.error(err)
  process.exit(1)
})
