/**
 * Personal-data fixtures: a SCHEMAS_DIR whose `state` schema marks x-pii at the
 * top level, nested, in array items and behind a `$ref`; policies with and
 * without the `pii` permission for services; and dumps of what a store holds.
 */
import { cpSync, mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import type { Aedes } from 'aedes'
import { Redis } from 'ioredis'
import type { MqttClient } from 'mqtt'
import { defaultPolicy } from '../../plugins/policy.js'
import { collect, connect, credentials, endClient, registerDevice, subscribe, type TestBroker } from './broker.js'

/** every personal value the fixtures publish: none may appear in a store, a log or Redis traffic */
export const PII_VALUES = ['Jane Roe', 'jane.roe@example.org', 'Occupant Alpha', 'Occupant Beta', 'Care Taker', 'Tele Owner'] as const

export const statePayload = (ts = 1763769600000): Record<string, unknown> => ({
  ts,
  status: 'online',
  owner: 'Jane Roe',
  site: { room: 'B-12', contact: 'jane.roe@example.org' },
  occupants: [{ name: 'Occupant Alpha', role: 'tenant' }, { name: 'Occupant Beta', role: 'guest' }],
  caretaker: { name: 'Care Taker', role: 'janitor' }
})

/** what a subscriber without `pii` must get for statePayload() */
export const stateWithoutPii = (ts = 1763769600000): Record<string, unknown> => ({
  ts,
  status: 'online',
  site: { room: 'B-12' },
  occupants: [{ role: 'tenant' }, { role: 'guest' }],
  caretaker: { role: 'janitor' }
})

export const telemetryPayload = (seq: number): Record<string, unknown> => ({ ts: 1763769600000, seq, values: { t: 21.5 }, owner: 'Tele Owner' })

const STATE_SCHEMA = {
  $id: 'state',
  title: 'Device state, with personal data where it can hide',
  type: 'object',
  additionalProperties: false,
  required: ['ts', 'status'],
  $defs: {
    person: {
      type: 'object',
      additionalProperties: false,
      properties: { name: { type: 'string', maxLength: 256, 'x-pii': true }, role: { type: 'string', maxLength: 64 } }
    }
  },
  properties: {
    ts: { type: 'integer', minimum: 0 },
    status: { type: 'string', minLength: 1, maxLength: 64 },
    firmware: { type: 'string', maxLength: 64 },
    details: { type: 'object', maxProperties: 64 },
    owner: { type: 'string', maxLength: 256, 'x-pii': true },
    site: { type: 'object', additionalProperties: false, properties: { room: { type: 'string', maxLength: 64 }, contact: { type: 'string', maxLength: 256, 'x-pii': true } } },
    occupants: { type: 'array', maxItems: 64, items: { $ref: '#/$defs/person' } },
    caretaker: { $ref: '#/$defs/person' }
  }
}

/** a copy of schemas/ with the personal-data `state` schema */
export function piiSchemasDir (): string {
  const dir = mkdtempSync(join(tmpdir(), 'jitp-pii-schemas-'))
  cpSync(resolve('schemas'), dir, { recursive: true })
  writeFileSync(join(dir, 'state.json'), JSON.stringify(STATE_SCHEMA, null, 2))
  return dir
}

/** POLICY_FILEs: the default rules, services with and without the `pii` permission */
export function piiPolicies (): { withPii: string, withoutPii: string } {
  const dir = mkdtempSync(join(tmpdir(), 'jitp-pii-policy-'))
  const base = defaultPolicy({ awsTopics: false })
  const withPii = join(dir, 'with-pii.json')
  const withoutPii = join(dir, 'without-pii.json')
  writeFileSync(withPii, JSON.stringify({ ...base, permissions: { service: ['pii'] } }))
  writeFileSync(withoutPii, JSON.stringify({ ...base, permissions: {} }))
  return { withPii, withoutPii }
}

/** the personal values found in a text (binary dumps as latin1) */
export function clearValuesIn (text: string): string[] {
  return PII_VALUES.filter((v) => text.includes(v))
}

/** every value of every key in a Redis database, as one latin1 string */
export async function redisDump (url: string): Promise<string> {
  const conn = new Redis(url, { maxRetriesPerRequest: 1 })
  try {
    const parts: string[] = []
    for (const key of await conn.keys('*')) {
      const type = await conn.type(key)
      const bufs: Buffer[] =
        type === 'string' ? [await conn.getBuffer(key) ?? Buffer.alloc(0)]
          : type === 'hash' ? Object.values(await conn.hgetallBuffer(key))
            : type === 'list' ? await conn.lrangeBuffer(key, 0, -1)
              : type === 'set' ? await conn.smembersBuffer(key)
                : []
      parts.push(key, ...bufs.map((b) => b.toString('latin1')))
    }
    return parts.join('\n')
  } finally {
    conn.disconnect()
  }
}

/**
 * `DUMP` of every key (whatever its type: streams and sorted sets too), as one
 * latin1 string. RDB compression is turned off first: DUMP would otherwise
 * LZF-compress longer strings, and a value in clear could hide from a search.
 */
export async function redisDumpEveryKey (url: string): Promise<{ keys: number, text: string }> {
  const conn = new Redis(url, { maxRetriesPerRequest: 1 })
  try {
    await conn.config('SET', 'rdbcompression', 'no')
    const parts: string[] = []
    let keys = 0
    let cursor = '0'
    do {
      const [next, batch] = await conn.scan(cursor, 'COUNT', 500)
      cursor = next
      for (const key of batch) {
        const dumped = await conn.dumpBuffer(key)
        if (dumped === null) continue
        keys++
        parts.push(key, dumped.toString('latin1'))
      }
    } while (cursor !== '0')
    return { keys, text: parts.join('\n') }
  } finally {
    conn.disconnect()
  }
}

interface Readablish { [Symbol.asyncIterator] (): AsyncIterator<unknown> }

/** the retained messages and the offline queues of these clients, from a broker's (memory) persistence */
export async function memoryStoreDump (broker: Aedes, clientIds: readonly string[]): Promise<string> {
  const p = (broker as unknown as { persistence: unknown }).persistence as {
    createRetainedStream (pattern: string): Readablish
    outgoingStream (client: { id: string }): Readablish
  }
  const parts: string[] = []
  const payloadOf = (x: unknown): string => String((x as { payload?: Buffer }).payload ?? '')
  for await (const packet of p.createRetainedStream('#')) parts.push(payloadOf(packet))
  for (const id of clientIds) for await (const packet of p.outgoingStream({ id })) parts.push(payloadOf(packet))
  return parts.join('\n')
}

/** what a broker's store holds for these sessions: Redis whole, or the memory store's retained messages and their offline queues */
export async function storeDump (tb: TestBroker, clientIds: readonly string[]): Promise<string> {
  return tb.redis ? redisDump(tb.redis.url) : memoryStoreDump(tb.handle.broker, clientIds)
}

/**
 * One device's state topic, watched by a service (the broker's POLICY_FILE says
 * whether it holds `pii`): an offline persistent session subscribed to it (what the
 * store queues: `queueId` for storeDump), a live session on it and on the device's
 * error reports (`got`), and the device connected. Closed at the test's end.
 */
export async function watchState (t: { teardown (fn: () => unknown): void }, tb: TestBroker, deviceId: string): Promise<{
  topic: string, queueId: string, got: ReturnType<typeof collect>, device: MqttClient
}> {
  const topic = `devices/${deviceId}/state`
  const queueId = `${deviceId}-q`
  const svc = credentials(tb.pki, 'service')
  const offline = await connect(tb, svc, { clientId: queueId, clean: false })
  await subscribe(offline, topic, 1)
  await endClient(offline)
  const live = await connect(tb, svc, { clientId: `${deviceId}-l` })
  t.teardown(() => endClient(live))
  await subscribe(live, [topic, `devices/${deviceId}/errors`], 1)
  const got = collect(live)
  const device = await connect(tb, await registerDevice(tb, deviceId), { clientId: deviceId })
  t.teardown(() => endClient(device))
  return { topic, queueId, got, device }
}
