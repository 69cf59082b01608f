/**
 * The device registry: devices, their certificates (by id = hex SHA-256 of the DER,
 * which is also the certificate fingerprint), and single-use ownership tokens.
 * One interface, two implementations (memory, Redis), one contract test suite.
 */
import { JitpError } from '../errors.js'

/**
 * CONTRACT §3.7: a registered device is `provisioned` (full device rights) until it
 * passes its health check (`active`) or its window closes (`quarantined`: it may
 * connect, but only report state and receive config). A record written before
 * health verification existed is `active`.
 */
export type DeviceStatus = 'provisioned' | 'active' | 'quarantined' | 'revoked'
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
  /**
   * Rotation (CONTRACT §3.4), on the new certificate until it is first used or its
   * grace period ends: the certificate it replaces (cleared when that one is revoked)
   */
  readonly replaces?: string
  /** with `replaces`: when the replaced certificate is revoked if this one is never used (ms) */
  readonly graceUntil?: number
  /** on a replaced certificate: when it stops being accepted, the grace end of its latest rotation (ms) */
  readonly retiresAt?: number
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
  /**
   * set by setDeviceStatus: the device was quarantined or reinstated, not revoked.
   * Its live sessions must be closed (or their rules re-derived) so they pick up
   * the new status; a listener that ignores this field would read the notice as a
   * device revocation (deviceId non-null).
   */
  statusChanged?: true
}
export type RevocationListener = (event: RevocationNotice) => void

/**
 * Both registries' revocation listeners. One microtask per listener: the revoking
 * caller (or ioredis' parser, for a notice from another process) never runs
 * listener code, and one throwing listener neither starves the others nor takes
 * the process down (its error goes to `onError`). Each gets its own copy.
 */
export class RevocationListeners {
  readonly #listeners: RevocationListener[] = []
  readonly #onError: (err: Error) => void

  constructor (onError: (err: Error) => void) {
    this.#onError = onError
  }

  add (listener: RevocationListener): void {
    this.#listeners.push(listener)
  }

  clear (): void {
    this.#listeners.length = 0
  }

  emit (event: RevocationNotice): void {
    for (const listener of this.#listeners) {
      queueMicrotask(() => {
        try {
          listener({ ...event })
        } catch (err) {
          this.#onError(err instanceof Error ? err : new Error(String(err)))
        }
      })
    }
  }
}

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

