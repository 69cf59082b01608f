/**
 * The registry inside one broker process: nothing survives a restart and no
 * other process (the CLI, a second broker) can see it.
 */
import type {
  ActivityDelta, CertificateQuery, CertificateRecord, CertificateRecords, DeviceActivity, DeviceQuery, DeviceRecord, HealthCheckOutcome, HealthProgress, HealthWindow, OwnershipTokenRecord, Page,
  Registration, RegistrationOutcome, Registry, RevocationEntry, RevocationListener, RevocationQuery, RevocationTarget, RotatedCertificate, RotationOutcome
} from './registry.js'
import {
  certificateMatches, certificatePlan, decodeCursor, deviceMatches, entryOf, listField, normalizeTarget, noticeOf, ownerBlocksDevice, pageLimit, pageOf, RevocationListeners
} from './registry.js'

/** a health window as kept here: check → when it was met */
interface StoredWindow { readonly deadline: number, readonly checks: readonly string[], readonly met: Map<string, number> }
const newWindow = (w: HealthWindow): StoredWindow => ({ deadline: w.deadline, checks: [...w.checks], met: new Map() })

// callers hold readonly views; copies keep a caller's later mutation (via a cast) out of the store
const copyDevice = (d: DeviceRecord): DeviceRecord => ({ ...d, attributes: { ...d.attributes } })
const copyCertificate = (c: CertificateRecord): CertificateRecord => ({ ...c })

export class MemoryRegistry implements Registry {
  readonly #now: () => number
  readonly #devices = new Map<string, DeviceRecord>()
  readonly #certificates = new Map<string, CertificateRecord>()
  readonly #tokens = new Map<string, { record: OwnershipTokenRecord, expiresAt: number }>()
  readonly #listeners: RevocationListeners
  /** the revocation list: `cert:<id>`, `serial:<issuer>:<serial>`, `ca:<fingerprint>` → revokedAt */
  readonly #revoked = new Map<string, number>()
  readonly #onError: (err: Error) => void
  #closed = false
  #sweepAt = 1024

  constructor (opts: { now?: () => number, onError?: (err: Error) => void } = {}) {
    this.#now = opts.now ?? Date.now
    this.#onError = opts.onError ?? (() => {})
    this.#listeners = new RevocationListeners((err) => this.#onError(err))
  }

  async getDevice (deviceId: string): Promise<DeviceRecord | null> {
    const device = this.#devices.get(deviceId)
    return device ? copyDevice(device) : null
  }

