import t from 'tap'
import { once } from 'node:events'
import type { AddressInfo } from 'node:net'
import { connect, createServer, type TLSSocket } from 'node:tls'
import { tlsServerOptions } from '../../broker/tls.js'
import { loadTrust } from '../../broker/trust.js'
import { credentials, devPki } from '../helpers/broker.js'

/** Two mutual-TLS handshakes in a row, the second offering the first one's session. */
async function secondHandshakeResumes (sessionTickets: boolean): Promise<boolean> {
  const pki = await devPki()
  const server = createServer(tlsServerOptions(loadTrust(pki.dir), { sessionTickets }), function answer (socket) {
    socket.on('error', () => {})
    socket.end('hello')
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as AddressInfo
  const { cert, key } = credentials(pki, 'service')
  const handshake = async (session?: Buffer): Promise<{ reused: boolean, session: Buffer | undefined }> => {
    const socket: TLSSocket = connect({ host: '127.0.0.1', port, servername: 'localhost', ca: pki.read('root-ca.pem'), cert, key, session })
    let latest: Buffer | undefined
    socket.on('session', (s: Buffer) => { latest = s })
    await once(socket, 'secureConnect')
    const reused = socket.isSessionReused()
    socket.resume()
    // TLS 1.3 tickets arrive after the handshake, before the server's data ends
    await once(socket, 'end')
    socket.destroy()
    return { reused, session: latest }
  }
  try {
    const first = await handshake()
    t.equal(first.reused, false, 'a first handshake is always full')
    return (await handshake(first.session)).reused
  } finally {
    server.close()
  }
}

t.test('no resumption by default: every handshake is a full mutual-TLS handshake', async (t) => {
  t.equal(await secondHandshakeResumes(false), false)
})

t.test('TLS_SESSION_TICKETS turns resumption on', async (t) => {
  t.equal(await secondHandshakeResumes(true), true)
})
