/**
 * The device registry: devices, their certificates (by id = hex SHA-256 of the DER,
 * which is also the certificate fingerprint), and single-use ownership tokens.
 * One interface, two implementations (memory, Redis), one contract test suite.
 */

export type DeviceStatus = 'active' | 'revoked'
export type CertificateStatus = 'pending' | 'active' | 'revoked'

export interface DeviceRecord {
  readonly deviceId: string
  readonly status: DeviceStatus
  /** template (or manufacturer CA) that registered the device */
  readonly template: string
  readonly createdAt: number
  readonly updatedAt: number
  /** free-form, validated template parameters; never PII by contract */
  readonly attributes: Readonly<Record<string, string>>
}

export interface CertificateRecord {
  /** hex SHA-256 of the certificate DER */
  readonly certificateId: string
  /** null until the certificate is bound to a device at registration */
  readonly deviceId: string | null
  readonly status: CertificateStatus
  readonly serialNumber: string
  readonly notAfter: number
  readonly createdAt: number
  readonly updatedAt: number
}

export interface OwnershipTokenRecord {
  readonly certificateId: string
  /** MQTT client id of the claim connection that obtained the token */
  readonly clientId: string
  /** fingerprint of the claim certificate of that connection */
  readonly claimFingerprint: string
  readonly expiresAt: number
  /** SPKI PEM of the certificate's key, so registration can issue the final certificate for it */
  readonly publicKeyPem?: string
}

export type RevocationListener = (event: { deviceId: string | null, certificateId: string | null }) => void

export interface Registry {
  getDevice (deviceId: string): Promise<DeviceRecord | null>
  listDevices (): Promise<DeviceRecord[]>
  /** creates or replaces the device record */
  putDevice (device: DeviceRecord): Promise<void>
  /**
   * Atomically creates the device if absent. Returns false (and changes nothing)
   * when a device with that id already exists.
   */
  createDeviceIfAbsent (device: DeviceRecord): Promise<boolean>

  getCertificate (certificateId: string): Promise<CertificateRecord | null>
  putCertificate (cert: CertificateRecord): Promise<void>
  certificatesOfDevice (deviceId: string): Promise<CertificateRecord[]>

  /** Stores a token; `ttlMs` after now it is gone. */
  putToken (token: string, record: OwnershipTokenRecord, ttlMs: number): Promise<void>
  /** Returns the record and deletes it, atomically: a token works once, on any process. */
  takeToken (token: string): Promise<OwnershipTokenRecord | null>

  /**
   * Marks the device and all its certificates revoked and tells every broker
   * process sharing this store (revocation listeners fire everywhere, including here).
   */
  revokeDevice (deviceId: string): Promise<boolean>
  /** Marks one certificate revoked and tells every broker process. */
  revokeCertificate (certificateId: string): Promise<boolean>
  onRevocation (listener: RevocationListener): void

  /** true when the backing store answers */
  ping (): Promise<boolean>
  close (): Promise<void>
}
