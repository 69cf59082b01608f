/**
 * Attack: complete the TLS handshake (with the public claim certificate) and then
 * send no CONNECT, or a CONNECT one byte at a time, to hold a connection and its
 * file descriptor forever (issue 9). Defence: CONNECT_TIMEOUT_MS (CONTRACT §11):
 * closed and audited `ConnectTimeout`. The listener does not depend on the store:
 * the in-memory one is enough.
 */
import t from 'tap'
import { connect as tlsConnect, type TLSSocket } from 'node:tls'
import { connect, credentials, endClient, startBroker, waitFor, type TestBroker } from '../helpers/broker.js'

const CONNECT_TIMEOUT_MS = 800

function claimSocket (tb: TestBroker): Promise<{ socket: TLSSocket, closed: Promise<number> }> {
  const creds = credentials(tb.pki, 'claim')
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({ host: '127.0.0.1', port: tb.port, ca: tb.pki.read('root-ca.pem'), cert: creds.cert, key: creds.key })
    const closed = new Promise<number>((resolve) => socket.once('close', () => resolve(Date.now())))
    socket.on('error', () => {})
    socket.once('secureConnect', () => resolve({ socket, closed }))
    socket.once('close', () => reject(new Error('closed before the handshake completed')))
  })
}

t.test('no CONNECT after the handshake', async (t) => {
  const tb = await startBroker({ store: 'memory', overrides: { CONNECT_TIMEOUT_MS, AUDIT_AGGREGATE_SECONDS: 60 } })
  t.teardown(() => tb.close())

  t.test('an idle TLS connection is closed and audited ConnectTimeout', async (t) => {
    const start = Date.now()
    const { socket, closed } = await claimSocket(tb)
    const at = await closed
    t.ok(socket.destroyed, 'the attacker lost the connection')
    // bounded, not measured: generous for a loaded machine
    t.ok(at - start < CONNECT_TIMEOUT_MS + 10_000, `closed after ${at - start} ms`)
    await waitFor(() => tb.events('connect.refused').some((l) => l.errorCode === 'ConnectTimeout'), 5000, 'ConnectTimeout audit line')
    const line = tb.events('connect.refused').find((l) => l.errorCode === 'ConnectTimeout')!
    t.equal(line.remoteAddress, '127.0.0.1')
    t.equal(line.count, 1)
    t.notOk(tb.events('connect.accepted').length, 'nothing was accepted')
  })

  t.test('a CONNECT sent a byte at a time never completes and is cut the same way', async (t) => {
    const before = tb.events('connect.refused').length
    const { socket, closed } = await claimSocket(tb)
    // a well-formed CONNECT header announcing a 60-byte body, trickled out
    const bytes = Buffer.from([0x10, 60, 0, 4, 0x4d, 0x51, 0x54, 0x54, 4, 2, 0, 60, 0, 40, ...Buffer.alloc(40, 0x61), 0, 0, 0, 0, 0, 0])
    let i = 0
    const trickle = setInterval(() => { if (i < bytes.length && !socket.destroyed) socket.write(bytes.subarray(i, ++i)) }, 100)
    t.teardown(() => clearInterval(trickle))
    await closed
    clearInterval(trickle)
    t.ok(i < bytes.length, `cut after ${i} of ${bytes.length} bytes`)
    // the same address within the aggregation interval: counted, written when the interval ends
    const metric = await tb.handle.metrics.connectRefusals.get()
    t.equal(metric.values.find((v) => v.labels.reason === 'ConnectTimeout')?.value, 2, 'both counted')
    t.equal(tb.events('connect.refused').length, before, 'the second one is aggregated, not written at once')
  })

  t.test('an authenticated client is not subject to the CONNECT deadline', async (t) => {
    const client = await connect(tb, credentials(tb.pki, 'service'), { clientId: 'svc-ct', keepalive: 30 })
    const refusedBefore = tb.events('connect.refused').length
    let closed = false
    client.once('close', () => { closed = true })
    await new Promise((resolve) => setTimeout(resolve, CONNECT_TIMEOUT_MS * 2))
    t.notOk(closed, 'still connected after twice the deadline')
    t.equal(tb.events('connect.refused').length, refusedBefore)
    await endClient(client)
  })

  t.test('the aggregated count is written on close', async (t) => {
    await tb.close()
    const lines = tb.events('connect.refused').filter((l) => l.errorCode === 'ConnectTimeout')
    t.same(lines.map((l) => l.count), [1, 1], 'one line at once, one with the count of the rest at the end')
  })
})
