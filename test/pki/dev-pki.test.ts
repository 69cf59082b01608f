import t, { type Test } from 'tap'
import { createPrivateKey, X509Certificate } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync, statSync, unlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { connect, createServer, type TLSSocket } from 'node:tls'
import type { AddressInfo } from 'node:net'
import { addDeviceCa, DEV_PKI_FILES, devPkiComplete, generateDevPki } from '../../certs-dev/generate.js'
import { loadTrust, splitPem } from '../../broker/trust.js'
import { openssl } from './openssl.js'

const LEAVES = [
  { leaf: 'claim', ca: 'claim-ca', cn: 'claim-dev', purpose: 'sslclient' },
  { leaf: 'service', ca: 'service-ca', cn: 'backend-dev', purpose: 'sslclient' },
  { leaf: 'manufacturer-device', ca: 'manufacturer-ca', cn: 'mfg-0001', purpose: 'sslclient' },
  { leaf: 'admin', ca: 'admin-ca', cn: 'admin-dev', purpose: 'sslclient' }
] as const

interface Outcome { authorized: boolean, peerCn: string | null, serverError: string | null, clientError: string | null }

/** one mutual-TLS handshake against a server trusting `serverCa`; reports both sides */
async function handshake (dir: string, client: { cert?: string, key?: string }, serverCa = 'ca-bundle.pem'): Promise<Outcome> {
  const read = (f: string): string => readFileSync(join(dir, f), 'utf8')
  const outcome: Outcome = { authorized: false, peerCn: null, serverError: null, clientError: null }
  const server = createServer({
    cert: read('server.pem'), key: read('server.key'), ca: read(serverCa), requestCert: true, rejectUnauthorized: true
  }, (socket: TLSSocket) => {
    outcome.authorized = socket.authorized
    outcome.peerCn = socket.getPeerX509Certificate()?.subject.replace(/^[\s\S]*CN=/, '') ?? null
    socket.end('hello')
  })
  server.on('tlsClientError', (err) => { outcome.serverError = err.message })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  try {
    const received = await new Promise<string>((resolve) => {
      const socket = connect({
        host: '127.0.0.1', port, servername: 'localhost', ca: read('root-ca.pem'),
        ...(client.cert ? { cert: read(client.cert), key: read(client.key!) } : {})
      })
      let data = ''
      socket.setEncoding('utf8')
      socket.on('data', (d: string) => { data += d })
      socket.on('error', (err) => { outcome.clientError = err.message })
      socket.on('close', () => resolve(data))
    })
    if (received !== 'hello' && outcome.clientError === null) outcome.clientError = 'no greeting'
  } finally {
    await new Promise((resolve) => server.close(resolve))
  }
  return outcome
}

