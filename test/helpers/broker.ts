/**
 * Test harness: a real broker on loopback ports with a freshly generated PKI,
 * an in-memory audit stream parsed into objects, and real MQTT.js clients.
 */
import { appendFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt'
import pino from 'pino'
import { buildBroker, type BrokerHandle } from '../../broker/build.js'
import { loadConfig } from '../../broker/config.js'
import { generateDevPki } from '../../certs-dev/generate.js'
import { issueCertificate, loadIssuer } from '../../pki/certificate.js'
import { generateKeyPair, privateKeyToPem } from '../../pki/keys.js'
import type { Registry } from '../../broker/store/registry.js'
import { startRedisServer, type RedisServerHandle } from './redis-server.js'

export type StoreKind = 'memory' | 'redis'
export const STORES: readonly StoreKind[] = ['memory', 'redis']

export interface Pki { dir: string, read (file: string): string }

const pkiCache = new Map<string, Pki>()

/** One dev PKI per test process (generation is fast, but there is no need to repeat it). */
export async function devPki (rsa = false): Promise<Pki> {
  const key = rsa ? 'rsa' : 'ec'
  const cached = pkiCache.get(key)
  if (cached) return cached
  const pki = await newDevPki(rsa)
  pkiCache.set(key, pki)
  return pki
}

/** A dev PKI of its own, for a test that changes the files (CA rollover, corrupt files) */
export async function newDevPki (rsa = false): Promise<Pki> {
  const dir = mkdtempSync(join(tmpdir(), 'jitp-pki-'))
  await generateDevPki({ outDir: dir, rsa })
  process.once('exit', () => rmSync(dir, { recursive: true, force: true }))
  return { dir, read: (file: string) => readFileSync(join(dir, file), 'utf8') }
}

export interface AuditCapture { lines: Array<Record<string, unknown>>, raw: string[], stream: Writable }

/** every audit line of the whole test run also lands here, for scripts/audit-check.mjs */
export const RUN_AUDIT_FILE = process.env.JITP_TEST_AUDIT_FILE ?? join(tmpdir(), 'aedes-jitp-test-audit.log')

export function auditCapture (): AuditCapture {
  const capture: AuditCapture = {
    lines: [],
    raw: [],
    stream: new Writable({
      write (chunk: Buffer, _enc, cb) {
        appendFileSync(RUN_AUDIT_FILE, chunk)
        for (const line of chunk.toString('utf8').split('\n')) {
          if (!line) continue
          capture.raw.push(line)
          capture.lines.push(JSON.parse(line) as Record<string, unknown>)
        }
        cb()
      }
    })
  }
  return capture
}

export interface TestBroker {
  handle: BrokerHandle
  audit: AuditCapture
  pki: Pki
  port: number
  httpPort: number
  /** the admin API (null if off) */
  adminPort: number | null
  redis?: RedisServerHandle
  events (name: string): Array<Record<string, unknown>>
  close (): Promise<void>
}

export interface StartOptions {
  store: StoreKind
  /** reuse a Redis server (e.g. two brokers sharing one) */
  redis?: RedisServerHandle
  overrides?: Record<string, unknown>
  now?: () => number
  /** a PKI other than the process's shared one */
  pki?: Pki
}

export async function startBroker (opts: StartOptions): Promise<TestBroker> {
  const pki = opts.pki ?? await devPki()
  let redis = opts.redis
  const ownRedis = opts.store === 'redis' && !redis
  if (ownRedis) redis = await startRedisServer()
  const audit = auditCapture()
  const config = loadConfig({
    env: {},
    overrides: {
      MQTTS_PORT: 0,
      HTTP_PORT: 0,
      ADMIN_PORT: 0,
      HOST: '127.0.0.1',
      CERTS_DIR: pki.dir,
      GENERATE_DEV_CERTS: false,
      ...(opts.store === 'redis' && redis ? { REDIS_URL: redis.url } : {}),
      ...opts.overrides
    }
  })
  const handle = await buildBroker(config, { auditStream: audit.stream, now: opts.now, log: pino({ level: 'silent' }) })
  return {
    handle,
    audit,
    pki,
    port: handle.mqttsPort,
    httpPort: handle.httpPort,
    adminPort: handle.adminPort,
    redis,
    events: (name) => audit.lines.filter((l) => l.event === name),
    async close () {
      await handle.close()
      if (ownRedis) await redis?.stop()
    }
  }
}

export interface ClientCredentials { cert: string, key: string }

export function credentials (pki: Pki, name: 'claim' | 'service' | 'manufacturer-device' | 'admin'): ClientCredentials {
  return { cert: pki.read(`${name}-chain.pem`), key: pki.read(`${name}.key`) }
}

/** Issues a device certificate with the PKI's device CA and registers it in `registry` (as provisioning would). */
export async function registerDeviceIn (registry: Registry, pki: Pki, deviceId: string): Promise<ClientCredentials & { certificateId: string }> {
  const issuer = loadIssuer(pki.read('device-ca.pem'), pki.read('device-ca.key'))
  const keys = generateKeyPair('ec')
  const issued = issueCertificate({ commonName: deviceId, publicKey: keys.publicKey, issuer, validityDays: 90, extKeyUsage: ['clientAuth'] })
  const now = Date.now()
  await registry.putDevice({ deviceId, status: 'active', template: 'test', createdAt: now, updatedAt: now, attributes: {} })
  await registry.putCertificate({
    certificateId: issued.certificateId,
    deviceId,
    status: 'active',
    serialNumber: issued.serialNumber,
    notAfter: issued.notAfter.getTime(),
    createdAt: now,
    updatedAt: now
  })
  return { cert: issued.pem + pki.read('device-ca.pem'), key: privateKeyToPem(keys.privateKey), certificateId: issued.certificateId }
}

/** Issues a device certificate with the broker's device CA and registers it (as provisioning would). */
export function registerDevice (tb: TestBroker, deviceId: string): Promise<ClientCredentials & { certificateId: string }> {
  return registerDeviceIn(tb.handle.registry, tb.pki, deviceId)
}

/** An unregistered device certificate from the device CA. */
export function unregisteredDevice (tb: TestBroker, deviceId: string): ClientCredentials {
  const issuer = loadIssuer(tb.pki.read('device-ca.pem'), tb.pki.read('device-ca.key'))
  const keys = generateKeyPair('ec')
  const issued = issueCertificate({ commonName: deviceId, publicKey: keys.publicKey, issuer, validityDays: 90, extKeyUsage: ['clientAuth'] })
  return { cert: issued.pem + tb.pki.read('device-ca.pem'), key: privateKeyToPem(keys.privateKey) }
}

export interface ConnectResult { client: MqttClient }

/** Connects over mutual TLS; resolves once CONNACK 0 arrives, rejects with the CONNACK code or TLS error. */
export function connect (tb: { port: number, pki: Pki }, creds: ClientCredentials | null, opts: IClientOptions = {}): Promise<MqttClient> {
  return connectWith(tb, creds, opts, null)
}

export type Collected = Array<{ topic: string, payload: string, retain: boolean }>

/**
 * connects, collecting every message from before the CONNACK: a persistent session's
 * queue is written right after it, and MQTT.js may emit those messages before its own
 * 'connect' (which waits for its outgoing store), so a listener added after
 * `await connect()` can miss the first of them
 */
export async function connectCollecting (tb: { port: number, pki: Pki }, creds: ClientCredentials | null, opts: IClientOptions = {}): Promise<{ client: MqttClient, got: Collected }> {
  let got: Collected = []
  const client = await connectWith(tb, creds, opts, (c) => { got = collect(c) })
  return { client, got }
}

function connectWith (tb: { port: number, pki: Pki }, creds: ClientCredentials | null, opts: IClientOptions, beforeConnack: ((client: MqttClient) => void) | null): Promise<MqttClient> {
  return new Promise((resolve, reject) => {
    const client = mqtt.connect({
      protocol: 'mqtts',
      host: '127.0.0.1',
      port: tb.port,
      ca: tb.pki.read('root-ca.pem'),
      ...(creds ? { cert: creds.cert, key: creds.key } : {}),
      reconnectPeriod: 0,
      connectTimeout: 5000,
      protocolVersion: 4,
      ...opts
    })
    beforeConnack?.(client)
    const fail = (err: Error): void => {
      client.removeAllListeners('connect')
      client.end(true)
      reject(err)
    }
    client.once('connect', () => {
      client.removeListener('error', fail)
      client.removeListener('close', onClose)
      client.on('error', () => {})
      resolve(client)
    })
    client.once('error', fail)
    const onClose = (): void => fail(new Error('connection closed before CONNACK'))
    client.once('close', onClose)
  })
}

export function endClient (client: MqttClient): Promise<void> {
  return withinAck(`end of ${client.options.clientId ?? 'a client'}`, (resolve) => client.end(false, {}, () => resolve()))
}

/**
 * An acknowledgement that never comes fails the test here, naming what was
 * waited for, well before tap's own timeout, which names nothing.
 */
const ACK_WAIT_MS = 30_000

function withinAck<T> (what: string | (() => string), start: (resolve: (value: T) => void, reject: (err: Error) => void) => void): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    // unref'd: a wait nobody awaits any more (a publish whose failure a test ignores) keeps no process alive
    const timer = setTimeout(() => reject(new Error(`no ${typeof what === 'string' ? what : what()} within ${ACK_WAIT_MS} ms`)), ACK_WAIT_MS).unref()
    start((value) => { clearTimeout(timer); resolve(value) }, (err) => { clearTimeout(timer); reject(err) })
  })
}

