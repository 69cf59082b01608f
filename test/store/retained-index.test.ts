import t from 'tap'
import type { Readable } from 'node:stream'
import { createMemoryPersistence as newStore, indexRetained, type RetainedPacket } from '../../broker/store/retained-index.js'

function packet (topic: string, payload: string): RetainedPacket {
  return { cmd: 'publish', topic, payload: Buffer.from(payload), qos: 1, retain: true, brokerId: 'b', brokerCounter: 1 }
}

async function answer (stream: Readable): Promise<string[]> {
  const out: string[] = []
  for await (const p of stream) out.push(`${(p as RetainedPacket).topic}=${String((p as RetainedPacket).payload)}`)
  return out.sort()
}

/** a small deterministic generator, so a failure can be replayed */
function random (seed: number): () => number {
  let s = seed
  return () => {
    s = (s * 1103515245 + 12345) % 2147483648
    return s / 2147483648
  }
}

t.test('answers exactly as Aedes\' own memory store, for every kind of filter', async (t) => {
  const plain = newStore()
  const indexed = indexRetained(newStore())
  const next = random(42)
  const pick = <T>(list: readonly T[]): T => list[Math.floor(next() * list.length)]!
  const levels = ['devices', 'd1', 'd2', 'config', 'commands', '', '$SYS', '$provision', 'x']
  const topicOf = (): string => Array.from({ length: 1 + Math.floor(next() * 4) }, () => pick(levels)).join('/')
  for (let i = 0; i < 2000; i++) {
    // a quarter of the writes clear a topic, as an empty retained payload does
    const p = packet(topicOf(), next() < 0.25 ? '' : `v${i}`)
    await plain.storeRetained(p)
    await indexed.storeRetained(p)
  }
  const filters = [
    '#', '+', '+/+', '+/#', 'devices/#', 'devices/+/config', 'devices/d1/config', 'devices/+/+/x', '$SYS/#', '$provision/+',
    '/+', '+/', 'devices//config', 'nothing/here', 'devices/d1/#', 'x/+/+/#', 'config', '+/config/#'
  ]
  for (let i = 0; i < 200; i++) filters.push(Array.from({ length: 1 + Math.floor(next() * 4) }, () => pick([...levels, '+', '+', '#'])).join('/').replace(/#.+$/, '#'))
  let compared = 0
  for (const filter of filters) {
    const expected = await answer(plain.createRetainedStream(filter))
    const got = await answer(indexed.createRetainedStream(filter))
    if (JSON.stringify(got) !== JSON.stringify(expected)) return t.same(got, expected, `filter ${filter}`)
    compared += expected.length
  }
  t.ok(compared > 1000, `${compared} retained messages compared over ${filters.length} filters`)
  const combi = ['devices/+/config', 'devices/d1/config', '$provision/+']
  t.same(await answer(indexed.createRetainedStreamCombi(combi)), await answer(plain.createRetainedStreamCombi(combi)), 'several filters at once, duplicates as Aedes gives them')
})

t.test('a cleared topic is gone, the levels above it too, the others stay', async (t) => {
  const indexed = indexRetained(newStore())
  await indexed.storeRetained(packet('devices/d1/config', '{"version":1}'))
  await indexed.storeRetained(packet('devices/d2/config', '{"version":1}'))
  await indexed.storeRetained(packet('devices/d1/config', '{"version":2}'))
  t.same(await answer(indexed.createRetainedStream('devices/d1/config')), ['devices/d1/config={"version":2}'], 'replaced, not added')
  await indexed.storeRetained(packet('devices/d1/config', ''))
  t.same(await answer(indexed.createRetainedStream('#')), ['devices/d2/config={"version":1}'])
  await indexed.storeRetained(packet('devices/d2/config', ''))
  await indexed.storeRetained(packet('never/stored', ''))
  t.same(await answer(indexed.createRetainedStream('#')), [])
})
