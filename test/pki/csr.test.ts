import t, { type Test } from 'tap'
import { generateKeyPairSync, randomBytes } from 'node:crypto'
import { mkdtempSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { CsrError, MAX_CSR_BYTES, parseCsr } from '../../pki/csr.js'
import { createCsr, generateKeyPair } from '../../pki/keys.js'
import { openssl } from './openssl.js'

const derOf = (pem: string): Buffer => Buffer.from(pem.replace(/-----[A-Z ]+-----/g, '').replace(/\s+/g, ''), 'base64')
const pemOf = (der: Buffer, label = 'CERTIFICATE REQUEST'): string =>
  `-----BEGIN ${label}-----\n${der.toString('base64').replace(/(.{64})/g, '$1\n')}\n-----END ${label}-----\n`

function rejects (t: Test, input: string, reason?: string): void {
  try {
    parseCsr(input)
    t.fail('accepted a CSR it should refuse')
  } catch (err) {
    t.type(err, CsrError)
    if (reason !== undefined) t.equal((err as CsrError).reason, reason, (err as Error).message)
    // what a device gets back must not echo its request
    t.notMatch((err as Error).message, /BEGIN|[A-Za-z0-9+/]{40}/)
  }
}

const ec = generateKeyPair('ec')
const ecCsr = createCsr({ commonName: 'device-001', ...ec })

t.test('EC P-256 CSR is accepted', async (t) => {
  const parsed = parseCsr(ecCsr)
  t.equal(parsed.keyType, 'ec-p256')
  t.equal(parsed.keyBits, 256)
  t.equal(parsed.commonName, 'device-001')
  t.ok(parsed.publicKey.equals(ec.publicKey))
})

t.test('the key a certificate gets: the request\'s own SPKI bytes, a compressed EC point expanded', async (t) => {
  const uncompressed = ec.publicKey.export({ type: 'spki', format: 'der' })
  t.ok(parseCsr(ecCsr).spki.equals(uncompressed), 'uncompressed: the bytes as sent')
  const { x, y } = ec.publicKey.export({ format: 'jwk' })
  const yOdd = (Buffer.from(y ?? '', 'base64url').at(-1) ?? 0) & 1
  // SubjectPublicKeyInfo { id-ecPublicKey, prime256v1 } with a 33-byte compressed point
  const compressed = Buffer.concat([
    Buffer.from('3039301306072a8648ce3d020106082a8648ce3d030107032200', 'hex'),
    Buffer.of(0x02 | yOdd), Buffer.from(x ?? '', 'base64url')
  ])
  const parsed = parseCsr(createCsr({ commonName: 'compressed', ...ec, spki: compressed }))
  t.ok(parsed.publicKey.equals(ec.publicKey), 'the same key')
  t.ok(parsed.spki.equals(uncompressed), 'expanded to the uncompressed point every TLS stack reads')
})

// a P-256 key with an uncompressed point is read from its coordinates (pki/csr.ts, checkKey):
// a point off the curve, or coordinates beyond the field, must still be refused there
t.test('a P-256 SubjectPublicKeyInfo whose point is not on the curve is refused', async (t) => {
  const good = ec.publicKey.export({ type: 'spki', format: 'der' })
  const offCurve = Buffer.from(good)
  offCurve[offCurve.length - 1]! ^= 0x01
  rejects(t, createCsr({ commonName: 'off-curve', ...ec, spki: offCurve }), 'unsupported-key')
  const zeros = Buffer.from(good)
  zeros.fill(0, good.length - 64)
  rejects(t, createCsr({ commonName: 'zero', ...ec, spki: zeros }), 'unsupported-key')
  const beyond = Buffer.from(good)
  beyond.fill(0xff, good.length - 64, good.length - 32)
  rejects(t, createCsr({ commonName: 'beyond', ...ec, spki: beyond }), 'unsupported-key')
  // another key's valid point, signed by ours: the key reads, the signature does not verify
  const other = generateKeyPair('ec').publicKey.export({ type: 'spki', format: 'der' })
  rejects(t, createCsr({ commonName: 'swapped', ...ec, spki: other }), 'bad-signature')
})

t.test('RSA-2048 CSR is accepted', async (t) => {
  const rsa = generateKeyPair('rsa')
  const parsed = parseCsr(createCsr({ commonName: 'rsa-device', ...rsa }))
  t.equal(parsed.keyType, 'rsa')
  t.equal(parsed.keyBits, 2048)
  t.ok(parsed.publicKey.equals(rsa.publicKey))
})

t.test('"NEW CERTIFICATE REQUEST" PEM and non-ASCII CNs', async (t) => {
  t.equal(parseCsr(pemOf(derOf(ecCsr), 'NEW CERTIFICATE REQUEST')).commonName, 'device-001')
  t.equal(parseCsr(createCsr({ commonName: 'Gerät-ß', ...ec })).commonName, 'Gerät-ß')
})

t.test('keys outside the policy are refused', async (t) => {
  const rsa1024 = generateKeyPairSync('rsa', { modulusLength: 1024 })
  rejects(t, createCsr({ commonName: 'weak', ...rsa1024 }), 'weak-key')
  rejects(t, createCsr({ commonName: 'ed', ...generateKeyPairSync('ed25519') }), 'unsupported-key')
  rejects(t, createCsr({ commonName: 'p384', ...generateKeyPairSync('ec', { namedCurve: 'secp384r1' }) }), 'unsupported-key')
  rejects(t, createCsr({ commonName: 'k1', ...generateKeyPairSync('ec', { namedCurve: 'secp256k1' }) }), 'unsupported-key')
})

t.test('tampering is detected', async (t) => {
  const der = derOf(ecCsr)
  const badSig = Buffer.from(der)
  badSig[badSig.length - 1]! ^= 0x01
  rejects(t, pemOf(badSig), 'bad-signature')

  const renamed = Buffer.from(der)
  const at = renamed.indexOf('device-001')
  renamed[at + 9] = '2'.charCodeAt(0)
  rejects(t, pemOf(renamed), 'bad-signature')

  // a valid request whose key is swapped for another: signed by the wrong key
  const other = generateKeyPair('ec')
  const at2 = der.indexOf(ec.publicKey.export({ type: 'spki', format: 'der' }))
  t.ok(at2 > 0, 'the request embeds the SubjectPublicKeyInfo')
  const swapped = Buffer.from(der)
  other.publicKey.export({ type: 'spki', format: 'der' }).copy(swapped, at2)
  rejects(t, pemOf(swapped), 'bad-signature')
})

t.test('garbage never escapes as anything but CsrError', async (t) => {
  rejects(t, '', 'not-pem')
  rejects(t, 'hello world', 'not-pem')
  rejects(t, ecCsr.slice(0, ecCsr.length / 2), 'not-pem')
  const body = ecCsr.split('\n').filter((l) => !l.startsWith('-----'))
  rejects(t, ['-----BEGIN CERTIFICATE REQUEST-----', ...body.slice(0, 2), '-----END CERTIFICATE REQUEST-----'].join('\n'), 'malformed')
  rejects(t, pemOf(randomBytes(300)), 'malformed')
  rejects(t, pemOf(Buffer.alloc(0)), 'not-pem')
  rejects(t, `${ecCsr}${'x'.repeat(MAX_CSR_BYTES)}`, 'too-large')
  rejects(t, ecCsr.replace('CERTIFICATE REQUEST', 'CERTIFICATE').replace('CERTIFICATE REQUEST', 'CERTIFICATE'), 'not-pem')
  rejects(t, 42 as unknown as string, 'not-pem')

  // every single-byte corruption of a valid request: refused cleanly, never a crash
  const der = derOf(ecCsr)
  let escaped = 0
  for (let i = 0; i < der.length; i++) {
    for (const mask of [0x01, 0x80, 0xff]) {
      const broken = Buffer.from(der)
      broken[i]! ^= mask
      try {
        parseCsr(pemOf(broken))
      } catch (err) {
        if (!(err instanceof CsrError)) escaped++
        continue
      }
      // only the CN content may change without breaking the structure: the signature must catch it
      escaped++
    }
  }
  t.equal(escaped, 0, 'all corruptions refused with CsrError')
})

t.test('interop: openssl-made CSRs are accepted, ours pass openssl req -verify', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pki-csr-'))
  const make = (name: string, ...newkey: string[]): string => {
    const out = join(dir, `${name}.csr`)
    const r = openssl(['req', '-new', ...newkey, '-nodes', '-keyout', join(dir, `${name}.key`), '-subj', `/CN=${name}`, '-out', out])
    t.ok(r.ok, r.output)
    return readFileSync(out, 'utf8')
  }
  const ecParsed = parseCsr(make('x', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1'))
  t.equal(ecParsed.keyType, 'ec-p256')
  t.equal(ecParsed.commonName, 'x')
  t.equal(parseCsr(make('r', '-newkey', 'rsa:2048')).keyBits, 2048)
  rejects(t, make('p', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:secp384r1'), 'unsupported-key')

  for (const csr of [ecCsr, createCsr({ commonName: 'rsa', ...generateKeyPair('rsa') })]) {
    const r = openssl(['req', '-noout', '-verify'], csr)
    t.ok(r.ok, r.output)
    t.match(r.output, /verify OK/)
  }
})
