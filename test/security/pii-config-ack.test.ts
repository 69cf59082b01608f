/**
 * Attack: a device reports a failed configuration with personal data in its
 * error text (`config/ack`, `error` is a free string). That text became the
 * rollback version's `reason`: written into the version's history (kept in the
 * store, read by `GET /v1/devices/<id>/config/history` and the CLI) and into the
 * `config.acknowledged`, `config.published` and `config.rolledback` audit lines,
 * which `GET /v1/audit` serves (CONTRACT §5, §6: personal data never logged).
 * Defence: what the inline detector finds in the device's text is written as its
 * kind (`[email]`, `[phone]`, `[card]`) before it goes anywhere. Both stores.
 */
import t from 'tap'
import type { MqttClient } from 'mqtt'
import { STORES, connect, endClient, publish, registerDevice, startBroker, subscribe, waitFor } from '../helpers/broker.js'

const EMAIL = 'jane.doe@example.com'
const PHONE = '+44 20 7946 0958'
const CARD = '4111 1111 1111 1111'

for (const store of STORES) {
  t.test(`a failed config ack's error text is kept and audited without its personal data (${store})`, async (t) => {
    const tb = await startBroker({ store, overrides: { CONFIG_ACK_TIMEOUT_SECONDS: 5 } })
    t.teardown(() => tb.close())
    const service = tb.handle.configs
    const id = `pii-ack-${store}`
    const creds = await registerDevice(tb, id)
    await service.apply(id, { template: 'test', config: { interval: 10 }, overrides: {}, author: 'registration' })

    const device: MqttClient = await connect(tb, creds, { clientId: id })
    t.teardown(() => { device.end(true) })
    const versions: number[] = []
    device.on('message', (topic, payload) => {
      if (topic !== `devices/${id}/config` || payload.length === 0) return
      const { version } = JSON.parse(payload.toString()) as { version: number }
      versions.push(version)
      // version 2 fails, with the device's own words; every other applies
      const ack = version === 2
        ? { version, status: 'failed', error: `call ${EMAIL} or ${PHONE}, card ${CARD}: interval out of range` }
        : { version, status: 'applied' }
      publish(device, `devices/${id}/config/ack`, JSON.stringify(ack)).catch(() => {})
    })
    await subscribe(device, `devices/${id}/config`)
    await waitFor(() => versions.includes(1), 3000, 'version 1')
    // version 1 applied before version 2 exists: else its ack is stale, and version 2 has nothing to roll back to
    await waitFor(() => tb.events('config.acknowledged').some((l) => l.deviceId === id && l.version === 1 && l.reason === 'applied'), 5000, 'version 1 applied')
    await service.setOverrides(id, { interval: 0 }, 'alice')
    await waitFor(() => versions.includes(3), 5000, 'the rollback to version 3')
    await waitFor(() => tb.events('config.rolledback').some((l) => l.deviceId === id), 5000, 'config.rolledback')

    const history = await service.history(id, 20)
    const reason = history.find((v) => v.version === 3)?.reason ?? ''
    t.match(reason, /^device reported failed: call \[email\] or \[phone\], card \[card\]: interval out of range$/, 'the history keeps the text with its kinds')
    const kept = JSON.stringify(history) + JSON.stringify(await service.state(id))
    const logged = tb.audit.raw.join('\n')
    for (const value of [EMAIL, PHONE, CARD]) {
      t.notOk(kept.includes(value), `the store holds no ${value}`)
      t.notOk(logged.includes(value), `no audit line holds ${value}`)
    }
    t.match(tb.events('config.acknowledged').find((l) => l.deviceId === id && l.version === 2), { reason: /\[email\]/ }, 'the ack line names the kind')
    await endClient(device)
  })
}
