/**
 * Attack: with the claim certificate every firmware image carries, announce a
 * huge packet in the fixed header and stream its body; Aedes and mqtt-packet
 * buffer the whole packet before any hook sees it (issue 9: 2 × 200 MB PUBLISH
 * took RSS from 456 to 914 MB; 20 CONNECTs of 10 MB from 89 to 245 MB).
 * Defence: the listener's packet guard closes the connection as soon as the
 * fixed header announces more than MAX_PACKET_BYTES (CONNECT: 16 KiB), before the
 * body is buffered (CONTRACT §11). The listener does not depend on the store.
 */
import t from 'tap'
import { connect as tlsConnect, type TLSSocket } from 'node:tls'
import { remainingLength } from '../../bench/mqtt-wire.js'
import { collect, connect, credentials, endClient, publish, registerDevice, startBroker, subscribe, waitFor, type TestBroker } from '../helpers/broker.js'

const MB = 1024 * 1024
const CHUNK = Buffer.alloc(16 * 1024, 0x61)

function connectPacket (clientId: string): Buffer {
  const id = Buffer.from(clientId)
  const body = Buffer.concat([Buffer.from([0, 4, 0x4d, 0x51, 0x54, 0x54, 4, 0x02, 0, 60, 0, id.length]), id])
  return Buffer.concat([Buffer.from([0x10, ...remainingLength(body.length)]), body])
}

function claimSocket (tb: TestBroker): Promise<TLSSocket> {
  const creds = credentials(tb.pki, 'claim')
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({ host: '127.0.0.1', port: tb.port, ca: tb.pki.read('root-ca.pem'), cert: creds.cert, key: creds.key })
    socket.on('error', () => {})
    socket.once('secureConnect', () => resolve(socket))
    socket.once('close', () => reject(new Error('closed before the handshake completed')))
  })
}

function waitConnack (socket: TLSSocket): Promise<number> {
  return new Promise((resolve, reject) => {
    socket.once('data', (d: Buffer) => d[0] === 0x20 ? resolve(d[3]!) : reject(new Error(`not a CONNACK: ${d.toString('hex')}`)))
  })
}

/**
 * Writes the header, then the body in 16 KiB steps, yielding between steps, until
 * the broker closes the connection or `max` bytes went out. Resolves with the
 * number of body bytes the socket accepted.
 */
async function streamUntilClosed (socket: TLSSocket, header: Buffer, max: number): Promise<{ sent: number, closed: boolean }> {
  let closed = socket.destroyed
  socket.once('close', () => { closed = true })
  const write = (b: Buffer): Promise<boolean> => new Promise((resolve) => {
    if (closed) return resolve(false)
    socket.write(b, (err) => resolve(!err))
  })
  if (!await write(header)) return { sent: 0, closed: true }
  let sent = 0
  while (!closed && sent < max) {
    if (!await write(CHUNK)) break
    sent += CHUNK.length
    await new Promise((resolve) => setImmediate(resolve))
  }
  if (!closed) await Promise.race([new Promise((resolve) => socket.once('close', resolve)), new Promise((resolve) => setTimeout(resolve, 2000))])
  return { sent, closed }
}

async function rssAfterGc (): Promise<number> {
  const gc = (globalThis as { gc?: () => void }).gc
  if (gc) gc()
  await new Promise((resolve) => setImmediate(resolve))
  return process.memoryUsage().rss
}

