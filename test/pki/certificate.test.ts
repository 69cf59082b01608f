import t from 'tap'
import { X509Certificate, type KeyObject } from 'node:crypto'
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { certificateIdOf, issueCertificate, loadIssuer, type Issuer } from '../../pki/certificate.js'
import { generateKeyPair, privateKeyToPem, type KeyAlgorithm } from '../../pki/keys.js'
import { openssl } from './openssl.js'

const fingerprintId = (x: X509Certificate): string => x.fingerprint256.replaceAll(':', '').toLowerCase()

function makeCa (alg: KeyAlgorithm, parent?: { issuer: Issuer }): { issuer: Issuer, publicKey: KeyObject, pem: string } {
  const keys = generateKeyPair(alg)
  const cert = issueCertificate({
    commonName: `${alg} ${parent ? 'intermediate' : 'root'}`,
    organization: 'pki test',
    publicKey: keys.publicKey,
    issuer: parent?.issuer ?? 'self',
    signingKey: parent ? undefined : keys.privateKey,
    validityDays: 3650,
    isCa: true,
    pathLength: parent ? 0 : 1
  })
  return { issuer: loadIssuer(cert.pem, privateKeyToPem(keys.privateKey)), publicKey: keys.publicKey, pem: cert.pem }
}

const cas = { ec: makeCa('ec'), rsa: makeCa('rsa') }
const leafKeys = { ec: generateKeyPair('ec'), rsa: generateKeyPair('rsa') }

for (const caAlg of ['ec', 'rsa'] as const) {
  for (const leafAlg of ['ec', 'rsa'] as const) {
    for (const keyForm of ['KeyObject', 'SPKI DER'] as const) {
    t.test(`${leafAlg} leaf (${keyForm}) signed by ${caAlg} CA`, async (t) => {
      const ca = cas[caAlg]
      const leafKey = leafKeys[leafAlg].publicKey
      const issued = issueCertificate({
        commonName: 'device-ü-1',
        publicKey: keyForm === 'KeyObject' ? leafKey : leafKey.export({ type: 'spki', format: 'der' }),
        issuer: ca.issuer,
        validityDays: 30,
        extKeyUsage: ['clientAuth', 'serverAuth'],
        dnsNames: ['device.example'],
        ipAddresses: ['10.0.0.1', '2001:db8::42']
      })
      const x = new X509Certificate(issued.pem)
      t.ok(x.verify(ca.publicKey), 'signature verifies with the CA key')
      t.notOk(x.verify(cas[caAlg === 'ec' ? 'rsa' : 'ec'].publicKey), 'and not with another key')
      t.ok(x.checkIssued(ca.issuer.certificate), 'issuer name and AKI match the CA')
      t.equal(x.subject, 'CN=device-ü-1')
      t.equal(x.issuer, ca.issuer.certificate.subject)
      t.equal(x.subjectAltName, 'DNS:device.example, IP Address:10.0.0.1, IP Address:2001:DB8:0:0:0:0:0:42')
      t.same(x.keyUsage, ['1.3.6.1.5.5.7.3.2', '1.3.6.1.5.5.7.3.1'])
      t.equal(x.ca, false)
      t.ok(x.publicKey.equals(leafKeys[leafAlg].publicKey), 'subject key embedded')
      t.ok(issued.der.includes(leafKeys[leafAlg].publicKey.export({ type: 'spki', format: 'der' })), 'SPKI byte-identical to OpenSSL\'s')
      t.equal(issued.certificateId, fingerprintId(x))
      t.equal(issued.serialNumber, x.serialNumber.toLowerCase())
      t.equal(issued.notAfter.getTime(), Date.parse(x.validTo))
      t.ok(issued.der.equals(x.raw))
      const text = openssl(['x509', '-noout', '-text'], issued.pem).output
      t.match(text, /Basic Constraints: critical\s+CA:FALSE/)
      t.match(text, leafAlg === 'rsa' ? /Key Usage: critical\s+Digital Signature, Key Encipherment\n/ : /Key Usage: critical\s+Digital Signature\n/)
      t.match(text, caAlg === 'rsa' ? /Signature Algorithm: sha256WithRSAEncryption/ : /Signature Algorithm: ecdsa-with-SHA256/)
      t.match(text, /Subject Key Identifier/)
      t.match(text, /Authority Key Identifier/)
    })
    }
  }
}

