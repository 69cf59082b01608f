/**
 * Starting and stopping what the benchmark measures, each in its own process on
 * loopback: broker children (this broker or bare Aedes), a private redis-server
 * and Mosquitto. Never the system services on 6379 and 1883.
 */
import { spawn, fork, type ChildProcess } from 'node:child_process'
import { accessSync, constants, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { connect, createServer, type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { delimiter, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { setTimeout as sleep } from 'node:timers/promises'
import type { BrokerChildOptions, ChildMessage } from './broker-child.js'
import { procUsage, treeUsage, type ProcUsage } from './proc.js'

const START_TIMEOUT_MS = 60_000
const STOP_TIMEOUT_MS = 5_000
const RESERVED_PORTS = new Set([1883, 6379, 8883])

export interface Target {
  readonly key: string
  readonly pid: number
  readonly port: number
  readonly httpPort: number | null
  /** the admin API of an aedes-jitp child; null for other brokers */
  readonly adminPort: number | null
  /** null while running */
  exitStatus (): string | null
  stderrTail (): string
  usage (): ProcUsage | null
  /** the broker's private redis-server, when it has one: its CPU is the store's cost of the broker's work */
  storeUsage? (): ProcUsage | null
  /** a full GC in a Node child before a memory reading, and what its heap and Buffers hold after it (null: Mosquitto, or no answer) */
  gc (): Promise<HeapReading | null>
  stop (): Promise<void>
}

/** a Node child's memory right after a full GC, bytes */
export interface HeapReading { readonly heapUsed: number, readonly external: number, /** V8's young generation, committed */ readonly youngBytes: number | null }

export function onPath (bin: string): string | null {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (!dir) continue
    try {
      accessSync(join(dir, bin), constants.X_OK)
      return join(dir, bin)
    } catch {
      // not here
    }
  }
  return null
}

export async function freePort (): Promise<number> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const port = await new Promise<number>((resolve, reject) => {
      const server = createServer()
      server.once('error', reject)
      server.listen(0, '127.0.0.1', () => {
        const { port } = server.address() as AddressInfo
        server.close(() => resolve(port))
      })
    })
    if (!RESERVED_PORTS.has(port)) return port
  }
  throw new Error('no free loopback port')
}

function accepts (port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port })
    const done = (ok: boolean): void => {
      socket.destroy()
      resolve(ok)
    }
    socket.setTimeout(250, () => done(false))
    socket.once('error', () => done(false))
    socket.once('connect', () => done(true))
  })
}

function exited (child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null
}

function exitStatusOf (child: ChildProcess): string | null {
  if (child.exitCode !== null) return `exit code ${child.exitCode}`
  if (child.signalCode !== null) return `signal ${child.signalCode}`
  return null
}

async function terminate (child: ChildProcess): Promise<void> {
  if (exited(child)) return
  const gone = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  child.kill('SIGTERM')
  const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS)
  await gone
  clearTimeout(timer)
}

function keepTail (child: ChildProcess): () => string {
  let tail = ''
  child.stderr?.on('data', (chunk: Buffer) => {
    tail = (tail + chunk.toString('utf8')).slice(-8000)
  })
  return () => tail
}

export interface ChildLaunch {
  /** the child script; default: broker-child.js beside this file */
  script?: string
  /** node flags; --expose-gc is always added */
  execArgv?: string[]
  /** the pid of the broker's private redis-server, read alongside the broker's CPU */
  storePid?: number
}

