/**
 * Fault: the broker's Redis pub/sub connections die (`CLIENT KILL TYPE pubsub`)
 * and a device certificate is revoked right away, from another registry instance
 * (another process): the notice is lost. Pub/sub is at most once, so the durable
 * revocation list decides: the device is disconnected within
 * SESSION_REVALIDATE_SECONDS (here 2 s), audited, and refused with CONNACK 5.
 * First when the subscriber comes back (re-check after the gap), then when it
 * cannot come back at all (Redis refuses new connections): only the periodic
 * re-validation is left, and it is enough.
 */
import { Redis } from 'ioredis'
import t from 'tap'
import { RedisRegistry } from '../../broker/store/redis-registry.js'
import { connect, registerDevice, startBroker, waitFor } from '../helpers/broker.js'
import { startRedisServer } from '../helpers/redis-server.js'
import { connackOf } from '../helpers/revocation.js'

const REVALIDATE_SECONDS = 2
const SLACK_MS = 3000

t.test('revocation with the pub/sub connection killed', async (t) => {
  const redis = await startRedisServer()
  t.teardown(() => redis.stop())
  const tb = await startBroker({ store: 'redis', redis, overrides: { SESSION_REVALIDATE_SECONDS: REVALIDATE_SECONDS } })
  t.teardown(() => tb.close())
  const raw = new Redis(redis.url)
  t.teardown(() => raw.quit())
  // the operator's side, as the CLI or another broker process would be
  const other = new RedisRegistry({ url: redis.url })
  t.teardown(() => other.close())
  t.ok(await other.ping(), 'the other registry is up')

  async function connectedDevice (deviceId: string) {
    const creds = await registerDevice(tb, deviceId)
    const client = await connect(tb, creds, { clientId: deviceId })
    const closed = { at: 0 }
    client.once('close', () => { closed.at = Date.now() })
    return { creds, client, closed }
  }

  function auditedClose (deviceId: string) {
    return tb.events('disconnect').find((l) => l.clientId === deviceId && l.errorCode === 'CertificateRevoked')
  }

  t.test('subscriber reconnects after the notice was published', async (t) => {
    const d = await connectedDevice('pubsub-killed-1')
    const killed = await raw.client('KILL', 'TYPE', 'pubsub')
    t.ok(Number(killed) >= 1, `pub/sub connections killed: ${String(killed)}`)
    const revokedAt = Date.now()
    t.equal(await other.revoke({ certificateId: d.creds.certificateId }), true, 'revoked at once, notice lost')

    await waitFor(() => d.closed.at > 0, REVALIDATE_SECONDS * 1000 + SLACK_MS, 'the device to be disconnected')
    t.ok(d.closed.at - revokedAt <= REVALIDATE_SECONDS * 1000 + SLACK_MS, `disconnected ${d.closed.at - revokedAt} ms after the revocation`)
    await waitFor(() => auditedClose('pubsub-killed-1') !== undefined, 2000, 'the disconnect audit line')
    t.match(auditedClose('pubsub-killed-1'), { role: 'device', deviceId: 'pubsub-killed-1', certificateId: d.creds.certificateId, reason: /re-validation/ })
    t.equal(await connackOf(tb, d.creds, 'pubsub-killed-1'), 5, 'its reconnect: CONNACK 5')
    d.client.end(true)
  })

  t.test('subscriber cannot come back: the periodic re-validation alone', async (t) => {
    const d = await connectedDevice('pubsub-killed-2')
    const pubsubClients = String(await raw.call('CLIENT', 'LIST', 'TYPE', 'pubsub')).split('\n').filter((l) => l.trim() !== '').length
    const connected = Number(/connected_clients:(\d+)/.exec(await raw.info('clients'))?.[1])
    t.ok(pubsubClients >= 1 && connected > pubsubClients, `${pubsubClients} pub/sub of ${connected} connections`)
    // atomically: kill them and leave no room for a new connection, so no subscriber returns
    const replies = await raw.multi().client('KILL', 'TYPE', 'pubsub').config('SET', 'maxclients', String(connected - pubsubClients)).exec()
    t.teardown(() => raw.config('SET', 'maxclients', '10000'))
    t.ok(replies?.every(([err]) => err === null), 'killed, and Redis refuses new connections')
    const revokedAt = Date.now()
    t.equal(await other.revoke({ certificateId: d.creds.certificateId }), true, 'revoked, notice lost')

    await waitFor(() => d.closed.at > 0, REVALIDATE_SECONDS * 1000 + SLACK_MS, 'the device to be disconnected')
    t.ok(d.closed.at - revokedAt <= REVALIDATE_SECONDS * 1000 + SLACK_MS, `disconnected ${d.closed.at - revokedAt} ms after the revocation, with no subscriber`)
    t.equal(String(await raw.call('CLIENT', 'LIST', 'TYPE', 'pubsub')).trim(), '', 'no subscriber came back meanwhile')
    await waitFor(() => auditedClose('pubsub-killed-2') !== undefined, 2000, 'the disconnect audit line')
    t.match(auditedClose('pubsub-killed-2'), { role: 'device', certificateId: d.creds.certificateId, reason: /re-validation/ })

    await raw.config('SET', 'maxclients', '10000')
    t.equal(await connackOf(tb, d.creds, 'pubsub-killed-2'), 5, 'its reconnect: CONNACK 5')
    d.client.end(true)
  })
})
