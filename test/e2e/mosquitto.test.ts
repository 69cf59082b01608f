/**
 * The provisioning flow driven from a shell by mosquitto_pub/mosquitto_sub and
 * openssl (test/e2e/mosquitto-provision.sh), against a real broker.
 */
import t from 'tap'
import { spawn, spawnSync } from 'node:child_process'
import { resolve } from 'node:path'
import { STORES, startBroker } from '../helpers/broker.js'

for (const tool of ['mosquitto_pub', 'mosquitto_sub', 'openssl']) {
  if (spawnSync('which', [tool]).status !== 0) throw new Error(`${tool} not found on PATH: apt-get install mosquitto-clients openssl`)
}

/** Runs the script without blocking this process, which also runs the broker. */
function runScript (env: Record<string, string>): Promise<{ status: number | null, stdout: string, stderr: string }> {
  return new Promise((resolve_) => {
    const child = spawn('bash', [resolve('test/e2e/mosquitto-provision.sh')], { env: { ...process.env, ...env } })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d: Buffer) => { stdout += d.toString() })
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000)
    child.on('exit', (status) => {
      clearTimeout(timer)
      resolve_({ status, stdout, stderr })
    })
  })
}

for (const store of STORES) {
  t.test(`claim → CSR → register → device → service with mosquitto clients (${store})`, async (t) => {
    const tb = await startBroker({ store, overrides: { PROVISION_REPLY_COMPANION: true } })
    t.teardown(() => tb.close())
    const serial = `SHELL-${store.toUpperCase()}`
    const run = await runScript({ PORT: String(tb.port), CERTS_DIR: tb.pki.dir, SERIAL: serial })
    t.equal(run.status, 0, `script succeeded: ${run.stderr}`)
    t.equal(run.stdout.trim(), `sensor-${serial}`)
    t.equal((await tb.handle.registry.getDevice(`sensor-${serial}`))?.status, 'provisioned', 'registered (provisioned until its health check passes)')
  })
}

t.test('without PROVISION_REPLY_COMPANION the companion receives nothing', async (t) => {
  const tb = await startBroker({ store: 'memory' })
  t.teardown(() => tb.close())
  const run = await runScript({ PORT: String(tb.port), CERTS_DIR: tb.pki.dir, SERIAL: 'SHELL-OFF', REPLY_WAIT: '3' })
  t.not(run.status, 0, 'replies stay with the requesting connection')
  t.equal(await tb.handle.registry.getDevice('sensor-SHELL-OFF'), null)
})
