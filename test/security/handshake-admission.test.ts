/**
 * Attack (or an outage's aftermath): many TLS handshakes at once. Node runs every
 * handshake step on the thread that also routes messages, so a reconnect storm
 * stalls delivery for every device already connected. Defence (CONTRACT §11,
 * broker/listener/admission.ts): MAX_CONCURRENT_HANDSHAKES handshakes in
 * progress at once per listener; the others wait with their ClientHello unread,
 * first come first served, and beyond a bounded queue they are refused fast,
 * before any TLS work, and audited. Idle connections never take a slot.
 * The listener does not depend on the store: the in-memory one is enough.
 */
import t from 'tap'
import { readFileSync } from 'node:fs'
import { resolve } from 'node:path'
import { Worker } from 'node:worker_threads'
import { connect as netConnect, createServer as createNetServer, type AddressInfo, type Socket } from 'node:net'
import { connect as tlsConnect, createServer as createTlsServer, type TLSSocket } from 'node:tls'
import type { WorkerTask } from '../../bench/load-worker.js'
import { HANDSHAKE_QUEUE_MIN, HandshakeGate } from '../../broker/listener/admission.js'
import { ensureBuilt } from '../helpers/broker-process.js'
import { collect, connect, credentials, devPki, endClient, registerDevice, sleep, startBroker, subscribe, waitFor, type ClientCredentials, type TestBroker } from '../helpers/broker.js'

const SLOTS = 4
const STORM = 100

/** the listener's count of open TCP connections, polled (bounded) until it reaches `n` */
async function openAtLeast (tb: TestBroker, n: number): Promise<void> {
  for (let i = 0; i < 500; i++) {
    const open = (await tb.handle.metrics.listenerConnections.get()).values.find((v) => v.labels.state === 'open')?.value ?? 0
    if (open >= n) return
    await sleep(10)
  }
  throw new Error(`the listener never held ${n} connections`)
}

t.test(`${STORM} simultaneous connects with MAX_CONCURRENT_HANDSHAKES=${SLOTS}`, async (t) => {
  const tb = await startBroker({
    store: 'memory',
    overrides: { MAX_CONCURRENT_HANDSHAKES: SLOTS, MAX_PENDING_CONNECTIONS_PER_ADDRESS: 1000, CONNECT_RATE_PER_ADDRESS: 100_000 }
  })
  t.teardown(() => tb.close())
  const storm: Array<{ id: string, creds: ClientCredentials }> = []
  for (let i = 0; i < STORM; i++) {
    const id = `storm-${i}`
    storm.push({ id, creds: await registerDevice(tb, id) })
  }

  // connected before the storm: a device publishing every 10 ms to a service
  const service = await connect(tb, credentials(tb.pki, 'service'), { clientId: 'storm-service' })
  await subscribe(service, 'devices/steady/telemetry')
  const got = collect(service)
  const steady = await connect(tb, await registerDevice(tb, 'steady'), { clientId: 'steady' })
  let steadyClosed = false
  steady.once('close', () => { steadyClosed = true })
  let sent = 0
  const publishing = setInterval(() => {
    steady.publish('devices/steady/telemetry', JSON.stringify({ ts: Date.now(), seq: ++sent, values: { t: 1 } }), { qos: 1 })
  }, 10)

  // the gauge, read while the storm goes on: never more than SLOTS running, and some waiting
  let maxRunning = 0
  let maxWaiting = 0
  const sampler = setInterval(() => {
    tb.handle.metrics.handshakes.get().then((m) => {
      for (const v of m.values) {
        if (v.labels.state === 'running') maxRunning = Math.max(maxRunning, v.value)
        if (v.labels.state === 'waiting') maxWaiting = Math.max(maxWaiting, v.value)
      }
    }, () => undefined)
  }, 2)

  // the storm comes from another thread (the bench's lean clients, compiled), so its TLS work runs beside the broker's, as a
  // fleet's would: from this thread, the clients' own handshake steps would space the broker's out
  ensureBuilt()
  const task: WorkerTask = { task: 'idle', port: tb.port, ca: tb.pki.read('root-ca.pem'), identities: storm.map(({ id, creds }) => ({ clientId: id, ...creds })), concurrency: STORM }
  const started = Date.now()
  const generator = new Worker(resolve('dist/bench/load-worker.js'), { workerData: task })
  t.teardown(() => generator.terminate())
  const message = (type: string): Promise<Record<string, unknown>> => new Promise((resolve_, reject) => {
    const timer = setTimeout(() => reject(new Error(`load worker: no ${type}`)), 30_000)
    generator.on('message', function onMessage (m: Record<string, unknown>) {
      if (m.type !== type && m.type !== 'error') return
      clearTimeout(timer)
      generator.off('message', onMessage)
      if (m.type === 'error') reject(new Error(String(m.message)))
      else resolve_(m)
    })
  })
  const ready = await message('ready')
  const took = Date.now() - started
  clearInterval(sampler)
  clearInterval(publishing)
  t.equal(ready.connected, STORM, `all ${STORM} connected (CONNACK 0) within ${took} ms${ready.firstError ? `; first error: ${String(ready.firstError)}` : ''}`)
  t.ok(maxRunning <= SLOTS, `at most ${SLOTS} handshakes held a slot at once (saw ${maxRunning})`)
  t.ok(maxWaiting > 0, `the others waited for a slot (up to ${maxWaiting} at once)`)
  t.equal(tb.events('connect.refused').length, 0, 'none refused: the queue held them all')

  const lastSent = sent
  await waitFor(() => got.length >= lastSent, 10_000, 'the steady device\'s messages')
  const seqs = new Set(got.map((m) => (JSON.parse(m.payload) as { seq: number }).seq))
  t.equal(seqs.size, lastSent, `the connected device kept delivering: ${lastSent} messages during the storm, all received`)
  t.notOk(steadyClosed, 'and was never disconnected')
  const gauges = await tb.handle.metrics.handshakes.get()
  t.same(gauges.values.map((v) => v.value), [0, 0], 'no slot held and nothing waiting afterwards')

  generator.postMessage({ cmd: 'close' })
  await message('closed')
  await endClient(steady)
  await endClient(service)
})

