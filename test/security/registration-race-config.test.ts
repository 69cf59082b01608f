/**
 * Attack: the holder of the public claim certificate sends one ownership token
 * with several serial numbers at once. The initial config is committed before
 * the registry's atomic step, so every racing request committed a version 1,
 * and the losers' stayed in the config store (state, history, pending ack) for
 * devices that do not exist: records seeded for the ids of devices still to
 * come, whose real registration then started at version 2. CONTRACT §3.3: after
 * a failed registration nothing of the device is left behind.
 * Defence: registrations in flight on a process are keyed by token and by device
 * id, the token from before it is read; a second request with either is refused
 * before it writes anything. Both stores.
 */
import t from 'tap'
import { cpSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { STORES, collect, connect, endClient, startBroker, subscribe, waitFor } from '../helpers/broker.js'
import { claimConnect, provision, request } from '../helpers/provisioning.js'

const REGISTER = '$provision/templates/sensor/provision/json'

for (const store of STORES) {
  t.test(`one token, three serials at once: nothing left of the losers (${store})`, async (t) => {
    const tb = await startBroker({ store })
    t.teardown(() => tb.close())
    const claim = await claimConnect(tb, `racer-${store}`)
    const created = await request(claim, '$provision/certificates/create/json', {})
    t.equal(created.outcome, 'accepted')
    const replies = collect(claim)
    await subscribe(claim, [`${REGISTER}/accepted`, `${REGISTER}/rejected`])
    const serials = ['RACE-0001', 'RACE-0002', 'RACE-0003']
    for (const serialNumber of serials) {
      claim.publish(REGISTER, JSON.stringify({ certificateOwnershipToken: created.body.certificateOwnershipToken, parameters: { serialNumber } }), { qos: 1 })
    }
    await waitFor(() => replies.filter((m) => m.topic.startsWith(REGISTER)).length === 3, 10_000, 'three replies')
    await endClient(claim)
    const outcomes = replies.filter((m) => m.topic.startsWith(REGISTER)).map((m) => ({ accepted: m.topic.endsWith('/accepted'), body: JSON.parse(m.payload) as Record<string, unknown> }))
    t.equal(outcomes.filter((o) => o.accepted).length, 1, 'one registration wins the token')
    for (const o of outcomes.filter((o) => !o.accepted)) t.match(o.body, { errorCode: 'InvalidCertificateOwnershipToken' }, 'the others are refused for the token')

    const winner = String(outcomes.find((o) => o.accepted)!.body.deviceId)
    for (const serial of serials) {
      const id = `sensor-${serial}`
      if (id === winner) continue
      t.equal(await tb.handle.registry.getDevice(id), null, `${id}: no device`)
      t.equal(await tb.handle.configs.state(id), null, `${id}: no config state`)
      t.same(await tb.handle.configs.history(id, 10), [], `${id}: no config history`)
    }
    t.same((await tb.handle.configs.history(winner, 10)).map((v) => v.version), [1], 'the winner has its version 1')

    // a loser's id registered later, by its real device: its first version is 1
    const later = serials.map((s) => `sensor-${s}`).find((id) => id !== winner)!
    const p = await provision(tb, later.slice('sensor-'.length), 'generated', { clientId: `later-${store}` })
    const device = await connect(tb, p.creds, { clientId: p.deviceId })
    const got = collect(device)
    await subscribe(device, `devices/${p.deviceId}/config`)
    await waitFor(() => got.length >= 1, 5000, 'its retained config')
    t.equal((JSON.parse(got[0]!.payload) as { version: number }).version, 1, 'version 1, nothing before it')
    await endClient(device)
  })
}

/** `checked`: the sensor template with a pre-provisioning check that answers serials ending in SLOW later (an external lookup) */
function checkedTemplates (): string {
  const dir = mkdtempSync(join(tmpdir(), 'jitp-race-templates-'))
  cpSync(resolve('templates'), dir, { recursive: true })
  const sensor = JSON.parse(readFileSync(join(dir, 'sensor.json'), 'utf8')) as Record<string, unknown>
  writeFileSync(join(dir, 'checked.json'), JSON.stringify({ ...sensor, preProvisioningCheck: { module: 'slow-check.mjs' } }))
  writeFileSync(join(dir, 'slow-check.mjs'), 'export default async function check (req) {\n' +
    '  if (req.parameters.serialNumber.endsWith(\'SLOW\')) await new Promise((resolve) => setTimeout(resolve, 400))\n' +
    '  return { allow: true }\n}\n')
  return dir
}

for (const store of STORES) {
  t.test(`one token, two serials, one answered later by the template's check: nothing left of the slow one (${store})`, async (t) => {
    // the slow request read the token before the fast one used it, and reached its commit after the fast
    // one had finished: a guard on the commit alone let it publish its version 1, then lose the token
    const tb = await startBroker({ store, overrides: { TEMPLATES_DIR: checkedTemplates() } })
    t.teardown(() => tb.close())
    const register = '$provision/templates/checked/provision/json'
    const claim = await claimConnect(tb, `stagger-${store}`)
    const created = await request(claim, '$provision/certificates/create/json', {})
    const replies = collect(claim)
    await subscribe(claim, [`${register}/accepted`, `${register}/rejected`])
    for (const serialNumber of ['FAST-0001', 'LOSER-SLOW']) {
      claim.publish(register, JSON.stringify({ certificateOwnershipToken: created.body.certificateOwnershipToken, parameters: { serialNumber } }), { qos: 1 })
    }
    await waitFor(() => replies.filter((m) => m.topic.startsWith(register)).length === 2, 10_000, 'two replies')
    await endClient(claim)
    t.equal(replies.filter((m) => m.topic === `${register}/accepted`).length, 1, 'one registration')
    t.equal(await tb.handle.registry.getDevice('sensor-LOSER-SLOW'), null, 'the slow one: no device')
    t.equal(await tb.handle.configs.state('sensor-LOSER-SLOW'), null, 'and no config state')
    t.same(await tb.handle.configs.history('sensor-LOSER-SLOW', 10), [], 'and no config history')
  })
}
