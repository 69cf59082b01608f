/**
 * Attack: two broker processes on one Redis. A service holds a clean session on
 * process A for more than a day. Its owner record was written once at connect
 * with a 24 h TTL, so it lapsed while the session lived; then the public claim
 * certificate, on process B, used the service's client id: B checks live
 * sessions on B only and the (gone) record, so it accepted, and Aedes closed
 * A's service client (a newer client of the same id anywhere in the cluster).
 * No takeover was refused or audited, and the claim held the id.
 * Defence: each process renews the records of its live clean sessions every
 * SESSION_REVALIDATE_SECONDS (keepLiveOwnersAlive, plugins/session-owners.ts).
 * The day is simulated by PEXPIRE on the record, which is what its TTL does.
 */
import t from 'tap'
import { Redis } from 'ioredis'
import { connect, credentials, endClient, sleep, startBroker } from '../helpers/broker.js'
import { startBrokerProcess } from '../helpers/broker-process.js'
import { connackOf } from '../helpers/revocation.js'
import { startRedisServer } from '../helpers/redis-server.js'

const SERVICE_ID = 'ingest-long-lived'
const DAY_MS = 24 * 3600_000

/** polls a Redis read until it holds (the renewal is a timer in the broker: there is no event to wait on) */
async function until (check: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const start = Date.now()
  while (!await check()) {
    if (Date.now() - start > timeoutMs) throw new Error(`timed out waiting for ${what}`)
    await sleep(50)
  }
}

t.test('a live clean session\'s owner record is renewed, so another identity on another process is refused (redis)', async (t) => {
  const redis = await startRedisServer()
  const a = await startBroker({ store: 'redis', redis, overrides: { SESSION_REVALIDATE_SECONDS: 1 } })
  const b = await startBrokerProcess({ redisUrl: redis.url, pki: a.pki })
  const onB = { port: b.port, pki: a.pki }
  const raw = new Redis(redis.url, { maxRetriesPerRequest: 1 })
  t.teardown(async () => {
    raw.disconnect()
    await b.stop()
    await a.close()
    await redis.stop()
  })

  const service = await connect(a, credentials(a.pki, 'service'), { clientId: SERVICE_ID, clean: true })
  let closed = false
  service.on('close', () => { closed = true })
  const key = `jitp:session-owner:${SERVICE_ID}`
  t.equal(await raw.get(key), 'service:backend-dev', 'the owner record names the service')
  // a day passes: the record has 3 s left (three renewal periods)
  await raw.pexpire(key, 3000)
  // the next renewal (SESSION_REVALIDATE_SECONDS: 1) puts its day back
  // either the renewal puts its day back (SESSION_REVALIDATE_SECONDS: 1) or the record lapses
  await until(async () => Number(await raw.pttl(key)) > DAY_MS - 60_000 || (await raw.exists(key)) === 0, 8000, 'the record renewed or gone')
  t.equal(await raw.get(key), 'service:backend-dev', 'renewed: still the service\'s')

  t.equal(await connackOf(onB, credentials(a.pki, 'claim'), SERVICE_ID), 2, 'the claim certificate on the other process: CONNACK 2')
  t.ok(service.connected && !closed, 'the service stays connected on its process')
  t.equal(await raw.get(key), 'service:backend-dev', 'and keeps its client id')
  await endClient(service)

  // once the session ends, its record is left to lapse (nothing is stored for a clean session)
  await raw.pexpire(key, 300)
  await until(async () => (await raw.exists(key)) === 0, 5000, 'the ended session\'s record lapses')
})
