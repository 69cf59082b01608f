/**
 * Attack: strings MQTT forbids, and sessions MQTT 3.1.1 forbids, written as raw
 * bytes over a real mutual-TLS socket (a library client would refuse to send them).
 * Defence (CONTRACT §11): invalid UTF-8 or U+0000 in a client id, a topic or a
 * filter closes the connection [MQTT-1.5.3]; a zero-length client id with
 * clean=0 gets CONNACK 2 [MQTT-3.1.3-8]; MQTT 5 gets CONNACK 1, audited and
 * counted; keep-alive 0 is clamped to MAX_KEEPALIVE_SECONDS, so a silent client is
 * cut after 1.5 times that.
 */
import { connect as tlsConnect, type TLSSocket } from 'node:tls'
import t from 'tap'
import { withHeader } from '../../bench/mqtt-wire.js'
import { credentials, startBroker, waitFor, type ClientCredentials, type TestBroker } from '../helpers/broker.js'

// --- MQTT 3.1.1 packets by hand: the attack is in the bytes ---
const u16 = (n: number): Buffer => Buffer.from([n >> 8, n & 0xff])
const str = (b: Buffer | string): Buffer => {
  const bytes = typeof b === 'string' ? Buffer.from(b) : b
  return Buffer.concat([u16(bytes.length), bytes])
}
function connectPacket (clientId: Buffer | string, opts: { clean?: boolean, keepalive?: number, version?: 4 | 5 } = {}): Buffer {
  const version = opts.version ?? 4
  const flags = opts.clean === false ? 0x00 : 0x02
  const properties = version === 5 ? Buffer.from([0]) : Buffer.alloc(0)
  return withHeader(0x10, Buffer.concat([str('MQTT'), Buffer.from([version, flags]), u16(opts.keepalive ?? 30), properties, str(clientId)]))
}
const publishPacket = (topic: Buffer, payload: string): Buffer => withHeader(0x30, Buffer.concat([str(topic), Buffer.from(payload)]))
const subscribePacket = (id: number, filter: Buffer): Buffer => withHeader(0x82, Buffer.concat([u16(id), str(filter), Buffer.from([1])]))

/** `prefix` + the bad bytes + `suffix`, as raw bytes */
const withBytes = (prefix: string, bad: number[], suffix = ''): Buffer => Buffer.concat([Buffer.from(prefix), Buffer.from(bad), Buffer.from(suffix)])
const INVALID_UTF8 = [0xc3, 0x28] // a lead byte followed by a non-continuation byte
const NUL = [0x00]

interface Raw { socket: TLSSocket, received: () => Buffer, closed: Promise<number> }

/** a mutual-TLS socket to the broker; `closed` resolves with the time it closed (ms since epoch) */
function rawConnect (tb: TestBroker, creds: ClientCredentials): Promise<Raw> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    const socket = tlsConnect({ host: '127.0.0.1', port: tb.port, ca: tb.pki.read('root-ca.pem'), cert: creds.cert, key: creds.key, servername: 'localhost' })
    const closed = new Promise<number>((resolve) => socket.once('close', () => resolve(Date.now())))
    socket.on('data', (d: Buffer) => chunks.push(d))
    socket.on('error', () => {})
    socket.once('secureConnect', () => resolve({ socket, received: () => Buffer.concat(chunks), closed }))
    socket.once('error', reject)
  })
}

/** the 4 bytes of a CONNACK: 0x20 0x02 <session present> <return code> */
async function connack (raw: Raw): Promise<number> {
  await waitFor(() => raw.received().length >= 4 || raw.socket.destroyed, 10_000, 'CONNACK')
  const b = raw.received()
  if (b.length < 4 || b[0] !== 0x20) throw new Error(`no CONNACK (got ${b.toString('hex')})`)
  return b[3]!
}

function within<T> (promise: Promise<T>, ms: number, what: string): Promise<T> {
  return Promise.race([promise, new Promise<T>((_resolve, reject) => setTimeout(() => reject(new Error(`timed out: ${what}`)), ms).unref())])
}