/** what the store holds about one presented certificate (RevocationList.certificateRecords) */
export interface CertificateRecords {
  /** the certificate, its issuer and serial, or its CA is on the revocation list */
  readonly revoked: boolean
  /** the certificate's record; null when unknown (or a pending one that expired) */
  readonly certificate: CertificateRecord | null
  /** the device the record is bound to; null when unbound or when there is no such device */
  readonly device: DeviceRecord | null
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
   * Everything a certificate's connect reads, in one round trip: the revocation
   * list (as isRevoked), the certificate's record (as getCertificate) and the
   * device it is bound to (as getDevice). The revocation and identity plugins
   * share one such read per connect (AuthenticateEvent.records).
   */
  certificateRecords (query: RevocationQuery): Promise<CertificateRecords>
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

/**
 * Whether a recorded session owner keeps `deviceId` from being registered. A
 * device's client id is its device id, and a device always takes its own id
 * back (plugins/session-owners.ts): registering a device under the client id of
 * a service's or a token holder's session would hand that session, and what is
 * queued for it, to whoever registered the device. A claim's record (anonymous,
 * short-lived) yields, as it does to any identity. The Redis registration script
 * says the same in Lua.
 */
export function ownerBlocksDevice (owner: string | null, deviceId: string): boolean {
  return owner !== null && !owner.startsWith('claim:') && owner !== `device:${deviceId}`
}
// --- end session owners ---

// --- registration (CONTRACT §3.3: atomic, the token used up only by a registration) ---
export interface Registration {
  /** the ownership token presented, used up only if the device is registered; null for a manufacturer certificate's first connect */
  readonly token: string | null
  readonly device: DeviceRecord
  /** the template's reprovision policy: an existing device of the same template is replaced (its certificates revoked) or refused */
  readonly replace: boolean
  /** certificates bound active to the device (a pending one stops expiring) */
  readonly certificates: readonly CertificateRecord[]
  /** CONTRACT §3.7: the health window of a device registered `provisioned`, stored in the same step (any earlier one is dropped) */
  readonly health?: HealthWindow
}

export type RegistrationOutcome =
  | { readonly result: 'registered', /** certificates of the replaced device, now revoked */ readonly revoked: readonly string[] }
  /** the token is gone (used or expired): nothing was changed */
  | { readonly result: 'token-used' }
  /** the device exists and `replace` is false: nothing was changed, the token is kept */
  | { readonly result: 'device-exists' }
  /** the device id is recorded as another identity's client id (ownerBlocksDevice): nothing was changed, the token is kept */
  | { readonly result: 'client-id-in-use' }

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

// --- rotation (CONTRACT §3.4: the old certificate revoked once, by whichever process gets there first) ---
/** a rotation's new certificate: active, bound to the device, naming the certificate it replaces */
export type RotatedCertificate = CertificateRecord & { readonly deviceId: string, readonly replaces: string, readonly graceUntil: number }

export type RotationOutcome =
  /** `superseded`: the device's earlier rotated certificates never used, now revoked (at most two active certificates) */
  | { readonly result: 'rotated', readonly superseded: readonly string[] }
  /** the replaced certificate is no longer active for this device (revoked meanwhile): nothing was changed */
  | { readonly result: 'refused' }

export interface Rotations {
  /**
   * All or nothing, on every process sharing the store: stores the new certificate
   * (active, bound, due for settlement at `graceUntil`), marks the replaced one with
   * `retiresAt`, and revokes (lists, tells every process) the device's other active
   * certificates that are themselves unused rotations. Refused when the replaced
   * certificate is no longer active or when `presented` (the connection's
   * certificate, the one replaced) is on the revocation list in any form.
   */
  rotateCertificate (cert: RotatedCertificate, presented: RevocationQuery): Promise<RotationOutcome>
  /**
   * Settles the rotation of this (new) certificate: clears `replaces`, and revokes
   * (lists, tells every process) the replaced certificate and every other
   * certificate still active for the device that was issued before this one: a
   * rotation retires the old key, and the claim flow's provisional certificate
   * carries it too. A certificate revoked meanwhile settles without revoking. Returns the revoked
   * ids (the replaced one first) to the one caller that settled, an empty list to
   * every other caller and when there is nothing to settle: exactly one writer of
   * the audit lines.
   */
  settleRotation (certificateId: string): Promise<string[]>
  /** new certificates whose grace ended before `before` and are still unsettled, at most `limit` */
  rotationsDue (before: number, limit: number): Promise<string[]>
}
// --- end rotation ---

// --- paginated listing (CONTRACT §8: collections take `limit` and `cursor`) ---
export interface Page<T> {
  readonly items: T[]
  /** opaque; null on the last page */
  readonly nextCursor: string | null
}

/** devices ordered by deviceId */
export interface DeviceQuery {
  readonly status?: DeviceStatus
  readonly template?: string
  /** 1..MAX_PAGE_LIMIT */
  readonly limit: number
  /** nextCursor of the previous page */
  readonly cursor?: string
}

/**
 * Registered certificates (bound to a device; pending ones are not listed), ordered
 * by notAfter (ties by certificateId) when `expiringBefore` is given, else by certificateId.
 */
export interface CertificateQuery {
  readonly deviceId?: string
  /** only certificates with notAfter < this (ms since the epoch) */
  readonly expiringBefore?: number
  readonly status?: CertificateStatus
  /** 1..MAX_PAGE_LIMIT */
  readonly limit: number
  readonly cursor?: string
}

/** the largest page a store hands out; a larger limit is capped to it */
export const MAX_PAGE_LIMIT = 1000

/** the catalogue's refusal of a cursor this store did not hand out for this ordering */
export function invalidCursor (): JitpError {
  return new JitpError('InvalidCursor')
}

/** a whole number in 1..MAX_PAGE_LIMIT (larger is capped); anything else is a caller bug */
export function pageLimit (limit: number): number {
  if (!Number.isInteger(limit) || limit < 1) throw new RangeError(`page limit must be a positive integer, got ${limit}`)
  return Math.min(limit, MAX_PAGE_LIMIT)
}

/**
 * Cursors are base64url of a kind letter and the last item's sort key: `d` a
 * deviceId, `c` a certificateId, `e` an expiry key. A cursor of another kind (from
 * another ordering) or not in canonical base64url is refused, not misread.
 */
export type CursorKind = 'd' | 'c' | 'e'

export function encodeCursor (kind: CursorKind, key: string): string {
  return Buffer.from(kind + key, 'utf8').toString('base64url')
}

/** the sort key after which the page starts, or null for the first page */
export function decodeCursor (kind: CursorKind, cursor: string | undefined): string | null {
  if (cursor === undefined) return null
  const raw = Buffer.from(cursor, 'base64url')
  const text = raw.toString('utf8')
  // Buffer decoding is lenient (it skips what is not base64url): only a canonical round trip counts
  if (cursor.length === 0 || raw.toString('base64url') !== cursor || Buffer.from(text, 'utf8').toString('base64url') !== cursor) throw invalidCursor()
  if (text[0] !== kind || text.length < 2) throw invalidCursor()
  const key = text.slice(1)
  if (kind === 'e' && !EXPIRY_KEY.test(key)) throw invalidCursor()
  return key
}

const EXPIRY_DIGITS = 16
const EXPIRY_KEY = /^\d{16}:.+$/

/** a notAfter as fixed-width digits, so the expiry order is the byte order (the Redis index is lexicographic) */
export function padExpiry (notAfter: number | string): string {
  const digits = String(notAfter)
  return digits.length >= EXPIRY_DIGITS ? digits : '0'.repeat(EXPIRY_DIGITS - digits.length) + digits
}

/** the expiry order's sort key: notAfter, then certificateId */
export function expiryKey (c: { readonly notAfter: number, readonly certificateId: string }): string {
  return `${padExpiry(c.notAfter)}:${c.certificateId}`
}

/**
 * String order as Redis sorts members (bytes of UTF-8, i.e. code points): JS's `<`
 * compares UTF-16 units, which put characters above U+FFFF before U+E000..U+FFFF.
 */
export function byteOrder (a: string, b: string): number {
  const n = Math.min(a.length, b.length)
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i)
    const y = b.charCodeAt(i)
    if (x !== y) return codeUnitRank(x) - codeUnitRank(y)
  }
  return a.length - b.length
}

