/**
 * Attack: a host with an IPv6 /64 (the usual allocation for one subscriber) has
 * 2^64 source addresses. Keyed on the full address, every per-address limit of
 * CONTRACT §11 (pending connections and connects per address at accept,
 * provisioning requests per address) and the token endpoint's failed attempts
 * per address gave it that many budgets.
 * Defence: broker/address-budget.ts keys them on the /64 (an IPv4-mapped address
 * on its IPv4 address); the audit keeps the full address.
 * The listener and the throttles take the address as a string, so the addresses
 * of one /64 are given here as strings: loopback offers only ::1.
 */
import t from 'tap'
import { budgetKeyOf } from '../../broker/address-budget.js'
import { Admission } from '../../broker/listener/admission.js'
import { createThrottle } from '../../plugins/provisioning/throttle.js'
import { startRedisServer } from '../helpers/redis-server.js'

t.test('the budget of an address', async (t) => {
  const cases: Array<[string, string]> = [
    ['192.0.2.7', '192.0.2.7'],
    ['::ffff:192.0.2.7', '192.0.2.7'],
    ['::FFFF:192.0.2.7', '192.0.2.7'],
    ['2001:db8:1:2::a', '2001:db8:1:2::/64'],
    ['2001:0db8:0001:0002:ffff:ffff:ffff:ffff', '2001:db8:1:2::/64'],
    ['2001:DB8:1:2:0:0:0:1', '2001:db8:1:2::/64'],
    ['2001:db8::1', '2001:db8:0:0::/64'],
    ['2001:db8:1::', '2001:db8:1:0::/64'],
    ['::1', '0:0:0:0::/64'],
    ['fe80::1%eth0', 'fe80:0:0:0::/64'],
    ['64:ff9b::192.0.2.7', '64:ff9b:0:0::/64'],
    ['1:2:3:4:5:6:192.0.2.7', '1:2:3:4::/64'],
    // not an address (the listener says 'unknown' when the socket has none): its own key
    ['unknown', 'unknown'],
    ['not:an:address', 'not:an:address']
  ]
  for (const [address, key] of cases) t.equal(budgetKeyOf(address), key, address)
  t.not(budgetKeyOf('2001:db8:1:2::a'), budgetKeyOf('2001:db8:1:3::a'), 'the next /64 is another budget')
})

t.test('pending connections per address: one /64 shares one budget at accept', async (t) => {
  const admission = new Admission({ maxConnections: 1000, maxPendingPerAddress: 10, connectRatePerAddress: 1000 })
  const sameNet = Array.from({ length: 12 }, (_v, i) => `2001:db8:1:2::${(i + 1).toString(16)}`)
  const verdicts = sameNet.map((a) => admission.admit(a))
  t.same(verdicts.filter((v) => v === null).length, 10, 'ten admitted from the /64')
  t.same(verdicts.slice(10), ['TooManyPendingConnections', 'TooManyPendingConnections'], 'the eleventh and twelfth address of the /64 refused')
  t.equal(admission.admit('2001:db8:1:3::1'), null, 'the next /64 is not affected')
  t.equal(admission.admit('192.0.2.1'), null, 'nor an IPv4 address')
  admission.settle(sameNet[0]!)
  t.equal(admission.admit('2001:db8:1:2::ffff'), null, 'a settled connection frees the /64 budget, whichever address it had')
})

t.test('connects per minute per address: one /64 shares one bucket', async (t) => {
  const admission = new Admission({ maxConnections: 1000, maxPendingPerAddress: 1000, connectRatePerAddress: 5 }, () => 0)
  const verdicts = Array.from({ length: 7 }, (_v, i) => admission.admit(`2001:db8:9:9::${i + 1}`))
  t.same(verdicts, [null, null, null, null, null, 'ConnectRateExceeded', 'ConnectRateExceeded'])
})

for (const store of ['memory', 'redis'] as const) {
  t.test(`provisioning requests per address (${store}): one /64 shares one budget`, async (t) => {
    const redis = store === 'redis' ? await startRedisServer() : null
    t.teardown(() => redis?.stop())
    const throttle = createThrottle({ perAddress: 3, perClaimCertificate: 100, now: Date.now, redisUrl: redis?.url })
    t.teardown(() => throttle.close())
    const got = []
    for (let i = 1; i <= 5; i++) got.push(await throttle.take(`2001:db8:5:6::${i}`, 'claim-a'))
    t.same(got, ['allow', 'allow', 'allow', 'address', 'address'], 'three from the /64, then refused, whichever address asks')
    t.equal(await throttle.take('2001:db8:5:7::1', 'claim-a'), 'allow', 'another /64 still provisions')
    t.equal(await throttle.take('::ffff:192.0.2.9', 'claim-a'), 'allow')
    t.equal(await throttle.take('192.0.2.9', 'claim-a'), 'allow')
    t.equal(await throttle.take('192.0.2.9', 'claim-a'), 'allow')
    t.equal(await throttle.take('::ffff:192.0.2.9', 'claim-a'), 'address', 'an IPv4-mapped address spends its IPv4 address\'s budget')
  })
}
