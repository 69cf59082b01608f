/**
 * Attack, no certificate needed: open TCP connections and never send a
 * ClientHello, or send one a byte at a time (slowloris), until the broker runs
 * out of file descriptors (issue 9: ~21,700 idle sockets refused every device
 * and /healthz; Node's handshake timeout never closes them).
 * Defence (CONTRACT §11): the listener's own handshake deadline on the raw TCP
 * socket, pending connections per address, MAX_CONNECTIONS and a connect rate
 * per address at accept, and aggregated audit lines (§6).
 *
 * The broker runs in this process, so its file descriptors are this process's.
 * 127.0.0.0/8 is all loopback on Linux: the attacker uses 127.0.0.1 and the
 * legitimate device 127.0.0.2. The listener does not depend on the store.
 */
import t from 'tap'
import { readdirSync } from 'node:fs'
import { get as httpGet } from 'node:http'
import { connect as netConnect, createServer as createNetServer, type AddressInfo, type Socket } from 'node:net'
import { connect as tlsConnect } from 'node:tls'
import type { IClientOptions } from 'mqtt'
import { connect, endClient, publish, registerDevice, startBroker, waitFor, type TestBroker } from '../helpers/broker.js'

const TLS_HANDSHAKE_TIMEOUT_MS = 3000
const FLOOD = 2000
const fdCount = (): number => readdirSync('/proc/self/fd').length

interface Idle { socket: Socket, openedAt: number, closedAt: number | null }

/** opens `n` TCP connections to `target.port` that send nothing, `batch` at a time (the accept backlog is finite) */
async function openIdle (target: { port: number }, n: number, localAddress: string, batch = 200, into: Idle[] = []): Promise<Idle[]> {
  for (let i = 0; i < n; i += batch) {
    await Promise.all(Array.from({ length: Math.min(batch, n - i) }, () => new Promise<void>((resolve) => {
      const idle: Idle = { socket: netConnect({ host: '127.0.0.1', port: target.port, localAddress }), openedAt: Date.now(), closedAt: null }
      idle.socket.on('error', () => {})
      // read (and drop) what the server says before it closes (HTTP's 408): a paused socket never sees the close
      idle.socket.resume()
      idle.socket.once('close', () => { idle.closedAt = Date.now(); resolve() })
      idle.socket.once('connect', () => resolve())
      into.push(idle)
    })))
  }
  return into
}

/** a real ClientHello, captured from Node's TLS client against a plain TCP server */
async function captureClientHello (): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const server = createNetServer((s) => s.once('data', (d: Buffer) => {
      resolve(d)
      s.destroy()
      server.close()
    }))
    server.listen(0, '127.0.0.1', () => {
      const c = tlsConnect({ host: '127.0.0.1', port: (server.address() as AddressInfo).port, rejectUnauthorized: false })
      c.on('error', () => {})
      c.once('close', () => setTimeout(() => reject(new Error('no ClientHello captured')), 1000))
    })
  })
}

function healthz (port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    // no keep-alive agent: the check must not leave a socket behind
    const req = httpGet({ host: '127.0.0.1', port, path: '/healthz', agent: false, timeout: 10_000 }, (res) => {
      res.resume()
      res.once('end', () => resolve(res.statusCode ?? 0))
    })
    req.once('timeout', () => req.destroy(new Error('/healthz timed out')))
    req.once('error', reject)
  })
}

function refused (tb: TestBroker, code: string, address?: string): Array<Record<string, unknown>> {
  return tb.events('connect.refused').filter((l) => l.errorCode === code && (address === undefined || l.remoteAddress === address))
}

const telemetry = JSON.stringify({ ts: 1763769600000, seq: 1, values: { temperature: 21.5 } })

