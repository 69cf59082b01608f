import { X509Certificate } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { loadIssuer } from '../../pki/certificate.js'
import { createCrl, parseCrl, splitCrlPem, verifyCrl } from '../../pki/crl.js'
import { generateDevPki } from '../../certs-dev/generate.js'
import { openssl } from './openssl.js'

// its own PKI (not test/helpers/broker.ts): this unit needs nothing of the broker
async function devPki (rsa = false): Promise<{ dir: string, read: (file: string) => string }> {
  const dir = mkdtempSync(join(tmpdir(), 'jitp-crl-pki-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  await generateDevPki({ outDir: dir, rsa })
  return { dir, read: (file) => readFileSync(join(dir, file), 'utf8') }
}

for (const rsa of [false, true]) {
  t.test(`${rsa ? 'RSA' : 'EC'} CA: generated CRL parses, verifies, and openssl agrees`, async (t) => {
    const pki = await devPki(rsa)
    const issuer = loadIssuer(pki.read('service-ca.pem'), pki.read('service-ca.key'))
    const leaf = new X509Certificate(pki.read('service.pem'))
    const pem = createCrl({ issuer, revoked: [{ serialNumber: leaf.serialNumber }, { serialNumber: '00:0A:ff' }] })
    const ders = splitCrlPem(pem + pem)
    t.equal(ders.length, 2, 'several CRLs per file')
    const crl = parseCrl(ders[0]!)
    t.strictSame(crl.entries.map((e) => e.serialNumber), [leaf.serialNumber.toLowerCase().replace(/^(00)+/, ''), '0aff'])
    t.ok(crl.nextUpdate !== null && crl.nextUpdate > crl.thisUpdate)
    t.equal(verifyCrl(crl, issuer.certificate.publicKey), true, 'signed by the service CA')
    t.equal(verifyCrl(crl, new X509Certificate(pki.read('claim-ca.pem')).publicKey), false, 'not by the claim CA')

    const tampered = Buffer.from(ders[0]!)
    tampered[tampered.length - 40] = tampered[tampered.length - 40]! ^ 0xff
    t.equal(verifyCrl(parseCrl(tampered), issuer.certificate.publicKey), false, 'a flipped signature byte fails')

    writeFileSync(join(pki.dir, 'crl.pem'), pem)
    const check = openssl(['crl', '-in', join(pki.dir, 'crl.pem'), '-CAfile', join(pki.dir, 'service-ca.pem'), '-noout', '-text'])
    t.ok(check.ok, 'openssl parses it')
    t.match(check.output, /verify OK/, 'openssl verifies the signature')
    t.match(check.output.toUpperCase(), leaf.serialNumber.toUpperCase().replace(/^(00)+/, ''))
  })
}

t.test('an empty CRL and garbage', async (t) => {
  const pki = await devPki()
  const issuer = loadIssuer(pki.read('service-ca.pem'), pki.read('service-ca.key'))
  const crl = parseCrl(splitCrlPem(createCrl({ issuer, revoked: [] }))[0]!)
  t.strictSame(crl.entries, [])
  t.equal(verifyCrl(crl, issuer.certificate.publicKey), true)
  t.throws(() => parseCrl(Buffer.from('3003020101', 'hex')))
})
