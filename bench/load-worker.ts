/**
 * One load-generator thread: lean MQTT clients (bench/mqtt-wire.ts) over raw
 * mutual-TLS sockets. The parent starts one task per worker and steers it with
 * messages; every loop is bounded by a deadline and a count.
 *   parent → worker  {cmd:'go'|'mark'|'record'|'pause'|'destroy'|'close'}
 *   worker → parent  {type:'ready'|'mark'|'done'|'closed'|'result'|'error', ...}
 */
import { connect as tlsConnect, createSecureContext, type SecureContext, type TLSSocket } from 'node:tls'
import { isMainThread, parentPort, workerData } from 'node:worker_threads'
import { createCsr, generateKeyPair, privateKeyToPem } from '../pki/keys.js'
import {
  DISCONNECT, PacketReader, PacketType, connectPacket, parsePublish, publishPacket, pubackPacket, subscribePacket, topicField
} from './mqtt-wire.js'
import { telemetryPayload } from './telemetry.js'

export interface Identity { readonly clientId: string, readonly cert: string, readonly key: string }

interface Common { readonly port: number, readonly ca: string }
export type WorkerTask = Common & (
  | { task: 'connects', identities: Identity[], concurrency: number, durationMs: number, maxCount: number }
  | { task: 'publishers', identities: Identity[], qos: 0 | 1, window: number, ratePerSecond: number, durationMs: number, maxCount: number, progress?: SharedArrayBuffer, maxAhead?: number }
  | { task: 'subscriber', identity: Identity, clean: boolean, topic: string, qos: 0 | 1, maxLatencies: number, progress?: SharedArrayBuffer }
  | { task: 'idle', identities: Identity[], concurrency: number }
  | { task: 'provision', claim: Identity, prefix: string, concurrency: number, warmupMs: number, durationMs: number, devices: Array<{ key: string, csr: string }> }
  | { task: 'storm', identities: Identity[], concurrency: number, retryMs: number, deadlineMs: number }
)

/**
 * Shared between the publishers and the subscriber of one fan-in: [0] messages
 * received, [1] messages sent. Flat-out publishers stay at most `maxAhead` ahead of
 * the subscriber, so the kernel's socket buffers never hold a backlog that would
 * outlive the measurement (with QoS 0 nothing else bounds it).
 */
export const RECEIVED = 0
export const SENT = 1
/** [2]: messages given up on (QoS 0 may be lost): a subscriber that stops advancing does not stall the publishers */
export const FORGIVEN = 2
const STALL_MS = 500

const CONNECT_TIMEOUT_MS = 15_000
const REPLY_TIMEOUT_MS = 15_000

const now = (): number => performance.timeOrigin + performance.now()

function post (msg: Record<string, unknown>, transfer: ArrayBuffer[] = []): void {
  parentPort?.postMessage(msg, transfer)
}

/** One MQTT connection; `onPacket` sees everything after CONNACK. */
class Conn {
  onPacket: (type: number, flags: number, body: Buffer) => void = () => {}
  private readonly reader: PacketReader
  private nextId = 0

  private constructor (readonly socket: TLSSocket, readonly clientId: string) {
    this.reader = new PacketReader((type, flags, body) => this.onPacket(type, flags, body))
    socket.on('data', (chunk: Buffer) => this.reader.push(chunk))
  }

  messageId (): number {
    this.nextId = (this.nextId % 65535) + 1
    return this.nextId
  }

  static open (port: number, context: SecureContext, clientId: string, clean = true, keepalive = 0): Promise<Conn> {
    return new Promise((resolve, reject) => {
      const socket = tlsConnect({ host: '127.0.0.1', port, secureContext: context })
      const conn = new Conn(socket, clientId)
      let settled = false
      const fail = (err: Error): void => {
        if (settled) return
        settled = true
        clearTimeout(timer)
        socket.destroy()
        reject(err)
      }
      const timer = setTimeout(() => fail(new Error('connect timed out')), CONNECT_TIMEOUT_MS)
      socket.on('error', fail)
      socket.once('close', () => fail(new Error('closed before CONNACK')))
      socket.once('secureConnect', () => {
        socket.setNoDelay(true)
        socket.write(connectPacket(clientId, { clean, keepalive }))
      })
      conn.onPacket = (type, _flags, body) => {
        if (type !== PacketType.CONNACK || settled) return
        if (body[1] !== 0) return fail(new Error(`CONNACK ${body[1]}`))
        settled = true
        clearTimeout(timer)
        conn.onPacket = () => {}
        resolve(conn)
      }
    })
  }

