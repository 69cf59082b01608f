/**
 * Issue 12's CA rollover and hot reload, end to end: 100 devices on mutual TLS stay
 * connected while CERTS_DIR changes under the running broker: a second device CA
 * added (`certs dev --add-device-ca`'s function) signs the next provisioned device,
 * a device of the old CA still connects, a replaced server certificate is what a
 * new TLS client sees, and a corrupt server.pem is audited and changes nothing.
 * The broker finds the changes itself (broker/cert-reload.ts watching CERTS_DIR).
 */
import t from 'tap'
import { X509Certificate } from 'node:crypto'
import { renameSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { connect as tlsConnect } from 'node:tls'
import type { MqttClient } from 'mqtt'
import { addDeviceCa } from '../../certs-dev/generate.js'
import { issueCertificate, loadIssuer } from '../../pki/certificate.js'
import { generateKeyPair, privateKeyToPem } from '../../pki/keys.js'
import { connect, credentials, endClient, newDevPki, registerDevice, startBroker, STORES, waitFor, type TestBroker } from '../helpers/broker.js'
import { provision } from '../helpers/provisioning.js'

const DEVICES = 100
const BATCH = 25

/** as an operator should: write beside, then rename into place */
function replaceFile (dir: string, file: string, text: string): void {
  const tmp = join(dir, `.${file}.tmp`)
  writeFileSync(tmp, text)
  renameSync(tmp, join(dir, file))
}

/** the fingerprint of the certificate a new TLS client is served */
function servedFingerprint (tb: TestBroker, listener: 'mqtts' | 'admin' = 'mqtts'): Promise<string> {
  const creds = credentials(tb.pki, listener === 'admin' ? 'admin' : 'service')
  const port = listener === 'admin' ? tb.adminPort! : tb.port
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({ host: '127.0.0.1', port, servername: 'localhost', ca: tb.pki.read('root-ca.pem'), ...creds }, () => {
      const fp = socket.getPeerCertificate().fingerprint256
      socket.destroy()
      resolve(fp)
    })
    socket.once('error', reject)
  })
}

for (const store of STORES) t.test(`CA rollover and certificate hot reload keep 100 devices connected (${store})`, async (t) => {
  // a PKI of its own: this test rolls the device CA over and writes a corrupt server.pem
  const tb = await startBroker({ store, pki: await newDevPki() })
  const { pki } = tb
  const clients: MqttClient[] = []
  t.teardown(async () => {
    await Promise.all(clients.map((c) => endClient(c)))
    await tb.close()
  })
  const reloaded = (): number => tb.events('config.reloaded').length

  // the old CA's devices: 100 stay connected throughout, one more connects only after the rollover
  const creds = await Promise.all(Array.from({ length: DEVICES + 1 }, (_, i) => registerDevice(tb, `hr-${i}`)))
  const lateOld = creds.pop()!
  let dropped = 0
  for (let i = 0; i < DEVICES; i += BATCH) {
    const batch = await Promise.all(creds.slice(i, i + BATCH).map((c, j) => connect(tb, c, { clientId: `hr-${i + j}` })))
    for (const client of batch) client.on('close', () => { dropped++ })
    clients.push(...batch)
  }
  t.equal(clients.length, DEVICES, `${DEVICES} devices connected`)
  const oldCa = new X509Certificate(pki.read('device-ca.pem'))
  const oldServer = await servedFingerprint(tb)

  // 1. a second device CA, first in device-ca.pem: it signs from now on, the old one stays trusted
  const added = await addDeviceCa({ outDir: pki.dir })
  await waitFor(() => reloaded() >= 1, 5000, 'config.reloaded after the device CA was added')
  const newCa = new X509Certificate(added.deviceCaPem)
  t.not(newCa.fingerprint256, oldCa.fingerprint256, 'a new device CA')

  const fresh = await provision(tb, 'HR-NEW-1', 'ec')
  const issued = new X509Certificate(fresh.creds.cert)
  t.ok(issued.checkIssued(newCa) && issued.verify(newCa.publicKey), 'a device provisioned after the reload is signed by the new CA')
  t.notOk(issued.verify(oldCa.publicKey), 'and not by the old one')
  clients.push(await connect(tb, fresh.creds, { clientId: fresh.deviceId }))
  t.pass('the new CA\'s device connects')
  clients.push(await connect(tb, lateOld, { clientId: `hr-${DEVICES}` }))
  t.pass('a device of the old CA still connects (fresh connect)')

  // 2. a new server certificate from the root, replaced on disk (key and certificate together)
  const root = loadIssuer(pki.read('root-ca.pem'), pki.read('root-ca.key'))
  const serverKeys = generateKeyPair('ec')
  const server = issueCertificate({
    commonName: 'localhost', publicKey: serverKeys.publicKey, issuer: root, validityDays: 30,
    extKeyUsage: ['serverAuth'], dnsNames: ['localhost'], ipAddresses: ['127.0.0.1']
  })
  const before = reloaded()
  replaceFile(pki.dir, 'server.key', privateKeyToPem(serverKeys.privateKey))
  replaceFile(pki.dir, 'server.pem', server.pem)
  await waitFor(() => reloaded() > before, 5000, 'config.reloaded after the server certificate was replaced')
  const newServer = new X509Certificate(server.pem).fingerprint256
  t.not(oldServer, newServer)
  t.equal(await servedFingerprint(tb), newServer, 'a new TLS client is served the new server certificate, no restart')
  t.equal(await servedFingerprint(tb, 'admin'), newServer, 'and so is a new admin API client')

  // 3. a corrupt replacement: audited, the previous material stays in use
  const failedBefore = tb.events('config.reload.failed').length
  const reloadsBefore = reloaded()
  replaceFile(pki.dir, 'server.pem', '-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n')
  await waitFor(() => tb.events('config.reload.failed').length > failedBefore, 5000, 'config.reload.failed')
  const failed = tb.events('config.reload.failed').at(-1)!
  t.match(failed.reason, /server\.pem/, 'the audit names the file')
  t.equal(reloaded(), reloadsBefore, 'nothing was reloaded')
  t.equal(await servedFingerprint(tb), newServer, 'new clients are still served the last good certificate')
  const after = await provision(tb, 'HR-NEW-2', 'ec')
  t.ok(new X509Certificate(after.creds.cert).verify(newCa.publicKey), 'provisioning still signs with the new CA')
  clients.push(await connect(tb, after.creds, { clientId: after.deviceId }))
  t.pass('and new devices still connect')

  t.equal(dropped, 0, 'none of the 100 devices was disconnected')
  t.ok(clients.slice(0, DEVICES).every((c) => c.connected), 'all 100 still connected')
})
