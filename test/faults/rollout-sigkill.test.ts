/**
 * Fault: the broker process driving a rollout is SIGKILLed in the middle of it
 * (its first wave published, the rest to come), two broker processes on one
 * Redis. The other process takes the `rollouts` lease over once it expires and
 * completes the rollout; no device is changed twice (each has exactly one
 * version of the rollout). Real MQTT.js devices on the surviving process apply
 * what they receive, whichever process published it.
 */
import { Redis } from 'ioredis'
import type { MqttClient } from 'mqtt'
import t from 'tap'
import type { Rollout } from '../../broker/rollouts.js'
import { createDeviceConfigStore } from '../../broker/store/create-device-configs.js'
import { createRegistry } from '../../broker/store/create-registry.js'
import { adminRequest } from '../helpers/admin.js'
import { connect, devPki, endClient, publish, subscribe, waitFor } from '../helpers/broker.js'
import { registerDeviceIn, startBrokerProcess } from '../helpers/broker-process.js'
import { startRedisServer } from '../helpers/redis-server.js'

const N = 30
const LEASE_KEY = 'cfg:lease:rollouts'

t.test('the driving process SIGKILLed mid-rollout: the other takes the lease over and completes it, no device changed twice', async (t) => {
  const redis = await startRedisServer()
  t.teardown(() => redis.stop())
  const pki = await devPki()
  const registry = createRegistry({ redisUrl: redis.url, onError: () => undefined })
  const store = createDeviceConfigStore({ redisUrl: redis.url })
  const raw = new Redis(redis.url)
  t.teardown(async () => { await store.close(); await registry.close(); raw.disconnect() })

  // devices registered with version 1 applied, as registration and their first ack would have left them
  const ids = Array.from({ length: N }, (_, i) => `rk-${String(i).padStart(2, '0')}`)
  const creds = []
  for (const id of ids) {
    creds.push(await registerDeviceIn(registry, pki, id))
    await store.commit(id, { template: 'test', config: { interval: 10 }, overrides: {}, author: 'registration', at: Date.now() })
    await store.markDelivered(id, 1, Date.now())
    await store.recordAck(id, 1, 'applied', Date.now())
  }

  const a = await startBrokerProcess({ redisUrl: redis.url, pki })
  const idOf = async (p: typeof a): Promise<string> => {
    await waitFor(() => p.auditLines().some((l) => l.event === 'broker.started'), 10_000, 'broker.started in the audit log')
    return p.auditLines().find((l) => l.event === 'broker.started')!.brokerId as string
  }
  const aId = await idOf(a)
  const b = await startBrokerProcess({ redisUrl: redis.url, pki })
  const bId = await idOf(b)
  t.equal(await raw.get(LEASE_KEY), aId, 'the first process holds the lease and drives')

  // the devices live on the process that survives; A's publishes reach them through Redis
  const received = new Map<string, number[]>()
  const clients: MqttClient[] = []
  t.teardown(() => Promise.all(clients.map((c) => endClient(c).catch(() => undefined))))
  for (const [i, id] of ids.entries()) {
    const client = await connect(b, creds[i]!, { clientId: id })
    clients.push(client)
    client.on('message', (topic, payload) => {
      if (topic !== `devices/${id}/config` || payload.length === 0) return
      const { version } = JSON.parse(payload.toString()) as { version: number }
      received.set(id, [...received.get(id) ?? [], version])
      publish(client, `devices/${id}/config/ack`, JSON.stringify({ version, status: 'applied' })).catch(() => undefined)
    })
    await subscribe(client, `devices/${id}/config`)
  }

  const started = await adminRequest(a.adminPort, pki, 'POST', '/v1/rollouts', {
    body: { target: { template: 'test' }, config: { interval: 5 }, waves: [10, 50, 100], minWaitSeconds: 2, abortThreshold: 0.2 }
  })
  t.equal(started.status, 200, started.status === 200 ? 'started through A\'s admin API' : started.raw)
  const id = (started.body as Rollout).id
  const author = `rollout ${id}`
  // the first wave (3 devices) has its version: A dies while the rollout waits out the wave
  await waitFor(() => [...received.values()].filter((v) => v.includes(2)).length >= 3, 10_000, 'the first wave at the devices')
  a.kill()
  await a.exited()
  const changedBeforeKill = [...received.values()].filter((v) => v.includes(2)).length
  t.ok(changedBeforeKill < N, `killed in the middle (${changedBeforeKill} of ${N} devices had their version)`)

  let last: Rollout | null = null
  const deadline = Date.now() + 30_000
  while (Date.now() < deadline) {
    const res = await adminRequest(b.adminPort, pki, 'GET', `/v1/rollouts/${id}`)
    last = res.body as Rollout
    if (last.status === 'completed' || last.status === 'aborted') break
    await new Promise((resolve) => setTimeout(resolve, 200))
  }
  t.equal(last?.status, 'completed', last?.status === 'completed' ? 'B completed it' : JSON.stringify(last))
  t.equal(await raw.get(LEASE_KEY), bId, 'the other process holds the lease')
  t.match(last?.waves, [{ targeted: 3, published: 3, applied: 3 }, { targeted: 12, published: 12, applied: 12 }, { targeted: 15, published: 15, applied: 15 }])

  const versions = await Promise.all(ids.map(async (d) => (await store.history(d, 50)).filter((v) => v.author === author)))
  t.strictSame(versions.map((v) => v.length), ids.map(() => 1), 'every device changed exactly once by the rollout')
  t.strictSame(ids.map((d) => [...new Set(received.get(d))]), ids.map(() => [2]), 'and received that one new version only')
  await b.stop()
  const advanced = b.auditLines().filter((l) => l.event === 'rollout.advanced' && l.rolloutId === id).map((l) => l.reason)
  t.strictSame(advanced, ['wave 2 of 3: 50%', 'wave 3 of 3: 100%'], 'B started the waves after the first')
})