async function checkPki (t: Test, rsa: boolean): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'dev-pki-'))
  const result = await generateDevPki({ outDir: join(dir, 'nested', 'certs'), rsa })
  const out = result.outDir
  t.equal(out, join(dir, 'nested', 'certs'))
  t.same(result.files.map((f) => f.slice(out.length + 1)).sort(), [...DEV_PKI_FILES].sort(), 'exactly the documented files')
  t.ok(devPkiComplete(out))

  for (const file of DEV_PKI_FILES.filter((f) => f.endsWith('.key'))) {
    const path = join(out, file)
    t.equal(statSync(path).mode & 0o777, 0o600, `${file} is private`)
    const pem = readFileSync(path, 'utf8')
    t.match(pem, /^-----BEGIN PRIVATE [K]EY-----\n/, `${file} is PKCS#8`)
    const key = createPrivateKey(pem)
    t.equal(key.asymmetricKeyType, rsa ? 'rsa' : 'ec')
    if (rsa) t.equal(key.asymmetricKeyDetails?.modulusLength, 2048)
    else t.equal(key.asymmetricKeyDetails?.namedCurve, 'prime256v1')
    const certFile = file.replace(/\.key$/, '.pem')
    t.ok(new X509Certificate(readFileSync(join(out, certFile))).checkPrivateKey(key), `${certFile} matches ${file}`)
  }

  const at = (f: string): string => join(out, f)
  for (const { leaf, ca, cn, purpose } of [...LEAVES, { leaf: 'device-ca', ca: 'root-ca', cn: 'aedes-jitp dev device CA', purpose: 'any' }]) {
    const v = openssl(['verify', '-x509_strict', '-purpose', purpose, '-CAfile', at('root-ca.pem'), '-untrusted', at(`${ca}.pem`), at(`${leaf}.pem`)])
    t.ok(v.ok, `${leaf}: ${v.output}`)
    t.equal(new X509Certificate(readFileSync(at(`${leaf}.pem`))).subject.split('\n').pop(), `CN=${cn}`)
  }
  const server = openssl(['verify', '-x509_strict', '-purpose', 'sslserver', '-verify_hostname', 'localhost', '-verify_ip', '::1', '-CAfile', at('root-ca.pem'), at('server.pem')])
  t.ok(server.ok, server.output)
  t.notOk(openssl(['verify', '-CAfile', at('root-ca.pem'), at('claim.pem')]).ok, 'a leaf alone does not reach the root')

  const bundle = readFileSync(at('ca-bundle.pem'), 'utf8').match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----\n/g) ?? []
  t.same(bundle, ['root-ca', 'device-ca', 'claim-ca', 'service-ca', 'manufacturer-ca', 'admin-ca'].map((n) => readFileSync(at(`${n}.pem`), 'utf8')))
  for (const { leaf, ca } of LEAVES) {
    t.equal(readFileSync(at(`${leaf}-chain.pem`), 'utf8'), readFileSync(at(`${leaf}.pem`), 'utf8') + readFileSync(at(`${ca}.pem`), 'utf8'))
  }

  const service = await handshake(out, { cert: 'service.pem', key: 'service.key' })
  t.same(service, { authorized: true, peerCn: 'backend-dev', serverError: null, clientError: null }, 'service certificate is accepted')
  // trusting only the root, the server can only build the path from the intermediate the client sends
  const chained = await handshake(out, { cert: 'claim-chain.pem', key: 'claim.key' }, 'root-ca.pem')
  t.same(chained, { authorized: true, peerCn: 'claim-dev', serverError: null, clientError: null }, 'chain file carries the intermediate')
  const bare = await handshake(out, { cert: 'claim.pem', key: 'claim.key' }, 'root-ca.pem')
  t.equal(bare.authorized, false, 'without the intermediate the same client is refused')
  t.not(bare.serverError, null)
  const anonymous = await handshake(out, {})
  t.equal(anonymous.authorized, false)
  t.not(anonymous.clientError, null, 'a client without certificate fails')
  t.match(anonymous.serverError ?? '', /certificate/i)

  unlinkSync(at('claim-chain.pem'))
  t.notOk(devPkiComplete(out), 'one missing file makes it incomplete')
}

t.test('EC P-256 development PKI', (t) => checkPki(t, false))
t.test('RSA-2048 development PKI (--rsa)', (t) => checkPki(t, true))

t.test('a dev PKI from before the admin API gets only the admin part, under its own root', async (t) => {
  const out = mkdtempSync(join(tmpdir(), 'dev-pki-admin-'))
  t.teardown(() => rmSync(out, { recursive: true, force: true }))
  await generateDevPki({ outDir: out })
  const at = (f: string): string => join(out, f)
  for (const f of ['admin-ca.pem', 'admin-ca.key', 'admin.pem', 'admin.key', 'admin-chain.pem']) rmSync(at(f))
  const kept = Object.fromEntries(['root-ca.pem', 'device-ca.pem', 'device-ca.key', 'service.pem'].map((f) => [f, readFileSync(at(f), 'utf8')]))
  t.notOk(devPkiComplete(out))
  await generateDevPki({ outDir: out })
  t.ok(devPkiComplete(out), 'complete again')
  for (const [f, text] of Object.entries(kept)) t.equal(readFileSync(at(f), 'utf8'), text, `${f} untouched: its devices stay valid`)
  const v = openssl(['verify', '-x509_strict', '-purpose', 'sslclient', '-CAfile', at('root-ca.pem'), '-untrusted', at('admin-ca.pem'), at('admin.pem')])
  t.ok(v.ok, `admin certificate chains to the existing root: ${v.output}`)
  t.match(readFileSync(at('ca-bundle.pem'), 'utf8'), readFileSync(at('admin-ca.pem'), 'utf8').trim(), 'the bundle gains the admin CA')
})

