/**
 * Test harness: this broker in a CHILD process, for faults that must kill it
 * (SIGKILL leaves no chance to flush or close anything, as a crash would not).
 * The child is bench/broker-child: the compiled one in dist/ when dist is at
 * least as new as every source file (`npm test` builds it first), otherwise the
 * sources with the TypeScript loader tap itself uses (slower to start: ts-node
 * transpiles the whole broker again in the child). It talks to this process
 * over IPC and exits when it loses it.
 * Devices are registered straight into the shared Redis registry, as another
 * broker process would have done.
 */
import { spawnSync } from 'node:child_process'
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, relative } from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { startBrokerChild, type Target } from '../../bench/processes.js'
import type { Pki } from './broker.js'
import { waitFor } from './broker.js'

export interface BrokerProcess {
  readonly pid: number
  /** MQTTS port */
  readonly port: number
  readonly httpPort: number
  readonly adminPort: number
  readonly pki: Pki
  /** the child's audit file (AUDIT_LOG) */
  readonly auditLog: string
  /** the audit lines written so far (a killed child loses what it had not flushed) */
  auditLines (): Array<Record<string, unknown>>
  /** SIGKILL; resolves once the process is gone */
  kill (): void
  exited (): Promise<void>
  /** graceful stop (flushes the audit log) */
  stop (): Promise<void>
}

export interface BrokerProcessOptions {
  redisUrl: string
  pki: Pki
  /** extra configuration keys */
  overrides?: Record<string, unknown>
}

// the repository root: two levels up from the TypeScript source, three from its compiled twin in dist/test
const ROOT = ((here: string) => existsSync(join(here, 'package.json')) ? here : join(here, '..'))(fileURLToPath(new URL('../../', import.meta.url)))
/** what the child runs (tsconfig.build.json compiles these into dist/) */
const SOURCE_DIRS = ['broker', 'plugins', 'pki', 'certs-dev', 'bench']

function * sourceFiles (dir: string): Generator<string> {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) yield * sourceFiles(path)
    else if (entry.name.endsWith('.ts') && !entry.name.endsWith('.d.ts')) yield path
  }
}

/** true when every source file has a compiled twin in dist/ at least as new as itself */
export function distIsFresh (): boolean {
  try {
    for (const dir of SOURCE_DIRS) {
      for (const file of sourceFiles(join(ROOT, dir))) {
        const compiled = join(ROOT, 'dist', relative(ROOT, file).replace(/\.ts$/, '.js'))
        if (statSync(compiled).mtimeMs < statSync(file).mtimeMs) return false
      }
    }
    return true
  } catch {
    return false
  }
}

/**
 * Compiles when dist/ is stale: tests that measure a broker child's memory run it
 * compiled (under the TypeScript loader the compiler would be measured too).
 */
export function ensureBuilt (): void {
  if (distIsFresh()) return
  const tsc = spawnSync(process.execPath, [join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', join(ROOT, 'tsconfig.build.json')], { encoding: 'utf8', timeout: 120_000 })
  if (tsc.status !== 0) throw new Error(`build failed: ${tsc.stdout}${tsc.stderr}`)
}

/** the child script and the node flags it needs */
function childLaunch (): { script: string, execArgv: string[] } {
  if (distIsFresh()) return { script: join(ROOT, 'dist', 'bench', 'broker-child.js'), execArgv: [] }
  const loader = process.execArgv.filter((arg) => arg.includes('@tapjs/typescript'))
  if (loader.length === 0) throw new Error('broker-process: dist/ is older than the sources (changed while the tests ran?) and there is no TypeScript loader here (npm test runs without one): run `npm run build` first')
  return { script: join(ROOT, 'bench', 'broker-child.ts'), execArgv: loader }
}

const stopping = new Set<Target>()
t.teardown(async () => {
  await Promise.all([...stopping].map((target) => target.stop()))
})

export async function startBrokerProcess (opts: BrokerProcessOptions): Promise<BrokerProcess> {
  const dir = mkdtempSync(join(tmpdir(), 'jitp-broker-child-'))
  const auditLog = join(dir, 'audit.log')
  process.once('exit', () => rmSync(dir, { recursive: true, force: true }))
  const target = await startBrokerChild('broker', {
    kind: 'jitp',
    store: 'redis',
    redisUrl: opts.redisUrl,
    certsDir: opts.pki.dir,
    auditLog,
    overrides: { LOG_LEVEL: 'silent', ...opts.overrides }
  }, childLaunch())
  stopping.add(target)
  const gone = async (): Promise<void> => {
    await waitFor(() => target.exitStatus() !== null, 10_000, 'the broker child to exit')
    stopping.delete(target)
  }
  return {
    pid: target.pid,
    port: target.port,
    httpPort: target.httpPort ?? 0,
    adminPort: target.adminPort ?? 0,
    pki: opts.pki,
    auditLog,
    auditLines () {
      let text = ''
      try {
        text = readFileSync(auditLog, 'utf8')
      } catch {
        return []
      }
      return text.split('\n').filter((line) => line.startsWith('{')).map((line) => JSON.parse(line) as Record<string, unknown>)
    },
    kill () {
      process.kill(target.pid, 'SIGKILL')
    },
    exited: gone,
    async stop () {
      await target.stop()
      stopping.delete(target)
    }
  }
}

/** as provisioning would: see test/helpers/broker.ts */
export { registerDeviceIn } from './broker.js'