t.test('CA certificates carry CA:TRUE, pathlen and certificate signing', async (t) => {
  const inter = makeCa('ec', cas.rsa)
  const x = inter.issuer.certificate
  t.equal(x.ca, true)
  const text = openssl(['x509', '-noout', '-text'], inter.pem).output
  t.match(text, /Basic Constraints: critical\s+CA:TRUE, pathlen:0/)
  t.match(text, /Key Usage: critical\s+Certificate Sign, CRL Sign/)
  t.equal(x.subject, 'O=pki test\nCN=ec intermediate')
})

t.test('openssl verify accepts root → intermediate → leaf and nothing else', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pki-cert-'))
  const inter = makeCa('rsa', cas.ec)
  const leaf = issueCertificate({
    commonName: 'leaf', publicKey: leafKeys.ec.publicKey, issuer: inter.issuer, validityDays: 1, extKeyUsage: ['clientAuth']
  })
  writeFileSync(join(dir, 'root.pem'), cas.ec.pem)
  writeFileSync(join(dir, 'other-root.pem'), cas.rsa.pem)
  writeFileSync(join(dir, 'intermediate.pem'), inter.pem)
  writeFileSync(join(dir, 'leaf.pem'), leaf.pem)
  const verify = (root: string, ...extra: string[]) => openssl([
    'verify', '-x509_strict', ...extra, '-CAfile', join(dir, root), '-untrusted', join(dir, 'intermediate.pem'), join(dir, 'leaf.pem')
  ])
  const good = verify('root.pem', '-purpose', 'sslclient')
  t.ok(good.ok, good.output)
  t.match(good.output, /leaf\.pem: OK/)
  t.notOk(verify('root.pem', '-purpose', 'sslserver').ok, 'a clientAuth-only leaf is no TLS server')
  t.notOk(verify('other-root.pem').ok, 'a chain to another root is refused')
})

