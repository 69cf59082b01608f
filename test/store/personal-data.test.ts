/**
 * What the store is handed for a packet (broker/store/personal-data.ts): the
 * payload the publish chain sealed or checked is stored as it is, with no second
 * parse; anything else is parsed and its x-pii values sealed. The note that a
 * payload is clear belongs to that Buffer, never to its bytes.
 */
import { randomBytes } from 'node:crypto'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { createPiiCipher } from '../../broker/pii-crypto.js'
import { createPersonalData } from '../../broker/store/personal-data.js'
import { loadSchemaCatalogue } from '../../plugins/schema-catalogue.js'

const schemasDir = fileURLToPath(new URL('../../../schemas/', import.meta.url))
const catalogue = loadSchemaCatalogue(schemasDir)
const TOPIC = 'devices/sensor-1/telemetry'

function setup (): ReturnType<typeof createPersonalData> {
  return createPersonalData(catalogue, createPiiCipher(randomBytes(32)))
}

/** how many times JSON.parse runs during fn */
function parses<T> (fn: () => T): { result: T, count: number } {
  const original = JSON.parse
  let count = 0
  JSON.parse = function countingParse (this: unknown, ...args: Parameters<typeof JSON.parse>) {
    count++
    return original.apply(this, args)
  } as typeof JSON.parse
  try {
    return { result: fn(), count }
  } finally {
    JSON.parse = original
  }
}

const clearPayload = (): Buffer => Buffer.from(JSON.stringify({ ts: 1, values: { t: 21.5 } }))
const personalPayload = (): Buffer => Buffer.from(JSON.stringify({ ts: 1, values: { t: 21.5 }, owner: 'Tele Owner' }))

t.test('the topic the test uses has a personal-data map (else nothing below would parse)', async (t) => {
  const mapping = catalogue.lookup(TOPIC)
  t.ok(mapping !== null && mapping.format.kind === 'json' && mapping.format.pii !== null)
})

t.test('a payload the chain noted clear is stored as it is, without a parse', async (t) => {
  const pd = setup()
  const packet = { topic: TOPIC, payload: clearPayload() }
  pd.noteClearOfPii(packet.payload)
  const { result, count } = parses(() => pd.storedForm(packet))
  t.equal(result, packet, 'the same packet')
  t.equal(count, 0, 'not parsed again')
})

t.test('a clear payload nobody noted is parsed once, then known', async (t) => {
  const pd = setup()
  const packet = { topic: TOPIC, payload: clearPayload() }
  const first = parses(() => pd.storedForm(packet))
  t.equal(first.result, packet)
  t.equal(first.count, 1, 'parsed to look for x-pii values')
  const second = parses(() => pd.storedForm({ topic: TOPIC, payload: packet.payload }))
  t.equal(second.count, 0, 'a copy sharing the Buffer is not parsed again')
})

t.test('an x-pii value in clear is sealed for the store, and the note is per Buffer, not per content', async (t) => {
  const pd = setup()
  const noted = clearPayload()
  pd.noteClearOfPii(noted)
  // same bytes as a noted payload, but another Buffer: checked on its own
  const sameBytes = Buffer.from(noted)
  t.equal(parses(() => pd.storedForm({ topic: TOPIC, payload: sameBytes })).count, 1)

  const packet = { topic: TOPIC, payload: personalPayload() }
  const { result, count } = parses(() => pd.storedForm(packet))
  t.equal(count, 1)
  t.not(result, packet, 'a copy, the caller\'s packet untouched')
  t.ok(packet.payload.includes('Tele Owner'), 'the caller\'s payload is not changed')
  t.notOk(result.payload.includes('Tele Owner'), 'what is stored holds no clear x-pii value')
  const stored = JSON.parse(result.payload.toString()) as { owner: unknown }
  t.same(pd.cipher.open(stored.owner), { value: 'Tele Owner' }, 'the value is sealed, not lost')
  // the sealed copy is itself known clear: storing it again parses nothing
  t.equal(parses(() => pd.storedForm(result)).count, 0)
})

t.test('what sealParsed returns is stored as it is', async (t) => {
  const pd = setup()
  const data = { ts: 1, values: { t: 21.5 }, owner: 'Tele Owner' }
  const sealed = pd.sealParsed(TOPIC, data)
  t.ok(sealed !== null)
  t.notOk(sealed!.includes('Tele Owner'))
  const packet = { topic: TOPIC, payload: sealed! }
  t.equal(parses(() => pd.storedForm(packet)).count, 0)
  t.equal(pd.storedForm(packet), packet)
  t.equal(pd.sealParsed(TOPIC, { ts: 1, values: {} }), null, 'nothing to seal: null, the caller keeps its payload')
})

t.test('a string payload is never noted (it has no identity to carry the note)', async (t) => {
  const pd = setup()
  const payload = JSON.stringify({ ts: 1, values: {}, owner: 'Tele Owner' })
  pd.noteClearOfPii(payload)
  const packet = { topic: TOPIC, payload }
  const { result, count } = parses(() => pd.storedForm(packet))
  t.equal(count, 1)
  t.notOk(String(result.payload).includes('Tele Owner'))
})