t.test('idle connections take no slot', async (t) => {
  const tb = await startBroker({ store: 'memory', overrides: { MAX_CONCURRENT_HANDSHAKES: 1, MAX_PENDING_CONNECTIONS_PER_ADDRESS: 1000, TLS_HANDSHAKE_TIMEOUT_MS: 30_000 } })
  t.teardown(() => tb.close())
  const creds = await registerDevice(tb, 'after-idle')
  const idle: Socket[] = []
  t.teardown(() => { for (const s of idle) s.destroy() })
  await Promise.all(Array.from({ length: 50 }, () => new Promise<void>((resolve) => {
    const s = netConnect({ host: '127.0.0.1', port: tb.port })
    s.on('error', () => {})
    s.once('connect', () => resolve())
    idle.push(s)
  })))
  await openAtLeast(tb, 50)
  const t0 = Date.now()
  const device = await connect(tb, creds, { clientId: 'after-idle' })
  t.ok(device.connected, `a device connects at once beside 50 idle connections and one slot (${Date.now() - t0} ms)`)
  t.ok(idle.every((s) => !s.destroyed), 'the idle ones are still open (their handshake deadline is later)')
  await endClient(device)
})

t.test('beyond the queue: refused fast, before any TLS byte', async (t) => {
  // the gate alone on a real TLS server (the listener's queue is at least 1,024 long): one slot, two may wait
  const dir = (await devPki()).dir
  const server = createTlsServer({ cert: readFileSync(`${dir}/server.pem`), key: readFileSync(`${dir}/server.key`) })
  const refused: Socket[] = []
  const gate = new HandshakeGate(server, {
    maxConcurrent: 1,
    maxWaiting: 2,
    slotMaxMs: 60_000,
    turnBudgetMs: 4,
    onRefused (raw) {
      refused.push(raw)
      raw.destroy()
    }
  })
  server.on('connection', (raw: Socket) => {
    raw.once('close', () => gate.done(raw))
    if (gate.admit(raw) === 'refused') {
      refused.push(raw)
      raw.destroy()
    }
  })
  server.on('secureConnection', (s: TLSSocket) => s.end())
  server.on('tlsClientError', () => {})
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => server.close())
  const port = (server.address() as AddressInfo).port

  // five clients that send the first bytes of a TLS record and stall: one holds the slot, two wait, two are refused
  const answered: number[] = []
  const stalled = await Promise.all(Array.from({ length: 5 }, (_, i) => new Promise<{ socket: Socket, closed: Promise<void> }>((resolve) => {
    const socket = netConnect({ host: '127.0.0.1', port })
    socket.on('error', () => {})
    socket.on('data', () => answered.push(i))
    const closed = new Promise<void>((resolve_) => socket.once('close', () => resolve_()))
    socket.once('connect', () => {
      socket.write(Buffer.from([0x16, 0x03, 0x01]))
      resolve({ socket, closed })
    })
  })))
  await waitFor(() => refused.length === 2, 5000, 'two refusals')
  t.equal(gate.inProgress, 1, 'one handshake holds the slot')
  t.equal(gate.queued, 2, 'two wait for it')
  const gone = await Promise.all(stalled.map((s) => Promise.race([s.closed.then(() => true), new Promise<boolean>((resolve) => setTimeout(() => resolve(false), 300))])))
  t.equal(gone.filter(Boolean).length, 2, 'the two refused were closed')
  t.same(answered, [], 'and no client got a byte of TLS back (nothing was started for the refused ones)')

  // a real client waits its turn: the slot frees when the stalled handshake is gone
  const client = tlsConnect({ host: '127.0.0.1', port, ca: readFileSync(`${dir}/root-ca.pem`) })
  client.on('error', () => {})
  const secure = new Promise<boolean>((resolve) => {
    client.once('secureConnect', () => resolve(true))
    client.once('close', () => resolve(false))
  })
  await waitFor(() => refused.length === 3, 5000, 'the real client refused too: the queue is full')
  t.equal(await secure, false, 'a full queue refuses whoever comes, fast')
  for (const s of stalled) s.socket.destroy()
  await waitFor(() => gate.inProgress === 0 && gate.queued === 0, 5000, 'slots and queue empty once the stalled clients left')
  const second = tlsConnect({ host: '127.0.0.1', port, ca: readFileSync(`${dir}/root-ca.pem`) })
  second.on('error', () => {})
  const ok = await new Promise<boolean>((resolve) => {
    second.once('secureConnect', () => resolve(true))
    second.once('close', () => resolve(false))
  })
  t.ok(ok, 'with room again, a handshake completes')
  second.destroy()
  gate.close()
})

