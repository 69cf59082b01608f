/**
 * The device registry: devices, their certificates (by id = hex SHA-256 of the DER,
 * which is also the certificate fingerprint), and single-use ownership tokens.
 * One interface, two implementations (memory, Redis), one contract test suite.
 */

/** CONTRACT §3.7: `quarantined` devices may connect but only report state and receive config (issue 13 adds `provisioned`) */
export type DeviceStatus = 'active' | 'quarantined' | 'revoked'
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

/**
 * A revocation notice. `deviceId`/`certificateId` are always present (null when
 * not concerned); the issuer+serial and CA forms are present only for those kinds.
 */
export interface RevocationNotice {
  deviceId: string | null
  certificateId: string | null
  issuerFingerprint?: string
  serialNumber?: string
  caFingerprint?: string
}
export type RevocationListener = (event: RevocationNotice) => void

// --- revocation list (CONTRACT §2 "Revocation"): every certificate of every role ---
/** what one connection's certificate is checked by: its id, its issuer and serial, its issuing CA */
export interface RevocationQuery {
  /** hex SHA-256 of the certificate DER */
  readonly certificateId: string
  /** hex SHA-256 of the issuing CA certificate DER (colon-free, lowercase) */
  readonly issuerFingerprint: string
  /** lowercase hex, no leading zero octets (see normalizeSerial) */
  readonly serialNumber: string
}
export type RevocationTarget =
  | { readonly certificateId: string }
  | { readonly issuerFingerprint: string, readonly serialNumber: string }
  | { readonly caFingerprint: string }
export type RevocationEntry =
  | { readonly kind: 'certificate', readonly certificateId: string, readonly revokedAt: number }
  | { readonly kind: 'serial', readonly issuerFingerprint: string, readonly serialNumber: string, readonly revokedAt: number }
  | { readonly kind: 'ca', readonly caFingerprint: string, readonly revokedAt: number }

/** colon-free lowercase hex (accepts the `AB:CD:...` form openssl prints) */
export function normalizeFingerprint (fp: string): string {
  return fp.replaceAll(':', '').toLowerCase()
}

/** lowercase hex without leading zero octets, even length: the form X509Certificate.serialNumber has, lowercased */
export function normalizeSerial (serial: string): string {
  const digits = serial.replaceAll(':', '').toLowerCase().replace(/^0+/, '')
  if (digits.length === 0) return '00'
  return digits.length % 2 === 1 ? '0' + digits : digits
}

export function noticeOf (target: RevocationTarget): RevocationNotice {
  if ('certificateId' in target) return { deviceId: null, certificateId: target.certificateId }
  if ('caFingerprint' in target) return { deviceId: null, certificateId: null, caFingerprint: target.caFingerprint }
  return { deviceId: null, certificateId: null, issuerFingerprint: target.issuerFingerprint, serialNumber: target.serialNumber }
}

export function normalizeTarget (target: RevocationTarget): RevocationTarget {
  if ('certificateId' in target) return { certificateId: normalizeFingerprint(target.certificateId) }
  if ('caFingerprint' in target) return { caFingerprint: normalizeFingerprint(target.caFingerprint) }
  return { issuerFingerprint: normalizeFingerprint(target.issuerFingerprint), serialNumber: normalizeSerial(target.serialNumber) }
}

/** the revocation list's field for a normalised target (same layout as the Redis hash) */
export function listField (t: RevocationTarget): string {
  if ('certificateId' in t) return `cert:${t.certificateId}`
  if ('caFingerprint' in t) return `ca:${t.caFingerprint}`
  return `serial:${t.issuerFingerprint}:${t.serialNumber}`
}

export function entryOf (field: string, revokedAt: number): RevocationEntry | null {
  const [kind, a, b] = field.split(':')
  if (kind === 'cert' && a) return { kind: 'certificate', certificateId: a, revokedAt }
  if (kind === 'ca' && a) return { kind: 'ca', caFingerprint: a, revokedAt }
  if (kind === 'serial' && a && b) return { kind: 'serial', issuerFingerprint: a, serialNumber: b, revokedAt }
  return null
}

