/**
 * The real command line, as a new user runs it: `aedes-jitp start` with no PKI
 * generates one, and mosquitto_sub (a client no one here wrote) subscribes with
 * the service certificate. Needs `npm run build` (npm test's pretest does it).
 */
import t from 'tap'
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { RUN_AUDIT_FILE, sleep } from '../helpers/broker.js'
import { freePort } from '../helpers/redis-server.js'

const CLI = resolve('dist/bin/aedes-jitp.js')

function requireBinary (name: string): void {
  if (spawnSync('which', [name]).status !== 0) throw new Error(`${name} not found on PATH: install it (apt-get install mosquitto-clients)`)
}

async function waitReady (port: number, child: ChildProcess, timeoutMs = 30000): Promise<void> {
  const start = Date.now()
  while (Date.now() - start < timeoutMs) {
    if (child.exitCode !== null) throw new Error(`broker exited with ${child.exitCode}`)
    try {
      if ((await fetch(`http://127.0.0.1:${port}/readyz`)).status === 200) return
    } catch { /* not listening yet */ }
    await sleep(100)
  }
  throw new Error('broker did not become ready')
}

t.test('start generates a dev PKI and mosquitto_sub subscribes with the service certificate', async (t) => {
  t.ok(existsSync(CLI), 'dist is built')
  requireBinary('mosquitto_sub')
  const certs = mkdtempSync(join(tmpdir(), 'jitp-cli-'))
  const [mqttsPort, httpPort] = [await freePort(), await freePort()]
  const child = spawn(process.execPath, [CLI, 'start'], {
    env: { ...process.env, MQTTS_PORT: String(mqttsPort), HTTP_PORT: String(httpPort), ADMIN_PORT: '0', HOST: '127.0.0.1', CERTS_DIR: certs, AUDIT_LOG: RUN_AUDIT_FILE, LOG_LEVEL: 'warn', REDIS_URL: '' },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let stderr = ''
  child.stderr?.on('data', (d: Buffer) => { stderr += d.toString() })
  t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL') })
  await waitReady(httpPort, child)
  for (const f of ['root-ca.pem', 'server.pem', 'device-ca.key', 'claim.pem', 'service.pem', 'manufacturer-device.pem']) {
    t.ok(existsSync(join(certs, f)), `${f} generated`)
  }
  t.match(stderr, /REDIS_URL is not set/, 'warns that the in-memory store keeps nothing')

  const sub = spawnSync('mosquitto_sub', [
    '-h', '127.0.0.1', '-p', String(mqttsPort), '-V', 'mqttv311',
    '--cafile', join(certs, 'root-ca.pem'), '--cert', join(certs, 'service-chain.pem'), '--key', join(certs, 'service.key'),
    '-i', 'backend-cli-test', '-t', 'devices/+/telemetry', '-q', '1', '-d', '-W', '2'
  ], { encoding: 'utf8', timeout: 15000 })
  t.match(sub.stdout, /received CONNACK \(0\)/i, 'CONNACK 0')
  t.match(sub.stdout, /Subscribed \(mid: \d+\): 1/, 'SUBACK grants QoS 1')

  child.kill('SIGTERM')
  const code = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)))
  t.equal(code, 0, 'clean shutdown on SIGTERM')
})

t.test('a bad config key stops the start, naming the key', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'jitp-cfg-'))
  const file = join(dir, 'config.json')
  writeFileSync(file, JSON.stringify({ MQTTS_PORT: 8883, REDIS_ULR: 'redis://127.0.0.1:1' }))
  const run = spawnSync(process.execPath, [CLI, 'start', '--config', file], { encoding: 'utf8', timeout: 15000 })
  t.not(run.status, 0, 'non-zero exit')
  t.match(run.stderr, /REDIS_ULR/, 'names the key')
  t.equal(run.stderr.trim().split('\n').length, 1, 'one line')

  const env = spawnSync(process.execPath, [CLI, 'start'], { encoding: 'utf8', timeout: 15000, env: { ...process.env, MQTTS_PORT: 'eighty' } })
  t.not(env.status, 0)
  t.match(env.stderr, /MQTTS_PORT/)
})

t.test('unknown command: one line, non-zero', async (t) => {
  const run = spawnSync(process.execPath, [CLI, 'frobnicate'], { encoding: 'utf8' })
  t.not(run.status, 0)
  t.match(run.stderr, /unknown command 'frobnicate'/)
})