/** Resolves with the SUBACK return codes (128 = refused). */
export function subscribe (client: MqttClient, topic: string | string[], qos: 0 | 1 = 1): Promise<number[]> {
  // the client id and the connection's state in the message: a test that subscribes several
  // clients to the same filters must say which SUBACK never came
  const who = (): string => `${client.options.clientId ?? '?'}, ${client.connected ? 'connected' : 'not connected'}`
  return withinAck(() => `SUBACK for ${JSON.stringify(topic)} (${who()})`, (resolve, reject) => {
    client.subscribe(topic, { qos }, (err, _subs, packet) => {
      const granted = (packet as { granted?: number[] } | undefined)?.granted
      if (!granted) return reject(err ?? new Error('no SUBACK'))
      resolve(granted)
    })
  })
}

export function publish (client: MqttClient, topic: string, payload: string | Buffer, opts: { qos?: 0 | 1, retain?: boolean } = {}): Promise<void> {
  return withinAck(`PUBACK (or write) for ${topic}`, (resolve, reject) => {
    client.publish(topic, payload, { qos: opts.qos ?? 1, retain: opts.retain ?? false }, (err) => err ? reject(err) : resolve())
  })
}

/** Collects messages on a client. */
export function collect (client: MqttClient): Collected {
  const got: Collected = []
  client.on('message', (topic, payload, packet) => got.push({ topic, payload: payload.toString(), retain: packet.retain }))
  return got
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

export async function waitFor (check: () => boolean, timeoutMs = 5000, what = 'condition'): Promise<void> {
  const start = Date.now()
  while (!check()) {
    if (Date.now() - start > timeoutMs) throw new Error(`timed out waiting for ${what}`)
    await sleep(10)
  }
}