export interface RevocationList {
  /**
   * Adds the target to the durable revocation list (a registered certificate is
   * also marked revoked) and tells every broker process. Returns false when it was
   * already listed (the notice goes out again all the same).
   */
  revoke (target: RevocationTarget): Promise<boolean>
  /**
   * The connect-time check: true when the certificate, its issuer+serial or its CA
   * is listed; one round trip. (A revoked device is the identity plugin's answer,
   * with its own reason.)
   */
  isRevoked (query: RevocationQuery): Promise<boolean>
  /**
   * The re-validation of live sessions, in one round trip: per query, listed (as
   * isRevoked) or its registered certificate record revoked (a revoked device).
   */
  areRevoked (queries: readonly RevocationQuery[]): Promise<boolean[]>
  listRevocations (): Promise<RevocationEntry[]>
  /**
   * Called when this process may have missed revocation notices (the Redis
   * subscriber reconnected): live sessions must be checked again.
   */
  onRevocationGap (listener: () => void): void
}
// --- end revocation list ---

// --- session owners (CONTRACT §2 "Client ids and sessions") ---
/**
 * Who a session belongs to, by client id, so no other identity takes it over or
 * cleans it, on any broker process and across restarts. An owner is a key such as
 * `service:<name>`, `claim:<certificateId>` (device sessions are owned through
 * the device record: a device's client id is its device id).
 */
export interface SessionOwners {
  /** the owner recorded for this client id, or null */
  sessionOwner (clientId: string): Promise<string | null>
  /**
   * Records `owner` for `clientId` unless another owner holds it, atomically (one
   * winner when two identities race). True when `owner` holds it now. `ttlMs`
   * makes the record expire (clean sessions: nothing is stored to protect once it
   * ends); without it the record is kept, and a kept record is never shortened.
   */
  claimSessionOwner (clientId: string, owner: string, ttlMs?: number): Promise<boolean>
}
// --- end session owners ---

// --- registration (CONTRACT §3.3: atomic, the token used up only by a registration) ---
export interface Registration {
  /** the ownership token presented, used up only if the device is registered; null for a manufacturer certificate's first connect */
  readonly token: string | null
  readonly device: DeviceRecord
  /** the template's reprovision policy: an existing device is replaced (its certificates revoked) or refused */
  readonly replace: boolean
  /** certificates bound active to the device (a pending one stops expiring) */
  readonly certificates: readonly CertificateRecord[]
}

export type RegistrationOutcome =
  | { readonly result: 'registered', /** certificates of the replaced device, now revoked */ readonly revoked: readonly string[] }
  /** the token is gone (used or expired): nothing was changed */
  | { readonly result: 'token-used' }
  /** the device exists and `replace` is false: nothing was changed, the token is kept */
  | { readonly result: 'device-exists' }

export interface Registrations {
  /** The token's record, without using it up; null when absent or expired. */
  peekToken (token: string): Promise<OwnershipTokenRecord | null>
  /**
   * Stores a certificate issued by create / create-from-csr (status pending, no
   * device) together with its ownership token: unless a registration binds the
   * certificate first, both are gone after `ttlMs`.
   */
  putPendingCertificate (cert: CertificateRecord, token: string, record: OwnershipTokenRecord, ttlMs: number): Promise<void>
  /**
   * All or nothing, on every process sharing the store: uses the token up, creates
   * (or replaces) the device and binds the certificates. Whatever the outcome other
   * than `registered`, nothing was changed.
   */
  registerDevice (registration: Registration): Promise<RegistrationOutcome>
}
// --- end registration ---

export interface Registry extends RevocationList, SessionOwners, Registrations {
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
  /** Marks one registered certificate revoked (and lists it) and tells every broker process. */
  revokeCertificate (certificateId: string): Promise<boolean>
  onRevocation (listener: RevocationListener): void

  /** true when the backing store answers */
  ping (): Promise<boolean>
  close (): Promise<void>
}
