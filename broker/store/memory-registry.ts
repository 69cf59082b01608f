/**
 * The registry inside one broker process: nothing survives a restart and no
 * other process (the CLI, a second broker) can see it.
 */
import type {
  CertificateRecord, DeviceRecord, OwnershipTokenRecord, Registry, RevocationListener
} from './registry.js'

type RevocationEvent = Parameters<RevocationListener>[0]

// callers hold readonly views; copies keep a caller's later mutation (via a cast) out of the store
const copyDevice = (d: DeviceRecord): DeviceRecord => ({ ...d, attributes: { ...d.attributes } })
const copyCertificate = (c: CertificateRecord): CertificateRecord => ({ ...c })

export class MemoryRegistry implements Registry {
  readonly #now: () => number
  readonly #devices = new Map<string, DeviceRecord>()
  readonly #certificates = new Map<string, CertificateRecord>()
  readonly #tokens = new Map<string, { record: OwnershipTokenRecord, expiresAt: number }>()
  readonly #listeners: RevocationListener[] = []
  #closed = false
  #sweepAt = 1024

  constructor (opts: { now?: () => number } = {}) {
    this.#now = opts.now ?? Date.now
  }

  async getDevice (deviceId: string): Promise<DeviceRecord | null> {
    const device = this.#devices.get(deviceId)
    return device ? copyDevice(device) : null
  }

  async listDevices (): Promise<DeviceRecord[]> {
    return [...this.#devices.values()].map(copyDevice)
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
    const cert = this.#certificates.get(certificateId)
    return cert ? copyCertificate(cert) : null
  }

  async putCertificate (cert: CertificateRecord): Promise<void> {
    this.#certificates.set(cert.certificateId, copyCertificate(cert))
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
    this.#emit({ deviceId, certificateId: null })
    return true
  }

  async revokeCertificate (certificateId: string): Promise<boolean> {
    const cert = this.#certificates.get(certificateId)
    if (!cert) return false
    this.#certificates.set(certificateId, { ...cert, status: 'revoked', updatedAt: this.#now() })
    // deviceId stays null: listeners read a non-null deviceId as "the whole device is revoked"
    this.#emit({ deviceId: null, certificateId })
    return true
  }

  onRevocation (listener: RevocationListener): void {
    this.#listeners.push(listener)
  }

  async ping (): Promise<boolean> {
    return !this.#closed
  }

  async close (): Promise<void> {
    this.#closed = true
    this.#listeners.length = 0
  }

  #emit (event: RevocationEvent): void {
    // one microtask per listener: the revoking caller never runs listener code, and one throwing listener does not starve the others
    for (const listener of this.#listeners) queueMicrotask(() => listener({ ...event }))
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
