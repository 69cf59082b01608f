/**
 * Redis going away while clients are connected: the broker stays up, /readyz
 * turns 503, and readiness comes back when Redis does.
 */
import t from 'tap'
import { connect, credentials, endClient, registerDevice, startBroker, sleep } from '../helpers/broker.js'

async function readyStatus (port: number): Promise<number> {
  return (await fetch(`http://127.0.0.1:${port}/readyz`)).status
}

async function waitForStatus (port: number, want: number, timeoutMs: number): Promise<number> {
  const start = Date.now()
  let status = 0
  while (Date.now() - start < timeoutMs) {
    status = await readyStatus(port)
    if (status === want) return status
    await sleep(100)
  }
  return status
}

t.test('Redis outage and recovery', async (t) => {
  const tb = await startBroker({ store: 'redis' })
  t.teardown(() => tb.close())
  const dev = await registerDevice(tb, 'outage-1')
  const service = await connect(tb, credentials(tb.pki, 'service'))
  const device = await connect(tb, dev, { clientId: 'outage-1' })
  t.equal(await readyStatus(tb.httpPort), 200, 'ready with Redis up')

  await tb.redis!.kill()
  t.equal(await waitForStatus(tb.httpPort, 503, 5000), 503, '/readyz reports the outage')
  // traffic during the outage must not crash the process
  device.publish('devices/outage-1/telemetry', '{"ts":1,"seq":1,"values":{}}', { qos: 1 })
  await sleep(500)
  t.equal((await fetch(`http://127.0.0.1:${tb.httpPort}/healthz`)).status, 200, 'process still up')

  await tb.redis!.restart()
  t.equal(await waitForStatus(tb.httpPort, 200, 10000), 200, 'ready again after Redis returns')
  const again = await connect(tb, credentials(tb.pki, 'service'))
  t.ok(again.connected, 'new connections accepted after recovery')
  await endClient(again)
  service.end(true)
  device.end(true)
})
