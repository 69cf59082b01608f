/**
 * Test harness: a throwaway redis-server on a free loopback port, so tests get a
 * real Redis they may kill and restart without touching the system one on 6379.
 * A missing binary is an error, never a skip: a silently skipped Redis suite
 * would pass CI while proving nothing.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { accessSync, constants, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { connect, createServer, type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { delimiter, join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'

export interface RedisServerHandle {
  port: number
  url: string
  /** whether the server keeps an append-only file (startRedisServer({ aof: true })) */
  readonly aof: boolean
  stop (): Promise<void>
  /**
   * stop (SIGTERM, unless already killed) and start again on the SAME port, in the
   * same directory: with `aof` the data comes back from the append-only file, as a
   * production Redis's would; without it the new server starts empty
   */
  restart (): Promise<void>
  /** SIGKILL, for fault tests (with `aof`, what was acknowledged survives a restart) */
  kill (): Promise<void>
}

export interface RedisServerOptions {
  /**
   * durable like the shipped docker-compose.yml: `appendonly yes`, `appendfsync
   * everysec`, the file in the server's temp dir. Default: nothing on disk
   */
  aof?: boolean
}

const START_TIMEOUT_MS = 5000
const STOP_TIMEOUT_MS = 2000
const SYSTEM_REDIS_PORT = 6379

const running = new Set<ChildProcess>()
const handles = new Set<RedisServerHandle>()
const dirs = new Set<string>()

// the children are unref'd so they never keep a finished test alive; these make sure they die with it
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL')
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true })
})
t.teardown(async () => {
  await Promise.all([...handles].map((h) => h.stop()))
})

function findRedisServer (): string {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (!dir) continue
    const file = join(dir, 'redis-server')
    try {
      accessSync(file, constants.X_OK)
      return file
    } catch {
      // not in this PATH entry
    }
  }
  throw new Error('redis-server not found on PATH: install it with apt-get install redis-server')
}

export async function freePort (): Promise<number> {
  for (;;) {
    const port = await new Promise<number>((resolve, reject) => {
      const server = createServer()
      server.once('error', reject)
      server.listen(0, '127.0.0.1', () => {
        const { port } = server.address() as AddressInfo
        server.close(() => resolve(port))
      })
    })
    if (port !== SYSTEM_REDIS_PORT) return port
  }
}

/** one PING over a fresh socket; a socket (unlike a client library) leaves nothing behind */
function answersPing (port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port })
    let reply = ''
    const done = (ok: boolean): void => {
      socket.destroy()
      resolve(ok)
    }
    socket.setTimeout(250, () => done(false))
    socket.once('error', () => done(false))
    socket.once('connect', () => socket.write('PING\r\n'))
    socket.on('data', (chunk) => {
      reply += chunk.toString()
      if (reply.includes('\r\n')) done(reply.startsWith('+PONG'))
    })
  })
}

const exited = (child: ChildProcess): boolean => child.exitCode !== null || child.signalCode !== null

function logTail (logfile: string): string {
  try {
    return readFileSync(logfile, 'utf8').trim().split('\n').slice(-5).join('\n')
  } catch {
    return '(no log)'
  }
}

async function launch (bin: string, port: number, dir: string, aof: boolean): Promise<ChildProcess> {
  mkdirSync(dir, { recursive: true })
  const logfile = join(dir, `redis-${port}.log`)
  const persistence = aof ? ['--appendonly', 'yes', '--appendfsync', 'everysec'] : ['--appendonly', 'no']
  const child = spawn(bin, [
    '--port', String(port), '--bind', '127.0.0.1', '--save', '', ...persistence,
    '--daemonize', 'no', '--dir', dir, '--logfile', logfile
  ], { stdio: 'ignore' })
  child.unref()
  running.add(child)
  let spawnError: Error | undefined
  child.once('error', (err) => { spawnError = err })
  child.once('exit', () => running.delete(child))

  const deadline = Date.now() + START_TIMEOUT_MS
  while (Date.now() < deadline) {
    if (spawnError) throw new Error(`redis-server failed to start: ${spawnError.message}`)
    if (exited(child)) throw new Error(`redis-server on port ${port} exited at start:\n${logTail(logfile)}`)
    // the alive check after PONG guards against another server having taken the port
    if (await answersPing(port) && !exited(child)) return child
    await sleep(50)
  }
  await terminate(child, 'SIGKILL')
  throw new Error(`redis-server on port ${port} did not answer PING within ${START_TIMEOUT_MS} ms:\n${logTail(logfile)}`)
}

async function terminate (child: ChildProcess, signal: NodeJS.Signals): Promise<void> {
  if (exited(child)) return
  const gone = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  child.kill(signal)
  const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS)
  await gone
  clearTimeout(timer)
}

export async function startRedisServer (opts: RedisServerOptions = {}): Promise<RedisServerHandle> {
  const aof = opts.aof === true
  const bin = findRedisServer()
  const dir = mkdtempSync(join(tmpdir(), 'jitp-redis-'))
  dirs.add(dir)
  let port = 0
  let child: ChildProcess | undefined
  // a free port can be taken between freePort() and redis' bind; a second port then does it
  for (let attempt = 1; child === undefined; attempt++) {
    port = await freePort()
    try {
      child = await launch(bin, port, dir, aof)
    } catch (err) {
      if (attempt >= 3) throw err
    }
  }
  let current: ChildProcess = child
  const handle: RedisServerHandle = {
    port,
    url: `redis://127.0.0.1:${port}`,
    aof,
    async stop () {
      handles.delete(handle)
      await terminate(current, 'SIGTERM')
      rmSync(dir, { recursive: true, force: true })
      dirs.delete(dir)
    },
    async restart () {
      await terminate(current, 'SIGTERM')
      current = await launch(bin, port, dir, aof)
      handles.add(handle)
      dirs.add(dir)
    },
    async kill () {
      await terminate(current, 'SIGKILL')
    }
  }
  handles.add(handle)
  return handle
}