t.test('an openssl-made CA can be loaded and issue', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pki-osslca-'))
  for (const [name, newkey] of [['ec', ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1']], ['rsa', ['-newkey', 'rsa:2048']]] as const) {
    const certPath = join(dir, `${name}-ca.pem`)
    const keyPath = join(dir, `${name}-ca.key`)
    const made = openssl(['req', '-x509', ...newkey, '-nodes', '-days', '30', '-subj', `/O=Ext/CN=${name} openssl CA`,
      '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign', '-keyout', keyPath, '-out', certPath])
    t.ok(made.ok, made.output)
    const issuer = loadIssuer(readFileSync(certPath, 'utf8'), readFileSync(keyPath, 'utf8'))
    const leaf = issueCertificate({ commonName: 'leaf', publicKey: leafKeys.ec.publicKey, issuer, validityDays: 1, extKeyUsage: ['clientAuth'] })
    writeFileSync(join(dir, `${name}-leaf.pem`), leaf.pem)
    const v = openssl(['verify', '-x509_strict', '-purpose', 'sslclient', '-CAfile', certPath, join(dir, `${name}-leaf.pem`)])
    t.ok(v.ok, v.output)
    t.equal(new X509Certificate(leaf.pem).issuer, 'O=Ext\nCN=' + name + ' openssl CA')
  }
})

t.test('1,000 issuances: unique serials, certificateId = fingerprint256', async (t) => {
  const serials = new Set<string>()
  let idMismatches = 0
  for (let i = 0; i < 1000; i++) {
    const issued = issueCertificate({ commonName: `d${i}`, publicKey: leafKeys.ec.publicKey, issuer: cas.ec.issuer, validityDays: 1 })
    serials.add(issued.serialNumber)
    const x = new X509Certificate(issued.der)
    if (issued.certificateId !== fingerprintId(x) || issued.serialNumber !== x.serialNumber.toLowerCase()) idMismatches++
    if (i === 0) t.match(issued.serialNumber, /^[0-7][0-9a-f]{31}$/, '16 octets, positive')
  }
  t.equal(serials.size, 1000)
  t.equal(idMismatches, 0)
})

t.test('certificateIdOf takes PEM or DER', async (t) => {
  const issued = issueCertificate({ commonName: 'id', publicKey: leafKeys.ec.publicKey, issuer: cas.ec.issuer, validityDays: 1 })
  t.equal(certificateIdOf(issued.pem), issued.certificateId)
  t.equal(certificateIdOf(issued.der), issued.certificateId)
  t.equal(certificateIdOf(`leading text\n${issued.pem}`), issued.certificateId)
  t.throws(() => certificateIdOf('not a certificate'))
})

t.test('validity: skewed notBefore, clamped to the issuer, GeneralizedTime after 2049', async (t) => {
  const before = Date.now()
  const issued = issueCertificate({ commonName: 'v', publicKey: leafKeys.ec.publicKey, issuer: cas.ec.issuer, validityDays: 10 })
  const x = new X509Certificate(issued.pem)
  const notBefore = Date.parse(x.validFrom)
  t.ok(notBefore <= before - 4 * 60_000 && notBefore >= before - 6 * 60_000, 'notBefore is about 5 minutes ago')
  t.ok(Math.abs(Date.parse(x.validTo) - (before + 10 * 86_400_000)) < 5000, 'notAfter is 10 days out')

  const long = issueCertificate({ commonName: 'v', publicKey: leafKeys.ec.publicKey, issuer: cas.ec.issuer, validityDays: 100_000 })
  t.equal(long.notAfter.getTime(), Date.parse(cas.ec.issuer.certificate.validTo), 'never outlives its CA')

  const far = issueCertificate({
    commonName: 'far', publicKey: leafKeys.ec.publicKey, issuer: 'self', signingKey: leafKeys.ec.privateKey, validityDays: 40 * 365
  })
  const fx = new X509Certificate(far.pem)
  t.ok(new Date(fx.validTo).getUTCFullYear() >= 2050)
  t.equal(Date.parse(fx.validTo), far.notAfter.getTime())
  t.ok(openssl(['x509', '-noout', '-text'], far.pem).ok)

  const fixed = new Date('2030-01-01T00:00:00.750Z')
  const pinned = issueCertificate({ commonName: 'p', publicKey: leafKeys.ec.publicKey, issuer: cas.ec.issuer, validityDays: 1, notBefore: fixed })
  t.equal(Date.parse(new X509Certificate(pinned.pem).validFrom), Date.parse('2030-01-01T00:00:00Z'))
  t.equal(pinned.notAfter.toISOString(), '2030-01-02T00:00:00.000Z')
})

t.test('explicit serial numbers', async (t) => {
  const issued = issueCertificate({ commonName: 's', publicKey: leafKeys.ec.publicKey, issuer: cas.ec.issuer, validityDays: 1, serialNumber: '00FF01' })
  t.equal(issued.serialNumber, 'ff01')
  t.equal(new X509Certificate(issued.pem).serialNumber, 'FF01')
  for (const bad of ['', '0', 'xyz', 'f'.repeat(41)]) {
    t.throws(() => issueCertificate({ commonName: 's', publicKey: leafKeys.ec.publicKey, issuer: cas.ec.issuer, validityDays: 1, serialNumber: bad }), RangeError)
  }
})

t.test('misuse is refused', async (t) => {
  const base = { publicKey: leafKeys.ec.publicKey, issuer: cas.ec.issuer, validityDays: 1 }
  t.throws(() => issueCertificate({ ...base, commonName: '' }), RangeError)
  t.throws(() => issueCertificate({ ...base, commonName: 'x'.repeat(65) }), RangeError)
  t.throws(() => issueCertificate({ ...base, commonName: 'x', validityDays: 0 }), RangeError)
  t.throws(() => issueCertificate({ ...base, commonName: 'x', ipAddresses: ['300.1.1.1'] }), RangeError)
  t.throws(() => issueCertificate({ ...base, commonName: 'x', dnsNames: ['bad name'] }), RangeError)
  t.throws(() => issueCertificate({ ...base, commonName: 'x', issuer: 'self' }), /signingKey/)
  t.throws(() => issueCertificate({ ...base, commonName: 'x', issuer: 'self', signingKey: leafKeys.rsa.privateKey }), /does not match/)

  const leaf = issueCertificate({ ...base, commonName: 'leaf' })
  t.throws(() => loadIssuer(leaf.pem, privateKeyToPem(leafKeys.ec.privateKey)), /not a CA/)
  t.throws(() => loadIssuer(cas.ec.pem, privateKeyToPem(leafKeys.ec.privateKey)), /does not match/)
})

t.test('an Issuer does not leak its private key when serialised', async (t) => {
  t.match(cas.ec.issuer.keyPem, /BEGIN PRIVATE [K]EY/)
  t.notMatch(JSON.stringify(cas.ec.issuer), /PRIVATE KEY/)
})
