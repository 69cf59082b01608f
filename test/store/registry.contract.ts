/**
 * What every Registry implementation must do; registry.test.ts runs it against
 * each one so memory and Redis cannot drift apart.
 */
import { createHash } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import type { Test } from 'tap'
import type { CertificateRecord, DeviceRecord, OwnershipTokenRecord, Page, Registry, RevocationListener } from '../../broker/store/registry.js'

export type MakeRegistry = (opts: { now: () => number }) => Promise<{ registry: Registry, cleanup: () => Promise<void> }>
export type RevocationEvent = Parameters<RevocationListener>[0]

const T0 = 1_700_000_000_000

export const certId = (name: string): string => createHash('sha256').update(name).digest('hex')

export const device = (deviceId: string, over: Partial<DeviceRecord> = {}): DeviceRecord => ({
  deviceId, status: 'active', template: 'thermostat', createdAt: T0, updatedAt: T0, attributes: { model: 'x1', region: 'eu' }, ...over
})

export const certificate = (name: string, deviceId: string | null, over: Partial<CertificateRecord> = {}): CertificateRecord => ({
  certificateId: certId(name), deviceId, status: 'active', serialNumber: '0a1b2c', notAfter: T0 + 86_400_000, createdAt: T0, updatedAt: T0, ...over
})

export const tokenRecord = (clientId: string): OwnershipTokenRecord => ({
  certificateId: certId(`cert-${clientId}`), clientId, claimFingerprint: certId(`claim-${clientId}`), expiresAt: T0 + 60_000
})

/**
 * a pending certificate's TTL in the expiry tests: long enough that the reads made
 * while it lives finish first on a loaded machine (Redis expires on its own clock),
 * and expiry is then waited for, never assumed at a fixed instant
 */
const SHORT_TTL_MS = 1000
const EXPIRY_WAIT_MS = 5000

/** polls until `check` holds or `ms` pass; returns whether it held */
export async function eventually (check: () => boolean | Promise<boolean>, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms
  for (;;) {
    if (await check()) return true
    if (Date.now() >= deadline) return false
    await sleep(20)
  }
}

export function collectRevocations (registry: Registry): RevocationEvent[] {
  const events: RevocationEvent[] = []
  registry.onRevocation((event) => events.push(event))
  return events
}

const ids = (records: ReadonlyArray<{ certificateId: string } | { deviceId: string }>): string[] =>
  records.map((r) => 'certificateId' in r ? r.certificateId : r.deviceId).sort()

/** every page from the first, with the cursor each one handed out; fails on a runaway loop */
export async function allPages<T> (fetch: (cursor: string | undefined) => Promise<Page<T>>, maxPages = 1000): Promise<{ items: T[], pages: number, sizes: number[] }> {
  const items: T[] = []
  const sizes: number[] = []
  let cursor: string | undefined
  for (;;) {
    const page = await fetch(cursor)
    items.push(...page.items)
    sizes.push(page.items.length)
    if (page.nextCursor === null) return { items, pages: sizes.length, sizes }
    if (sizes.length >= maxPages) throw new Error('paging did not end')
    cursor = page.nextCursor
  }
}

const inOrder = (records: ReadonlyArray<{ certificateId: string } | { deviceId: string }>): string[] =>
  records.map((r) => 'certificateId' in r ? r.certificateId : r.deviceId)

