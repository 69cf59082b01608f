/**
 * Attack: fail TLS handshakes on purpose, by the hundred, to flood the audit log
 * and hide in it (issue 9: one line per failure, and expired and unknown-CA
 * certificates both logged as ECONNRESET). Defence (CONTRACT §6): pre-auth
 * refusals are aggregated per remote address and reason per
 * AUDIT_AGGREGATE_SECONDS, and the reasons are told apart. 127.0.0.0/8 is all
 * loopback on Linux: each case binds its own source address so that its first
 * line is its own.
 */
import t from 'tap'
import { connect as netConnect } from 'node:net'
import { connect as tlsConnect, type ConnectionOptions } from 'node:tls'
import { issueCertificate, loadIssuer } from '../../pki/certificate.js'
import { generateKeyPair, privateKeyToPem } from '../../pki/keys.js'
import { startBroker, waitFor, type TestBroker } from '../helpers/broker.js'

const TLS_HANDSHAKE_TIMEOUT_MS = 1000

/** resolves when the connection is gone, whatever the outcome; true when the handshake succeeded */
function handshake (tb: TestBroker, localAddress: string, opts: ConnectionOptions = {}): Promise<boolean> {
  return new Promise((resolve) => {
    let secure = false
    // tls.connect's typings lack localAddress: bind the TCP socket and hand it over
    const tcp = netConnect({ host: '127.0.0.1', port: tb.port, localAddress })
    tcp.on('error', () => {})
    const socket = tlsConnect({ socket: tcp, ca: tb.pki.read('root-ca.pem'), ...opts })
    socket.on('error', () => {})
    // with TLS 1.3 the client is "connected" before the server has checked its certificate
    socket.once('secureConnect', () => { secure = true })
    socket.on('data', () => {})
    socket.once('close', () => resolve(secure && !socket.destroyed))
  })
}

function refusedFrom (tb: TestBroker, address: string): Array<Record<string, unknown>> {
  return tb.events('connect.refused').filter((l) => l.remoteAddress === address)
}

t.test('failed handshakes: aggregated, and the reasons told apart', async (t) => {
  const tb = await startBroker({ store: 'memory', overrides: { TLS_HANDSHAKE_TIMEOUT_MS, AUDIT_AGGREGATE_SECONDS: 10, CONNECT_RATE_PER_ADDRESS: 100_000 } })
  let closed = false
  t.teardown(() => closed ? undefined : tb.close())

  const deviceCa = loadIssuer(tb.pki.read('device-ca.pem'), tb.pki.read('device-ca.key'))
  const keys = generateKeyPair('ec')
  const key = privateKeyToPem(keys.privateKey)
  const expired = issueCertificate({ commonName: 'sensor-expired', publicKey: keys.publicKey, issuer: deviceCa, validityDays: 1, notBefore: new Date(Date.now() - 10 * 86_400_000), extKeyUsage: ['clientAuth'] })
  const rogueKeys = generateKeyPair('ec')
  const rogueCa = issueCertificate({ commonName: 'rogue-ca', publicKey: rogueKeys.publicKey, signingKey: rogueKeys.privateKey, issuer: 'self', validityDays: 30, isCa: true })
  const rogue = loadIssuer(rogueCa.pem, privateKeyToPem(rogueKeys.privateKey))
  const unknown = issueCertificate({ commonName: 'sensor-rogue', publicKey: keys.publicKey, issuer: rogue, validityDays: 30, extKeyUsage: ['clientAuth'] })

  t.test('200 failed handshakes from one address: a handful of lines whose counts add up to 200', async (t) => {
    const address = '127.0.0.10'
    let next = 0
    const worker = async (): Promise<void> => {
      while (next < 200) {
        next++
        await handshake(tb, address)
      }
    }
    await Promise.all(Array.from({ length: 20 }, worker))
    await waitFor(() => (refusedFrom(tb, address)[0]?.count as number | undefined) === 1, 5000, 'the first line, written at once')
    const counted = await tb.handle.metrics.connectRefusals.get()
    t.equal(counted.values.find((v) => v.labels.reason === 'NoClientCertificate')?.value, 200, 'every one counted in the metrics')
    t.equal(refusedFrom(tb, address).length, 1, 'within the interval, only the first is written')
  })

  t.test('expired, unknown CA, no certificate, timeout, garbage: different reasons', async (t) => {
    const cases: Array<[string, string, () => Promise<unknown>]> = [
      ['127.0.0.11', 'CertificateExpired', () => handshake(tb, '127.0.0.11', { cert: expired.pem + tb.pki.read('device-ca.pem'), key })],
      ['127.0.0.12', 'UnknownIssuer', () => handshake(tb, '127.0.0.12', { cert: unknown.pem + rogueCa.pem, key })],
      ['127.0.0.13', 'NoClientCertificate', () => handshake(tb, '127.0.0.13')],
      ['127.0.0.14', 'HandshakeTimeout', () => new Promise((resolve) => {
        // half a ClientHello, then silence
        const socket = netConnect({ host: '127.0.0.1', port: tb.port, localAddress: '127.0.0.14' }, () => socket.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01])))
        socket.on('error', () => {})
        socket.once('close', resolve)
      })],
      ['127.0.0.15', 'ProtocolError', () => new Promise((resolve) => {
        const socket = netConnect({ host: '127.0.0.1', port: tb.port, localAddress: '127.0.0.15' }, () => socket.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n'))
        socket.on('error', () => {})
        socket.once('close', resolve)
      })]
    ]
    await Promise.all(cases.map(([, , run]) => run()))
    for (const [address, code] of cases) {
      await waitFor(() => refusedFrom(tb, address).length > 0, 5000, `${code} line`)
      const [line] = refusedFrom(tb, address)
      t.equal(line!.errorCode, code, `${address}: ${code} (reason ${String(line!.reason)})`)
      t.equal(line!.count, 1)
    }
    const reasons = new Set(cases.map(([address]) => refusedFrom(tb, address)[0]!.errorCode))
    t.equal(reasons.size, cases.length, 'all different')
    t.equal(refusedFrom(tb, '127.0.0.11')[0]!.reason, 'CERT_HAS_EXPIRED', 'the OpenSSL verify code, not ECONNRESET')
  })

  t.test('the rest of an interval is one line with its count, written on close at the latest', async (t) => {
    closed = true
    await tb.close()
    const lines = refusedFrom(tb, '127.0.0.10')
    t.ok(lines.length <= 3, `${lines.length} lines for 200 refusals`)
    t.equal(lines.reduce((n, l) => n + (l.count as number), 0), 200, 'the counts add up')
    t.ok(lines.every((l) => l.errorCode === 'NoClientCertificate'))
  })
})
