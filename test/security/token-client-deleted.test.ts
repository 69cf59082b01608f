/**
 * Attack: an OAuth2 client of the broker's own endpoint is deleted (its secret
 * leaked, a service retired), but a session opened with one of its tokens keeps
 * running until the token's `exp`, and its will still goes out when it ends.
 * Defence (CONTRACT §11, plugins/token-identity.ts): live broker-token sessions
 * are re-validated every SESSION_REVALIDATE_SECONDS against the clients store;
 * a deleted client's sessions are closed (SessionRevalidated, audited), their
 * will is not published, and the sessions of other clients stay. Both stores.
 */
import t from 'tap'
import { adminRequest } from '../helpers/admin.js'
import { collect, connect, endClient, registerDevice, startBroker, subscribe, STORES, waitFor } from '../helpers/broker.js'
import { tokenConnect } from '../helpers/tokens.js'

const REVALIDATE_SECONDS = 1

for (const store of STORES) {
  t.test(`a deleted client's live sessions are closed within SESSION_REVALIDATE_SECONDS (${store})`, async (t) => {
    const tb = await startBroker({ store, overrides: { MQTTS_TOKEN_PORT: 0, SESSION_REVALIDATE_SECONDS: REVALIDATE_SECONDS, TOKEN_LIFETIME_SECONDS: 600 } })
    t.teardown(() => tb.close())
    const deviceId = `cd-dev-${store}`
    const device = await connect(tb, await registerDevice(tb, deviceId), { clientId: deviceId })
    t.teardown(() => endClient(device))
    t.same(await subscribe(device, `devices/${deviceId}/commands/+`), [1])
    const inbox = collect(device)

    const made = async (name: string): Promise<{ clientId: string, token: string }> => {
      const c = await adminRequest(tb.adminPort!, tb.pki, 'POST', '/v1/clients', { body: { name, scopes: ['telemetry:read', 'commands:write'] } })
      t.equal(c.status, 201, `client ${name} created`)
      const clientId = String(c.body.clientId)
      const { token } = await tb.handle.tokenKeys.sign({ sub: clientId, client_id: clientId, scope: 'telemetry:read commands:write' }, 600)
      return { clientId, token }
    }
    const leaked = await made('leaked')
    const kept = await made('kept')
    // the leaked client's session leaves a will that would command the device when it ends
    const will = { topic: `devices/${deviceId}/commands/reboot`, payload: Buffer.from(JSON.stringify({ name: 'reboot' })), qos: 1 as const, retain: false }
    const attacker = (await tokenConnect(tb, leaked.token, { clientId: `cd-leaked-${store}`, will })).client!
    const other = (await tokenConnect(tb, kept.token, { clientId: `cd-kept-${store}` })).client!
    t.teardown(() => endClient(other))
    const closedAt = new Promise<number>((resolve) => attacker.once('close', () => resolve(Date.now())))

    const deleted = await adminRequest(tb.adminPort!, tb.pki, 'DELETE', `/v1/clients/${leaked.clientId}`)
    t.equal(deleted.status, 200, 'client deleted')
    const deletedAt = Date.now()
    // bounded: without the re-validation it stays open until exp, 10 min away
    const giveUp = setTimeout(() => attacker.emit('close'), REVALIDATE_SECONDS * 1000 + 5000)
    const lag = (await closedAt) - deletedAt
    clearTimeout(giveUp)
    t.ok(lag <= REVALIDATE_SECONDS * 1000 + 1500, `closed ${lag} ms after the deletion, not at exp (10 min)`)

    await waitFor(() => tb.events('disconnect').some((l) => l.clientId === `cd-leaked-${store}`), 5000, 'disconnect line')
    t.match(tb.events('disconnect').find((l) => l.clientId === `cd-leaked-${store}`), { errorCode: 'SessionRevalidated', reason: /OAuth2 client/ }, 'audited with the reason')
    await waitFor(() => tb.events('publish.denied').some((l) => l.clientId === `cd-leaked-${store}`), 5000, 'the will refused')
    t.match(tb.events('publish.denied').find((l) => l.clientId === `cd-leaked-${store}`), { topic: will.topic, errorCode: 'SessionRevalidated' })

    // the other client's session went through the same round and is still served
    t.same(await subscribe(other, 'devices/+/telemetry'), [1], 'another client\'s session stays')
    t.notOk(tb.events('disconnect').some((l) => l.clientId === `cd-kept-${store}`), 'not closed')
    t.notOk(inbox.some((m) => m.topic === will.topic), 'the device got no command from the closed session')
    t.equal((await tokenConnect(tb, leaked.token, { clientId: `cd-leaked-${store}` })).returnCode, 5, 'and its token connects no more')
  })
}