function codeUnitRank (unit: number): number {
  if (unit >= 0xd800 && unit <= 0xdfff) return unit + 0x2000
  return unit >= 0xe000 ? unit - 0x800 : unit
}

/**
 * A page out of candidates in no order: those after `after` (in byteOrder of
 * their key), sorted, the first `limit`. For stores that hold the records in
 * memory, and for short lists (one device's certificates).
 */
export function pageOf<T> (candidates: Iterable<T>, keyOf: (item: T) => string, kind: CursorKind, after: string | null, limit: number): Page<T> {
  const rest: Array<[string, T]> = []
  for (const item of candidates) {
    const key = keyOf(item)
    if (after === null || byteOrder(key, after) > 0) rest.push([key, item])
  }
  rest.sort(([a], [b]) => byteOrder(a, b))
  const last = rest.length > limit ? rest[limit - 1] : undefined
  return { items: rest.slice(0, limit).map(([, item]) => item), nextCursor: last ? encodeCursor(kind, last[0]) : null }
}

/** whether a registered certificate matches a query's filters (the deviceId filter aside) */
export function certificateMatches (c: CertificateRecord, q: CertificateQuery): boolean {
  return c.deviceId !== null && (q.status === undefined || c.status === q.status) &&
    (q.expiringBefore === undefined || c.notAfter < q.expiringBefore)
}

export function deviceMatches (d: DeviceRecord, q: DeviceQuery): boolean {
  return (q.status === undefined || d.status === q.status) && (q.template === undefined || d.template === q.template)
}

/** the validated shape of a certificate query: its ordering, where it starts, how many */
export function certificatePlan (q: CertificateQuery): { kind: 'c' | 'e', after: string | null, limit: number, keyOf: (c: CertificateRecord) => string } {
  if (q.expiringBefore !== undefined && !Number.isFinite(q.expiringBefore)) throw new RangeError(`expiringBefore must be a number of ms, got ${q.expiringBefore}`)
  const kind = q.expiringBefore === undefined ? 'c' : 'e'
  const limit = pageLimit(q.limit)
  return { kind, after: decodeCursor(kind, q.cursor), limit, keyOf: kind === 'e' ? expiryKey : (c) => c.certificateId }
}
// --- end paginated listing ---

// --- device activity (CONTRACT §8 GET /v1/devices/{id}) ---
/**
 * What the broker saw of a device, batched by plugins/activity.ts. It belongs to
 * the device id: it survives the device's revocation and a registration that
 * replaces the device (an operator looking into a revoked or re-provisioned
 * device wants to know when it was last seen).
 */
