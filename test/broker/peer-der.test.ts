import t from 'tap'
import { once } from 'node:events'
import type { AddressInfo } from 'node:net'
import { connect, createServer, type TLSSocket } from 'node:tls'
import { peerCertificateDer, peerCertificateFromSession } from '../../broker/peer-der.js'
import { tlsServerOptions } from '../../broker/tls.js'
import { loadTrust } from '../../broker/trust.js'
import { credentials, devPki, type Pki } from '../helpers/broker.js'

interface Seen {
  /** what peerCertificateDer read */
  readonly der: Buffer | null
  /** Node's own answer, for comparison */
  readonly raw: Buffer | undefined
  /** the serialised sessions peerCertificateDer asked for, as they are after it returned */
  readonly sessions: Buffer[]
  readonly reused: boolean
}

interface HandshakeOptions {
  name?: 'claim' | 'service' | 'manufacturer-device'
  maxVersion?: 'TLSv1.2'
  session?: Buffer
  noCert?: boolean
}

/**
 * A real TLS server with the broker's options: for each connection, what the server
 * side reads as the peer's certificate next to Node's getPeerCertificate().raw.
 */
async function tlsServer (pki: Pki, opts: { tickets?: boolean, noCert?: boolean } = {}): Promise<{ handshake (o?: HandshakeOptions): Promise<Seen & { clientSession: Buffer | undefined }>, close (): void }> {
  const base = tlsServerOptions(loadTrust(pki.dir), { sessionTickets: opts.tickets === true })
  const seen: Seen[] = []
  const server = createServer({ ...base, rejectUnauthorized: opts.noCert !== true }, (socket) => {
    socket.on('error', () => {})
    const sessions: Buffer[] = []
    const own = socket.getSession.bind(socket)
    // keep a reference to each buffer handed out, to check it was wiped afterwards
    socket.getSession = () => { const s = own(); if (s !== undefined) sessions.push(s); return s }
    const der = peerCertificateDer(socket)
    seen.push({ der, raw: socket.getPeerCertificate(false).raw as Buffer | undefined, sessions, reused: socket.isSessionReused() })
    socket.end('bye')
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as AddressInfo
  return {
    async handshake (o: HandshakeOptions = {}) {
      const creds = o.noCert === true ? {} : credentials(pki, o.name ?? 'service')
      const client: TLSSocket = connect({ host: '127.0.0.1', port, servername: 'localhost', ca: pki.read('root-ca.pem'), ...creds, maxVersion: o.maxVersion, session: o.session })
      let clientSession: Buffer | undefined
      // TLS 1.3 tickets arrive after the handshake, before the server's data ends
      client.on('session', (s: Buffer) => { clientSession = s })
      client.on('error', () => {})
      client.resume()
      await once(client, 'close')
      const last = seen.pop()
      if (last === undefined) throw new Error('the server saw no connection')
      return { ...last, clientSession }
    },
    close: () => { server.close() }
  }
}

for (const rsa of [false, true]) {
  t.test(`${rsa ? 'RSA' : 'EC'} PKI: the session's peer certificate is byte for byte Node's getPeerCertificate().raw`, async (t) => {
    const pki = await devPki(rsa)
    const server = await tlsServer(pki)
    t.teardown(server.close)
    for (const name of ['service', 'claim', 'manufacturer-device'] as const) {
      const seen = await server.handshake({ name })
      t.ok(seen.der !== null && seen.raw !== undefined && seen.der.equals(seen.raw), `${name}: the same DER`)
      t.equal(seen.sessions.length, 1, `${name}: read from the session, no fallback needed`)
      t.ok(seen.sessions.every((s) => s.length > 0 && s.every((b) => b === 0)), `${name}: the serialised session (it holds the master key) is zeroed after use`)
    }
    const legacy = await server.handshake({ maxVersion: 'TLSv1.2' })
    t.ok(legacy.der?.equals(legacy.raw!), 'TLS 1.2: the same DER')
  })
}

t.test('a resumed session (TLS_SESSION_TICKETS on) still names the certificate of the first handshake', async (t) => {
  const pki = await devPki()
  const server = await tlsServer(pki, { tickets: true })
  t.teardown(server.close)
  const first = await server.handshake()
  t.ok(first.clientSession, 'the client got a ticket')
  const second = await server.handshake({ session: first.clientSession })
  t.equal(second.reused, true, 'the second handshake resumed')
  t.ok(second.der?.equals(first.raw!), 'the first handshake\'s certificate')
})

t.test('a client without a certificate: null, not an error', async (t) => {
  const pki = await devPki()
  const server = await tlsServer(pki, { noCert: true })
  t.teardown(server.close)
  const seen = await server.handshake({ noCert: true })
  t.equal(seen.raw, undefined, 'Node agrees: no certificate')
  t.equal(seen.der, null)
})

t.test('a session buffer cut short or corrupted never throws and never answers bytes outside it', async (t) => {
  const pki = await devPki()
  const seen = await (async () => { const s = await tlsServer(pki); try { return await s.handshake() } finally { s.close() } })()
  // a real serialised session, fresh (the one the server read was wiped)
  const server = createServer(tlsServerOptions(loadTrust(pki.dir)), (socket) => {
    socket.on('error', () => {})
    sessions.push(socket.getSession()!)
    socket.end()
  })
  const sessions: Buffer[] = []
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const client = connect({ host: '127.0.0.1', port: (server.address() as AddressInfo).port, servername: 'localhost', ca: pki.read('root-ca.pem'), ...credentials(pki, 'service') })
  client.on('error', () => {})
  client.resume()
  await once(client, 'close')
  server.close()
  const session = sessions[0]!
  t.ok(peerCertificateFromSession(session)?.equals(seen.raw!), 'the whole session: the certificate')

  let truncatedAnswers = 0
  for (let n = 0; n < session.length; n++) {
    if (peerCertificateFromSession(session.subarray(0, n)) !== null) truncatedAnswers++
  }
  t.equal(truncatedAnswers, 0, `none of its ${session.length} truncations yields a certificate`)

  let threw = 0
  let outOfShape = 0
  for (let i = 0; i < session.length; i++) {
    for (const flip of [0x01, 0x80, 0xff]) {
      const copy = Buffer.from(session)
      copy[i] = copy[i]! ^ flip
      try {
        const der = peerCertificateFromSession(copy)
        // whatever it answers is one whole DER SEQUENCE copied from inside the buffer
        if (der !== null && (der[0] !== 0x30 || der.length > copy.length || copy.indexOf(der) < 0)) outOfShape++
      } catch {
        threw++
      }
    }
  }
  t.equal(threw, 0, 'no corruption makes it throw')
  t.equal(outOfShape, 0, 'every answer is a whole SEQUENCE from inside the buffer')

  for (const garbage of [Buffer.alloc(0), Buffer.from([0x30]), Buffer.from([0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), Buffer.from([0x30, 0x03, 0xa3, 0x81, 0x05]), Buffer.from([0x1f, 0x00])]) {
    t.equal(peerCertificateFromSession(garbage), null, `garbage ${garbage.toString('hex') || '(empty)'}: null`)
  }
})
