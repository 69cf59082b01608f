/**
 * Token-authenticated connects (CONTRACT §10) next to mutual-TLS connects, per
 * broker CPU-second, on one aedes-jitp broker (memory store) in its own process:
 *   - mtls:   the dev service certificate on MQTTS_PORT (a service identity, no registry read)
 *   - oauth2: an ES256 access token from an external issuer (OAUTH_JWKS_FILE) on MQTTS_TOKEN_PORT
 *   - broker: a token signed by the broker's own key (the broker-token path, with its client lookup)
 *   - sas:    a symmetric-key enrollment SAS on MQTTS_TOKEN_PORT
 * Each connect: TCP + TLS (no session resumption), CONNECT, CONNACK 0, DISCONNECT.
 * Windows alternate between the kinds, so drift (JIT, a noisy neighbour) spreads over all.
 * Tokens and SAS are made before the clock starts.
 *
 * Run: npm run build --silent && node dist/bench/token-connects.js
 *   BENCH_TOKEN_MS=5000 BENCH_TOKEN_ROUNDS=2 BENCH_TOKEN_CONCURRENCY=32 BENCH_TOKEN_THREADS=2
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { request } from 'node:https'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { connect as tlsConnect, createSecureContext, type SecureContext } from 'node:tls'
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads'
import { exportJWK, generateKeyPair, SignJWT, type CryptoKey } from 'jose'
import { generateDevPki } from '../certs-dev/generate.js'
import { loadTokenKeys } from '../broker/token-keys.js'
import { deriveDeviceKey, signSas } from '../plugins/token/sas.js'
import { DISCONNECT, utf8Field, withHeader } from './mqtt-wire.js'
import { freePort, startBrokerChild, type Target } from './processes.js'

const WINDOW_MS = Number(process.env.BENCH_TOKEN_MS ?? 5000)
const ROUNDS = Number(process.env.BENCH_TOKEN_ROUNDS ?? 2)
const CONCURRENCY = Number(process.env.BENCH_TOKEN_CONCURRENCY ?? 32)
const THREADS = Number(process.env.BENCH_TOKEN_THREADS ?? 2)
/** credentials handed to one window: more than it can use on this machine */
const WINDOW_PACKETS = 6000
/** every kind's credentials are made up front (warm-up and every window) */
const CREDENTIALS = 4000 + WINDOW_PACKETS * ROUNDS
const CONNECT_TIMEOUT_MS = 10_000
const ISSUER = 'https://issuer.bench.example/'
const AUDIENCE = 'aedes-jitp-bench'

type Kind = 'mtls' | 'oauth2' | 'broker' | 'sas'

/** CONNECT, clean session, with a username and password when given */
function connectPacket (clientId: string, username?: string, password?: string): Buffer {
  const flags = 0x02 | (username !== undefined ? 0x80 : 0) | (password !== undefined ? 0x40 : 0)
  const parts = [Buffer.from([0x00, 0x04, 0x4d, 0x51, 0x54, 0x54, 0x04, flags, 0x00, 60]), utf8Field(clientId)]
  if (username !== undefined) parts.push(utf8Field(username))
  if (password !== undefined) parts.push(utf8Field(password))
  return withHeader(0x10, Buffer.concat(parts))
}

/** one connect: resolves with its latency once CONNACK 0 came and DISCONNECT went */
function connectOnce (port: number, context: SecureContext, packet: Buffer): Promise<number> {
  const start = performance.now()
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({ host: '127.0.0.1', port, secureContext: context, servername: 'localhost' })
    let got = Buffer.alloc(0)
    const timer = setTimeout(() => fail(new Error('timeout')), CONNECT_TIMEOUT_MS)
    function fail (err: Error): void {
      clearTimeout(timer)
      socket.destroy()
      reject(err)
    }
    socket.on('error', fail)
    socket.once('secureConnect', () => {
      socket.setNoDelay(true)
      socket.write(packet)
    })
    socket.on('data', (chunk: Buffer) => {
      got = Buffer.concat([got, chunk])
      if (got.length < 4) return
      clearTimeout(timer)
      socket.removeListener('error', fail)
      socket.on('error', () => {})
      if (got[0] !== 0x20 || got[3] !== 0) return fail(new Error(`CONNACK ${got[3]}`))
      socket.end(DISCONNECT)
      resolve(performance.now() - start)
    })
  })
}

interface Window { kind: Kind, connects: number, errors: number, firstError: string | null, wallMs: number, brokerCpuMs: number }

interface Job { port: number, ca: string, cert?: string, key?: string, packets: Uint8Array[], lanes: number, windowMs: number }
interface JobResult { connects: number, errors: number, firstError: string | null, used: number }

/** in a generator thread: connects with `lanes` at once until the window closes or the packets run out */
async function runJob (job: Job): Promise<JobResult> {
  const context = createSecureContext({ ca: job.ca, ...(job.cert !== undefined ? { cert: job.cert, key: job.key } : {}) })
  let next = 0
  let connects = 0
  let errors = 0
  let firstError: string | null = null
  const deadline = performance.now() + job.windowMs
  async function lane (): Promise<void> {
    while (performance.now() < deadline && next < job.packets.length) {
      const packet = Buffer.from(job.packets[next++]!)
      try {
        await connectOnce(job.port, context, packet)
        connects++
      } catch (err) {
        errors++
        firstError ??= (err as Error).message
      }
    }
  }
  await Promise.all(Array.from({ length: job.lanes }, lane))
  return { connects, errors, firstError, used: next }
}