  /** resolves on SUBACK; rejects when a filter is refused */
  subscribe (topics: string | readonly string[], qos: 0 | 1): Promise<void> {
    return new Promise((resolve, reject) => {
      const id = this.messageId()
      const previous = this.onPacket
      const timer = setTimeout(() => reject(new Error('no SUBACK')), REPLY_TIMEOUT_MS)
      this.onPacket = (type, flags, body) => {
        if (type !== PacketType.SUBACK || body.readUInt16BE(0) !== id) return previous(type, flags, body)
        clearTimeout(timer)
        this.onPacket = previous
        if (body.subarray(2).includes(0x80)) reject(new Error('subscription refused'))
        else resolve()
      }
      this.socket.write(subscribePacket(id, topics, qos))
    })
  }

  /** DISCONNECT, then wait (bounded) for the broker to close */
  close (): Promise<void> {
    return new Promise((resolve) => {
      if (this.socket.destroyed) return resolve()
      const timer = setTimeout(() => {
        this.socket.destroy()
        resolve()
      }, 5000)
      this.socket.once('close', () => {
        clearTimeout(timer)
        resolve()
      })
      this.socket.on('error', () => {})
      this.socket.end(DISCONNECT)
    })
  }
}

const contexts = new Map<string, SecureContext>()
function contextFor (ca: string, id: { cert: string, key: string }): SecureContext {
  const key = id.cert
  let ctx = contexts.get(key)
  if (!ctx) {
    ctx = createSecureContext({ ca, cert: id.cert, key: id.key })
    contexts.set(key, ctx)
  }
  return ctx
}

const SENT_AT = Buffer.from('"sentAt":')

/** the next command from the parent (the next one named `name`, if given) */
function nextCommand (name?: string): Promise<{ cmd: string }> {
  return new Promise((resolve) => {
    const port = parentPort
    if (!port) return
    port.on('message', function onCommand (msg: { cmd: string }) {
      if (name !== undefined && msg.cmd !== name) return
      port.off('message', onCommand)
      resolve(msg)
    })
  })
}

async function openAll (task: Common, identities: Identity[], concurrency: number, clean = true): Promise<{ conns: Conn[], errors: number, firstError: string | null }> {
  const conns: Conn[] = []
  let errors = 0
  let firstError: string | null = null
  let next = 0
  async function lane (): Promise<void> {
    while (next < identities.length) {
      const id = identities[next++]!
      try {
        conns.push(await Conn.open(task.port, contextFor(task.ca, id), id.clientId, clean))
      } catch (err) {
        errors++
        firstError ??= (err as Error).message
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, identities.length) }, lane))
  return { conns, errors, firstError }
}

async function connects (task: Extract<WorkerTask, { task: 'connects' }>): Promise<void> {
  for (const id of task.identities) contextFor(task.ca, id)
  post({ type: 'ready', connected: 0, errors: 0 })
  await nextCommand('go')
  const deadline = Date.now() + task.durationMs
  const latencies: number[] = []
  let count = 0
  let errors = 0
  let firstError: string | null = null
  async function lane (i: number): Promise<void> {
    const id = task.identities[i % task.identities.length]!
    const context = contextFor(task.ca, id)
    while (Date.now() < deadline && count + errors < task.maxCount) {
      const t0 = performance.now()
      try {
        const conn = await Conn.open(task.port, context, id.clientId)
        latencies.push(performance.now() - t0)
        count++
        await conn.close()
      } catch (err) {
        errors++
        firstError ??= (err as Error).message
      }
    }
  }
  await Promise.all(Array.from({ length: task.concurrency }, (_, i) => lane(i)))
  post({ type: 'result', count, errors, firstError, latencies })
}