/** A broker child (this broker or bare Aedes); resolves once it listens. */
export async function startBrokerChild (key: string, opts: BrokerChildOptions, launch: ChildLaunch = {}): Promise<Target> {
  const script = launch.script ?? fileURLToPath(new URL('./broker-child.js', import.meta.url))
  const child = fork(script, [JSON.stringify(opts)], {
    execArgv: ['--expose-gc', ...(launch.execArgv ?? [])],
    // a test runner's loaders (NODE_OPTIONS) would be measured as the broker's memory
    env: { ...process.env, NODE_OPTIONS: '' },
    stdio: ['ignore', 'ignore', 'pipe', 'ipc']
  })
  const stderrTail = keepTail(child)
  const ready = await new Promise<{ port: number, httpPort: number | null, adminPort: number | null }>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${key}: not ready within ${START_TIMEOUT_MS} ms\n${stderrTail()}`)), START_TIMEOUT_MS)
    child.on('message', function onReady (msg: ChildMessage) {
      if (msg.type !== 'ready') return
      clearTimeout(timer)
      child.off('message', onReady)
      resolve({ port: msg.port, httpPort: msg.httpPort, adminPort: msg.adminPort })
    })
    child.once('exit', () => {
      clearTimeout(timer)
      reject(new Error(`${key}: exited at start (${exitStatusOf(child) ?? '?'})\n${stderrTail()}`))
    })
  })
  const pid = child.pid!
  return {
    key,
    pid,
    port: ready.port,
    httpPort: ready.httpPort,
    adminPort: ready.adminPort,
    exitStatus: () => exitStatusOf(child),
    stderrTail,
    usage: () => procUsage(pid),
    ...(launch.storePid !== undefined ? { storeUsage: () => procUsage(launch.storePid!) } : {}),
    gc () {
      if (exited(child) || !child.connected) return Promise.resolve(null)
      return new Promise<HeapReading | null>((resolve) => {
        const timer = setTimeout(() => resolve(null), 5000)
        child.on('message', function onGc (msg: ChildMessage) {
          if (msg.type !== 'gc') return
          child.off('message', onGc)
          clearTimeout(timer)
          resolve(msg.heapUsed !== undefined && msg.external !== undefined ? { heapUsed: msg.heapUsed, external: msg.external, youngBytes: msg.youngBytes ?? null } : null)
        })
        child.send({ type: 'gc' })
      })
    },
    async stop () {
      if (exited(child)) return
      const gone = new Promise<void>((resolve) => child.once('exit', () => resolve()))
      if (child.connected) child.send({ type: 'stop' })
      const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS)
      await gone
      clearTimeout(timer)
    }
  }
}

/** Mosquitto with require_certificate on the same dev PKI, or null when it is not installed. */
export async function startMosquitto (certsDir: string): Promise<Target | null> {
  const bin = onPath('mosquitto')
  if (bin === null) return null
  const dir = mkdtempSync(join(tmpdir(), 'jitp-bench-mosquitto-'))
  const port = await freePort()
  const conf = join(dir, 'mosquitto.conf')
  writeFileSync(conf, [
    'per_listener_settings false',
    'persistence false',
    // started as root it would switch to the "mosquitto" user, who cannot read the dev keys
    'user root',
    'log_dest stderr',
    'log_type error',
    'log_type warning',
    `listener ${port} 127.0.0.1`,
    `cafile ${join(certsDir, 'ca-bundle.pem')}`,
    `certfile ${join(certsDir, 'server.pem')}`,
    `keyfile ${join(certsDir, 'server.key')}`,
    'require_certificate true',
    // like our listener (noDelay): without it every handshake and QoS 1 round trip waits on a delayed ACK
    'set_tcp_nodelay true',
    'use_identity_as_username true',
    'allow_anonymous true',
    ''
  ].join('\n'))
  const child = spawn(bin, ['-c', conf], { stdio: ['ignore', 'ignore', 'pipe'] })
  const stderrTail = keepTail(child)
  const deadline = Date.now() + START_TIMEOUT_MS
  while (!(await accepts(port))) {
    if (exited(child) || Date.now() > deadline) {
      await terminate(child)
      rmSync(dir, { recursive: true, force: true })
      throw new Error(`mosquitto did not start: ${stderrTail()}`)
    }
    await sleep(50)
  }
  const pid = child.pid!
  return {
    key: 'mosquitto',
    pid,
    port,
    httpPort: null,
    adminPort: null,
    exitStatus: () => exitStatusOf(child),
    stderrTail,
    usage: () => procUsage(pid),
    gc: () => Promise.resolve(null),
    async stop () {
      await terminate(child)
      rmSync(dir, { recursive: true, force: true })
    }
  }
}

export interface RedisServer { readonly url: string, readonly pid: number, stop (): Promise<void> }

/** A throwaway redis-server on a free loopback port, no persistence. */
export async function startRedis (): Promise<RedisServer> {
  const bin = onPath('redis-server')
  if (bin === null) throw new Error('redis-server not found on PATH (apt-get install redis-server)')
  const dir = mkdtempSync(join(tmpdir(), 'jitp-bench-redis-'))
  const port = await freePort()
  const child = spawn(bin, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir], { stdio: ['ignore', 'ignore', 'pipe'] })
  const stderrTail = keepTail(child)
  const deadline = Date.now() + 10_000
  while (!(await accepts(port))) {
    if (exited(child) || Date.now() > deadline) {
      await terminate(child)
      throw new Error(`redis-server did not start: ${stderrTail()}`)
    }
    await sleep(50)
  }
  return {
    url: `redis://127.0.0.1:${port}`,
    pid: child.pid!,
    async stop () {
      await terminate(child)
      rmSync(dir, { recursive: true, force: true })
    }
  }
}

