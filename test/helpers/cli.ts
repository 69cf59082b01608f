/**
 * The real command line, as operators run it: `node dist/bin/aedes-jitp.js ...`
 * (npm test's pretest builds dist/), and a broker started by it as a second process.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { resolve } from 'node:path'
import { sleep } from './broker.js'

export const CLI = resolve('dist/bin/aedes-jitp.js')

export interface CliResult { code: number | null, stdout: string, stderr: string }

/** runs one command to its end; `env` is added to this process's environment */
export function cli (args: string[], env: Record<string, string>): Promise<CliResult> {
  return new Promise((resolve_) => {
    const child = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, ...env } })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d: Buffer) => { stdout += d.toString() })
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
    child.on('exit', (code) => resolve_({ code, stdout, stderr }))
  })
}

/** `aedes-jitp start` as another process, resolved once its /readyz answers 200 */
export async function startChildBroker (env: Record<string, string>, httpPort: number): Promise<ChildProcess> {
  const child = spawn(process.execPath, [CLI, 'start'], { env: { ...process.env, ADMIN_PORT: '0', ...env }, stdio: ['ignore', 'ignore', 'pipe'] })
  const start = Date.now()
  while (Date.now() - start < 30_000) {
    if (child.exitCode !== null) throw new Error(`broker B exited with ${child.exitCode}`)
    try {
      if ((await fetch(`http://127.0.0.1:${httpPort}/readyz`)).status === 200) return child
    } catch { /* not up yet */ }
    await sleep(100)
  }
  throw new Error('broker B did not become ready')
}
