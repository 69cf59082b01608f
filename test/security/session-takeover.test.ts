/**
 * Attack: take over (or clean) a device's session by connecting with its client id
 * (device ids are predictable, the claim certificate ships in every firmware).
 * Defence (CONTRACT §2 "Client ids and sessions"): a claim or service connection
 * presenting a client id that belongs to another identity gets CONNACK 2
 * (ClientIdInUse), audited; the device keeps its live session and, offline, its
 * stored one with the commands queued for it. The same identity reconnecting
 * still takes its own session over, as MQTT requires.
 */
import t from 'tap'
import type { IClientOptions } from 'mqtt'
import {
  STORES, connect, connectCollecting, credentials, endClient, publish, registerDevice, startBroker, subscribe, waitFor,
  type ClientCredentials, type TestBroker
} from '../helpers/broker.js'

/** the CONNACK return code a refused connect got (0 when it was accepted) */
async function connackOf (tb: TestBroker, creds: ClientCredentials, clientId: string, clean: boolean): Promise<number | string | undefined> {
  try {
    const c = await connect(tb, creds, { clientId, clean })
    await endClient(c)
    return 0
  } catch (err) {
    return (err as Error & { code?: number | string }).code
  }
}

for (const store of STORES) {
  t.test(`${store}: claim and service connections cannot take a device's session`, async (t) => {
    const tb = await startBroker({ store })
    t.teardown(() => tb.close())
    const id = 'sensor-0001'
    const creds = await registerDevice(tb, id)
    const claim = credentials(tb.pki, 'claim')
    const service = credentials(tb.pki, 'service')

    let device = await connectCollecting(tb, creds, { clientId: id, clean: false })
    let closes = 0
    device.client.on('close', () => closes++)
    t.same(await subscribe(device.client, `devices/${id}/commands/+`), [1], 'the device subscribes to its commands')

    // the device online
    t.equal(await connackOf(tb, claim, id, true), 2, 'claim with the device id: CONNACK 2')
    t.equal(await connackOf(tb, service, id, true), 2, 'service with the device id: CONNACK 2')
    t.equal(await connackOf(tb, service, id, false), 2, 'service with the device id, persistent: CONNACK 2')
    const backend = await connect(tb, service, { clientId: 'backend-commands' })
    await publish(backend, `devices/${id}/commands/ping`, JSON.stringify({ name: 'ping' }))
    await waitFor(() => device.got.length === 1, 10_000, 'the command to the live device')
    t.equal(closes, 0, 'the device stayed connected through the attacks')
    t.ok(device.client.connected)

    // the device offline: the attacks neither take nor clean its stored session
    await endClient(device.client)
    t.equal(await connackOf(tb, claim, id, true), 2, 'offline: claim with the device id, clean: CONNACK 2')
    t.equal(await connackOf(tb, service, id, true), 2, 'offline: service with the device id, clean: CONNACK 2')
    await publish(backend, `devices/${id}/commands/reboot`, JSON.stringify({ name: 'reboot', id: 'cmd-1' }), { qos: 1 })
    t.equal(await connackOf(tb, claim, id, true), 2, 'offline, command queued: claim refused again')

    device = await connectCollecting(tb, creds, { clientId: id, clean: false })
    await waitFor(() => device.got.length === 1, 10_000, 'the queued command after reconnect')
    t.same(device.got, [{ topic: `devices/${id}/commands/reboot`, payload: JSON.stringify({ name: 'reboot', id: 'cmd-1' }), retain: false }], 'the command queued while offline is delivered')
    await endClient(device.client)
    await endClient(backend)

    const refused = tb.events('connect.refused').filter((l) => l.clientId === id)
    t.equal(refused.length, 6, 'every attempt audited')
    t.ok(refused.every((l) => l.errorCode === 'ClientIdInUse'), 'as ClientIdInUse')
    t.same([...new Set(refused.map((l) => l.role))].sort(), ['claim', 'service'], 'with the role that tried')
    t.equal(tb.events('session.takeover').filter((l) => l.clientId === id).length, 0, 'no takeover happened')
  })

  t.test(`${store}: a service takes its own session over; a claim cannot take the service's`, async (t) => {
    const tb = await startBroker({ store })
    t.teardown(() => tb.close())
    const service = credentials(tb.pki, 'service')
    const first = await connect(tb, service, { clientId: 'backend-own', clean: false })
    let firstClosed = false
    first.on('close', () => { firstClosed = true })
    t.equal(await connackOf(tb, credentials(tb.pki, 'claim'), 'backend-own', true), 2, 'a claim with the live service id: CONNACK 2')
    t.notOk(firstClosed, 'the service session is untouched by the claim')

    const second = await connect(tb, service, { clientId: 'backend-own', clean: false })
    await waitFor(() => firstClosed, 10_000, 'the first connection to be taken over')
    t.ok(second.connected, 'the same identity took its session over')
    const takeover = tb.events('session.takeover').find((l) => l.clientId === 'backend-own')
    t.equal(takeover?.role, 'service', 'the takeover is audited')
    await endClient(second)
    first.end(true)

    // offline, the recorded owner still guards the persistent session
    t.equal(await connackOf(tb, credentials(tb.pki, 'claim'), 'backend-own', true), 2, 'offline: the claim is refused by the recorded owner')
    const refused = tb.events('connect.refused').filter((l) => l.clientId === 'backend-own')
    t.same(refused.map((l) => l.errorCode), ['ClientIdInUse', 'ClientIdInUse'])
  })

  t.test(`${store}: the shared claim certificate names no one: no claim takeover from another address, no squatting`, async (t) => {
    const tb = await startBroker({ store })
    t.teardown(() => tb.close())
    const claim = credentials(tb.pki, 'claim')
    // a device provisioning with a predictable client id, from its own address
    // MQTT.js hands its options to tls.connect: the whole 127.0.0.0/8 is loopback on Linux
    const provisioning = await connect(tb, claim, { clientId: 'sensor-0042', localAddress: '127.0.0.2' } as IClientOptions)
    let provisioningClosed = false
    provisioning.on('close', () => { provisioningClosed = true })
    // the attacker holds the same (public) claim certificate, from another address
    t.equal(await connackOf(tb, claim, 'sensor-0042', true), 2, 'a claim connection from another address: CONNACK 2')
    t.notOk(provisioningClosed, 'the provisioning device keeps its connection')
    t.equal(tb.events('connect.refused').filter((l) => l.clientId === 'sensor-0042' && l.errorCode === 'ClientIdInUse').length, 1, 'audited ClientIdInUse')
    await endClient(provisioning)

    // squatting: a claim connection takes a service's client id first; the service still gets it
    const squatter = await connect(tb, claim, { clientId: 'backend-ingest', reconnectPeriod: 0 })
    const squatterClosed = new Promise<void>((resolve) => squatter.once('close', () => resolve()))
    const service = await connect(tb, credentials(tb.pki, 'service'), { clientId: 'backend-ingest', clean: false })
    await squatterClosed
    t.ok(service.connected, 'the service takes its client id from the live claim session')
    const takeover = tb.events('session.takeover').find((l) => l.clientId === 'backend-ingest')
    t.equal(takeover?.role, 'service', 'audited as a takeover by the service')
    await endClient(service)
    t.equal(await connackOf(tb, claim, 'backend-ingest', true), 2, 'and the claim cannot take it back (recorded owner)')
  })
}