/** the TLS client work is the generator's bottleneck: it runs in THREADS worker threads */
class Generator {
  private readonly workers: Worker[]
  constructor () {
    this.workers = Array.from({ length: THREADS }, () => new Worker(new URL(import.meta.url), { workerData: { generator: true } }))
  }

  run (job: Omit<Job, 'packets' | 'lanes'>, packets: readonly Buffer[]): Promise<JobResult[]> {
    const per = Math.floor(packets.length / this.workers.length)
    return Promise.all(this.workers.map((w, i) => new Promise<JobResult>((resolve, reject) => {
      w.once('message', (r: JobResult) => {
        w.off('error', reject)
        resolve(r)
      })
      w.once('error', reject)
      w.postMessage({ ...job, lanes: Math.max(1, Math.round(CONCURRENCY / this.workers.length)), packets: packets.slice(i * per, (i + 1) * per) })
    })))
  }

  async close (): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()))
  }
}

async function runWindow (target: Target, generator: Generator, kind: Kind, job: Omit<Job, 'packets' | 'lanes' | 'windowMs'>, packets: readonly Buffer[]): Promise<Window & { used: number }> {
  const before = target.usage()!
  const t0 = performance.now()
  const results = await generator.run({ ...job, windowMs: WINDOW_MS }, packets)
  const wallMs = performance.now() - t0
  const after = target.usage()!
  return {
    kind,
    connects: results.reduce((s, r) => s + r.connects, 0),
    errors: results.reduce((s, r) => s + r.errors, 0),
    firstError: results.find((r) => r.firstError !== null)?.firstError ?? null,
    wallMs,
    brokerCpuMs: after.cpuMs - before.cpuMs,
    used: results.reduce((s, r) => s + r.used, 0)
  }
}