t.test('packets larger than the limit are refused from their fixed header', async (t) => {
  const tb = await startBroker({ store: 'memory', overrides: { AUDIT_AGGREGATE_SECONDS: 3 } })
  t.teardown(() => tb.close())
  const rssBefore = await rssAfterGc()

  t.test('a claim connection announcing a 200 MB PUBLISH is closed before 1 MB of it', async (t) => {
    const results = await Promise.all(['claim-ptl-1', 'claim-ptl-2'].map(async (clientId) => {
      const socket = await claimSocket(tb)
      const connack = waitConnack(socket)
      socket.write(connectPacket(clientId))
      t.equal(await connack, 0, `${clientId}: CONNACK 0, the claim connection is authenticated`)
      // PUBLISH QoS 1 to a provisioning topic, remaining length 200 MB
      const header = Buffer.from([0x32, ...remainingLength(200 * MB)])
      return streamUntilClosed(socket, header, 8 * MB)
    }))
    for (const r of results) {
      t.ok(r.closed, 'the broker closed the connection')
      t.ok(r.sent < MB, `closed after ${r.sent} bytes of the body were sent`)
    }
    await waitFor(() => tb.events('connection.closed').filter((l) => l.errorCode === 'PacketTooLarge').length === 2, 5000, 'two connection.closed lines')
    const lines = tb.events('connection.closed').filter((l) => l.errorCode === 'PacketTooLarge')
    t.same(lines.map((l) => l.clientId).sort(), ['claim-ptl-1', 'claim-ptl-2'], 'audited with the client id')
    t.ok(lines.every((l) => l.role === 'claim' && l.remoteAddress === '127.0.0.1'))
    const closed = await tb.handle.metrics.connectionsClosed.get()
    t.equal(closed.values.find((v) => v.labels.reason === 'PacketTooLarge')?.value, 2, 'counted')
  })

  t.test('20 raw CONNECTs announcing 10 MB are closed before 1 MB of each', async (t) => {
    const results = await Promise.all(Array.from({ length: 20 }, async () => {
      const socket = await claimSocket(tb)
      return streamUntilClosed(socket, Buffer.from([0x10, ...remainingLength(10 * MB)]), 4 * MB)
    }))
    for (const r of results) t.ok(r.closed && r.sent < MB, `closed after ${r.sent} bytes`)
    // before authentication: aggregated connect.refused lines, counts adding up to 20
    await waitFor(() => tb.events('connect.refused').filter((l) => l.errorCode === 'PacketTooLarge').reduce((n, l) => n + (l.count as number), 0) === 20, 15_000, 'aggregated PacketTooLarge counts')
    const lines = tb.events('connect.refused').filter((l) => l.errorCode === 'PacketTooLarge')
    t.ok(lines.length <= 5, `${lines.length} audit lines for 20 refusals`)
    t.ok(lines.every((l) => l.remoteAddress === '127.0.0.1'))
    t.notOk(tb.events('connect.accepted').some((l) => l.role === 'claim' && l.clientId === undefined), 'nothing accepted without a CONNECT')
  })

  t.test('broker RSS rose by less than 20 MB', async (t) => {
    const rise = (await rssAfterGc()) - rssBefore
    t.ok(rise < 20 * MB, `RSS rose by ${(rise / MB).toFixed(1)} MB`)
  })

  t.test('a remaining length longer than 4 bytes is a protocol error', async (t) => {
    const socket = await claimSocket(tb)
    const r = await streamUntilClosed(socket, Buffer.from([0x10, 0xff, 0xff, 0xff, 0xff, 0x7f]), MB)
    t.ok(r.closed && r.sent < MB)
    await waitFor(() => tb.events('connect.refused').some((l) => l.errorCode === 'ProtocolError'), 5000, 'ProtocolError line')
  })

  t.test('a first packet that is not a CONNECT is a protocol error [MQTT-3.1.0-1]', async (t) => {
    const counted = async (): Promise<number> => (await tb.handle.metrics.connectRefusals.get()).values.find((v) => v.labels.reason === 'ProtocolError')?.value ?? 0
    const before = await counted()
    const socket = await claimSocket(tb)
    // a PUBLISH before any CONNECT (Aedes would drop the socket without a word)
    const r = await streamUntilClosed(socket, Buffer.from([0x30, 5, 0, 1, 0x61, 0x7b, 0x7d]), 0)
    t.ok(r.closed)
    await waitFor(() => tb.events('connect.refused').filter((l) => l.errorCode === 'ProtocolError').length > 0, 5000, 'ProtocolError line')
    t.equal(await counted(), before + 1, 'counted')
  })

  t.test('packets within the limit still flow', async (t) => {
    const creds = await registerDevice(tb, 'ptl-dev')
    const service = await connect(tb, credentials(tb.pki, 'service'), { clientId: 'ptl-svc' })
    await subscribe(service, 'devices/+/telemetry')
    const got = collect(service)
    const device = await connect(tb, creds, { clientId: 'ptl-dev' })
    const payload = JSON.stringify({ ts: 1763769600000, seq: 1, values: Object.fromEntries(Array.from({ length: 30 }, (_, i) => [`v${i}`, 'x'.repeat(1000)])) })
    await publish(device, 'devices/ptl-dev/telemetry', payload, { qos: 1 })
    await waitFor(() => got.length === 1, 5000, 'delivery')
    t.equal(got[0]!.payload.length, payload.length, 'a 30 KB packet split over several TLS records passed whole')
    t.notOk(tb.events('connection.closed').some((l) => l.clientId === 'ptl-dev'))
    await endClient(device)
    await endClient(service)
  })
})
