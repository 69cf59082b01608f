/**
 * Attack: the holder of the public claim certificate registers a device whose
 * id is a service's client id (the shipped `sensor` template with serial
 * `BACKEND` gives `sensor-BACKEND`). A device always takes its own client id
 * back, so the "device" then took over the service's session: its queued
 * messages went to the attacker and the service was refused for good
 * (`ClientIdInUse`, "a registered device id"). CONTRACT §2: no connection takes
 * over, or cleans, a session that belongs to another identity.
 * Defence: a device id recorded as another identity's client id is not given
 * out (`ownerBlocksDevice`, checked before the config goes out and again in the
 * registration's atomic step): 403 `ClientIdInUse`, audited, the token kept.
 * Both stores; the service's own session is untouched.
 */
import t from 'tap'
import { STORES, collect, connect, connectCollecting, credentials, endClient, publish, registerDevice, startBroker, subscribe, waitFor } from '../helpers/broker.js'
import { claimConnect, request } from '../helpers/provisioning.js'

const SERVICE_ID = 'sensor-BACKEND'

for (const store of STORES) {
  t.test(`the claim certificate registers a service's client id as a device id (${store})`, async (t) => {
    const tb = await startBroker({ store })
    t.teardown(() => tb.close())
    const svc = credentials(tb.pki, 'service')

    // the service's persistent session, and three messages queued for it while it is away
    const away = await connect(tb, svc, { clientId: SERVICE_ID, clean: false })
    t.same(await subscribe(away, 'devices/+/telemetry', 1), [1])
    await endClient(away)
    const device = await connect(tb, await registerDevice(tb, 'sensor-0001'), { clientId: 'sensor-0001' })
    for (let seq = 1; seq <= 3; seq++) await publish(device, 'devices/sensor-0001/telemetry', JSON.stringify({ ts: Date.now(), seq, values: { t: seq } }))
    await endClient(device)

    const claim = await claimConnect(tb, `squatter-${store}`)
    const created = await request(claim, '$provision/certificates/create/json', {})
    t.equal(created.outcome, 'accepted')
    const reg = await request(claim, '$provision/templates/sensor/provision/json', { certificateOwnershipToken: created.body.certificateOwnershipToken, parameters: { serialNumber: 'BACKEND' } })
    const watch = collect(claim)
    await endClient(claim)
    t.equal(reg.outcome, 'rejected', 'the registration is refused')
    t.match(reg.body, { statusCode: 403, errorCode: 'ClientIdInUse' })
    t.notOk(reg.body.certificatePem, 'no certificate naming the service\'s client id')
    t.equal(await tb.handle.registry.getDevice(SERVICE_ID), null, 'no device registered')
    t.ok(await tb.handle.registry.peekToken(String(created.body.certificateOwnershipToken)), 'the ownership token is kept')
    t.same(watch, [], 'no config or anything else reached the attacker')
    await waitFor(() => tb.events('provision.rejected').some((l) => l.clientId === `squatter-${store}` && l.errorCode === 'ClientIdInUse'), 5000, 'provision.rejected')

    // the service comes back and gets what was queued for it
    const { client: back, got } = await connectCollecting(tb, svc, { clientId: SERVICE_ID, clean: false })
    await waitFor(() => got.length >= 3, 10_000, 'the queued telemetry')
    t.same(got.map((m) => (JSON.parse(m.payload) as { seq: number }).seq).sort(), [1, 2, 3], 'its queue, whole')
    t.equal(tb.events('session.takeover').filter((l) => l.clientId === SERVICE_ID).length, 0, 'no takeover of its session')
    await endClient(back)
  })
}