t.test(`${FLOOD} idle TCP connections and a slowloris ClientHello`, async (t) => {
  const tb = await startBroker({
    store: 'memory',
    overrides: { TLS_HANDSHAKE_TIMEOUT_MS, MAX_PENDING_CONNECTIONS_PER_ADDRESS: FLOOD + 100, CONNECT_RATE_PER_ADDRESS: 100_000, AUDIT_AGGREGATE_SECONDS: 10 }
  })
  let brokerClosed = false
  t.teardown(() => brokerClosed ? undefined : tb.close())
  const creds = await registerDevice(tb, 'flood-dev')
  const hello = await captureClientHello()
  const baseline = fdCount()

  // slowloris from its own address: a real ClientHello, one byte every 200 ms
  let slowSent = 0
  let slowClosedAt: number | null = null
  const slowOpenedAt = Date.now()
  const slow = netConnect({ host: '127.0.0.1', port: tb.port, localAddress: '127.0.0.4' })
  slow.on('error', () => {})
  const drip = setInterval(() => { if (slowSent < hello.length && !slow.destroyed) slow.write(hello.subarray(slowSent, ++slowSent)) }, 200)
  slow.once('close', () => { slowClosedAt = Date.now(); clearInterval(drip) })
  t.teardown(() => clearInterval(drip))

  const flood: Idle[] = []
  const opened = openIdle(tb, FLOOD, '127.0.0.1', 200, flood)
  const openNow = (): number => flood.filter((c) => c.closedAt === null).length
  let peak = 0
  const sampler = setInterval(() => { peak = Math.max(peak, openNow()) }, 20)
  t.teardown(() => clearInterval(sampler))

  // during the flood: the device connects and publishes, /healthz answers
  await waitFor(() => flood.length >= FLOOD / 2, 20_000, 'half the flood under way')
  const device = await connect(tb, creds, { clientId: 'flood-dev', localAddress: '127.0.0.2' } as IClientOptions)
  await publish(device, 'devices/flood-dev/telemetry', telemetry, { qos: 1 })
  t.pass(`the device connected and got its PUBACK while ${openNow()} idle connections were open`)
  t.equal(await healthz(tb.httpPort), 200, '/healthz answers during the flood')
  await endClient(device)
  await opened
  t.equal(flood.length, FLOOD)

  await waitFor(() => flood.every((c) => c.closedAt !== null) && slowClosedAt !== null, 30_000, 'every attacking connection closed')
  const longest = Math.max(...flood.map((c) => c.closedAt! - c.openedAt))
  // bounded, not measured: the deadline plus a generous margin for a loaded machine
  t.ok(longest < TLS_HANDSHAKE_TIMEOUT_MS + 10_000, `every idle connection closed by the broker, the longest after ${longest} ms`)
  clearInterval(sampler)
  t.comment(`at most ${peak} idle connections were open at once`)
  t.ok(slowSent < hello.length, `slowloris cut after ${slowSent} of ${hello.length} ClientHello bytes, ${slowClosedAt! - slowOpenedAt} ms`)

  await waitFor(() => fdCount() <= baseline, 10_000, `file descriptors back to ${baseline}`)
  t.pass(`file descriptors back to the baseline (${baseline})`)

  const gauge = await tb.handle.metrics.listenerConnections.get()
  t.same(gauge.values.map((v) => v.value), [0, 0], 'the listener holds nothing open or pending')

  brokerClosed = true
  await tb.close()
  const lines = refused(tb, 'HandshakeTimeout', '127.0.0.1')
  t.ok(lines.length >= 1 && lines.length <= 3, `${lines.length} audit lines for ${FLOOD} handshake timeouts`)
  t.equal(lines.reduce((n, l) => n + (l.count as number), 0), FLOOD, 'their counts add up')
  t.equal(refused(tb, 'HandshakeTimeout', '127.0.0.4').length, 1, 'the slowloris is audited as a handshake timeout')
  t.ok(tb.events('connect.accepted').some((l) => l.clientId === 'flood-dev'))
})

t.test('pending connections per address are capped at accept', async (t) => {
  const tb = await startBroker({ store: 'memory', overrides: { TLS_HANDSHAKE_TIMEOUT_MS: 60_000, MAX_PENDING_CONNECTIONS_PER_ADDRESS: 10 } })
  t.teardown(() => tb.close())
  const creds = await registerDevice(tb, 'pending-dev')
  const idle = await openIdle(tb, 15, '127.0.0.21', 15)
  await waitFor(() => idle.filter((c) => c.closedAt !== null).length === 5, 10_000, 'five refused')
  t.equal(idle.filter((c) => c.closedAt === null).length, 10, 'ten are held until their deadline')
  const device = await connect(tb, creds, { clientId: 'pending-dev', localAddress: '127.0.0.2' } as IClientOptions)
  t.pass('another address is not affected')
  await endClient(device)
  await waitFor(() => refused(tb, 'TooManyPendingConnections', '127.0.0.21').length === 1, 5000, 'audit line')
  const counted = await tb.handle.metrics.connectRefusals.get()
  t.equal(counted.values.find((v) => v.labels.reason === 'TooManyPendingConnections')?.value, 5)
  for (const c of idle) c.socket.destroy()
})

t.test('MAX_CONNECTIONS is enforced at accept', async (t) => {
  const tb = await startBroker({ store: 'memory', overrides: { TLS_HANDSHAKE_TIMEOUT_MS: 60_000, MAX_CONNECTIONS: 20 } })
  t.teardown(() => tb.close())
  const idle = [...await openIdle(tb, 12, '127.0.0.22', 12), ...await openIdle(tb, 12, '127.0.0.23', 12)]
  await waitFor(() => idle.filter((c) => c.closedAt !== null).length === 4, 10_000, 'four refused')
  t.equal(idle.filter((c) => c.closedAt === null).length, 20)
  await waitFor(() => refused(tb, 'TooManyConnections').length >= 1, 5000, 'audit line')
  for (const c of idle) c.socket.destroy()
})