t.test('the listener: a full queue is refused fast and audited, and drains when the stalled clients go', async (t) => {
  const tb = await startBroker({
    store: 'memory',
    overrides: { MAX_CONCURRENT_HANDSHAKES: 1, MAX_PENDING_CONNECTIONS_PER_ADDRESS: 5000, CONNECT_RATE_PER_ADDRESS: 1_000_000, TLS_HANDSHAKE_TIMEOUT_MS: 30_000, AUDIT_AGGREGATE_SECONDS: 60 }
  })
  t.teardown(() => tb.close())
  const creds = await registerDevice(tb, 'behind-the-queue')
  // the first bytes of a TLS record, then nothing: each takes its turn at the one slot (250 ms at most) and stalls
  // the slot frees every 250 ms while the sockets are opened: enough beyond the queue that some find it full however slow that is
  const extra = 100
  const stalled: Array<{ socket: Socket, closedAt: number | null, answered: boolean }> = []
  t.teardown(() => { for (const s of stalled) s.socket.destroy() })
  for (let i = 0; i < HANDSHAKE_QUEUE_MIN + 1 + extra; i += 200) {
    await Promise.all(Array.from({ length: Math.min(200, HANDSHAKE_QUEUE_MIN + 1 + extra - i) }, () => new Promise<void>((resolve_) => {
      const entry = { socket: netConnect({ host: '127.0.0.1', port: tb.port }), closedAt: null as number | null, answered: false }
      entry.socket.on('error', () => {})
      entry.socket.on('data', () => { entry.answered = true })
      entry.socket.once('close', () => { entry.closedAt = Date.now() })
      entry.socket.once('connect', () => entry.socket.write(Buffer.from([0x16, 0x03, 0x01]), () => resolve_()))
      stalled.push(entry)
    })))
  }
  await waitFor(() => tb.events('connect.refused').some((l) => l.errorCode === 'TooManyHandshakes'), 10_000, 'a TooManyHandshakes refusal')
  const line = tb.events('connect.refused').find((l) => l.errorCode === 'TooManyHandshakes')!
  t.match(line, { remoteAddress: '127.0.0.1', reason: 'too many TLS handshakes waiting', count: 1 }, 'audited (aggregated per address)')
  await waitFor(() => stalled.some((s) => s.closedAt !== null), 5000, 'a refused socket to close')
  const refusedSockets = stalled.filter((s) => s.closedAt !== null)
  t.ok(refusedSockets.length >= 1 && refusedSockets.length <= extra + 1, `${refusedSockets.length} of ${stalled.length} refused: those beyond the ${HANDSHAKE_QUEUE_MIN} that may wait and the slot`)
  t.notOk(refusedSockets.some((s) => s.answered), 'a refused client got no TLS byte back')
  const metrics = await tb.handle.metrics.connectRefusals.get()
  t.ok((metrics.values.find((v) => v.labels.reason === 'TooManyHandshakes')?.value ?? 0) >= 1, 'counted in jitp_connect_refusals_total{reason="TooManyHandshakes"}')

  for (const s of stalled) s.socket.destroy()
  const device = await connect(tb, creds, { clientId: 'behind-the-queue' })
  t.ok(device.connected, 'once the stalled clients are gone, a device connects')
  await endClient(device)
})