export function registryContract (t: Test, name: string, make: MakeRegistry): void {
  async function setup (t: Test): Promise<{ registry: Registry, advance: (ms: number) => number }> {
    let clock = T0
    const { registry, cleanup } = await make({ now: () => clock })
    t.teardown(cleanup)
    return { registry, advance: (ms) => (clock += ms) }
  }

  /** d1 owns c1, c2; d2 owns c3 and c5 (c5 was d1's first, then rebound); c4 is unbound */
  async function fleet (registry: Registry): Promise<void> {
    await registry.putDevice(device('d1'))
    await registry.putDevice(device('d2'))
    await registry.putCertificate(certificate('c1', 'd1'))
    await registry.putCertificate(certificate('c2', 'd1'))
    await registry.putCertificate(certificate('c3', 'd2'))
    await registry.putCertificate(certificate('c4', null, { status: 'pending' }))
    await registry.putCertificate(certificate('c5', 'd1'))
    await registry.putCertificate(certificate('c5', 'd2'))
  }

  t.test(`${name}: device round trip`, async (t) => {
    const { registry } = await setup(t)
    t.equal(await registry.getDevice('d1'), null, 'absent before put')
    await registry.putDevice(device('d1'))
    t.same(await registry.getDevice('d1'), device('d1'))
    const replaced = device('d1', { status: 'revoked', template: 'other', updatedAt: T0 + 5, attributes: { model: 'x2' } })
    await registry.putDevice(replaced)
    t.strictSame(await registry.getDevice('d1'), replaced, 'put replaces the whole record, attributes included')
  })

  t.test(`${name}: certificate round trip`, async (t) => {
    const { registry } = await setup(t)
    t.equal(await registry.getCertificate(certId('c1')), null, 'absent before put')
    const bound = certificate('c1', 'd1')
    const unbound = certificate('c2', null, { status: 'pending' })
    await registry.putCertificate(bound)
    await registry.putCertificate(unbound)
    t.strictSame(await registry.getCertificate(bound.certificateId), bound)
    t.strictSame(await registry.getCertificate(unbound.certificateId), unbound, 'a null deviceId stays null')
    const rebound = certificate('c2', 'd9', { status: 'active', updatedAt: T0 + 1 })
    await registry.putCertificate(rebound)
    t.strictSame(await registry.getCertificate(unbound.certificateId), rebound, 'put replaces the record')
  })

  t.test(`${name}: listDevices`, async (t) => {
    const { registry } = await setup(t)
    t.same(await registry.listDevices(), [])
    await registry.putDevice(device('d1'))
    await registry.putDevice(device('d2'))
    await registry.createDeviceIfAbsent(device('d3'))
    await registry.putDevice(device('d1', { template: 'again' }))
    const listed = await registry.listDevices()
    t.same(ids(listed), ['d1', 'd2', 'd3'], 'each device once')
    t.equal(listed.find((d) => d.deviceId === 'd1')?.template, 'again')
  })

  t.test(`${name}: createDeviceIfAbsent creates once`, async (t) => {
    const { registry } = await setup(t)
    t.equal(await registry.createDeviceIfAbsent(device('d1', { template: 'first' })), true)
    t.equal(await registry.createDeviceIfAbsent(device('d1', { template: 'second' })), false)
    t.equal((await registry.getDevice('d1'))?.template, 'first', 'the losing call changed nothing')
  })

  t.test(`${name}: createDeviceIfAbsent has exactly one winner under concurrency`, async (t) => {
    const { registry } = await setup(t)
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) =>
      registry.createDeviceIfAbsent(device('d1', { template: `t${i}` }))))
    t.equal(results.filter(Boolean).length, 1, 'one true, nineteen false')
    t.equal((await registry.getDevice('d1'))?.template, `t${results.indexOf(true)}`, 'the stored record is the winner\'s')
    t.same(ids(await registry.listDevices()), ['d1'])
  })

  t.test(`${name}: certificatesOfDevice`, async (t) => {
    const { registry } = await setup(t)
    await fleet(registry)
    t.same(ids(await registry.certificatesOfDevice('d1')), [certId('c1'), certId('c2')].sort(), 'a rebound certificate leaves its old device')
    t.same(ids(await registry.certificatesOfDevice('d2')), [certId('c3'), certId('c5')].sort())
    t.same(await registry.certificatesOfDevice('nobody'), [])
  })

  t.test(`${name}: a token works once`, async (t) => {
    const { registry } = await setup(t)
    const record = { ...tokenRecord('claim-1'), publicKeyPem: '-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----\n' }
    await registry.putToken('tok-1', record, 60_000)
    t.equal(await registry.takeToken('tok-2'), null, 'unknown token')
    t.strictSame(await registry.takeToken('tok-1'), record, 'optional fields survive')
    t.equal(await registry.takeToken('tok-1'), null, 'second take')
  })

  t.test(`${name}: a token expires by the injected clock`, async (t) => {
    const { registry, advance } = await setup(t)
    await registry.putToken('early', tokenRecord('a'), 60_000)
    await registry.putToken('late', tokenRecord('b'), 60_000)
    advance(59_999)
    t.strictSame(await registry.takeToken('early'), tokenRecord('a'), 'valid just before the ttl')
    advance(2)
    t.equal(await registry.takeToken('late'), null, 'gone just after the ttl')
  })

  t.test(`${name}: revokeDevice`, async (t) => {
    const { registry, advance } = await setup(t)
    const events = collectRevocations(registry)
    await fleet(registry)
    const at = advance(1000)
    t.equal(await registry.revokeDevice('d1'), true)
    t.strictSame(await registry.getDevice('d1'), device('d1', { status: 'revoked', updatedAt: at }))
    for (const c of ['c1', 'c2']) {
      t.strictSame(await registry.getCertificate(certId(c)), certificate(c, 'd1', { status: 'revoked', updatedAt: at }), `${c} revoked`)
    }
    t.equal((await registry.getCertificate(certId('c5')))?.status, 'active', 'a certificate rebound elsewhere is untouched')
    t.equal((await registry.getCertificate(certId('c3')))?.status, 'active', 'another device\'s certificate is untouched')
    t.equal((await registry.getDevice('d2'))?.status, 'active')
    t.ok(await eventually(() => events.length > 0, 1000), 'listener fired')
    t.strictSame(events[0], { deviceId: 'd1', certificateId: null })
    t.equal(await registry.revokeDevice('nobody'), false, 'unknown device')
    await sleep(200)
    t.equal(events.length, 1, 'exactly one event: no echo, none for the unknown device')
  })

  t.test(`${name}: revokeCertificate`, async (t) => {
    const { registry, advance } = await setup(t)
    const events = collectRevocations(registry)
    await fleet(registry)
    const at = advance(1000)
    t.equal(await registry.revokeCertificate(certId('c1')), true)
    t.strictSame(await registry.getCertificate(certId('c1')), certificate('c1', 'd1', { status: 'revoked', updatedAt: at }))
    t.equal((await registry.getCertificate(certId('c2')))?.status, 'active', 'the sibling certificate is untouched')
    t.equal((await registry.getDevice('d1'))?.status, 'active', 'the device is untouched')
    t.ok(await eventually(() => events.length > 0, 1000), 'listener fired')
    t.strictSame(events[0], { deviceId: null, certificateId: certId('c1') }, 'deviceId null: not a device revocation')
    t.equal(await registry.revokeCertificate(certId('nothing')), false, 'unknown certificate')
    await sleep(200)
    t.equal(events.length, 1, 'exactly one event')
  })

  // --- revocation list (CONTRACT §2): every certificate, by id, by issuer+serial, by CA ---
  const issuerA = certId('issuer-a')
  const issuerB = certId('issuer-b')
  const query = (name: string, issuer = issuerA, serialNumber = '0a1b2c') => ({ certificateId: certId(name), issuerFingerprint: issuer, serialNumber })

  t.test(`${name}: revoke by certificate id, also an unregistered one`, async (t) => {
    const { registry, advance } = await setup(t)
    const events = collectRevocations(registry)
    await fleet(registry)
    t.equal(await registry.isRevoked(query('svc-1')), false, 'not revoked before')
    const at = advance(1000)
    t.equal(await registry.revoke({ certificateId: certId('svc-1').toUpperCase() }), true, 'a service certificate the registry never saw')
    t.equal(await registry.isRevoked(query('svc-1')), true, 'listed (id normalised to lowercase)')
    t.equal(await registry.revoke({ certificateId: certId('svc-1') }), false, 'twice: already listed')
    t.equal(await registry.revoke({ certificateId: certId('c1') }), true)
    t.strictSame(await registry.getCertificate(certId('c1')), certificate('c1', 'd1', { status: 'revoked', updatedAt: at }), 'a registered certificate is marked too')
    t.equal(await registry.isRevoked(query('c2')), false, 'the sibling is not')
    t.ok(await eventually(() => events.length >= 3, 1000), 'a notice per call')
    t.strictSame(events[0], { deviceId: null, certificateId: certId('svc-1') })
  })

  t.test(`${name}: revoke by issuer and serial, and a whole CA`, async (t) => {
    const { registry } = await setup(t)
    const events = collectRevocations(registry)
    t.equal(await registry.revoke({ issuerFingerprint: issuerA.toUpperCase().replace(/(..)(?!$)/g, '$1:'), serialNumber: '00:0A:1B:2C' }), true)
    t.equal(await registry.isRevoked(query('any-1', issuerA, '0a1b2c')), true, 'any certificate with that issuer and serial (forms normalised)')
    t.equal(await registry.isRevoked(query('any-1', issuerB, '0a1b2c')), false, 'same serial, other issuer')
    t.equal(await registry.isRevoked(query('any-1', issuerA, '0a1b2d')), false, 'same issuer, other serial')
    t.equal(await registry.revoke({ caFingerprint: issuerB }), true)
    t.equal(await registry.isRevoked(query('any-2', issuerB, 'ff')), true, 'every certificate of a revoked CA')
    t.strictSame(await registry.areRevoked([query('any-1', issuerA, '0a1b2c'), query('x', issuerA, '01'), query('y', issuerB, '02')]), [true, false, true], 'batch')
    t.strictSame(await registry.areRevoked([]), [])
    const list = await registry.listRevocations()
    t.strictSame(list.map((e) => e.kind).sort(), ['ca', 'serial'])
    t.match(list.find((e) => e.kind === 'serial'), { issuerFingerprint: issuerA, serialNumber: '0a1b2c' })
    t.ok(await eventually(() => events.length === 2, 1000), 'notices')
    t.strictSame(events[0], { deviceId: null, certificateId: null, issuerFingerprint: issuerA, serialNumber: '0a1b2c' })
    t.strictSame(events[1], { deviceId: null, certificateId: null, caFingerprint: issuerB })
  })

  t.test(`${name}: a rotation presenting a certificate listed by issuer and serial, or by CA, is refused`, async (t) => {
    // such a revocation leaves the certificate's record 'active': only the list says it is revoked,
    // and a process that missed the notice must not hand out a fresh certificate for it
    const { registry } = await setup(t)
    await registry.putDevice(device('rot-1'))
    const rotation = (old: string, fresh: string): Parameters<Registry['rotateCertificate']>[0] => ({
      ...certificate(fresh, 'rot-1', { serialNumber: '7f' }), deviceId: 'rot-1', replaces: certId(old), graceUntil: T0 + 60_000
    })
    for (const [old, listed] of [['by-serial', { issuerFingerprint: issuerA, serialNumber: '0a1b2c' }], ['by-ca', { caFingerprint: issuerB }]] as const) {
      await registry.putCertificate(certificate(old, 'rot-1'))
      const presented = query(old, old === 'by-ca' ? issuerB : issuerA, '0a1b2c')
      t.equal(await registry.revoke(listed), true, `${old}: listed`)
      t.equal((await registry.getCertificate(certId(old)))?.status, 'active', `${old}: its record still says active`)
      t.strictSame(await registry.rotateCertificate(rotation(old, `${old}-new`), presented), { result: 'refused' }, `${old}: rotation refused`)
      t.equal(await registry.getCertificate(certId(`${old}-new`)), null, `${old}: no new certificate stored`)
    }
    // the control: a certificate not listed rotates
    await registry.putCertificate(certificate('clean', 'rot-1', { serialNumber: '0c' }))
    t.match(await registry.rotateCertificate(rotation('clean', 'clean-new'), query('clean', issuerA, '0c')), { result: 'rotated' }, 'an unlisted certificate rotates')
  })

  t.test(`${name}: settling a rotation retires what came before it, never what came after, and a revoked rotation retires nothing`, async (t) => {
    const { registry } = await setup(t)
    const rotated = (fresh: string, old: string, deviceId: string, at: number): Parameters<Registry['rotateCertificate']>[0] => ({
      ...certificate(fresh, deviceId, { serialNumber: '7f', createdAt: at, updatedAt: at }), deviceId, replaces: certId(old), graceUntil: at + 60_000
    })
    // A → B, then B → C before B's settling ran (the first-use settle failed, or was held): a late settle of B
    await registry.putDevice(device('late-1'))
    await registry.putCertificate(certificate('late-A', 'late-1'))
    await registry.putCertificate(certificate('late-P', 'late-1'))
    t.match(await registry.rotateCertificate(rotated('late-B', 'late-A', 'late-1', T0 + 1000), query('late-A')), { result: 'rotated' })
    t.match(await registry.rotateCertificate(rotated('late-C', 'late-B', 'late-1', T0 + 2000), query('late-B')), { result: 'rotated' })
    t.same((await registry.settleRotation(certId('late-B'))).sort(), [certId('late-A'), certId('late-P')].sort(), 'B retires A and the other certificate from before it')
    t.equal((await registry.getCertificate(certId('late-C')))?.status, 'active', 'C, issued after B, stays: it is the device\'s newest')
    t.same(await registry.settleRotation(certId('late-B')), [], 'settled once')

    // A → N, N revoked, A → F, F settled: N's settling at its grace end retires nothing
    await registry.putDevice(device('rev-1'))
    await registry.putCertificate(certificate('rev-A', 'rev-1'))
    t.match(await registry.rotateCertificate(rotated('rev-N', 'rev-A', 'rev-1', T0 + 1000), query('rev-A')), { result: 'rotated' })
    t.equal(await registry.revokeCertificate(certId('rev-N')), true)
    t.match(await registry.rotateCertificate(rotated('rev-F', 'rev-A', 'rev-1', T0 + 2000), query('rev-A')), { result: 'rotated' })
    t.same(await registry.settleRotation(certId('rev-F')), [certId('rev-A')], 'F retires A')
    t.same(await registry.settleRotation(certId('rev-N')), [], 'the revoked N retires nothing')
    t.equal((await registry.getCertificate(certId('rev-F')))?.status, 'active', 'F, the device\'s only certificate, stays')
  })

  t.test(`${name}: a revoked device's certificates fail re-validation; revokeCertificate lists`, async (t) => {
    const { registry } = await setup(t)
    await fleet(registry)
    await registry.revokeDevice('d1')
    await registry.revokeCertificate(certId('c3'))
    t.strictSame(await registry.areRevoked(['c1', 'c2', 'c3', 'c5'].map((c) => query(c))), [true, true, true, false], 're-validation sees both')
    t.equal(await registry.isRevoked(query('c1')), false, 'the connect check leaves a revoked device to identity (its own reason)')
    t.equal(await registry.isRevoked(query('c3')), true)
    t.strictSame((await registry.listRevocations()).map((e) => e.kind === 'certificate' ? e.certificateId : ''), [certId('c3')])
  })

  t.test(`${name}: a throwing revocation listener does not crash the process nor starve the others`, async (t) => {
    const { registry } = await setup(t)
    registry.onRevocation(() => { throw new Error('listener bug') })
    const events = collectRevocations(registry)
    await registry.revoke({ caFingerprint: issuerA })
    t.ok(await eventually(() => events.length === 1, 1000), 'the next listener still heard it')
  })
  // --- end revocation list ---

  // --- session owners ---
  t.test(`${name}: a session owner is recorded once, for one identity`, async (t) => {
    const { registry } = await setup(t)
    t.equal(await registry.sessionOwner('backend-1'), null, 'nobody before the first claim')
    t.equal(await registry.claimSessionOwner('backend-1', 'service:billing'), true)
    t.equal(await registry.sessionOwner('backend-1'), 'service:billing')
    t.equal(await registry.claimSessionOwner('backend-1', 'service:billing'), true, 'the same identity again')
    t.equal(await registry.claimSessionOwner('backend-1', 'claim:abc'), false, 'another identity is refused')
    t.equal(await registry.sessionOwner('backend-1'), 'service:billing', 'the refused claim changed nothing')
  })

  t.test(`${name}: one owner wins when identities race`, async (t) => {
    const { registry } = await setup(t)
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => registry.claimSessionOwner('raced', `service:s${i}`)))
    t.equal(results.filter(Boolean).length, 1, 'one true, nineteen false')
    t.equal(await registry.sessionOwner('raced'), `service:s${results.indexOf(true)}`, 'the record is the winner\'s')
  })

  t.test(`${name}: a clean session's record expires, a kept one is never shortened`, async (t) => {
    const { registry, advance } = await setup(t)
    t.equal(await registry.claimSessionOwner('short', 'service:a', 50), true)
    t.equal(await registry.claimSessionOwner('kept', 'service:b'), true)
    t.equal(await registry.claimSessionOwner('kept', 'service:b', 50), true, 'the owner reconnecting clean')
    // memory follows the injected clock, Redis its own: advance both
    advance(200)
    await sleep(200)
    t.equal(await registry.sessionOwner('short'), null, 'expired')
    t.equal(await registry.claimSessionOwner('short', 'claim:x', 50), true, 'free for another identity once expired')
    t.equal(await registry.sessionOwner('kept'), 'service:b', 'kept: the clean reconnect did not shorten it')
  })
  t.test(`${name}: a claim's record yields to an identity, never the other way round`, async (t) => {
    const { registry } = await setup(t)
    t.equal(await registry.claimSessionOwner('backend-2', 'claim:abc@10.0.0.1', 1000), true, 'the public claim certificate records an id first')
    t.equal(await registry.claimSessionOwner('backend-2', 'claim:abc@10.0.0.2', 1000), false, 'the same certificate from another address is another owner')
    t.equal(await registry.claimSessionOwner('backend-2', 'service:billing'), true, 'a service takes its client id back from a claim')
    t.equal(await registry.sessionOwner('backend-2'), 'service:billing')
    t.equal(await registry.claimSessionOwner('backend-2', 'claim:abc@10.0.0.1', 1000), false, 'and the claim cannot take it again')
  })
  // --- end session owners ---

  t.test(`${name}: certificateRecords reads the list, the certificate and its device at once, as the three calls would`, async (t) => {
    const { registry, advance } = await setup(t)
    await fleet(registry)
    const records = async (q: ReturnType<typeof query>) => {
      const r = await registry.certificateRecords(q)
      // the same answers as the separate calls it replaces on a connect
      const cert = await registry.getCertificate(q.certificateId)
      t.equal(r.revoked, await registry.isRevoked(q), `${q.certificateId.slice(0, 6)}: revoked as isRevoked`)
      t.strictSame(r.certificate, cert, 'certificate as getCertificate')
      t.strictSame(r.device, cert?.deviceId ? await registry.getDevice(cert.deviceId) : null, 'device as getDevice')
      return r
    }
    t.strictSame(await records(query('c1')), { revoked: false, certificate: certificate('c1', 'd1'), device: device('d1') }, 'a bound certificate and its device')
    t.strictSame(await records(query('c5')), { revoked: false, certificate: certificate('c5', 'd2'), device: device('d2') }, 'the device it is bound to now')
    t.strictSame(await records(query('c4')), { revoked: false, certificate: certificate('c4', null, { status: 'pending' }), device: null }, 'unbound: no device')
    t.strictSame(await records(query('nobody')), { revoked: false, certificate: null, device: null }, 'unknown')
    await registry.putCertificate(certificate('c6', 'gone'))
    t.strictSame((await records(query('c6'))).device, null, 'bound to a device that does not exist')
    await registry.revoke({ certificateId: certId('svc-9') })
    t.equal((await records(query('svc-9'))).revoked, true, 'listed by id, never registered')
    await registry.revoke({ issuerFingerprint: issuerA, serialNumber: '0a1b2c' })
    t.equal((await records(query('c2'))).revoked, true, 'listed by issuer and serial')
    t.equal((await records(query('c2', issuerB))).revoked, false, 'another issuer')
    await registry.revoke({ caFingerprint: issuerB })
    t.equal((await records(query('c3', issuerB, 'ff'))).revoked, true, 'listed by CA')
    const pending = certificate('p9', null, { status: 'pending' })
    await registry.putPendingCertificate(pending, 'tok-p9', tokenRecord('a'), SHORT_TTL_MS)
    t.strictSame((await records(query('p9'))).certificate, pending, 'a pending certificate while its token lives')
    advance(SHORT_TTL_MS + 100)
    t.ok(await eventually(async () => (await records(query('p9'))).certificate === null, EXPIRY_WAIT_MS), 'and not after')
  })

  // --- registration (CONTRACT §3.3): atomic, token used up only by a registration ---
  const withKey = (clientId: string): OwnershipTokenRecord => ({ ...tokenRecord(clientId), publicKeyPem: 'spki' })
  const registration = (token: string | null, deviceId: string, certs: CertificateRecord[], replace = false) => ({
    token, device: device(deviceId), replace, certificates: certs
  })

  t.test(`${name}: a pending certificate expires with its token`, async (t) => {
    const { registry, advance } = await setup(t)
    const pending = certificate('p1', null, { status: 'pending' })
    await registry.putPendingCertificate(pending, 'tok-p1', withKey('a'), SHORT_TTL_MS)
    t.strictSame(await registry.getCertificate(pending.certificateId), pending, 'readable while its token lives')
    t.same(await registry.peekToken('tok-p1'), withKey('a'), 'peekToken reads the record')
    t.same(await registry.peekToken('tok-p1'), withKey('a'), '...without using it up')
    // memory follows the injected clock, Redis its own (PEXPIRE): advance both
    advance(SHORT_TTL_MS + 100)
    t.ok(await eventually(async () => await registry.getCertificate(pending.certificateId) === null, EXPIRY_WAIT_MS), 'the never registered certificate is gone')
    t.equal(await registry.peekToken('tok-p1'), null, 'and so is its token')
  })

  t.test(`${name}: registerDevice binds a pending certificate for good and uses the token up`, async (t) => {
    const { registry, advance } = await setup(t)
    const pending = certificate('p2', null, { status: 'pending' })
    await registry.putPendingCertificate(pending, 'tok-p2', withKey('b'), SHORT_TTL_MS)
    const bound = [certificate('final-2', 'd2'), certificate('p2', 'd2')]
    t.same(await registry.registerDevice(registration('tok-p2', 'd2', bound)), { result: 'registered', revoked: [] })
    t.same(await registry.getDevice('d2'), device('d2'))
    t.same(ids(await registry.certificatesOfDevice('d2')), ids(bound), 'both certificates bound')
    t.equal(await registry.peekToken('tok-p2'), null, 'the token is used up')
    advance(SHORT_TTL_MS + 100)
    // past the pending TTL on Redis's own clock too
    await sleep(SHORT_TTL_MS + 100)
    t.strictSame(await registry.getCertificate(pending.certificateId), bound[1], 'a bound certificate no longer expires')
    t.same(await registry.registerDevice(registration('tok-p2', 'd2b', [certificate('other', 'd2b')])), { result: 'token-used' }, 'a token registers once')
    t.equal(await registry.getDevice('d2b'), null, 'nothing written for a used token')
    t.equal(await registry.getCertificate(certId('other')), null)
  })

  t.test(`${name}: a device id recorded as another identity's client id refuses the registration and keeps the token`, async (t) => {
    const { registry } = await setup(t)
    t.equal(await registry.claimSessionOwner('taken-1', 'service:backend'), true)
    await registry.putPendingCertificate(certificate('pt1', null, { status: 'pending' }), 'tok-t1', withKey('t1'), SHORT_TTL_MS)
    t.same(await registry.registerDevice(registration('tok-t1', 'taken-1', [certificate('pt1', 'taken-1')])), { result: 'client-id-in-use' }, 'a service\'s client id')
    t.equal(await registry.getDevice('taken-1'), null, 'no device written')
    t.ok(await registry.peekToken('tok-t1'), 'the token is kept')
    // a claim's record yields, as it does to any identity; so does the device's own
    t.equal(await registry.claimSessionOwner('claimed-1', 'claim:abc@127.0.0.1', 60_000), true)
    t.match(await registry.registerDevice(registration('tok-t1', 'claimed-1', [certificate('pt1', 'claimed-1')])), { result: 'registered' }, 'a claim\'s record does not block')
    t.equal(await registry.claimSessionOwner('own-1', 'device:own-1'), true)
    t.match(await registry.registerDevice(registration(null, 'own-1', [certificate('own-c', 'own-1')])), { result: 'registered' }, 'the device\'s own record does not block')
  })

  t.test(`${name}: an existing device refuses the registration and keeps the token`, async (t) => {
    const { registry } = await setup(t)
    await registry.putDevice(device('d3', { template: 'old' }))
    await registry.putToken('tok-3', withKey('c'), 60_000)
    t.same(await registry.registerDevice(registration('tok-3', 'd3', [certificate('c3', 'd3')])), { result: 'device-exists' })
    t.same(await registry.getDevice('d3'), device('d3', { template: 'old' }), 'the device is untouched')
    t.equal(await registry.getCertificate(certId('c3')), null, 'no certificate bound')
    t.same(await registry.peekToken('tok-3'), withKey('c'), 'the token still works')
    t.same(await registry.registerDevice(registration('tok-3', 'd3-new', [certificate('c3', 'd3-new')])), { result: 'registered', revoked: [] }, 'for another device id')
  })

  t.test(`${name}: replace revokes the old certificates in the same step`, async (t) => {
    const { registry } = await setup(t)
    await registry.putDevice(device('d4'))
    await registry.putCertificate(certificate('old-4', 'd4'))
    await registry.putCertificate(certificate('gone-4', 'd4', { status: 'revoked' }))
    await registry.putToken('tok-4', withKey('d'), 60_000)
    t.same(await registry.registerDevice(registration('tok-4', 'd4', [certificate('new-4', 'd4')], true)), { result: 'registered', revoked: [certId('old-4')] })
    t.equal((await registry.getCertificate(certId('old-4')))?.status, 'revoked')
    t.equal((await registry.getCertificate(certId('new-4')))?.status, 'active')
  })

  t.test(`${name}: replace never crosses templates (another fleet's device is not taken over)`, async (t) => {
    const { registry } = await setup(t)
    await registry.putDevice(device('d6', { template: 'fleet-a' }))
    await registry.putCertificate(certificate('old-6', 'd6'))
    await registry.putToken('tok-6', withKey('f'), 60_000)
    const foreign = { token: 'tok-6', device: device('d6', { template: 'fleet-b' }), replace: true, certificates: [certificate('new-6', 'd6')] }
    t.same(await registry.registerDevice(foreign), { result: 'device-exists' }, 'refused')
    t.equal((await registry.getCertificate(certId('old-6')))?.status, 'active', 'the existing device keeps its certificate')
    t.equal((await registry.getDevice('d6'))?.template, 'fleet-a', 'and its record')
    t.same(await registry.peekToken('tok-6'), withKey('f'), 'the token is not used up')
  })

  t.test(`${name}: one registration wins a token raced by two`, async (t) => {
    const { registry } = await setup(t)
    await registry.putToken('tok-5', withKey('e'), 60_000)
    const outcomes = await Promise.all(['d5a', 'd5b', 'd5c'].map((id) => registry.registerDevice(registration('tok-5', id, [certificate(`c-${id}`, id)]))))
    t.equal(outcomes.filter((o) => o.result === 'registered').length, 1, 'exactly one registered')
    t.equal((await Promise.all(['d5a', 'd5b', 'd5c'].map((id) => registry.getDevice(id)))).filter(Boolean).length, 1, 'one device exists')
  })

  t.test(`${name}: a manufacturer registration needs no token`, async (t) => {
    const { registry } = await setup(t)
    t.same(await registry.registerDevice(registration(null, 'd6', [certificate('c6', 'd6')])), { result: 'registered', revoked: [] })
    t.same(await registry.registerDevice(registration(null, 'd6', [certificate('c6b', 'd6')])), { result: 'device-exists' })
  })
  // --- end registration ---

  // --- paginated listing (CONTRACT §8) ---
  /** 23 devices: every third quarantined, every fourth revoked, templates alternate */
  async function manyDevices (registry: Registry): Promise<DeviceRecord[]> {
    const all: DeviceRecord[] = []
    for (let i = 0; i < 23; i++) {
      const d = device(`dev-${String(i).padStart(2, '0')}`, {
        status: i % 4 === 0 ? 'revoked' : i % 3 === 0 ? 'quarantined' : 'active',
        template: i % 2 === 0 ? 'thermostat' : 'meter'
      })
      all.push(d)
      // both write paths of a device
      if (i % 5 === 0) await registry.createDeviceIfAbsent(d)
      else await registry.putDevice(d)
    }
    return all
  }

  const idsOf = (devices: DeviceRecord[], keep: (d: DeviceRecord) => boolean = () => true): string[] =>
    devices.filter(keep).map((d) => d.deviceId).sort()

  t.test(`${name}: listDevicesPage pages every device exactly once, in deviceId order`, async (t) => {
    const { registry } = await setup(t)
    t.strictSame(await registry.listDevicesPage({ limit: 10 }), { items: [], nextCursor: null }, 'empty registry')
    const all = await manyDevices(registry)
    const { items, pages, sizes } = await allPages((cursor) => registry.listDevicesPage({ limit: 5, cursor }))
    t.strictSame(inOrder(items), idsOf(all), 'all 23, each once, ordered')
    t.equal(pages, 5)
    t.strictSame(sizes, [5, 5, 5, 5, 3], 'full pages, then the rest')
    t.strictSame(items.find((d) => d.deviceId === 'dev-03'), all[3], 'whole records')
    const exact = await registry.listDevicesPage({ limit: 23 })
    t.equal(exact.items.length, 23)
    t.equal(exact.nextCursor, null, 'no cursor when the page holds the last device')
  })

  t.test(`${name}: listDevicesPage filters by status, template, and both`, async (t) => {
    const { registry } = await setup(t)
    const all = await manyDevices(registry)
    const cases: Array<[{ status?: 'active' | 'quarantined' | 'revoked', template?: string }, (d: DeviceRecord) => boolean]> = [
      [{ status: 'quarantined' }, (d) => d.status === 'quarantined'],
      [{ status: 'revoked' }, (d) => d.status === 'revoked'],
      [{ template: 'meter' }, (d) => d.template === 'meter'],
      [{ status: 'active', template: 'thermostat' }, (d) => d.status === 'active' && d.template === 'thermostat'],
      [{ template: 'nobody-uses-this' }, () => false]
    ]
    for (const [filter, keep] of cases) {
      const { items } = await allPages((cursor) => registry.listDevicesPage({ ...filter, limit: 3, cursor }))
      t.strictSame(inOrder(items), idsOf(all, keep), JSON.stringify(filter))
    }
  })

  t.test(`${name}: listDevicesPage follows every write path (indexes never go stale)`, async (t) => {
    const { registry } = await setup(t)
    const statusOf = async (status: 'active' | 'quarantined' | 'revoked', template?: string): Promise<string[]> =>
      inOrder((await allPages((cursor) => registry.listDevicesPage({ status, template, limit: 2, cursor }))).items)
    await registry.putDevice(device('w1'))
    await registry.putDevice(device('w2'))
    await registry.createDeviceIfAbsent(device('w3'))
    t.strictSame(await statusOf('active'), ['w1', 'w2', 'w3'])
    await registry.putDevice(device('w1', { template: 'other' }))
    t.strictSame(await statusOf('active', 'thermostat'), ['w2', 'w3'], 'a replaced record leaves its old template')
    t.strictSame(await statusOf('active', 'other'), ['w1'])
    await registry.revokeDevice('w2')
    t.strictSame(await statusOf('revoked'), ['w2'], 'revokeDevice')
    await registry.setDeviceStatus('w3', 'quarantined')
    t.strictSame(await statusOf('quarantined'), ['w3'], 'setDeviceStatus')
    t.strictSame(await statusOf('active'), ['w1'])
    await registry.putToken('tok-w', withKey('w'), 60_000)
    // replace stays within the device's template: the replacement's status is what moves
    await registry.registerDevice({ token: 'tok-w', device: device('w3', { attributes: { model: 'fresh' } }), replace: true, certificates: [certificate('cw3', 'w3')] })
    t.strictSame(await statusOf('active', 'thermostat'), ['w3'], 'registerDevice (replace)')
    t.strictSame(await statusOf('quarantined'), [], 'the replaced record left its status')
    await registry.registerDevice({ token: null, device: device('w4'), replace: false, certificates: [] })
    t.strictSame(await statusOf('active'), ['w1', 'w3', 'w4'], 'registerDevice (new)')
    t.strictSame(inOrder((await registry.listDevicesPage({ limit: 100 })).items), ['w1', 'w2', 'w3', 'w4'])
  })

  t.test(`${name}: a cursor stays valid while devices come and go`, async (t) => {
    const { registry } = await setup(t)
    await manyDevices(registry)
    const first = await registry.listDevicesPage({ limit: 5 })
    t.equal(inOrder(first.items).at(-1), 'dev-04')
    await registry.putDevice(device('dev-00a')) // before the cursor: not on the next pages
    await registry.putDevice(device('dev-04a')) // just after it: on the next page
    const next = await registry.listDevicesPage({ limit: 5, cursor: first.nextCursor ?? undefined })
    t.strictSame(inOrder(next.items), ['dev-04a', 'dev-05', 'dev-06', 'dev-07', 'dev-08'])
  })

  t.test(`${name}: a bad cursor or limit is refused`, async (t) => {
    const { registry } = await setup(t)
    await manyDevices(registry)
    await fleet(registry)
    const page = await registry.listDevicesPage({ limit: 2 })
    const certPage = await registry.listCertificatesPage({ limit: 1 })
    const expiryPage = await registry.listCertificatesPage({ limit: 1, expiringBefore: T0 * 2 })
    t.ok(page.nextCursor && certPage.nextCursor && expiryPage.nextCursor, 'cursors handed out')
    const invalid = { code: 'InvalidCursor' }
    for (const cursor of ['not a cursor!', '', 'ZGV2LTAx=', page.nextCursor! + '$', Buffer.from('x').toString('base64url'), certPage.nextCursor!]) {
      await t.rejects(registry.listDevicesPage({ limit: 2, cursor }), invalid, `devices: ${JSON.stringify(cursor)}`)
    }
    await t.rejects(registry.listCertificatesPage({ limit: 2, cursor: page.nextCursor! }), invalid, 'a device cursor for certificates')
    await t.rejects(registry.listCertificatesPage({ limit: 2, cursor: expiryPage.nextCursor! }), invalid, 'an expiry-ordered cursor without expiringBefore')
    await t.rejects(registry.listCertificatesPage({ limit: 2, cursor: certPage.nextCursor!, expiringBefore: T0 * 2 }), invalid, 'an id-ordered cursor with expiringBefore')
    await t.rejects(registry.listCertificatesPage({ limit: 2, expiringBefore: T0, cursor: Buffer.from('e123:x').toString('base64url') }), invalid, 'a malformed expiry key')
    await t.rejects(registry.listDevicesPage({ limit: 0 }), RangeError, 'limit 0')
    await t.rejects(registry.listDevicesPage({ limit: 2.5 }), RangeError, 'a fractional limit')
    t.equal((await registry.listDevicesPage({ limit: 1_000_000 })).items.length, 25, 'a huge limit is capped, not refused')
  })

  /** d1: c1 (expires T0+3d), c2 (T0+1d), c5→d2 rebound; d2: c3 (T0+1d, revoked), c5 (T0+2d); c4 pending; d3: c6 (T0+1d) */
  async function expiringFleet (registry: Registry): Promise<void> {
    const day = 86_400_000
    await registry.putDevice(device('d1'))
    await registry.putDevice(device('d2'))
    await registry.putDevice(device('d3'))
    await registry.putCertificate(certificate('c1', 'd1', { notAfter: T0 + 3 * day }))
    await registry.putCertificate(certificate('c2', 'd1', { notAfter: T0 + day }))
    await registry.putCertificate(certificate('c3', 'd2', { notAfter: T0 + day }))
    await registry.putCertificate(certificate('c4', null, { status: 'pending', notAfter: T0 }))
    await registry.putCertificate(certificate('c5', 'd1', { notAfter: T0 + 9 * day }))
    await registry.putCertificate(certificate('c5', 'd2', { notAfter: T0 + 2 * day }))
    await registry.putCertificate(certificate('c6', 'd3', { notAfter: T0 + day }))
    await registry.revokeCertificate(certId('c3'))
  }

  t.test(`${name}: listCertificatesPage: registered certificates, by id, by device, by status`, async (t) => {
    const { registry, advance } = await setup(t)
    const at = advance(0)
    await expiringFleet(registry)
    await registry.putPendingCertificate(certificate('p9', null, { status: 'pending' }), 'tok-p9', withKey('p9'), 60_000)
    const bound = ['c1', 'c2', 'c3', 'c5', 'c6'].map(certId).sort()
    const all = await allPages((cursor) => registry.listCertificatesPage({ limit: 2, cursor }))
    t.strictSame(inOrder(all.items), bound, 'bound ones only (no pending), each once, by certificateId')
    t.strictSame(all.items.find((c) => c.certificateId === certId('c3')), certificate('c3', 'd2', { status: 'revoked', notAfter: T0 + 86_400_000, updatedAt: at }), 'whole records')
    t.strictSame(inOrder((await allPages((cursor) => registry.listCertificatesPage({ deviceId: 'd1', limit: 1, cursor }))).items), ['c1', 'c2'].map(certId).sort(), 'deviceId: not the rebound c5')
    t.strictSame(inOrder((await allPages((cursor) => registry.listCertificatesPage({ deviceId: 'd2', status: 'active', limit: 1, cursor }))).items), [certId('c5')])
    t.strictSame(inOrder((await allPages((cursor) => registry.listCertificatesPage({ status: 'revoked', limit: 1, cursor }))).items), [certId('c3')])
    t.strictSame(await registry.listCertificatesPage({ deviceId: 'nobody', limit: 5 }), { items: [], nextCursor: null })
  })

  t.test(`${name}: listCertificatesPage expiringBefore: soonest first, exclusive bound, ties by id`, async (t) => {
    const { registry } = await setup(t)
    await expiringFleet(registry)
    const day = 86_400_000
    const soon = await allPages((cursor) => registry.listCertificatesPage({ expiringBefore: T0 + 2 * day + 1, limit: 1, cursor }))
    const tied = ['c2', 'c3', 'c6'].map(certId).sort()
    t.strictSame(inOrder(soon.items), [...tied, certId('c5')], 'by notAfter, the three tied ones by id, c1 (3 days) left out')
    t.strictSame(inOrder((await registry.listCertificatesPage({ expiringBefore: T0 + 2 * day, limit: 10 })).items), tied, 'notAfter equal to the bound is not before it')
    t.strictSame(inOrder((await allPages((cursor) => registry.listCertificatesPage({ expiringBefore: T0 + 10 * day, status: 'active', limit: 2, cursor }))).items),
      [...['c2', 'c6'].map(certId).sort(), certId('c5'), certId('c1')], 'with a status')
    t.strictSame(inOrder((await registry.listCertificatesPage({ expiringBefore: T0 + 10 * day, deviceId: 'd1', limit: 10 })).items), [certId('c2'), certId('c1')], 'with a device')
    t.strictSame(await registry.listCertificatesPage({ expiringBefore: T0, limit: 10 }), { items: [], nextCursor: null }, 'nothing expires before T0')
    t.strictSame(await registry.listCertificatesPage({ expiringBefore: 0, limit: 10 }), { items: [], nextCursor: null })
    await t.rejects(registry.listCertificatesPage({ expiringBefore: Number.NaN, limit: 10 }), RangeError)
    // the certificate indexes follow revocation by device, by list, and replacement
    await registry.revokeDevice('d3')
    await registry.revoke({ certificateId: certId('c2') })
    t.strictSame(inOrder((await registry.listCertificatesPage({ expiringBefore: T0 + 2 * day, status: 'revoked', limit: 10 })).items), tied, 'revokeDevice and revoke moved c6 and c2')
    await registry.putToken('tok-d1', withKey('d1'), 60_000)
    await registry.registerDevice({ token: 'tok-d1', device: device('d1'), replace: true, certificates: [certificate('c7', 'd1', { notAfter: T0 + 4 * day })] })
    t.strictSame(inOrder((await registry.listCertificatesPage({ status: 'active', limit: 10 })).items), ['c5', 'c7'].map(certId).sort(), 'replace: c1 revoked, c7 listed')
  })
  // --- end paginated listing ---

  // --- quarantine and reinstatement (CONTRACT §3.7, §8) ---
  t.test(`${name}: setDeviceStatus changes the status and tells every listener`, async (t) => {
    const { registry, advance } = await setup(t)
    const events = collectRevocations(registry)
    await fleet(registry)
    const at = advance(1000)
    t.strictSame(await registry.setDeviceStatus('d1', 'quarantined'), device('d1', { status: 'quarantined', updatedAt: at }))
    t.strictSame(await registry.getDevice('d1'), device('d1', { status: 'quarantined', updatedAt: at }), 'stored')
    t.equal((await registry.getCertificate(certId('c1')))?.status, 'active', 'its certificates are untouched')
    t.ok(await eventually(() => events.length === 1, 1000), 'notice')
    t.strictSame(events[0], { deviceId: 'd1', certificateId: null, statusChanged: true }, 'on the revocation channel, marked as a status change')
    advance(1000)
    t.strictSame(await registry.setDeviceStatus('d1', 'quarantined'), device('d1', { status: 'quarantined', updatedAt: at }), 'the same status again: unchanged')
    const back = advance(1000)
    t.strictSame(await registry.setDeviceStatus('d1', 'active'), device('d1', { status: 'active', updatedAt: back }), 'reinstated')
    t.equal(await registry.setDeviceStatus('nobody', 'active'), null, 'unknown device')
    await registry.revokeDevice('d2')
    const revoked = await registry.getDevice('d2')
    t.strictSame(await registry.setDeviceStatus('d2', 'active'), revoked, 'a revoked device is never un-revoked')
    t.equal((await registry.getDevice('d2'))?.status, 'revoked')
    t.ok(await eventually(() => events.length === 3, 1000), 'reinstatement and revocation notices')
    await sleep(200)
    t.strictSame(events.map((e) => e.statusChanged === true), [true, true, false], 'no notice for a no-op, the unknown or the revoked device')
  })
  // --- end quarantine ---

  // --- health verification (CONTRACT §3.7): provisioned → active | quarantined, once ---
  const provisioned = async (registry: Registry, deviceId: string, checks: string[], deadline: number): Promise<void> => {
    const outcome = await registry.registerDevice({
      token: null, device: device(deviceId, { status: 'provisioned' }), replace: false, certificates: [certificate(`c-${deviceId}`, deviceId)], health: { deadline, checks }
    })
    if (outcome.result !== 'registered') throw new Error(`${deviceId} not registered: ${outcome.result}`)
  }

  t.test(`${name}: the last health check activates the device, once, without a notice`, async (t) => {
    const { registry, advance } = await setup(t)
    const events = collectRevocations(registry)
    await provisioned(registry, 'h1', ['connect', 'config', 'state'], T0 + 10_000)
    t.strictSame(await registry.getDevice('h1'), device('h1', { status: 'provisioned' }), 'registered provisioned')
    t.strictSame(await registry.getHealth('h1'), { deadline: T0 + 10_000, checks: ['connect', 'config', 'state'], met: [] }, 'its window')
    t.strictSame(inOrder((await registry.listDevicesPage({ status: 'provisioned', limit: 10 })).items), ['h1'], 'listed as provisioned')
    t.same(await registry.recordHealthCheck('h1', 'connect', T0 + 100), { result: 'recorded' })
    t.same(await registry.recordHealthCheck('h1', 'connect', T0 + 200), { result: 'ignored' }, 'a check met already')
    t.same(await registry.recordHealthCheck('h1', 'telemetry', T0 + 200), { result: 'ignored' }, 'not a check of its window')
    t.same(await registry.recordHealthCheck('nobody', 'connect', T0 + 200), { result: 'ignored' }, 'no such device')
    t.strictSame((await registry.getHealth('h1'))?.met, ['connect'])
    const at = advance(500)
    // the last two raced (two processes, say): one of them activates
    const outcomes = await Promise.all([registry.recordHealthCheck('h1', 'config', at), registry.recordHealthCheck('h1', 'state', at), registry.recordHealthCheck('h1', 'state', at)])
    t.strictSame(outcomes.map((o) => o.result).sort(), ['activated', 'ignored', 'recorded'], 'exactly one caller activates')
    t.strictSame(await registry.getDevice('h1'), device('h1', { status: 'active', updatedAt: at }), 'active')
    t.equal(await registry.getHealth('h1'), null, 'its window is gone')
    t.strictSame(inOrder((await registry.listDevicesPage({ status: 'active', limit: 10 })).items), ['h1'], 'listed as active')
    t.strictSame((await registry.listDevicesPage({ status: 'provisioned', limit: 10 })).items, [], 'no longer provisioned')
    t.same(await registry.recordHealthCheck('h1', 'state', at), { result: 'ignored' }, 'an active device has nothing to record')
    advance(20_000)
    t.strictSame(await registry.healthDue(T0 + 60_000, 10), [], 'not due: it passed')
    await sleep(100)
    t.same(events, [], 'no status notice: an active device has the rights it had')
  })

  t.test(`${name}: a closed window quarantines the device, once, naming what it missed`, async (t) => {
    const { registry, advance } = await setup(t)
    const events = collectRevocations(registry)
    await provisioned(registry, 'h2', ['connect', 'config', 'state'], T0 + 1000)
    await provisioned(registry, 'h3', ['connect', 'state'], T0 + 2000)
    await provisioned(registry, 'h4', ['connect'], T0 + 500)
    t.same(await registry.recordHealthCheck('h2', 'connect', T0 + 10), { result: 'recorded' })
    t.same(await registry.recordHealthCheck('h2', 'state', T0 + 1001), { result: 'ignored' }, 'a check after the deadline does not count')
    t.strictSame(await registry.healthDue(T0 + 400, 10), [], 'nothing due yet')
    t.equal(await registry.expireHealth('h2', T0 + 400), null, 'a window still open is not expired')
    t.strictSame(await registry.healthDue(T0 + 1500, 10), ['h4', 'h2'], 'due, soonest first')
    t.strictSame(await registry.healthDue(T0 + 1500, 1), ['h4'], 'at most limit')
    await registry.revokeDevice('h4')
    t.equal(await registry.expireHealth('h4', T0 + 1500), null, 'a device no longer provisioned is not quarantined')
    t.strictSame(await registry.healthDue(T0 + 1500, 10), ['h2'], '...and no longer due')
    const at = advance(1500)
    const raced = await Promise.all([registry.expireHealth('h2', at), registry.expireHealth('h2', at)])
    t.strictSame(raced.filter((r) => r !== null), [{ missed: ['config', 'state'] }], 'exactly one caller quarantines, told what was missed')
    t.strictSame(await registry.getDevice('h2'), device('h2', { status: 'quarantined', updatedAt: at }))
    t.strictSame(await registry.getHealth('h2'), { deadline: T0 + 1000, checks: ['connect', 'config', 'state'], met: ['connect'] }, 'the failed window is kept to be read')
    t.same(await registry.recordHealthCheck('h2', 'config', at), { result: 'ignored' }, 'a quarantined device records nothing')
    t.strictSame(await registry.healthDue(T0 + 1500, 10), [], 'no longer due')
    t.equal((await registry.getDevice('h3'))?.status, 'provisioned', 'a device whose window is open is left alone')
    t.ok(await eventually(() => events.length === 2, 1000), 'notices')
    t.strictSame(events[1], { deviceId: 'h2', certificateId: null, statusChanged: true }, 'quarantined: a status notice (its sessions go)')
  })

  t.test(`${name}: a reinstated device gets a new window; a registration replaces the old one`, async (t) => {
    const { registry, advance } = await setup(t)
    const events = collectRevocations(registry)
    await provisioned(registry, 'h5', ['connect', 'state'], T0 + 1000)
    await registry.recordHealthCheck('h5', 'connect', T0 + 10)
    t.ok(await registry.expireHealth('h5', T0 + 1000))
    const at = advance(5000)
    await t.rejects(async () => await (registry.setDeviceStatus as (id: string, s: string) => Promise<unknown>)('h5', 'provisioned'), RangeError, 'provisioned needs a window')
    t.strictSame(await registry.setDeviceStatus('h5', 'provisioned', { deadline: at + 1000, checks: ['connect', 'state'] }), device('h5', { status: 'provisioned', updatedAt: at }), 'reinstated')
    t.strictSame(await registry.getHealth('h5'), { deadline: at + 1000, checks: ['connect', 'state'], met: [] }, 'a new window: nothing met yet')
    t.strictSame(await registry.healthDue(at + 2000, 10), ['h5'], 'due at its new deadline')
    t.same(await registry.recordHealthCheck('h5', 'connect', at + 1), { result: 'recorded' })
    t.same(await registry.recordHealthCheck('h5', 'state', at + 2), { result: 'activated' })
    t.ok(await eventually(() => events.length === 2, 1000), 'quarantine and reinstatement notices; none for the activation')

    // quarantined by an operator while provisioned: the window ends there
    await provisioned(registry, 'h6', ['connect'], at + 1000)
    await registry.setDeviceStatus('h6', 'quarantined')
    t.strictSame(await registry.healthDue(at + 5000, 10), [], 'an operator quarantine closes the window')
    t.same(await registry.recordHealthCheck('h6', 'connect', at + 5), { result: 'ignored' })
    await registry.setDeviceStatus('h6', 'active')
    t.equal(await registry.getHealth('h6'), null, 'an active device has no window')

    // a replacing registration: the old window goes, the new one is the registration's
    await provisioned(registry, 'h7', ['connect', 'state'], at + 1000)
    await registry.recordHealthCheck('h7', 'connect', at + 5)
    t.same(await registry.registerDevice({ token: null, device: device('h7', { status: 'provisioned' }), replace: true, certificates: [], health: { deadline: at + 9000, checks: ['connect'] } }),
      { result: 'registered', revoked: [certId('c-h7')] })
    t.strictSame(await registry.getHealth('h7'), { deadline: at + 9000, checks: ['connect'], met: [] }, 'replaced with the new window')
    t.same(await registry.registerDevice({ token: null, device: device('h7'), replace: true, certificates: [] }), { result: 'registered', revoked: [] })
    t.equal(await registry.getHealth('h7'), null, 'a registration without a window leaves none')
    t.strictSame(await registry.healthDue(at + 60_000, 10), [], 'nothing due')
  })
  // --- end health verification ---

  // --- device activity ---
  t.test(`${name}: recordActivity adds batches up; getActivity reads them`, async (t) => {
    const { registry } = await setup(t)
    t.equal(await registry.getActivity('a1'), null, 'nothing recorded yet')
    await registry.recordActivity([])
    await registry.recordActivity([
      { deviceId: 'a1', seenAt: T0 + 100, connects: 1, messagesIn: 5, rejected: 0, remoteAddress: '10.0.0.1', certificateNotAfter: T0 + 9000 },
      { deviceId: 'a2', seenAt: T0 + 50, connects: 0, messagesIn: 1, rejected: 1, lastErrorCode: 'SchemaViolation' },
      // the same device twice in one batch (two processes' deltas, say), the later one first
      { deviceId: 'a1', seenAt: T0 + 80, connects: 0, messagesIn: 2, rejected: 1, lastErrorCode: 'InvalidJson' }
    ])
    t.strictSame(await registry.getActivity('a1'), {
      firstSeen: T0 + 100, lastSeen: T0 + 100, connects: 1, messagesIn: 7, rejected: 1, lastErrorCode: 'InvalidJson', remoteAddress: '10.0.0.1', certificateNotAfter: T0 + 9000
    }, 'counters add up, lastSeen never goes back')
    t.strictSame(await registry.getActivity('a2'), {
      firstSeen: T0 + 50, lastSeen: T0 + 50, connects: 0, messagesIn: 1, rejected: 1, lastErrorCode: 'SchemaViolation', remoteAddress: null, certificateNotAfter: null
    })
    await registry.putDevice(device('a1'))
    await registry.revokeDevice('a1')
    await registry.recordActivity([{ deviceId: 'a1', seenAt: T0 + 500, connects: 2, messagesIn: 0, rejected: 0, remoteAddress: '10.0.0.2' }])
    t.strictSame(await registry.getActivity('a1'), {
      firstSeen: T0 + 100, lastSeen: T0 + 500, connects: 3, messagesIn: 7, rejected: 1, lastErrorCode: 'InvalidJson', remoteAddress: '10.0.0.2', certificateNotAfter: T0 + 9000
    }, 'firstSeen set once; fields absent from a delta keep their value; kept through revocation')
  })
  // --- end device activity ---

  t.test(`${name}: ping`, async (t) => {
    const { registry } = await setup(t)
    t.equal(await registry.ping(), true)
    await registry.close()
    t.equal(await registry.ping(), false, 'false once closed')
  })
}