t.test('connects per minute per address are rate-limited at accept', async (t) => {
  const tb = await startBroker({ store: 'memory', overrides: { CONNECT_RATE_PER_ADDRESS: 30 } })
  t.teardown(() => tb.close())
  let refusedAtAccept = 0
  const started = Date.now()
  for (let i = 0; i < 40; i++) {
    // each one closed by the client at once; the server side must see it close too
    const [c] = await openIdle(tb, 1, '127.0.0.24', 1)
    c!.socket.destroy()
  }
  await waitFor(() => refused(tb, 'ConnectRateExceeded', '127.0.0.24').length === 1, 5000, 'audit line')
  const counted = await tb.handle.metrics.connectRefusals.get()
  refusedAtAccept = counted.values.find((v) => v.labels.reason === 'ConnectRateExceeded')?.value ?? 0
  // 30 at once, then one more every 2 s the 40 attempts took (a loaded machine takes longer)
  const refills = Math.floor((Date.now() - started) / 2000)
  t.ok(refusedAtAccept >= 10 - refills - 1 && refusedAtAccept <= 10,
    `${refusedAtAccept} of 40 refused (30 per minute, refilled at one per 2 s; ${Date.now() - started} ms)`)
})

t.test('HTTP_PORT: limits at accept of its own (per address, HTTP_MAX_CONNECTIONS), idle connections cut, MQTT unaffected', async (t) => {
  // /healthz, /metrics and the token endpoint take connections without a certificate: before
  // these limits, a flood of idle ones there took descriptors without bound
  const tb = await startBroker({ store: 'memory', overrides: { HTTP_MAX_CONNECTIONS: 20, MAX_PENDING_CONNECTIONS_PER_ADDRESS: 8, AUDIT_AGGREGATE_SECONDS: 1 } })
  t.teardown(() => tb.close())
  const creds = await registerDevice(tb, 'http-flood-dev')
  const http = { port: tb.httpPort }

  // one address: its own budget first
  const one = await openIdle(http, 12, '127.0.0.31', 12)
  await waitFor(() => one.filter((c) => c.closedAt !== null).length === 4, 10_000, 'four closed at accept')
  t.equal(one.filter((c) => c.closedAt === null).length, 8, 'eight held from one address, no more')
  t.equal(await healthz(tb.httpPort), 200, '/healthz answers another address meanwhile')

  // many addresses: HTTP_MAX_CONNECTIONS for the port
  const many = [...await openIdle(http, 8, '127.0.0.32', 8), ...await openIdle(http, 8, '127.0.0.33', 8)]
  await waitFor(() => many.filter((c) => c.closedAt !== null).length === 4, 10_000, 'four more closed at accept')
  const held = [...one, ...many].filter((c) => c.closedAt === null)
  t.equal(held.length, 20, 'twenty held in all, no more')

  const device = await connect(tb, creds, { clientId: 'http-flood-dev', localAddress: '127.0.0.2' } as IClientOptions)
  await publish(device, 'devices/http-flood-dev/telemetry', telemetry, { qos: 1 })
  t.pass('a device connects and gets its PUBACK while HTTP_PORT is full')
  await endClient(device)

  // a client that sends nothing is a slow one: Node answers 408 and closes after the headers timeout (10 s)
  await waitFor(() => held.every((c) => c.closedAt !== null), 20_000, 'the held connections closed by the broker')
  const longest = Math.max(...held.map((c) => c.closedAt! - c.openedAt))
  t.ok(longest < 10_000 + 5_000, `no idle connection held past the headers timeout (longest ${longest} ms)`)
  t.equal(await healthz(tb.httpPort), 200, '/healthz answers once they are gone')

  // aggregated (CONTRACT §6): the first at once, the rest of the interval in one line with their count
  const countOf = (lines: Array<Record<string, unknown>>): number => lines.reduce((n, l) => n + (l.count as number), 0)
  await waitFor(() => countOf(refused(tb, 'TooManyPendingConnections', '127.0.0.31')) === 4 && countOf(refused(tb, 'TooManyConnections')) === 4, 15_000, 'audit lines for the eight')
  t.ok(refused(tb, 'TooManyPendingConnections', '127.0.0.31').every((l) => /^HTTP_PORT: /.test(String(l.reason))), 'they name the port')
  const counted = (await tb.handle.metrics.connectRefusals.get()).values
  t.equal(counted.find((v) => v.labels.reason === 'TooManyPendingConnections')?.value, 4, 'counted per address')
  t.equal(counted.find((v) => v.labels.reason === 'TooManyConnections')?.value, 4, 'counted for the port')
})