/** the bytes of one real ClientHello, as a TLS client sends them first */
async function aClientHello (): Promise<Buffer> {
  const sink = createNetServer()
  const first = new Promise<Buffer>((resolve) => sink.once('connection', (s: Socket) => s.once('data', (b: Buffer) => { resolve(b); s.destroy() })))
  await new Promise<void>((resolve) => sink.listen(0, '127.0.0.1', resolve))
  const client = tlsConnect({ host: '127.0.0.1', port: (sink.address() as AddressInfo).port, servername: 'localhost' })
  client.on('error', () => {})
  const hello = await first
  client.destroy()
  sink.close()
  return hello
}

/**
 * HANDSHAKE_TURN_BUDGET_MS: a burst of ClientHellos that all arrive in one turn
 * of the event loop. With the slots only, every one starts in that turn (its key
 * exchange and signature on this thread before anything else is read); with the
 * budget, only those that fit in its milliseconds do, and the rest start in the
 * turns after, each after that turn's I/O.
 */
t.test('a burst of ClientHellos: handshakes start within a budget per event-loop turn', async (t) => {
  const dir = (await devPki()).dir
  const hello = await aClientHello()
  t.equal(hello[0], 0x16, 'a TLS handshake record')
  const BURST = 150

  async function burst (turnBudgetMs: number): Promise<{ turns: Map<number, number>, answered: number }> {
    const server = createTlsServer({ cert: readFileSync(`${dir}/server.pem`), key: readFileSync(`${dir}/server.key`) })
    // the loop's turns, counted where they end (setImmediate runs once per turn, after its I/O)
    let turn = 0
    let ticking = true
    const tick = (): void => { turn++; if (ticking) setImmediate(tick) }
    setImmediate(tick)
    // Node's own listener, wrapped before the gate takes it: each handshake start, by turn
    const turns = new Map<number, number>()
    const nodes = server.listeners('connection')[0] as (raw: Socket) => void
    server.removeListener('connection', nodes)
    server.on('connection', function counted (this: unknown, raw: Socket) {
      turns.set(turn, (turns.get(turn) ?? 0) + 1)
      nodes.call(this, raw)
    })
    const gate = new HandshakeGate(server, { maxConcurrent: 1000, maxWaiting: 2000, slotMaxMs: 60_000, turnBudgetMs, onRefused: (raw) => raw.destroy() })
    let admitted = 0
    server.on('connection', (raw: Socket) => {
      raw.once('close', () => gate.done(raw))
      if (gate.admit(raw) === 'refused') raw.destroy()
      admitted++
    })
    server.on('tlsClientError', () => {})
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    const port = (server.address() as AddressInfo).port
    const clients = await Promise.all(Array.from({ length: BURST }, () => new Promise<Socket>((resolve) => {
      const s = netConnect({ host: '127.0.0.1', port })
      s.on('error', () => {})
      s.once('connect', () => resolve(s))
    })))
    // the server holds every connection, reading for its first bytes
    await waitFor(() => admitted === BURST, 10_000, `${BURST} connections admitted`)
    let answered = 0
    for (const c of clients) c.once('data', () => { answered++ })
    // every ClientHello written in one go: on loopback they are all in the server's sockets before its next poll
    for (const c of clients) c.write(hello)
    await waitFor(() => answered === BURST, 30_000, `${BURST} ServerHellos`)
    ticking = false
    for (const c of clients) c.destroy()
    gate.close()
    server.close()
    return { turns, answered }
  }

  const slotsOnly = await burst(0)
  t.equal(slotsOnly.answered, BURST, 'slots only: every handshake started')
  t.ok(slotsOnly.turns.size <= 2, `slots only: all ${BURST} start in one or two turns (${[...slotsOnly.turns.values()].join(', ')})`)

  const budgeted = await burst(4)
  t.equal(budgeted.answered, BURST, 'with a budget: every handshake started too')
  const perTurn = [...budgeted.turns.values()]
  t.ok(budgeted.turns.size >= 5, `with a 4 ms budget the starts spread over ${budgeted.turns.size} turns (${perTurn.join(', ')})`)
  t.ok(Math.max(...perTurn) < BURST / 2, 'no turn starts half of them')
})