  async listDevices (): Promise<DeviceRecord[]> {
    return [...this.#devices.values()].map(copyDevice)
  }

  async listDevicesPage (q: DeviceQuery): Promise<Page<DeviceRecord>> {
    const after = decodeCursor('d', q.cursor)
    const limit = pageLimit(q.limit)
    const matching = [...this.#devices.values()].filter((d) => deviceMatches(d, q))
    const page = pageOf(matching, (d) => d.deviceId, 'd', after, limit)
    return { items: page.items.map(copyDevice), nextCursor: page.nextCursor }
  }

  async listCertificatesPage (q: CertificateQuery): Promise<Page<CertificateRecord>> {
    const { kind, after, limit, keyOf } = certificatePlan(q)
    const matching = [...this.#certificates.values()].filter((c) => certificateMatches(c, q) && (q.deviceId === undefined || c.deviceId === q.deviceId))
    const page = pageOf(matching, keyOf, kind, after, limit)
    return { items: page.items.map(copyCertificate), nextCursor: page.nextCursor }
  }

  async setDeviceStatus (deviceId: string, status: 'active' | 'quarantined'): Promise<DeviceRecord | null>
  async setDeviceStatus (deviceId: string, status: 'provisioned', health: HealthWindow): Promise<DeviceRecord | null>
  async setDeviceStatus (deviceId: string, status: 'active' | 'quarantined' | 'provisioned', health?: HealthWindow): Promise<DeviceRecord | null> {
    if (status === 'provisioned' && health === undefined) throw new RangeError('a provisioned device needs a health window')
    const device = this.#devices.get(deviceId)
    if (!device) return null
    // never un-revokes; an unchanged status is no news for the sessions
    if (device.status === 'revoked' || device.status === status) return copyDevice(device)
    const updated = { ...device, status, updatedAt: this.#now() }
    this.#devices.set(deviceId, updated)
    // a new window for a reinstated device; an active one has none; a quarantined one keeps what it failed
    if (status === 'provisioned') this.#health.set(deviceId, newWindow(health!))
    else if (status === 'active') this.#health.delete(deviceId)
    this.#listeners.emit({ deviceId, certificateId: null, statusChanged: true })
    return copyDevice(updated)
  }

  async putDevice (device: DeviceRecord): Promise<void> {
    this.#devices.set(device.deviceId, copyDevice(device))
  }

  async createDeviceIfAbsent (device: DeviceRecord): Promise<boolean> {
    if (this.#devices.has(device.deviceId)) return false
    this.#devices.set(device.deviceId, copyDevice(device))
    return true
  }

  async getCertificate (certificateId: string): Promise<CertificateRecord | null> {
    const cert = this.#unexpiredCertificate(certificateId)
    return cert ? copyCertificate(cert) : null
  }

  async putCertificate (cert: CertificateRecord): Promise<void> {
    this.#certificates.set(cert.certificateId, copyCertificate(cert))
    this.#pendingExpiry.delete(cert.certificateId)
  }

  async certificatesOfDevice (deviceId: string): Promise<CertificateRecord[]> {
    return [...this.#certificates.values()].filter((c) => c.deviceId === deviceId).map(copyCertificate)
  }

  async putToken (token: string, record: OwnershipTokenRecord, ttlMs: number): Promise<void> {
    this.#sweepTokens()
    this.#tokens.set(token, { record: { ...record }, expiresAt: this.#now() + ttlMs })
  }

  async takeToken (token: string): Promise<OwnershipTokenRecord | null> {
    const entry = this.#tokens.get(token)
    if (!entry) return null
    this.#tokens.delete(token)
    return this.#now() < entry.expiresAt ? entry.record : null
  }

  async revokeDevice (deviceId: string): Promise<boolean> {
    const device = this.#devices.get(deviceId)
    if (!device) return false
    const updatedAt = this.#now()
    this.#devices.set(deviceId, { ...device, status: 'revoked', updatedAt })
    for (const cert of this.#certificates.values()) {
      if (cert.deviceId === deviceId) this.#certificates.set(cert.certificateId, { ...cert, status: 'revoked', updatedAt })
    }
    // CONTRACT §3.7: a revoked device has no health window any more
    this.#health.delete(deviceId)
    this.#listeners.emit({ deviceId, certificateId: null })
    return true
  }

  async revokeCertificate (certificateId: string): Promise<boolean> {
    const cert = this.#certificates.get(certificateId)
    if (!cert) return false
    this.#certificates.set(certificateId, { ...cert, status: 'revoked', updatedAt: this.#now() })
    if (!this.#revoked.has(`cert:${certificateId}`)) this.#revoked.set(`cert:${certificateId}`, this.#now())
    // deviceId stays null: listeners read a non-null deviceId as "the whole device is revoked"
    this.#listeners.emit({ deviceId: null, certificateId })
    return true
  }

  onRevocation (listener: RevocationListener): void {
    this.#listeners.add(listener)
  }

  // --- revocation list ---
  async revoke (target: RevocationTarget): Promise<boolean> {
    const t = normalizeTarget(target)
    const field = listField(t)
    const added = !this.#revoked.has(field)
    const now = this.#now()
    if (added) this.#revoked.set(field, now)
    if ('certificateId' in t) {
      const cert = this.#certificates.get(t.certificateId)
      if (cert && cert.status !== 'revoked') this.#certificates.set(t.certificateId, { ...cert, status: 'revoked', updatedAt: now })
    }
    this.#listeners.emit(noticeOf(t))
    return added
  }

  async isRevoked (query: RevocationQuery): Promise<boolean> {
    return this.#listed(query)
  }

  async certificateRecords (query: RevocationQuery): Promise<CertificateRecords> {
    const cert = this.#unexpiredCertificate(query.certificateId)
    const device = cert?.deviceId ? this.#devices.get(cert.deviceId) : undefined
    return {
      revoked: this.#listed(query),
      certificate: cert ? copyCertificate(cert) : null,
      device: device ? copyDevice(device) : null
    }
  }

  async areRevoked (queries: readonly RevocationQuery[]): Promise<boolean[]> {
    return queries.map((q) => this.#listed(q) || this.#certificates.get(q.certificateId)?.status === 'revoked')
  }

  async listRevocations (): Promise<RevocationEntry[]> {
    return [...this.#revoked].map(([field, revokedAt]) => entryOf(field, revokedAt)).filter((e): e is RevocationEntry => e !== null)
  }

  onRevocationGap (_listener: () => void): void {
    // one process, no transport between revoker and listener: no notice can be missed
  }

  #listed (q: RevocationQuery): boolean {
    return this.#revoked.has(`cert:${q.certificateId}`) ||
      this.#revoked.has(`serial:${q.issuerFingerprint}:${q.serialNumber}`) ||
      this.#revoked.has(`ca:${q.issuerFingerprint}`)
  }
  // --- end revocation list ---

  // --- session owners ---
  /** client id → owner; expiresAt Infinity for a kept record */
  readonly #owners = new Map<string, { owner: string, expiresAt: number }>()
  #ownersSweepAt = 1024

  async sessionOwner (clientId: string): Promise<string | null> {
    return this.#ownerNow(clientId, this.#now())
  }

  #ownerNow (clientId: string, now: number): string | null {
    const entry = this.#owners.get(clientId)
    return entry !== undefined && now < entry.expiresAt ? entry.owner : null
  }

  async claimSessionOwner (clientId: string, owner: string, ttlMs?: number): Promise<boolean> {
    const now = this.#now()
    const entry = this.#owners.get(clientId)
    // a claim's record (anonymous, clean) yields to an owner that names someone
    const yields = entry !== undefined && entry.owner.startsWith('claim:') && !owner.startsWith('claim:')
    const live = entry !== undefined && now < entry.expiresAt && !yields
    if (live && entry.owner !== owner) return false
    const expiresAt = ttlMs === undefined ? Infinity : now + ttlMs
    // a kept record is never shortened to a clean session's ttl
    if (!live || expiresAt > entry.expiresAt) this.#owners.set(clientId, { owner, expiresAt })
    this.#sweepOwners(now)
    return true
  }

  // records of clean sessions would otherwise pile up (random client ids); amortised as for tokens
  #sweepOwners (now: number): void {
    if (this.#owners.size < this.#ownersSweepAt) return
    for (const [clientId, entry] of this.#owners) if (entry.expiresAt <= now) this.#owners.delete(clientId)
    this.#ownersSweepAt = Math.max(1024, this.#owners.size * 2)
  }
  // --- end session owners ---

  // --- registration ---
  /** pending certificate id → when it expires with its token */
  readonly #pendingExpiry = new Map<string, number>()
  #pendingSweepAt = 1024

  async peekToken (token: string): Promise<OwnershipTokenRecord | null> {
    const entry = this.#tokens.get(token)
    return entry !== undefined && this.#now() < entry.expiresAt ? { ...entry.record } : null
  }

  async putPendingCertificate (cert: CertificateRecord, token: string, record: OwnershipTokenRecord, ttlMs: number): Promise<void> {
    const expiresAt = this.#now() + ttlMs
    this.#sweepPending()
    this.#certificates.set(cert.certificateId, copyCertificate(cert))
    this.#pendingExpiry.set(cert.certificateId, expiresAt)
    await this.putToken(token, record, ttlMs)
  }

  // one synchronous block: no other call can run between the checks and the writes
  async registerDevice (reg: Registration): Promise<RegistrationOutcome> {
    const now = this.#now()
    const entry = reg.token === null ? null : this.#tokens.get(reg.token)
    if (entry === undefined || (entry !== null && now >= entry.expiresAt)) return { result: 'token-used' }
    const deviceId = reg.device.deviceId
    if (ownerBlocksDevice(this.#ownerNow(deviceId, now), deviceId)) return { result: 'client-id-in-use' }
    const existing = this.#devices.get(deviceId)
    const exists = existing !== undefined
    // replace stays within the device's own template (plugins/provisioning/register.ts says why)
    if (exists && (!reg.replace || existing.template !== reg.device.template)) return { result: 'device-exists' }
    const revoked: string[] = []
    if (exists) {
      for (const cert of this.#certificates.values()) {
        if (cert.deviceId !== deviceId || cert.status === 'revoked') continue
        this.#certificates.set(cert.certificateId, { ...cert, status: 'revoked', updatedAt: now })
        revoked.push(cert.certificateId)
      }
    }
    if (reg.token !== null) this.#tokens.delete(reg.token)
    this.#devices.set(deviceId, copyDevice(reg.device))
    this.#health.delete(deviceId)
    if (reg.health !== undefined) this.#health.set(deviceId, newWindow(reg.health))
    for (const cert of reg.certificates) {
      this.#certificates.set(cert.certificateId, copyCertificate(cert))
      this.#pendingExpiry.delete(cert.certificateId)
    }
    return { result: 'registered', revoked }
  }

  /** a pending certificate past its token's lifetime is gone (expired on read, and swept) */
  #unexpiredCertificate (certificateId: string): CertificateRecord | undefined {
    const expiresAt = this.#pendingExpiry.get(certificateId)
    if (expiresAt !== undefined && expiresAt <= this.#now()) {
      this.#pendingExpiry.delete(certificateId)
      this.#certificates.delete(certificateId)
    }
    return this.#certificates.get(certificateId)
  }

  #sweepPending (): void {
    if (this.#pendingExpiry.size < this.#pendingSweepAt) return
    const now = this.#now()
    for (const [id, expiresAt] of this.#pendingExpiry) {
      if (expiresAt > now) continue
      this.#pendingExpiry.delete(id)
      this.#certificates.delete(id)
    }
    this.#pendingSweepAt = Math.max(1024, this.#pendingExpiry.size * 2)
  }
  // --- end registration ---

  // --- rotation: new certificate id → graceUntil, for the certificates whose rotation is unsettled ---
  readonly #rotationsDue = new Map<string, number>()

  // one synchronous block each: no other call runs between the checks and the writes
  async rotateCertificate (cert: RotatedCertificate, presented: RevocationQuery): Promise<RotationOutcome> {
    const old = this.#certificates.get(cert.replaces)
    if (!old || old.deviceId !== cert.deviceId || old.status !== 'active' || this.#listed(presented)) return { result: 'refused' }
    const now = this.#now()
    const superseded: string[] = []
    for (const c of this.#certificates.values()) {
      if (c.deviceId !== cert.deviceId || c.status !== 'active' || c.replaces === undefined || c.certificateId === cert.replaces || c.certificateId === cert.certificateId) continue
      superseded.push(c.certificateId)
    }
    for (const id of superseded) this.#revokeRotated(id, now)
    this.#certificates.set(old.certificateId, { ...old, retiresAt: cert.graceUntil })
    this.#certificates.set(cert.certificateId, copyCertificate(cert))
    this.#rotationsDue.set(cert.certificateId, cert.graceUntil)
    return { result: 'rotated', superseded }
  }

  async settleRotation (certificateId: string): Promise<string[]> {
    const cert = this.#certificates.get(certificateId)
    if (cert?.replaces === undefined) return []
    const { replaces, graceUntil: _graceUntil, ...settled } = cert
    this.#certificates.set(certificateId, settled)
    this.#rotationsDue.delete(certificateId)
    // revoked meanwhile: its settling revokes nothing (the device's certificates are not its to retire)
    if (cert.status !== 'active') return []
    const now = this.#now()
    const revoked: string[] = []
    if (this.#certificates.get(replaces)?.status === 'active') revoked.push(replaces)
    // every other certificate still active for the device and issued before this one: the claim flow's
    // provisional one carries the old key too; one a later rotation issued is the device's newest and stays
    for (const c of this.#certificates.values()) {
      if (c.deviceId === cert.deviceId && c.status === 'active' && c.certificateId !== certificateId && c.certificateId !== replaces && c.createdAt < cert.createdAt) revoked.push(c.certificateId)
    }
    for (const id of revoked) this.#revokeRotated(id, now)
    return revoked
  }

  async rotationsDue (before: number, limit: number): Promise<string[]> {
    const due: string[] = []
    for (const [id, graceUntil] of this.#rotationsDue) {
      if (due.length >= limit) break
      if (graceUntil < before) due.push(id)
    }
    return due
  }

  /** revoked, listed, no longer due, every process told (as revokeCertificate) */
  #revokeRotated (certificateId: string, now: number): void {
    const c = this.#certificates.get(certificateId)
    if (!c) return
    const { replaces: _replaces, graceUntil: _graceUntil, ...rest } = c
    this.#certificates.set(certificateId, { ...rest, status: 'revoked', updatedAt: now })
    this.#rotationsDue.delete(certificateId)
    if (!this.#revoked.has(`cert:${certificateId}`)) this.#revoked.set(`cert:${certificateId}`, now)
    this.#listeners.emit({ deviceId: null, certificateId })
  }
  // --- end rotation ---

  // --- health verification: device id → its window; the device's status alone says whether it is open ---
  readonly #health = new Map<string, StoredWindow>()

  async getHealth (deviceId: string): Promise<HealthProgress | null> {
    const w = this.#health.get(deviceId)
    return w === undefined ? null : { deadline: w.deadline, checks: [...w.checks], met: w.checks.filter((c) => w.met.has(c)) }
  }

  // one synchronous block each: no other call runs between the checks and the writes
  async recordHealthCheck (deviceId: string, check: string, at: number): Promise<HealthCheckOutcome> {
    const device = this.#devices.get(deviceId)
    const w = this.#health.get(deviceId)
    if (device?.status !== 'provisioned' || w === undefined || at > w.deadline || !w.checks.includes(check) || w.met.has(check)) return { result: 'ignored' }
    w.met.set(check, at)
    if (w.checks.some((c) => !w.met.has(c))) return { result: 'recorded' }
    this.#devices.set(deviceId, { ...device, status: 'active', updatedAt: at })
    this.#health.delete(deviceId)
    return { result: 'activated' }
  }

  async healthDue (before: number, limit: number): Promise<string[]> {
    const due: Array<[string, number]> = []
    for (const [id, w] of this.#health) if (w.deadline < before && this.#devices.get(id)?.status === 'provisioned') due.push([id, w.deadline])
    return due.sort((a, b) => a[1] - b[1]).slice(0, limit).map(([id]) => id)
  }

  async expireHealth (deviceId: string, at: number): Promise<{ readonly missed: readonly string[] } | null> {
    const device = this.#devices.get(deviceId)
    const w = this.#health.get(deviceId)
    if (device?.status !== 'provisioned' || w === undefined || w.deadline > at) return null
    this.#devices.set(deviceId, { ...device, status: 'quarantined', updatedAt: at })
    this.#listeners.emit({ deviceId, certificateId: null, statusChanged: true })
    return { missed: w.checks.filter((c) => !w.met.has(c)) }
  }
  // --- end health verification ---

  // --- device activity: kept per device id, through revocation and replacement ---
  readonly #activity = new Map<string, { -readonly [K in keyof DeviceActivity]: DeviceActivity[K] }>()

  async recordActivity (deltas: readonly ActivityDelta[]): Promise<void> {
    for (const d of deltas) {
      let a = this.#activity.get(d.deviceId)
      if (a === undefined) {
        a = { firstSeen: d.seenAt, lastSeen: d.seenAt, connects: 0, messagesIn: 0, rejected: 0, lastErrorCode: null, remoteAddress: null, certificateNotAfter: null }
        this.#activity.set(d.deviceId, a)
      }
      a.lastSeen = Math.max(a.lastSeen ?? d.seenAt, d.seenAt)
      a.connects += d.connects
      a.messagesIn += d.messagesIn
      a.rejected += d.rejected
      if (d.lastErrorCode !== undefined) a.lastErrorCode = d.lastErrorCode
      if (d.remoteAddress !== undefined) a.remoteAddress = d.remoteAddress
      if (d.certificateNotAfter !== undefined) a.certificateNotAfter = d.certificateNotAfter
    }
  }

  async getActivity (deviceId: string): Promise<DeviceActivity | null> {
    const a = this.#activity.get(deviceId)
    return a === undefined ? null : { ...a }
  }
  // --- end device activity ---

  async ping (): Promise<boolean> {
    return !this.#closed
  }

  async close (): Promise<void> {
    this.#closed = true
    this.#listeners.clear()
  }

  // unclaimed tokens would otherwise pile up for the life of the process; sweeping
  // only when the map has doubled keeps putToken amortised O(1) during onboarding bursts
  #sweepTokens (): void {
    if (this.#tokens.size < this.#sweepAt) return
    const now = this.#now()
    for (const [token, entry] of this.#tokens) if (entry.expiresAt <= now) this.#tokens.delete(token)
    this.#sweepAt = Math.max(1024, this.#tokens.size * 2)
  }
}