async function publishers (task: Extract<WorkerTask, { task: 'publishers' }>): Promise<void> {
  const { conns, errors, firstError } = await openAll(task, task.identities, 16)
  // conns come in the order their handshakes finished: each publishes on its own device's topic
  const topics = conns.map((conn) => topicField(`devices/${conn.clientId}/telemetry`))
  let sent = 0
  let acked = 0
  let stopped = false
  const inFlight = new Array<number>(conns.length).fill(0)
  conns.forEach((conn, i) => {
    conn.socket.on('error', () => {})
    conn.onPacket = (type) => {
      if (type === PacketType.PUBACK) {
        acked++
        inFlight[i]!--
        if (task.ratePerSecond === 0 && task.qos === 1 && inFlight[i]! <= task.window / 2) pump(i)
      }
    }
  })
  parentPort?.on('message', (msg: { cmd: string }) => {
    if (msg.cmd === 'mark') post({ type: 'mark', sent, acked, at: now() })
    // ends the run before its duration (the storm scenario's steady publishers)
    else if (msg.cmd === 'stop') stopped = true
  })
  post({ type: 'ready', connected: conns.length, errors, firstError })
  await nextCommand('go')
  const start = Date.now()
  const deadline = start + task.durationMs
  const more = (): boolean => !stopped && sent < task.maxCount && Date.now() < deadline
  const progress = task.progress ? new Int32Array(task.progress) : null
  const maxAhead = task.maxAhead ?? Number.POSITIVE_INFINITY
  let lastReceived = -1
  let stalledSince = 0
  /** false while the subscriber is too far behind */
  const mayRun = (): boolean => {
    if (progress === null) return true
    const received = Atomics.load(progress, RECEIVED)
    if (Atomics.load(progress, SENT) - received - Atomics.load(progress, FORGIVEN) < maxAhead) return true
    const t = Date.now()
    if (received !== lastReceived) {
      lastReceived = received
      stalledSince = t
    } else if (t - stalledSince > STALL_MS) {
      // nothing arrived for a while although plenty is on its way: count the window as lost
      Atomics.add(progress, FORGIVEN, Math.floor(maxAhead / 2))
      stalledSince = t
    }
    return false
  }

  function one (i: number): Buffer {
    const seq = ++sent
    if (progress) Atomics.add(progress, SENT, 1)
    if (task.qos === 1) inFlight[i]!++
    return publishPacket(topics[i]!, telemetryPayload(seq, now()), task.qos, task.qos === 1 ? conns[i]!.messageId() : 0)
  }

  /** flat out: QoS 1 keeps `window` unacknowledged per device; QoS 0 writes until the socket pushes back */
  function pump (i: number): void {
    const conn = conns[i]!
    if (conn.socket.destroyed || !more()) return
    if (!mayRun()) {
      setTimeout(pump, 1, i)
      return
    }
    const batch: Buffer[] = []
    if (task.qos === 1) {
      while (inFlight[i]! < task.window && batch.length < task.window && more()) batch.push(one(i))
      if (batch.length > 0) conn.socket.write(batch.length === 1 ? batch[0]! : Buffer.concat(batch))
      return
    }
    while (batch.length < 16 && more()) batch.push(one(i))
    if (batch.length === 0) return
    if (conn.socket.write(Buffer.concat(batch))) setImmediate(pump, i)
    else conn.socket.once('drain', () => pump(i))
  }

  await new Promise<void>((resolve) => {
    if (task.ratePerSecond > 0) {
      // paced: every millisecond, what is due, round robin over the devices
      let rr = 0
      const timer = setInterval(() => {
        if (!more()) {
          clearInterval(timer)
          return resolve()
        }
        const due = Math.floor(((Date.now() - start) * task.ratePerSecond) / 1000) - sent
        for (let k = 0; k < due; k++) {
          const i = rr++ % conns.length
          const conn = conns[i]!
          if (!conn.socket.destroyed) conn.socket.write(one(i))
        }
      }, 1)
    } else {
      conns.forEach((_c, i) => pump(i))
      const timer = setInterval(() => {
        if (!more()) {
          clearInterval(timer)
          resolve()
        }
      }, 10)
    }
  })
  // bounded wait for the last PUBACKs
  const ackDeadline = Date.now() + 3000
  while (task.qos === 1 && acked < sent && Date.now() < ackDeadline && conns.some((c) => !c.socket.destroyed)) {
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  stopped = true
  post({ type: 'done', sent, acked })
  await nextCommand('close')
  await Promise.all(conns.map((c) => c.close()))
  post({ type: 'closed' })
}

async function subscriber (task: Extract<WorkerTask, { task: 'subscriber' }>): Promise<void> {
  const id = task.identity
  let conn: Conn
  try {
    conn = await Conn.open(task.port, contextFor(task.ca, id), id.clientId, task.clean)
    await conn.subscribe(task.topic, task.qos)
  } catch (err) {
    post({ type: 'error', message: (err as Error).message })
    return
  }
  let received = 0
  let recording = false
  const latencies = new Float64Array(task.maxLatencies)
  let latencyCount = 0
  let acks: Buffer[] = []
  conn.socket.on('error', () => {})
  conn.onPacket = (type, flags, body) => {
    if (type !== PacketType.PUBLISH) return
    received++
    const { qos, messageId, payload } = parsePublish(flags, body)
    if (qos === 1) acks.push(pubackPacket(messageId))
    if (recording && latencyCount < latencies.length) {
      const at = payload.indexOf(SENT_AT)
      if (at >= 0) latencies[latencyCount++] = now() - Number.parseFloat(payload.toString('latin1', at + SENT_AT.length, at + SENT_AT.length + 24))
    }
  }
  const progress = task.progress ? new Int32Array(task.progress) : null
  // one write of all PUBACKs per chunk read
  conn.socket.on('data', () => {
    if (progress) Atomics.store(progress, RECEIVED, received)
    if (acks.length === 0 || conn.socket.destroyed) return
    conn.socket.write(acks.length === 1 ? acks[0]! : Buffer.concat(acks))
    acks = []
  })
  post({ type: 'ready', connected: 1, errors: 0 })
  for (;;) {
    const { cmd } = await nextCommand()
    if (cmd === 'mark') post({ type: 'mark', received, at: now() })
    else if (cmd === 'record') {
      // a new window: the latencies of the one before were taken with 'latencies'
      latencyCount = 0
      recording = true
    }
    else if (cmd === 'latencies') {
      recording = false
      const out = latencies.slice(0, latencyCount)
      post({ type: 'latencies', values: out }, [out.buffer])
    } else if (cmd === 'pause') {
      conn.socket.pause()
      post({ type: 'paused' })
    } else if (cmd === 'destroy') {
      conn.socket.destroy()
      post({ type: 'closed', received })
      return
    } else if (cmd === 'close') {
      await conn.close()
      post({ type: 'closed', received })
      return
    }
  }
}

async function idle (task: Extract<WorkerTask, { task: 'idle' }>): Promise<void> {
  const { conns, errors, firstError } = await openAll(task, task.identities, task.concurrency)
  for (const c of conns) c.socket.on('error', () => {})
  post({ type: 'ready', connected: conns.length, errors, firstError })
  await nextCommand('close')
  for (const c of conns) c.socket.destroy()
  post({ type: 'closed' })
}

interface ProvisionReply { topic: string, body: Record<string, unknown> }

async function provision (task: Extract<WorkerTask, { task: 'provision' }>): Promise<void> {
  const claimContext = contextFor(task.ca, task.claim)
  // device keys and CSRs come ready made (see deviceRequests): the clock measures the broker
  const csrs = task.devices
  post({ type: 'ready', connected: 0, errors: 0 })
  await nextCommand('go')
  // devices finished during the warm-up are not counted: the broker's JIT is still compiling the flow
  const windowStart = Date.now() + task.warmupMs
  const deadline = windowStart + task.durationMs
  const csrTopic = '$provision/certificates/create-from-csr/json'
  const registerTopic = '$provision/templates/sensor/provision/json'
  const topics = { csr: topicField(csrTopic), register: topicField(registerTopic) }
  let next = 0
  let devices = 0
  let errors = 0
  let firstError: string | null = null
  const latencies: number[] = []

  function request (conn: Conn, topic: Buffer, body: unknown, replyPrefix: string): Promise<ProvisionReply> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no reply on ${replyPrefix}`)), REPLY_TIMEOUT_MS)
      conn.onPacket = (type, flags, raw) => {
        if (type !== PacketType.PUBLISH) return
        const p = parsePublish(flags, raw)
        if (p.qos === 1) conn.socket.write(pubackPacket(p.messageId))
        if (!p.topic.startsWith(replyPrefix)) return
        clearTimeout(timer)
        const reply = { topic: p.topic, body: JSON.parse(p.payload.toString('utf8')) as Record<string, unknown> }
        if (p.topic.endsWith('/rejected')) reject(new Error(`${String(reply.body.errorCode)} ${String(reply.body.errorMessage)}`))
        else resolve(reply)
      }
      conn.socket.write(publishPacket(topic, Buffer.from(JSON.stringify(body)), 1, conn.messageId()))
    })
  }

  async function lane (): Promise<void> {
    while (Date.now() < deadline && next < csrs.length) {
      const n = next++
      const { key, csr } = csrs[n]!
      const serialNumber = `${task.prefix}-${n}`.toUpperCase()
      const t0 = performance.now()
      let claim: Conn | null = null
      try {
        claim = await Conn.open(task.port, claimContext, `${task.prefix}-claim-${n}`.toLowerCase())
        claim.socket.on('error', () => {})
        await claim.subscribe([`${csrTopic}/+`, `${registerTopic}/+`], 1)
        const created = await request(claim, topics.csr, { certificateSigningRequest: csr }, csrTopic + '/')
        const registered = await request(claim, topics.register, {
          certificateOwnershipToken: created.body.certificateOwnershipToken,
          parameters: { serialNumber }
        }, registerTopic + '/')
        await claim.close()
        claim = null
        const deviceId = String(registered.body.deviceId)
        // the certificate as the broker returned it (the leaf alone), as fleet-provisioning firmware uses it
        const certificatePem = String(registered.body.certificatePem ?? created.body.certificatePem)
        const device = await Conn.open(task.port, createSecureContext({ ca: task.ca, cert: certificatePem, key }), deviceId)
        const finishedAt = Date.now()
        if (finishedAt >= windowStart && finishedAt <= deadline) {
          latencies.push(performance.now() - t0)
          devices++
        }
        await device.close()
      } catch (err) {
        errors++
        firstError ??= (err as Error).message
        claim?.socket.destroy()
      }
    }
  }
  await Promise.all(Array.from({ length: task.concurrency }, lane))
  post({ type: 'result', count: devices, errors, firstError, latencies })
}

/**
 * Keys and CSRs for provisioning devices, made in the main thread: key generation
 * inside worker threads that come and go has deadlocked OpenSSL 3 in Node 20
 * here (a worker stuck on a futex, and the process with it at exit).
 */
export function deviceRequests (count: number): Array<{ key: string, csr: string }> {
  return Array.from({ length: count }, () => {
    const keys = generateKeyPair('ec')
    return { key: privateKeyToPem(keys.privateKey), csr: createCsr({ commonName: 'bench-device', ...keys }) }
  })
}

/**
 * A reconnect storm: every device connected, then on 'drop' all connections
 * destroyed at once (the site's link came back, the broker restarted) and every
 * device reconnecting at once, retrying after a failure (refused, timed out)
 * after `retryMs` to twice that, as device firmware does. Posts 'back' when all
 * are connected again (or the deadline passed).
 */
async function storm (task: Extract<WorkerTask, { task: 'storm' }>): Promise<void> {
  const opened = await openAll(task, task.identities, task.concurrency)
  let conns = opened.conns
  for (const c of conns) c.socket.on('error', () => {})
  post({ type: 'ready', connected: conns.length, errors: opened.errors, firstError: opened.firstError })
  await nextCommand('drop')
  const t0 = performance.now()
  for (const c of conns) c.socket.destroy()
  const deadline = Date.now() + task.deadlineMs
  let attempts = 0
  let failures = 0
  let firstError: string | null = null
  const backAfter: number[] = []
  const back: Conn[] = []
  await Promise.all(task.identities.map(async (id) => {
    const context = contextFor(task.ca, id)
    while (Date.now() < deadline) {
      attempts++
      try {
        const conn = await Conn.open(task.port, context, id.clientId)
        conn.socket.on('error', () => {})
        back.push(conn)
        backAfter.push(performance.now() - t0)
        return
      } catch (err) {
        failures++
        firstError ??= (err as Error).message
        await new Promise((resolve) => setTimeout(resolve, task.retryMs * (1 + Math.random())))
      }
    }
  }))
  conns = back
  post({ type: 'back', back: back.length, ms: backAfter.length > 0 ? Math.max(...backAfter) : null, attempts, failures, firstError, backAfter })
  await nextCommand('close')
  for (const c of conns) c.socket.destroy()
  post({ type: 'closed' })
}

if (!isMainThread) {
  const task = workerData as WorkerTask
  const run = { connects, publishers, subscriber, idle, provision, storm }[task.task] as (t: WorkerTask) => Promise<void>
  run(task).catch((err: unknown) => post({ type: 'error', message: (err as Error).stack ?? String(err) }))
}
