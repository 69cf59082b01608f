/**
 * Attack: a leaked service certificate connects with a last will on a device's
 * command topic (`unlock`), then waits to be revoked. Aedes publishes the will of a
 * client it closes, so the revocation itself would deliver the attacker's command.
 * Defence: a session closed for revocation publishes nothing more, its will
 * included (broker/chain/publish.ts); audited `publish.denied`.
 */
import t from 'tap'
import { collect, connect, endClient, publish, registerDevice, startBroker, STORES, subscribe, waitFor } from '../helpers/broker.js'
import { issueClient } from '../helpers/revocation.js'

const command = (name: string): string => JSON.stringify({ name, args: {} })

for (const store of STORES) {
  t.test(`the will of a revoked service is never published (${store})`, async (t) => {
    const tb = await startBroker({ store })
    t.teardown(() => tb.close())
    const victim = await registerDevice(tb, 'victim-1')
    const device = await connect(tb, victim, { clientId: 'victim-1' })
    t.teardown(() => endClient(device))
    await subscribe(device, 'devices/victim-1/commands/+')
    const received = collect(device)

    const leaked = issueClient(tb.pki, 'service', 'leaky')
    const attacker = await connect(tb, leaked, {
      clientId: 'leaky-1',
      reconnectPeriod: 0,
      will: { topic: 'devices/victim-1/commands/unlock', payload: Buffer.from(command('unlock')), qos: 1, retain: false }
    })
    attacker.on('error', () => {})
    const closed = new Promise<void>((resolve) => attacker.once('close', () => resolve()))

    await tb.handle.registry.revoke({ certificateId: leaked.certificateId })
    await closed
    await waitFor(() => tb.events('publish.denied').some((l) => l.clientId === 'leaky-1'), 5000, 'the refused will to be audited')
    const denied = tb.events('publish.denied').find((l) => l.clientId === 'leaky-1')
    t.equal(denied?.topic, 'devices/victim-1/commands/unlock', 'the will is audited as refused')
    t.equal(denied?.errorCode, 'CertificateRevoked', 'with the revocation as the reason')

    // control: a command from a legitimate service after the revocation does arrive,
    // so by the time it does, the will would have arrived too
    const backend = await connect(tb, issueClient(tb.pki, 'service', 'backend'), { clientId: 'backend-1' })
    t.teardown(() => endClient(backend))
    await publish(backend, 'devices/victim-1/commands/reboot', command('reboot'), { qos: 1 })
    await waitFor(() => received.some((m) => m.topic.endsWith('/reboot')), 5000, 'the control command')
    t.same(received.map((m) => m.topic), ['devices/victim-1/commands/reboot'], 'the attacker got no command out: only the control arrived')
  })
}
