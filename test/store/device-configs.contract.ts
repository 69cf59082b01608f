/**
 * What every DeviceConfigStore implementation must do; device-configs.test.ts
 * runs it against each one so memory and Redis cannot drift apart.
 */
import type { Test } from 'tap'
import type { CommitInput, DeviceConfigStore } from '../../broker/store/device-configs.js'
import { canonicalJson, configHash, HISTORY_KEEP } from '../../broker/store/device-configs.js'
import { eventually } from './registry.contract.js'

export type MakeDeviceConfigStore = (opts: { now: () => number }) => Promise<{ store: DeviceConfigStore, cleanup: () => Promise<void> }>

const T0 = 1_700_000_000_000

/** device ids may contain `:`, `.`, `-`, `_` (DEVICE_ID): keys built from them must not collide */
const ID = 'sensor:eu.1'

export const commitInput = (config: Record<string, unknown>, over: Partial<CommitInput> = {}): CommitInput => ({
  template: 'thermostat', config, author: 'admin-alice', at: T0, ...over
})

export function deviceConfigsContract (t: Test, name: string, make: MakeDeviceConfigStore): void {
  async function setup (t: Test): Promise<{ store: DeviceConfigStore, advance: (ms: number) => number }> {
    let clock = T0
    const { store, cleanup } = await make({ now: () => clock })
    t.teardown(cleanup)
    return { store, advance: (ms) => (clock += ms) }
  }

  t.test(`${name}: template configuration round trip`, async (t) => {
    const { store } = await setup(t)
    t.equal(await store.getTemplateConfig('thermostat'), null, 'absent before set')
    await store.setTemplateConfig('thermostat', { interval: 60, nested: { a: [1, 2] } }, 'admin-alice', T0)
    await store.setTemplateConfig('other', { interval: 5 }, 'admin-bob', T0 + 1)
    t.strictSame(await store.getTemplateConfig('thermostat'), { config: { interval: 60, nested: { a: [1, 2] } }, author: 'admin-alice', at: T0 })
    await store.setTemplateConfig('thermostat', { interval: 30 }, 'admin-bob', T0 + 2)
    t.strictSame(await store.getTemplateConfig('thermostat'), { config: { interval: 30 }, author: 'admin-bob', at: T0 + 2 }, 'replaced')
    t.strictSame(await store.getState(ID), null, 'a template configuration makes no device version')
  })

  t.test(`${name}: commit numbers versions +1 and keeps the state`, async (t) => {
    const { store } = await setup(t)
    t.equal(await store.getState(ID), null, 'no state before the first version')
    const v1 = await store.commit(ID, commitInput({ interval: 60 }, { author: 'registration' }))
    t.strictSame(v1, { deviceId: ID, version: 1, config: { interval: 60 }, author: 'registration', at: T0, hash: configHash({ interval: 60 }), overrides: {} })
    const v2 = await store.commit(ID, commitInput({ interval: 30 }, { overrides: { interval: 30 }, reason: 'operator', at: T0 + 5 }))
    t.strictSame(v2, { deviceId: ID, version: 2, config: { interval: 30 }, author: 'admin-alice', at: T0 + 5, hash: configHash({ interval: 30 }), reason: 'operator', overrides: { interval: 30 } })
    t.strictSame(await store.getState(ID), {
      deviceId: ID, template: 'thermostat', current: v2, lastKnownGood: null, status: 'pending', overrides: { interval: 30 }, deliveredAt: null
    })
    const v3 = await store.commit(ID, commitInput({ interval: 30, x: 1 }, { template: 'thermostat-v2' }))
    t.equal(v3?.version, 3)
    const state = await store.getState(ID)
    t.strictSame(state?.overrides, { interval: 30 }, 'overrides kept when not given')
    t.equal(state?.template, 'thermostat-v2', 'the template remembered')
    t.equal(await store.getState('sensor'), null, 'a device whose id is a prefix of another one has no state')
    const other = await store.commit('sensor', commitInput({ interval: 1 }))
    t.equal(other?.version, 1, 'versions are per device')
    t.equal((await store.getState(ID))?.current?.version, 3, 'the other device left alone')
  })

  t.test(`${name}: every version records the overrides in force from it on (given, else inherited)`, async (t) => {
    const { store } = await setup(t)
    t.strictSame((await store.commit(ID, commitInput({ i: 1 })))?.overrides, {}, 'first version, none given: none')
    t.strictSame((await store.commit(ID, commitInput({ i: 2 }, { overrides: { a: { b: 1 } } })))?.overrides, { a: { b: 1 } }, 'given')
    t.strictSame((await store.commit(ID, commitInput({ i: 3 })))?.overrides, { a: { b: 1 } }, 'not given: the device\'s, inherited')
    t.strictSame((await store.commit(ID, commitInput({ i: 4 }, { overrides: {} })))?.overrides, {}, 'given empty: replaced by none')
    t.strictSame((await store.commit(ID, commitInput({ i: 5 }, { expectedVersion: 1, overrides: { z: 1 } }))), null, 'a refused commit')
    t.strictSame((await store.commit(ID, commitInput({ i: 5 })))?.overrides, {}, 'the refused commit\'s overrides were not kept')
    t.strictSame((await store.history(ID, 10)).map((v) => [v.version, v.overrides]),
      [[5, {}], [4, {}], [3, { a: { b: 1 } }], [2, { a: { b: 1 } }], [1, {}]], 'as stored in the history')
    t.strictSame((await store.getVersion(ID, 3))?.overrides, { a: { b: 1 } }, 'and by number')
    t.strictSame((await store.getState(ID))?.current?.overrides, {}, 'and in the state\'s current version')
  })

  t.test(`${name}: commit compare-and-set on expectedVersion`, async (t) => {
    const { store } = await setup(t)
    t.equal(await store.commit(ID, commitInput({ a: 1 }, { expectedVersion: 3 })), null, 'no version yet, expected 3: refused')
    t.equal(await store.getState(ID), null, 'a refused commit changes nothing')
    t.equal((await store.commit(ID, commitInput({ a: 1 }, { expectedVersion: null })))?.version, 1, 'expected none: first version')
    t.equal(await store.commit(ID, commitInput({ a: 2 }, { expectedVersion: null })), null, 'expected none, has 1: refused')
    t.equal(await store.commit(ID, commitInput({ a: 2 }, { expectedVersion: 2, overrides: { a: 2 } })), null, 'expected 2, has 1: refused')
    t.strictSame((await store.getState(ID))?.overrides, {}, 'the refused commit did not replace the overrides')
    t.equal((await store.commit(ID, commitInput({ a: 2 }, { expectedVersion: 1 })))?.version, 2)

    const racers = await Promise.all(Array.from({ length: 10 }, (_, i) => store.commit(ID, commitInput({ a: 10 + i }, { expectedVersion: 2 }))))
    const winners = racers.filter((v) => v !== null)
    t.equal(winners.length, 1, 'ten commits expecting version 2: one winner')
    t.strictSame((await store.getState(ID))?.current, winners[0], 'the stored version is the winner\'s')
    const unconditional = await Promise.all(Array.from({ length: 5 }, (_, i) => store.commit(ID, commitInput({ b: i }))))
    t.strictSame(unconditional.map((v) => v?.version).sort(), [4, 5, 6, 7, 8], 'unconditional commits each get their own version')
  })

  t.test(`${name}: the hash is stable across key order`, async (t) => {
    const { store } = await setup(t)
    const a = { b: 1, a: { y: [{ q: 1, p: 2 }], x: 'é' }, '10': true, '2': null }
    const b = { '2': null, a: { x: 'é', y: [{ p: 2, q: 1 }] }, '10': true, b: 1 }
    t.equal(canonicalJson(a), '{"10":true,"2":null,"a":{"x":"é","y":[{"p":2,"q":1}]},"b":1}', 'keys sorted as strings, recursively')
    t.equal(canonicalJson({ u: undefined, n: 1.5, s: 'a"b' }), '{"n":1.5,"s":"a\\"b"}', 'undefined members left out, strings escaped')
    t.equal(configHash(a), configHash(b))
    t.match(configHash(a), /^[0-9a-f]{64}$/)
    t.not(configHash({ a: [1, 2] }), configHash({ a: [2, 1] }), 'array order counts')
    const v1 = await store.commit(ID, commitInput(a))
    const v2 = await store.commit(ID, commitInput(b))
    t.equal(v1?.hash, v2?.hash, 'same content, same hash')
    t.equal((await store.getVersion(ID, 1))?.hash, configHash(b), 'as stored')
  })

  t.test(`${name}: history: newest first, limited, trimmed, numbers never reused`, async (t) => {
    const { store } = await setup(t)
    t.strictSame(await store.history(ID, 10), [], 'empty before the first version')
    const total = HISTORY_KEEP + 5
    for (let i = 1; i <= total; i++) await store.commit(ID, commitInput({ n: i }, { at: T0 + i, author: i % 2 ? 'admin-alice' : 'rollback' }))
    const three = await store.history(ID, 3)
    t.strictSame(three.map((v) => v.version), [total, total - 1, total - 2], 'newest first')
    t.strictSame(three.map((v) => v.config), [{ n: total }, { n: total - 1 }, { n: total - 2 }])
    t.equal(three[1]?.author, total % 2 ? 'rollback' : 'admin-alice', 'with its author')
    t.equal(three[2]?.at, T0 + total - 2, 'and its time')
    const all = await store.history(ID, 1000)
    t.ok(all.length >= 20, `at least 20 kept (${all.length})`)
    t.equal(all.length, HISTORY_KEEP, 'older ones trimmed')
    t.equal(all.at(-1)?.version, total - HISTORY_KEEP + 1, 'the oldest kept')
    t.equal(await store.getVersion(ID, 1), null, 'a trimmed version is gone')
    t.strictSame((await store.getVersion(ID, total - 1))?.config, { n: total - 1 }, 'a kept version by number')
    t.equal(await store.getVersion(ID, total + 1), null, 'a future version does not exist')
    t.strictSame(await store.history(ID, 0), [], 'limit 0')
    t.equal((await store.commit(ID, commitInput({ n: 0 })))?.version, total + 1, 'the next number follows the last, not the history\'s length')
  })

  t.test(`${name}: markDelivered starts the ack timer once, for the current version`, async (t) => {
    const { store } = await setup(t)
    t.equal(await store.markDelivered(ID, 1, T0), false, 'no version yet')
    await store.commit(ID, commitInput({ a: 1 }))
    t.equal(await store.markDelivered(ID, 2, T0), false, 'not the current version')
    t.equal(await store.markDelivered(ID, 1, T0 + 100), true)
    t.equal(await store.markDelivered(ID, 1, T0 + 200), false, 'only once')
    t.equal((await store.getState(ID))?.deliveredAt, T0 + 100, 'the first delivery counts')
    t.strictSame(await store.pendingAcks(T0 + 99, 10), [], 'not due before its delivery time')
    t.strictSame(await store.pendingAcks(T0 + 100, 10), [{ deviceId: ID, version: 1, deliveredAt: T0 + 100 }], 'due at its delivery time')

    await store.commit(ID, commitInput({ a: 2 }))
    t.equal((await store.getState(ID))?.deliveredAt, null, 'a new version clears deliveredAt')
    t.strictSame(await store.pendingAcks(T0 + 1000, 10), [], 'and forgets the old version\'s pending ack')
    t.equal(await store.markDelivered(ID, 1, T0 + 300), false, 'the old version can no longer be delivered')
    t.equal(await store.markDelivered(ID, 2, T0 + 300), true)
    t.strictSame(await store.pendingAcks(T0 + 1000, 10), [{ deviceId: ID, version: 2, deliveredAt: T0 + 300 }])
  })

  t.test(`${name}: pendingAcks: oldest first, limited, acknowledged ones gone`, async (t) => {
    const { store } = await setup(t)
    const ids = ['d-a', 'd-b', 'd-c', 'd-d', 'd:e']
    for (const id of ids) await store.commit(id, commitInput({ a: 1 }))
    await store.markDelivered('d-c', 1, T0 + 10)
    await store.markDelivered('d-a', 1, T0 + 30)
    await store.markDelivered('d-b', 1, T0 + 20)
    await store.markDelivered('d:e', 1, T0 + 20)
    // d-d never delivered: not a timeout candidate
    t.strictSame((await store.pendingAcks(T0 + 100, 10)).map((p) => p.deviceId), ['d-c', 'd-b', 'd:e', 'd-a'], 'by delivery time')
    t.strictSame((await store.pendingAcks(T0 + 100, 2)).map((p) => p.deviceId), ['d-c', 'd-b'], 'limited')
    t.strictSame((await store.pendingAcks(T0 + 20, 10)).map((p) => p.deviceId), ['d-c', 'd-b', 'd:e'], 'delivered at or before')
    await store.recordAck('d-b', 1, 'applied', T0 + 40)
    await store.recordAck('d-c', 1, 'failed', T0 + 40)
    await store.claimTimeout('d:e', 1, T0 + 40)
    t.strictSame(await store.pendingAcks(T0 + 100, 10), [{ deviceId: 'd-a', version: 1, deliveredAt: T0 + 30 }], 'acked and timed out ones removed')
  })

  t.test(`${name}: recordAck: applied, failed, stale, duplicate`, async (t) => {
    const { store } = await setup(t)
    t.strictSame(await store.recordAck(ID, 1, 'applied', T0), { result: 'stale', current: null }, 'no version yet: stale')
    await store.commit(ID, commitInput({ a: 1 }))
    await store.markDelivered(ID, 1, T0 + 1)
    t.strictSame(await store.recordAck(ID, 2, 'applied', T0 + 2), { result: 'stale', current: 1 }, 'from the future: stale')
    const applied = await store.recordAck(ID, 1, 'applied', T0 + 2)
    t.equal(applied.result, 'recorded')
    if (applied.result === 'recorded') {
      t.match(applied.state, { deviceId: ID, status: 'current', lastKnownGood: 1, template: 'thermostat' })
      t.equal(applied.state.current?.version, 1)
    }
    t.strictSame(await store.recordAck(ID, 1, 'applied', T0 + 3), { result: 'duplicate' }, 'the same ack again')
    t.strictSame(await store.recordAck(ID, 1, 'failed', T0 + 3), { result: 'duplicate' }, 'a contradicting ack after the first')

    await store.commit(ID, commitInput({ a: 2 }))
    t.equal((await store.getState(ID))?.lastKnownGood, 1, 'a new version keeps the last known good')
    t.strictSame(await store.recordAck(ID, 1, 'applied', T0 + 4), { result: 'stale', current: 2 }, 'a late ack of the previous version: stale')
    // the device may ack before the broker recorded the delivery
    const failed = await store.recordAck(ID, 2, 'failed', T0 + 5)
    t.equal(failed.result, 'recorded', 'an ack before markDelivered counts')
    if (failed.result === 'recorded') t.match(failed.state, { status: 'failed', lastKnownGood: 1 })
    t.equal(await store.markDelivered(ID, 2, T0 + 6), false, 'an acknowledged version is not delivered again')
    t.strictSame(await store.pendingAcks(T0 + 100, 10), [])
    t.equal(await store.claimTimeout(ID, 2, T0 + 7), false, 'an acknowledged version cannot time out')

    const acks = await Promise.all(Array.from({ length: 10 }, (_, i) => store.recordAck('racer', 1, i % 2 ? 'applied' : 'failed', T0)))
    t.equal(acks.filter((a) => a.result === 'stale').length, 10, 'acks to a device with no version: all stale')
    await store.commit('racer', commitInput({ a: 1 }))
    const raced = await Promise.all(Array.from({ length: 10 }, (_, i) => store.recordAck('racer', 1, i % 2 ? 'applied' : 'failed', T0)))
    t.equal(raced.filter((a) => a.result === 'recorded').length, 1, 'ten racing acks: one recorded')
    t.equal(raced.filter((a) => a.result === 'duplicate').length, 9, 'nine duplicates')
  })

  t.test(`${name}: claimTimeout has exactly one winner`, async (t) => {
    const { store } = await setup(t)
    t.equal(await store.claimTimeout(ID, 1, T0), false, 'no version yet')
    await store.commit(ID, commitInput({ a: 1 }))
    await store.recordAck(ID, 1, 'applied', T0)
    await store.commit(ID, commitInput({ a: 2 }))
    await store.markDelivered(ID, 2, T0 + 1)
    t.equal(await store.claimTimeout(ID, 1, T0 + 2), false, 'not the current version')
    const claims = await Promise.all(Array.from({ length: 10 }, () => store.claimTimeout(ID, 2, T0 + 2)))
    t.equal(claims.filter(Boolean).length, 1, 'ten racing claims: one true')
    t.match(await store.getState(ID), { status: 'failed', lastKnownGood: 1 }, 'timed out: failed, last known good kept')
    t.strictSame(await store.pendingAcks(T0 + 100, 10), [], 'no longer a candidate')
    t.strictSame(await store.recordAck(ID, 2, 'applied', T0 + 3), { result: 'duplicate' }, 'an ack after the timeout changes nothing')
    t.equal((await store.getState(ID))?.lastKnownGood, 1)
  })

  t.test(`${name}: countByStatus follows every transition`, async (t) => {
    const { store } = await setup(t)
    t.strictSame(await store.countByStatus(), { current: 0, pending: 0, failed: 0 })
    for (const id of ['c1', 'c2', 'c3', 'c4']) await store.commit(id, commitInput({ a: 1 }))
    t.strictSame(await store.countByStatus(), { current: 0, pending: 4, failed: 0 })
    await store.recordAck('c1', 1, 'applied', T0)
    await store.recordAck('c2', 1, 'failed', T0)
    await store.markDelivered('c3', 1, T0)
    await store.claimTimeout('c3', 1, T0)
    await store.recordAck('c1', 1, 'failed', T0) // duplicate: no change
    t.strictSame(await store.countByStatus(), { current: 1, pending: 1, failed: 2 })
    await store.commit('c2', commitInput({ a: 0 }, { author: 'rollback' }))
    await store.commit('c1', commitInput({ a: 2 }))
    await store.commit('c4', commitInput({ a: 2 }))
    t.strictSame(await store.countByStatus(), { current: 0, pending: 3, failed: 1 })
  })

  t.test(`${name}: rollout records round trip`, async (t) => {
    const { store } = await setup(t)
    t.equal(await store.getRollout('r1'), null)
    t.strictSame(await store.listRollouts(), [])
    const r2 = { id: 'r2', status: 'running', waves: [{ percent: 5, targeted: 10 }], target: { template: 'thermostat' } }
    const r1 = { id: 'r1', status: 'paused', waves: [], nested: { deep: { list: [1, 'two', null] } } }
    await store.putRollout('r2', r2)
    await store.putRollout('r1', r1)
    t.strictSame(await store.getRollout('r2'), r2)
    t.strictSame(await store.listRollouts(), [r1, r2], 'every record, in id order')
    await store.putRollout('r2', { id: 'r2', status: 'completed' })
    t.strictSame(await store.getRollout('r2'), { id: 'r2', status: 'completed' }, 'put replaces the record')
    const mutable = { id: 'r3', waves: [1] }
    await store.putRollout('r3', mutable)
    mutable.waves.push(2)
    t.strictSame(await store.getRollout('r3'), { id: 'r3', waves: [1] }, 'a caller\'s later mutation does not reach the store')
  })

  t.test(`${name}: lease: one holder, renewal, release, takeover after the TTL`, async (t) => {
    const { store, advance } = await setup(t)
    t.equal(await store.acquireLease('rollouts', 'p1', 60_000), true, 'free: taken')
    t.equal(await store.acquireLease('rollouts', 'p2', 60_000), false, 'held by another: refused')
    t.equal(await store.acquireLease('other', 'p2', 60_000), true, 'leases are per name')
    t.equal(await store.acquireLease('rollouts', 'p1', 60_000), true, 'the holder renews')
    await store.releaseLease('rollouts', 'p2')
    t.equal(await store.acquireLease('rollouts', 'p2', 60_000), false, 'another owner cannot release it')
    await store.releaseLease('rollouts', 'p1')
    t.equal(await store.acquireLease('rollouts', 'p2', 60_000), true, 'released: another takes it')

    const raced = await Promise.all(Array.from({ length: 10 }, (_, i) => store.acquireLease('raced', `p${i}`, 60_000)))
    t.equal(raced.filter(Boolean).length, 1, 'ten racing owners: one holder')

    // the TTL: short, and the memory store's clock moved on as well (Redis keeps its own)
    // (1 s: the second call must come before it runs out on a loaded machine, on Redis's own clock)
    t.equal(await store.acquireLease('short', 'dead', 1000), true)
    t.equal(await store.acquireLease('short', 'alive', 1000), false, 'not before the TTL')
    advance(1000)
    t.ok(await eventually(() => store.acquireLease('short', 'alive', 60_000), 5000), 'taken over once the holder\'s TTL ran out')
    t.equal(await store.acquireLease('short', 'dead', 1000), false, 'the old holder lost it')
  })
}
