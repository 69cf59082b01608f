/**
 * Attack: a compromised device with a persistent session slips `#` into one
 * SUBSCRIBE next to a filter it may have. The refused filter gets 0x80 and
 * must never reach the session store (Aedes 1.2 stored every filter of the
 * packet): nothing is queued for it while the device is offline, and nothing
 * matching only it is delivered after it reconnects.
 */
import { Redis } from 'ioredis'
import t from 'tap'
import {
  connect, connectCollecting, credentials, endClient, publish, registerDevice, startBroker, STORES, subscribe, waitFor
} from '../helpers/broker.js'

const FOREIGN = 50

for (const store of STORES) {
  t.test(`${store}: a refused filter in a mixed SUBSCRIBE is not stored`, async (t) => {
    const tb = await startBroker({ store })
    t.teardown(() => tb.close())
    const id = `rf-${store}`
    const dev = await registerDevice(tb, id)
    const other = await registerDevice(tb, `${id}-other`)
    const redis = tb.redis ? new Redis(tb.redis.url) : null
    t.teardown(() => { redis?.disconnect() })

    const device = await connect(tb, dev, { clientId: id, clean: false })
    t.same(await subscribe(device, [`devices/${id}/config`, '#']), [1, 0x80], 'SUBACK: config granted, # refused')
    t.same(await subscribe(device, `devices/${id}/commands/+`), [1], 'its own commands granted (the control)')
    const denied = tb.events('subscribe.denied').filter((l) => l.clientId === id)
    t.equal(denied.length, 1, 'one subscribe.denied line')
    t.equal(denied[0]?.topic, '#', 'for #')
    if (redis) {
      // aedes-persistence-redis keeps a session's subscriptions in the hash client:<id>
      const stored = (await redis.hkeys(`client:${encodeURIComponent(id)}`)).sort()
      t.same(stored, [`devices/${id}/commands/+`, `devices/${id}/config`], 'only the granted filters are stored')
    }
    await endClient(device)

    const publisher = await connect(tb, other, { clientId: `${id}-other` })
    for (let seq = 0; seq < FOREIGN; seq++) {
      await publish(publisher, `devices/${id}-other/telemetry`, JSON.stringify({ ts: Date.now(), seq, values: { temperature: 20 } }))
    }
    await endClient(publisher)
    const queueKey = `outgoing:${encodeURIComponent(id)}`
    if (redis) t.equal(await redis.llen(queueKey), 0, `nothing queued for # under ${FOREIGN} foreign publishes`)

    const service = await connect(tb, credentials(tb.pki, 'service'))
    await publish(service, `devices/${id}/commands/reboot`, '{"name":"reboot"}')
    await endClient(service)
    if (redis) t.equal(await redis.llen(queueKey), 1, 'its own command is queued (the queue works)')

    const { client: again, got } = await connectCollecting(tb, dev, { clientId: id, clean: false })
    // queued messages come in order: had anything been queued for #, it would arrive before the command
    await waitFor(() => got.some((m) => m.topic === `devices/${id}/commands/reboot`), 10_000, 'the queued command')
    t.same(got.map((m) => m.topic), [`devices/${id}/commands/reboot`], 'after reconnect: the command, nothing for #')
    await endClient(again)
  })
}