t.test('strings, empty client ids and MQTT 5', async (t) => {
  const tb = await startBroker({ store: 'memory' })
  t.teardown(() => tb.close())
  const service = credentials(tb.pki, 'service')

  for (const [name, bad] of [['invalid UTF-8', INVALID_UTF8], ['U+0000', NUL]] as const) {
    t.test(`${name} in a client id: closed without CONNACK, audited`, async (t) => {
      const raw = await rawConnect(tb, service)
      raw.socket.write(connectPacket(withBytes('hygiene-id-', bad)))
      await within(raw.closed, 10_000, 'the connection to close')
      t.equal(raw.received().length, 0, 'no CONNACK, nothing at all')
      const line = tb.events('connect.refused').filter((l) => l.errorCode === 'MalformedUtf8').at(-1)
      t.ok(line, 'connect.refused MalformedUtf8')
      t.match(line?.clientId, /^hygiene-id-/)
    })

    t.test(`${name} in a topic: closed, not routed, audited`, async (t) => {
      const raw = await rawConnect(tb, service)
      raw.socket.write(connectPacket(`hygiene-topic-${bad.length}`))
      t.equal(await connack(raw), 0, 'connected')
      const before = tb.events('connection.closed').length
      raw.socket.write(publishPacket(withBytes('devices/d1/commands/', bad), '{"name":"x"}'))
      await within(raw.closed, 10_000, 'the connection to close')
      const line = tb.events('connection.closed').slice(before).find((l) => l.errorCode === 'MalformedUtf8')
      t.ok(line, 'connection.closed MalformedUtf8')
      t.equal(line?.clientId, `hygiene-topic-${bad.length}`)
      t.match(line?.topic, /^devices\/d1\/commands\//)
      t.equal(tb.events('publish.denied').filter((l) => l.clientId === `hygiene-topic-${bad.length}`).length, 0, 'never reached the rules')
    })

    t.test(`${name} in a filter: closed without SUBACK, audited`, async (t) => {
      const raw = await rawConnect(tb, service)
      raw.socket.write(connectPacket(`hygiene-filter-${bad.length}`))
      t.equal(await connack(raw), 0, 'connected')
      raw.socket.write(subscribePacket(7, withBytes('devices/+/telemetry/', bad)))
      await within(raw.closed, 10_000, 'the connection to close')
      t.equal(raw.received().length, 4, 'nothing after the CONNACK: no SUBACK')
      const line = tb.events('connection.closed').find((l) => l.errorCode === 'MalformedUtf8' && l.clientId === `hygiene-filter-${bad.length}`)
      t.ok(line, 'connection.closed MalformedUtf8')
    })
  }

  t.test('zero-length client id with clean=0: CONNACK 2', async (t) => {
    const raw = await rawConnect(tb, service)
    raw.socket.write(connectPacket('', { clean: false }))
    t.equal(await connack(raw), 2, 'identifier rejected')
    await within(raw.closed, 10_000, 'the connection to close')
    t.ok(tb.events('connect.refused').some((l) => l.errorCode === 'ClientIdRequired'), 'audited ClientIdRequired')
  })

  t.test('zero-length client id with clean=1 is still fine', async (t) => {
    const raw = await rawConnect(tb, service)
    raw.socket.write(connectPacket('', { clean: true }))
    t.equal(await connack(raw), 0, 'accepted, with a broker-assigned id')
    raw.socket.end()
  })

  t.test('MQTT 5 CONNECT: CONNACK 1, audited, counted', async (t) => {
    const raw = await rawConnect(tb, service)
    raw.socket.write(connectPacket('aws-sdk-v2-sample', { version: 5 }))
    t.equal(await connack(raw), 1, 'unacceptable protocol version')
    await within(raw.closed, 10_000, 'the connection to close')
    const line = tb.events('connect.refused').find((l) => l.errorCode === 'UnsupportedProtocolVersion')
    t.equal(line?.clientId, 'aws-sdk-v2-sample', 'audited UnsupportedProtocolVersion')
    const metrics = await (await fetch(`http://127.0.0.1:${tb.httpPort}/metrics`)).text()
    t.match(metrics, /jitp_connect_refusals_total\{reason="UnsupportedProtocolVersion"\} 1/, 'counted')
  })
})

t.test('keep-alive 0 is clamped: a silent client is cut', async (t) => {
  const tb = await startBroker({ store: 'memory', overrides: { MAX_KEEPALIVE_SECONDS: 1 } })
  t.teardown(() => tb.close())
  for (const keepalive of [0, 600]) {
    const raw = await rawConnect(tb, credentials(tb.pki, 'service'))
    // the broker's interval starts when it reads the CONNECT, after this instant
    const connectSentAt = Date.now()
    raw.socket.write(connectPacket(`silent-${keepalive}`, { keepalive }))
    t.equal(await connack(raw), 0, `keep-alive ${keepalive} accepted (clamped, not refused)`)
    // silent from here on: no PINGREQ; the clamp of 1 s cuts it after 1.5 s
    const closedAt = await within(raw.closed, 20_000, `the silent client (keep-alive ${keepalive}) to be cut`)
    t.ok(closedAt - connectSentAt >= 1500, `keep-alive ${keepalive}: cut ${closedAt - connectSentAt} ms after its CONNECT, not before 1.5 × the clamp`)
    // the idle cut-off is audited, with its reason
    await waitFor(() => tb.events('disconnect').some((l) => l.clientId === `silent-${keepalive}`), 5000, 'the disconnect line')
    const line = tb.events('disconnect').find((l) => l.clientId === `silent-${keepalive}`)
    t.equal(line?.errorCode, 'KeepaliveTimeout', `keep-alive ${keepalive}: disconnect audited as KeepaliveTimeout`)
  }
})