t.test('concurrent generators into one directory leave one consistent PKI', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dev-pki-race-'))
  await Promise.all([generateDevPki({ outDir: dir }), generateDevPki({ outDir: dir }), generateDevPki({ outDir: dir })])
  t.ok(devPkiComplete(dir))
  for (const { leaf, ca } of LEAVES) {
    const v = openssl(['verify', '-CAfile', join(dir, 'root-ca.pem'), '-untrusted', join(dir, `${ca}.pem`), join(dir, `${leaf}.pem`)])
    t.ok(v.ok, v.output)
  }
  const x = new X509Certificate(readFileSync(join(dir, 'device-ca.pem')))
  t.ok(x.checkPrivateKey(createPrivateKey(readFileSync(join(dir, 'device-ca.key')))), 'device CA key matches its certificate')
})

t.test('validityDays sets leaf lifetime; CAs keep at least 3650 days', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'dev-pki-days-'))
  const start = Date.now()
  await generateDevPki({ outDir: dir, validityDays: 30 })
  const days = (f: string): number => Math.round((Date.parse(new X509Certificate(readFileSync(join(dir, f))).validTo) - start) / 86_400_000)
  t.equal(days('service.pem'), 30)
  t.equal(days('server.pem'), 30)
  t.equal(days('device-ca.pem'), 3650)
  t.equal(days('root-ca.pem'), 3650)
})

t.test('--add-device-ca: a new signing device CA first, the old ones still trusted, the old key kept', async (t) => {
  const out = mkdtempSync(join(tmpdir(), 'dev-pki-rollover-'))
  t.teardown(() => rmSync(out, { recursive: true, force: true }))
  await t.rejects(addDeviceCa({ outDir: out }), /no complete development PKI/, 'refused where there is no dev PKI')
  await generateDevPki({ outDir: out })
  const at = (f: string): string => join(out, f)
  const read = (f: string): string => readFileSync(at(f), 'utf8')
  const [firstCa, firstKey, service] = [read('device-ca.pem'), read('device-ca.key'), read('service.pem')]

  const added = await addDeviceCa({ outDir: out })
  t.equal(added.oldKeyFile, at('device-ca.key.1.old'))
  t.same(splitPem(read('device-ca.pem')), [added.deviceCaPem.trim(), firstCa.trim()], 'the new CA first, the old one after it')
  t.ok(new X509Certificate(added.deviceCaPem).checkPrivateKey(createPrivateKey(read('device-ca.key'))), 'device-ca.key is the new CA\'s key')
  t.equal(read('device-ca.key.1.old'), firstKey, 'the previous key is kept')
  t.equal(statSync(at('device-ca.key.1.old')).mode & 0o777, 0o600, 'and stays private')
  t.match(read('ca-bundle.pem'), added.deviceCaPem.trim(), 'the bundle gains the new CA')
  t.equal(read('service.pem'), service, 'other material untouched')
  const v = openssl(['verify', '-x509_strict', '-CAfile', at('root-ca.pem'), at('device-ca.pem')])
  t.ok(v.ok, `the new CA chains to the existing root: ${v.output}`)

  const trust = loadTrust(out)
  t.equal(trust.deviceCaCertPem.trim(), added.deviceCaPem.trim(), 'the broker signs with the new CA')
  t.equal(trust.deviceIssuer.certificate.fingerprint256, new X509Certificate(added.deviceCaPem).fingerprint256)
  for (const ca of [added.deviceCaPem, firstCa]) t.ok(trust.caPems.some((p) => p.trim() === ca.trim()), 'both device CAs are trusted')

  const again = await addDeviceCa({ outDir: out })
  t.equal(again.oldKeyFile, at('device-ca.key.2.old'), 'a second rollover keeps the first old key')
  t.equal(splitPem(read('device-ca.pem')).length, 3)
  t.equal(read('device-ca.key.1.old'), firstKey)
  // the key must belong to the first CA: a half-done manual rollover is refused, not signed with
  writeFileSync(at('device-ca.key'), firstKey)
  t.throws(() => loadTrust(out), /device-ca\.key is not the key of the first CA/)
})
