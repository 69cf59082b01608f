import t from 'tap'
import type { Client } from 'aedes'
import { createMemoryPersistence } from '../../broker/store/retained-index.js'
import { undeliverableFilter } from '../../broker/store/undeliverable.js'
import type { AedesPersistence, StoredPacket } from '../../broker/store/wrappers.js'

const packet = (topic: string, counter: number): StoredPacket => ({ topic, payload: Buffer.from('{}'), qos: 1, retain: false, brokerId: 'b', brokerCounter: counter })

async function queued (store: AedesPersistence, clientId: string): Promise<string[]> {
  const out: string[] = []
  for await (const p of store.outgoingStream({ id: clientId } as Client)) out.push(p.topic)
  return out
}

t.test('a message is not stored for a live subscriber that may not receive it', async (t) => {
  const store = createMemoryPersistence() as unknown as AedesPersistence
  const filter = undeliverableFilter()
  const wrapped = filter.skipUndeliverable(store)
  const subs = [{ clientId: 'device', qos: 1 }, { clientId: 'reader', qos: 1 }, { clientId: 'offline', qos: 1 }]

  await wrapped.outgoingEnqueueCombi(subs, packet('devices/d/telemetry', 1))
  t.same(await queued(store, 'device'), ['devices/d/telemetry'], 'before the check is bound, everything is stored')

  // the device may not receive its own telemetry; the reader may; `offline` is not live here
  filter.bind((clientId, p) => clientId === 'offline' ? undefined : clientId === 'reader' || !p.topic.endsWith('/telemetry'))
  await wrapped.outgoingEnqueueCombi(subs, packet('devices/d/telemetry', 2))
  await wrapped.outgoingEnqueueCombi(subs, packet('devices/d/config', 3))
  await wrapped.outgoingEnqueue({ clientId: 'device', qos: 1 }, packet('devices/d/telemetry', 4))
  await wrapped.outgoingEnqueueCombi([{ clientId: 'device', qos: 1 }], packet('devices/d/telemetry', 5))
  t.same(await queued(store, 'device'), ['devices/d/telemetry', 'devices/d/config'], 'the refused telemetry was not stored for the device')
  t.same(await queued(store, 'reader'), ['devices/d/telemetry', 'devices/d/telemetry', 'devices/d/config'], 'the reader got every message')
  t.same(await queued(store, 'offline'), ['devices/d/telemetry', 'devices/d/telemetry', 'devices/d/config'], 'a subscriber this process cannot ask is stored for as before')
})