async function main (): Promise<void> {
  const work = mkdtempSync(join(tmpdir(), 'jitp-bench-token-'))
  try {
    const certsDir = join(work, 'certs')
    await generateDevPki({ outDir: certsDir })
    const read = (f: string): string => readFileSync(join(certsDir, f), 'utf8')

    // the external issuer: an ES256 key in a JWKS file
    const { privateKey, publicKey } = await generateKeyPair('ES256', { extractable: true })
    const jwksFile = join(work, 'jwks.json')
    writeFileSync(jwksFile, JSON.stringify({ keys: [{ ...await exportJWK(publicKey), kid: 'bench-1', alg: 'ES256', use: 'sig' }] }))
    const enrollmentDir = join(work, 'enrollment')
    const templatesDir = join(work, 'templates')
    mkdirSync(enrollmentDir)
    mkdirSync(templatesDir)
    writeFileSync(join(templatesDir, 'bench-sas.json'), JSON.stringify({ parameters: { type: 'object' }, deviceId: 'bench-${registrationId}', configuration: {} }))
    const groupKey = Buffer.alloc(64, 5)
    writeFileSync(join(enrollmentDir, 'bench.json'), JSON.stringify({ name: 'bench', groupKey: groupKey.toString('base64'), template: 'bench-sas' }))

    const tokenPort = await freePort()
    const target = await startBrokerChild('jitp-memory', {
      kind: 'jitp',
      store: 'memory',
      certsDir,
      overrides: {
        MQTTS_TOKEN_PORT: tokenPort,
        OAUTH_JWKS_FILE: jwksFile,
        OAUTH_ISSUER: ISSUER,
        OAUTH_AUDIENCE: AUDIENCE,
        TEMPLATES_DIR: templatesDir,
        ENROLLMENT_DIR: enrollmentDir,
        // every connect of the generator comes from 127.0.0.1
        CONNECT_RATE_PER_ADDRESS: 100_000_000,
        MAX_PENDING_CONNECTIONS_PER_ADDRESS: 100_000
      }
    })
    try {
      const ca = read('root-ca.pem')
      const jobs: Record<Kind, Omit<Job, 'packets' | 'lanes' | 'windowMs'>> = {
        mtls: { port: target.port, ca, cert: read('service-chain.pem'), key: read('service.key') },
        oauth2: { port: tokenPort, ca },
        broker: { port: tokenPort, ca },
        sas: { port: tokenPort, ca }
      }

      // credentials before the clock starts; distinct client ids and subjects, as many services would be
      const exp = Math.floor(Date.now() / 1000) + 3600
      const external = await sign(privateKey, CREDENTIALS, exp)
      // the broker's own key: the child generated it in CERTS_DIR/token-keys on start; its client is made
      // through the admin API, as an operator would (the token is then what POST /oauth/token would hand out)
      const keys = await loadTokenKeys(join(certsDir, 'token-keys'))
      const clientId = await createClient(target.adminPort!, read)
      const own: string[] = []
      for (let i = 0; i < CREDENTIALS; i++) own.push((await keys.sign({ sub: clientId, client_id: clientId, scope: 'telemetry:read' }, 3600)).token)
      const packets: Record<Kind, Buffer[]> = {
        mtls: Array.from({ length: CREDENTIALS }, (_, i) => connectPacket(`bench-svc-${i}`)),
        oauth2: external.map((token, i) => connectPacket(`bench-oauth-${i}`, 'service', token)),
        broker: own.map((token, i) => connectPacket(`bench-own-${i}`, 'service', token)),
        sas: Array.from({ length: CREDENTIALS }, (_, i) => {
          const id = `reg-${i}`
          return connectPacket(id, 'enroll/bench', signSas(deriveDeviceKey(groupKey, id), id, exp))
        })
      }
      const kinds: Kind[] = ['mtls', 'oauth2', 'broker', 'sas']
      const generator = new Generator()
      // warm-up: the JIT and the broker's caches, not measured
      const used: Record<Kind, number> = { mtls: 0, oauth2: 0, broker: 0, sas: 0 }
      for (const kind of kinds) {
        const results = await generator.run({ ...jobs[kind], windowMs: 1000 }, packets[kind].slice(0, 2000))
        used[kind] += results.reduce((n, r) => n + r.used, 0) + 2000
      }
      const windows: Window[] = []
      for (let round = 0; round < ROUNDS; round++) {
        for (const kind of kinds) {
          const w = await runWindow(target, generator, kind, jobs[kind], packets[kind].slice(used[kind], used[kind] + WINDOW_PACKETS))
          used[kind] += WINDOW_PACKETS
          windows.push(w)
          console.error(`${kind}: ${w.connects} connects in ${Math.round(w.wallMs)} ms, broker CPU ${Math.round(w.brokerCpuMs)} ms, errors ${w.errors}${w.firstError ? ` (${w.firstError})` : ''}`)
        }
      }
      const summary: Record<string, unknown> = {}
      for (const kind of kinds) {
        const ws = windows.filter((w) => w.kind === kind)
        const connects = ws.reduce((s, w) => s + w.connects, 0)
        const cpu = ws.reduce((s, w) => s + w.brokerCpuMs, 0)
        const wall = ws.reduce((s, w) => s + w.wallMs, 0)
        summary[kind] = {
          connectsPerBrokerCpuSecond: Math.round(connects / (cpu / 1000)),
          connectsPerSecond: Math.round(connects / (wall / 1000)),
          brokerCpuPercent: Math.round((100 * cpu) / wall),
          connects,
          errors: ws.reduce((s, w) => s + w.errors, 0)
        }
      }
      const mtls = (summary.mtls as { connectsPerBrokerCpuSecond: number }).connectsPerBrokerCpuSecond
      for (const kind of kinds) {
        const s = summary[kind] as { connectsPerBrokerCpuSecond: number, vsMtls?: number }
        s.vsMtls = Math.round((100 * s.connectsPerBrokerCpuSecond) / mtls) / 100
      }
      await generator.close()
      console.log(JSON.stringify({ windowMs: WINDOW_MS, rounds: ROUNDS, concurrency: CONCURRENCY, threads: THREADS, summary }, null, 2))
    } finally {
      await target.stop()
    }
  } finally {
    rmSync(work, { recursive: true, force: true })
  }
}

/** POST /v1/clients with the dev admin certificate: the client id */
function createClient (adminPort: number, read: (f: string) => string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = request({
      host: '127.0.0.1', port: adminPort, path: '/v1/clients', method: 'POST', servername: 'localhost',
      ca: read('root-ca.pem'), cert: read('admin-chain.pem'), key: read('admin.key'), headers: { 'content-type': 'application/json' }
    }, (res) => {
      let body = ''
      res.on('data', (c: Buffer) => { body += c.toString('utf8') })
      res.on('end', () => res.statusCode === 201 || res.statusCode === 200 ? resolve(String((JSON.parse(body) as { clientId: string }).clientId)) : reject(new Error(`POST /v1/clients: ${res.statusCode}`)))
    })
    req.on('error', reject)
    req.end(JSON.stringify({ name: 'bench', scopes: ['telemetry:read'] }))
  })
}

async function sign (key: CryptoKey, count: number, exp: number): Promise<string[]> {
  const out: string[] = []
  for (let i = 0; i < count; i++) {
    out.push(await new SignJWT({ scope: 'telemetry:read' })
      .setProtectedHeader({ alg: 'ES256', kid: 'bench-1', typ: 'at+jwt' })
      .setIssuer(ISSUER).setAudience(AUDIENCE).setSubject(`bench-svc-${i}`).setExpirationTime(exp)
      .sign(key))
  }
  return out
}

if (isMainThread) {
  main().catch((err: unknown) => {
    console.error(err)
    process.exitCode = 1
  })
} else if ((workerData as { generator?: boolean } | null)?.generator === true) {
  parentPort!.on('message', (job: Job) => {
    runJob(job).then((r) => parentPort!.postMessage(r), (err: unknown) => parentPort!.postMessage({ connects: 0, errors: 1, firstError: String(err), used: 0 }))
  })
}