export interface CliTarget extends Target {
  /** WORKERS */
  readonly workers: number
  /** the primary alone (a cluster's round-robin accept is its work); `usage` is the primary and every worker */
  primaryUsage (): ProcUsage | null
}

/**
 * `aedes-jitp start` as operators run it (dist/bin), with WORKERS=N: resolves
 * once every worker listens (/metrics counts N workers answering; /readyz for a
 * single process). `usage()` sums the primary and its workers.
 */
export async function startCliBroker (key: string, env: Record<string, string>, launch: { workers: number, storePid?: number }): Promise<CliTarget> {
  const script = fileURLToPath(new URL('../bin/aedes-jitp.js', import.meta.url))
  const projectDir = fileURLToPath(new URL('../../', import.meta.url))
  const [port, httpPort, adminPort] = [await freePort(), await freePort(), await freePort()]
  const child = spawn(process.execPath, [script, 'start'], {
    cwd: projectDir,
    env: {
      ...process.env,
      NODE_OPTIONS: '',
      HOST: '127.0.0.1',
      GENERATE_DEV_CERTS: 'false',
      LOG_LEVEL: 'error',
      ...env,
      WORKERS: String(launch.workers),
      MQTTS_PORT: String(port),
      HTTP_PORT: String(httpPort),
      ADMIN_PORT: String(adminPort)
    },
    stdio: ['ignore', 'ignore', 'pipe']
  })
  const stderrTail = keepTail(child)
  const listening = async (): Promise<boolean> => {
    try {
      if (launch.workers === 1) return (await fetch(`http://127.0.0.1:${httpPort}/readyz`, { signal: AbortSignal.timeout(2000) })).status === 200
      const text = await (await fetch(`http://127.0.0.1:${httpPort}/metrics`, { signal: AbortSignal.timeout(5000) })).text()
      return new RegExp(`^jitp_workers\\{state="scraped"\\} ${launch.workers}$`, 'm').test(text)
    } catch {
      return false
    }
  }
  const deadline = Date.now() + START_TIMEOUT_MS
  while (!(await listening())) {
    if (exited(child) || Date.now() > deadline) {
      await terminate(child)
      throw new Error(`${key}: not ready (${exitStatusOf(child) ?? 'timed out'})\n${stderrTail()}`)
    }
    await sleep(100)
  }
  const pid = child.pid!
  return {
    key,
    pid,
    workers: launch.workers,
    port,
    httpPort,
    adminPort,
    exitStatus: () => exitStatusOf(child),
    stderrTail,
    usage: () => treeUsage(pid),
    primaryUsage: () => procUsage(pid),
    ...(launch.storePid !== undefined ? { storeUsage: () => procUsage(launch.storePid!) } : {}),
    gc: () => Promise.resolve(null),
    async stop () {
      if (exited(child)) return
      const gone = new Promise<void>((resolve) => child.once('exit', () => resolve()))
      child.kill('SIGTERM')
      // the primary waits up to 15 s for its workers
      const timer = setTimeout(() => child.kill('SIGKILL'), 20_000)
      await gone
      clearTimeout(timer)
    }
  }
}