export interface DeviceActivity {
  readonly firstSeen: number | null
  readonly lastSeen: number | null
  readonly connects: number
  readonly messagesIn: number
  readonly rejected: number
  readonly lastErrorCode: string | null
  readonly remoteAddress: string | null
  readonly certificateNotAfter: number | null
}

/** what one process saw of one device since its last flush */
export interface ActivityDelta {
  readonly deviceId: string
  /** when it was last seen in this batch */
  readonly seenAt: number
  readonly connects: number
  readonly messagesIn: number
  readonly rejected: number
  readonly lastErrorCode?: string
  readonly remoteAddress?: string
  readonly certificateNotAfter?: number
}
// --- end device activity ---

// --- health verification (CONTRACT §3.7: provisioned → active | quarantined, decided once, on any process) ---
/** a provisioned device's health window: every check must be met before the deadline */
export interface HealthWindow {
  /** when the window closes (ms since the epoch) */
  readonly deadline: number
  /** `connect`, `config` (the template asks for the ack) and one per required topic (`state`, `telemetry`, ...) */
  readonly checks: readonly string[]
}

/** a window and what was met of it; kept for a quarantined device (what it failed), gone once it is active */
export interface HealthProgress extends HealthWindow {
  readonly met: readonly string[]
}

export type HealthCheckOutcome =
  /** met now, others still outstanding */
  | { readonly result: 'recorded' }
  /** the last outstanding check: the device is `active` now. Exactly one caller gets this (the one to audit it) */
  | { readonly result: 'activated' }
  /** nothing changed: not provisioned, not a check of its window, already met, or the window closed */
  | { readonly result: 'ignored' }

export interface HealthChecks {
  getHealth (deviceId: string): Promise<HealthProgress | null>
  /**
   * Atomically marks `check` met for a provisioned device within its window (`at` <=
   * deadline); the last one makes the device `active` (the window is dropped). No
   * notice goes out: an active device has the same rights as a provisioned one, so
   * its live session stays as it is.
   */
  recordHealthCheck (deviceId: string, check: string, at: number): Promise<HealthCheckOutcome>
  /** devices whose window closed before `before`, at most `limit`, soonest first (may name devices no longer provisioned) */
  healthDue (before: number, limit: number): Promise<string[]>
  /**
   * Atomically: a device still provisioned whose window closed at or before `at`
   * becomes `quarantined` (every process told, as setDeviceStatus), and the checks it
   * missed are returned, to exactly one caller; null to every other caller and when
   * there is nothing to do (a device no longer provisioned is dropped from healthDue).
   */
  expireHealth (deviceId: string, at: number): Promise<{ readonly missed: readonly string[] } | null>
}
// --- end health verification ---

export interface Registry extends RevocationList, SessionOwners, Registrations, Rotations, HealthChecks {
  getDevice (deviceId: string): Promise<DeviceRecord | null>
  /** every device, in no particular order (the CLI's and tests' view; the admin API pages) */
  listDevices (): Promise<DeviceRecord[]>
  /** one page of devices, ordered by deviceId; a cursor it did not hand out → InvalidCursor */
  listDevicesPage (q: DeviceQuery): Promise<Page<DeviceRecord>>
  /** one page of registered certificates (see CertificateQuery for the order); a bad cursor → InvalidCursor */
  listCertificatesPage (q: CertificateQuery): Promise<Page<CertificateRecord>>
  /**
   * Quarantines or reinstates a device (CONTRACT §3.7) and tells every broker process
   * through the revocation channel (`{ deviceId, certificateId: null, statusChanged: true }`),
   * so its live sessions can be closed and checked again. null when there is no such
   * device; a revoked device is never un-revoked (its record is returned unchanged), and
   * a device already in that status is returned unchanged without a notice.
   * `provisioned` (a reinstatement) takes the new health window `health`, which replaces
   * any earlier one; `active` drops the window, `quarantined` ends it (kept to be read).
   */
  setDeviceStatus (deviceId: string, status: 'active' | 'quarantined'): Promise<DeviceRecord | null>
  setDeviceStatus (deviceId: string, status: 'provisioned', health: HealthWindow): Promise<DeviceRecord | null>
  /**
   * Adds a batch of activity deltas in one round trip: firstSeen is set once,
   * lastSeen only moves forward, counters add up, the optional fields overwrite.
   */
  recordActivity (deltas: readonly ActivityDelta[]): Promise<void>
  /** null when nothing was ever recorded for the device */
  getActivity (deviceId: string): Promise<DeviceActivity | null>
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
