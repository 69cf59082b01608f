/**
 * Micro-benchmark of what a SUBSCRIBE costs in retained-message lookups once a
 * fleet has been provisioned (one retained config per device): Aedes' own
 * in-memory persistence against the same persistence with this broker's
 * retained index (broker/store/retained-index.ts), side by side in one run.
 * Run: npm run build && node dist/bench/retained-lookup.js [devices]
 */
import type { Readable } from 'node:stream'
import { pathToFileURL } from 'node:url'
import { createMemoryPersistence, indexRetained, type RetainedStore } from '../broker/store/retained-index.js'

/** the subscriptions of a provisioning flow: a claim's reply topics, then the new device's own */
const SUBSCRIPTIONS: ReadonlyArray<{ label: string, filters: string[] }> = [
  { label: 'claim: $provision/.../+ (2 filters)', filters: ['$provision/certificates/create-from-csr/json/+', '$provision/templates/sensor/provision/json/+'] },
  { label: 'device: devices/<id>/config', filters: ['devices/sensor-7/config'] },
  { label: 'device: devices/<id>/commands/+', filters: ['devices/sensor-7/commands/+'] }
]
const ROUNDS = 20

export interface RetainedLookupResult { devices: number, rows: Array<{ label: string, aedesMs: number, indexedMs: number }> }

async function drain (stream: Readable): Promise<number> {
  let n = 0
  for await (const _packet of stream) n++
  return n
}

async function msPerSubscribe (store: RetainedStore, filters: string[]): Promise<number> {
  await drain(store.createRetainedStreamCombi(filters)) // warm-up
  const start = performance.now()
  for (let i = 0; i < ROUNDS; i++) await drain(store.createRetainedStreamCombi(filters))
  return (performance.now() - start) / ROUNDS
}

export async function benchRetainedLookup (devices: number): Promise<RetainedLookupResult> {
  const plain = createMemoryPersistence()
  const indexed = indexRetained(createMemoryPersistence())
  const payload = Buffer.from('{"version":1,"config":{"telemetryIntervalSeconds":60,"reportState":true}}')
  for (let i = 0; i < devices; i++) {
    const packet = { cmd: 'publish', topic: `devices/sensor-${i}/config`, payload, qos: 1, retain: true, brokerId: 'bench', brokerCounter: i }
    await plain.storeRetained(packet)
    await indexed.storeRetained(packet)
  }
  const rows: RetainedLookupResult['rows'] = []
  for (const { label, filters } of SUBSCRIPTIONS) {
    rows.push({ label, aedesMs: await msPerSubscribe(plain, filters), indexedMs: await msPerSubscribe(indexed, filters) })
  }
  return { devices, rows }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const result = await benchRetainedLookup(Number(process.argv[2] ?? 50_000))
  for (const r of result.rows) console.log(`${r.label}: Aedes memory store ${r.aedesMs.toFixed(3)} ms, indexed ${r.indexedMs.toFixed(3)} ms per subscribe, with ${result.devices} retained configs`)
}
