/**
 * Trust.noteIssued: a certificate the device CA just issued goes into classify's
 * cache, so the device's first connect with it is a lookup. The promise that
 * matters is that the shortcut answers exactly what parsing would: checked here
 * against a Trust that never saw the note, over real mutual-TLS sockets.
 */
import t from 'tap'
import { X509Certificate } from 'node:crypto'
import { once } from 'node:events'
import type { AddressInfo } from 'node:net'
import { connect, createServer, type TLSSocket } from 'node:tls'
import { issueCertificate } from '../../pki/certificate.js'
import { generateKeyPair, privateKeyToPem } from '../../pki/keys.js'
import type { PeerCertificate } from '../../broker/session.js'
import { tlsServerOptions } from '../../broker/tls.js'
import { commonNameOf, createTrustHolder, loadTrust, type Trust } from '../../broker/trust.js'
import { devPki, newDevPki } from '../helpers/broker.js'

/** what each Trust's classify answers for one mutual-TLS connection with this certificate */
async function classifyWith (trusts: readonly Trust[], ca: string, cert: string, key: string): Promise<Array<PeerCertificate | null>> {
  const answers: Array<Array<PeerCertificate | null>> = []
  const server = createServer(tlsServerOptions(trusts[0]!), (socket) => {
    answers.push(trusts.map((trust) => trust.classify(socket)))
    socket.on('error', () => {})
    socket.end()
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  try {
    const { port } = server.address() as AddressInfo
    const client: TLSSocket = connect({ host: '127.0.0.1', port, servername: 'localhost', ca, cert, key })
    client.on('error', () => {})
    await once(client, 'secureConnect')
    client.resume()
    await once(client, 'close')
    t.equal(answers.length, 1, 'one connection classified')
    return answers[0]!
  } finally {
    server.close()
  }
}

t.test('a noted certificate: classify answers from the cache, and exactly what parsing answers', async (t) => {
  const pki = await devPki()
  const noted = loadTrust(pki.dir)
  const fresh = loadTrust(pki.dir)
  const keys = generateKeyPair('ec')
  const issued = issueCertificate({ commonName: 'sensor-NOTE-0001', publicKey: keys.publicKey, issuer: noted.deviceIssuer, validityDays: 30, extKeyUsage: ['clientAuth'] })
  t.equal(issued.issuerCertificateId, noted.deviceIssuer.certificateId, 'the certificate names the CA that signed it')
  const recorded = noted.noteIssued(issued)
  t.ok(recorded, 'recorded')
  const [fromCache, parsed] = await classifyWith([noted, fresh], pki.read('root-ca.pem'), issued.pem + pki.read('device-ca.pem'), privateKeyToPem(keys.privateKey))
  t.equal(fromCache, recorded, 'the noting Trust answers with the very object it recorded (a cache hit)')
  t.same(parsed, recorded, 'a Trust that parsed the certificate gives the same answer, field by field')
  t.equal(parsed?.issuerRole, 'device')
})

t.test('not noted: a certificate another CA signed, or a name whose printed form could differ', async (t) => {
  const pki = await devPki()
  const trust = loadTrust(pki.dir)
  const other = loadTrust((await newDevPki()).dir)
  const keys = generateKeyPair('ec')
  const foreign = issueCertificate({ commonName: 'sensor-0002', publicKey: keys.publicKey, issuer: other.deviceIssuer, validityDays: 30, extKeyUsage: ['clientAuth'] })
  t.equal(trust.noteIssued(foreign), null, 'signed by another device CA (a reload in between): not recorded')
  for (const name of ['with space', 'comma,name', 'plus+name', 'émile', 'a=b', 'back\\slash']) {
    const issued = issueCertificate({ commonName: name, publicKey: keys.publicKey, issuer: trust.deviceIssuer, validityDays: 30, extKeyUsage: ['clientAuth'] })
    t.equal(trust.noteIssued(issued), null, `${JSON.stringify(name)}: left to classify's parse`)
  }
  // and such a certificate is still classified, by parsing it
  const spaced = issueCertificate({ commonName: 'with space', publicKey: keys.publicKey, issuer: trust.deviceIssuer, validityDays: 30, extKeyUsage: ['clientAuth'] })
  const [answer] = await classifyWith([trust], pki.read('root-ca.pem'), spaced.pem + pki.read('device-ca.pem'), privateKeyToPem(keys.privateKey))
  t.equal(answer?.commonName, 'with space')
  t.equal(answer?.issuerRole, 'device')
})

t.test('the names noteIssued accepts read back from the certificate exactly as written', async (t) => {
  const trust = loadTrust((await devPki()).dir)
  const keys = generateKeyPair('ec')
  // every character class of the plain form, at its edges
  for (const name of ['sensor-0001', 'a:b.c_d-e', 'A.B:C', '-x-', '::', '._-', 'z'.repeat(64)]) {
    const issued = issueCertificate({ commonName: name, publicKey: keys.publicKey, issuer: trust.deviceIssuer, validityDays: 30, extKeyUsage: ['clientAuth'] })
    const noted = trust.noteIssued(issued)
    t.equal(noted?.commonName, name, `${name.slice(0, 20)}: noted`)
    t.equal(commonNameOf(new X509Certificate(issued.der)), name, 'and what classify would read is the same')
  }
})

t.test('through the holder, and across a reload: a note is made on the current reading and dies with it', async (t) => {
  const pki = await newDevPki()
  const holder = createTrustHolder(pki.dir)
  const keys = generateKeyPair('ec')
  const issued = issueCertificate({ commonName: 'sensor-RELOAD-1', publicKey: keys.publicKey, issuer: holder.deviceIssuer, validityDays: 30, extKeyUsage: ['clientAuth'] })
  const recorded = holder.noteIssued(issued)
  t.ok(recorded, 'noted through the holder')
  const ca = pki.read('root-ca.pem')
  const chain = issued.pem + pki.read('device-ca.pem')
  const key = privateKeyToPem(keys.privateKey)
  const [before] = await classifyWith([holder], ca, chain, key)
  t.equal(before, recorded, 'before the reload: the cache hit')
  holder.reload()
  const [after] = await classifyWith([holder], ca, chain, key)
  t.not(after, recorded, 'after it: a fresh reading, which parses')
  t.same(after, recorded, 'and answers the same')
})
