/**
 * Attack: the holder of the (fleet-wide, public) claim certificate floods
 * provisioning from one address. The per-address limit is checked first and a
 * refused request consumes nothing, so the flood cannot drain the claim
 * certificate's budget that every other device shares; with Redis the limits
 * hold across broker processes (CONTRACT §3.3, §11).
 */
import t from 'tap'
import type { IClientOptions } from 'mqtt'
import { STORES, credentials, connect, endClient, startBroker, type TestBroker } from '../helpers/broker.js'
import { request } from '../helpers/provisioning.js'
import { startRedisServer } from '../helpers/redis-server.js'

const PER_ADDRESS = 3
const PER_CLAIM_CERT = 5
const CREATE = '$provision/certificates/create/json'
const ATTACKER = '127.0.0.1'
const DEVICE = '127.0.0.2'

/** a claim connection from a given loopback address (Linux routes all of 127/8 to lo) */
function claimFrom (tb: TestBroker, localAddress: string, clientId: string) {
  return connect(tb, credentials(tb.pki, 'claim'), { clientId, localAddress } as IClientOptions)
}

async function outcomes (tb: TestBroker, localAddress: string, clientId: string, count: number): Promise<Array<number | 'accepted'>> {
  const claim = await claimFrom(tb, localAddress, clientId)
  const got: Array<number | 'accepted'> = []
  for (let i = 0; i < count; i++) {
    const r = await request(claim, CREATE, '')
    got.push(r.outcome === 'accepted' ? 'accepted' : Number(r.body.statusCode))
  }
  await endClient(claim)
  return got
}

for (const store of STORES) {
  t.test(`an address over its limit gets 429 without consuming the claim certificate's budget (${store}${store === 'redis' ? ', two brokers' : ''})`, async (t) => {
    const overrides = { PROVISION_RATE_PER_ADDRESS: PER_ADDRESS, PROVISION_RATE_PER_CLAIM_CERT: PER_CLAIM_CERT }
    const redis = store === 'redis' ? await startRedisServer() : undefined
    t.teardown(() => redis?.stop())
    const first = await startBroker({ store, redis, overrides })
    t.teardown(() => first.close())
    // with Redis a second broker process shares the limits; in memory there is one broker
    const second = redis ? await startBroker({ store, redis, overrides }) : first
    if (second !== first) t.teardown(() => second.close())

    // the attacker spreads its flood over both brokers
    const flood = [...await outcomes(first, ATTACKER, 'flood-1', 2), ...await outcomes(second, ATTACKER, 'flood-2', 8)]
    t.same(flood, ['accepted', 'accepted', 'accepted', 429, 429, 429, 429, 429, 429, 429],
      `the address limit (${PER_ADDRESS}/min) holds${redis ? ' across both brokers' : ''}`)

    // 3 of the claim certificate's 5 are used: a device elsewhere still provisions, until the fleet-wide limit
    const device = await outcomes(first, DEVICE, 'device-1', 3)
    t.same(device, ['accepted', 'accepted', 429], 'another address still provisions: the 7 refused requests consumed nothing of the claim certificate\'s budget, whose limit then holds')

    const throttled = [...first.events('provision.rejected'), ...(second === first ? [] : second.events('provision.rejected'))]
      .filter((l) => l.errorCode === 'Throttled')
    t.equal(throttled.length, 8, 'every refusal is audited as Throttled')
    t.equal(throttled.filter((l) => l.remoteAddress === ATTACKER).length, 7, 'seven for the attacker\'s address')
    t.ok(throttled.every((l) => l.statusCode === 429), 'with status 429')
    t.ok(throttled.some((l) => l.remoteAddress === DEVICE && String(l.reason).includes('claim certificate')), 'the last one names the claim certificate\'s limit')
  })
}
