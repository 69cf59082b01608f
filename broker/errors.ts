/**
 * The one error catalogue. Every refusal the broker can hand out is declared
 * here once, with what a device sees (CONNACK return code or provisioning
 * status) and a stable code ops can grep for in the audit log.
 */

export interface CatalogueEntry {
  readonly code: string
  readonly message: string
  /** MQTT 3.1.1 CONNACK return code, for connect refusals */
  readonly connack?: number
  /** provisioning reply statusCode, for $provision rejections */
  readonly statusCode?: 400 | 403 | 404 | 429 | 500
  /** admin API (CONTRACT §8) HTTP status, when it differs from statusCode; see httpStatusOf */
  readonly httpStatus?: 400 | 403 | 404 | 409 | 503
}

function entry<const C extends string> (code: C, message: string, extra: Omit<CatalogueEntry, 'code' | 'message'> = {}): CatalogueEntry & { code: C } {
  return Object.freeze({ code, message, ...extra })
}

export const Errors = Object.freeze({
  // connect (identity)
  NoClientCertificate: entry('NoClientCertificate', 'no verified client certificate', { connack: 5 }),
  UnknownIssuer: entry('UnknownIssuer', 'certificate issuer is not a configured CA', { connack: 5 }),
  UnknownCertificate: entry('UnknownCertificate', 'certificate is not registered', { connack: 5 }),
  CertificateRevoked: entry('CertificateRevoked', 'certificate is revoked', { connack: 5, httpStatus: 403 }),
  DeviceUnknown: entry('DeviceUnknown', 'device is not registered', { connack: 5 }),
  DeviceRevoked: entry('DeviceRevoked', 'device is revoked', { connack: 5, httpStatus: 409 }),
  ClientIdMismatch: entry('ClientIdMismatch', 'client id must equal the device id', { connack: 2 }),
  ClaimSessionNotClean: entry('ClaimSessionNotClean', 'claim sessions must be clean sessions', { connack: 5 }),
  CertificateExpired: entry('CertificateExpired', 'client certificate is expired or not yet valid', { connack: 5 }),
  TlsHandshakeFailed: entry('TlsHandshakeFailed', 'TLS handshake failed'),
  HandshakeTimeout: entry('HandshakeTimeout', 'TLS handshake not completed in time'),
  ConnectTimeout: entry('ConnectTimeout', 'no CONNECT in time after the handshake'),
  TooManyConnections: entry('TooManyConnections', 'connection limit reached'),
  TooManyPendingConnections: entry('TooManyPendingConnections', 'too many unauthenticated connections from this address'),
  ConnectRateExceeded: entry('ConnectRateExceeded', 'too many connects from this address'),
  // MAX_CONCURRENT_HANDSHAKES (broker/listener/admission.ts): refused fast when too many wait for a handshake slot
  TooManyHandshakes: entry('TooManyHandshakes', 'too many TLS handshakes waiting'),
  PacketTooLarge: entry('PacketTooLarge', 'packet exceeds the size limit'),
  ProtocolError: entry('ProtocolError', 'malformed MQTT packet'),
  MalformedUtf8: entry('MalformedUtf8', 'string is not well-formed UTF-8 or contains U+0000'),
  UnsupportedProtocolVersion: entry('UnsupportedProtocolVersion', 'only MQTT 3.1.1 (and 3.1) is supported', { connack: 1 }),
  ClientIdRequired: entry('ClientIdRequired', 'a persistent session needs a client id', { connack: 2 }),
  ClientIdInUse: entry('ClientIdInUse', 'client id belongs to another identity', { connack: 2, statusCode: 403 }),
  ConnectionClosed: entry('ConnectionClosed', 'the connection closed before its CONNECT was handled'),
  KeepaliveTimeout: entry('KeepaliveTimeout', 'no packet within 1.5 times the keep-alive [MQTT-3.1.2-24]'),
  SessionRevalidated: entry('SessionRevalidated', 'session no longer valid on re-validation'),
  CrlInvalid: entry('CrlInvalid', 'CRL is malformed or not signed by its role CA; ignored'),
  StoreUnavailable: entry('StoreUnavailable', 'registry unavailable', { connack: 3, httpStatus: 503 }),
  // authorization
  PublishDenied: entry('PublishDenied', 'no rule allows this publish'),
  SubscribeDenied: entry('SubscribeDenied', 'no rule allows this subscription'),
  SysTopicReserved: entry('SysTopicReserved', '$SYS topics are reserved'),
  ReservedTopic: entry('ReservedTopic', 'topics beginning with $ are reserved to the broker'),
  // payload validation (CONTRACT §5)
  NoSchema: entry('NoSchema', 'no schema is mapped to this topic'),
  InvalidJson: entry('InvalidJson', 'payload is not valid UTF-8 JSON'),
  PayloadTooLarge: entry('PayloadTooLarge', 'payload exceeds the size limit'),
  SchemaViolation: entry('SchemaViolation', 'payload does not match the topic schema'),
  TooManyBadPayloads: entry('TooManyBadPayloads', 'too many rejected payloads, disconnected'),
  // flow control
  SessionQueueFull: entry('SessionQueueFull', 'session queue full, message not stored for this client'),
  SlowConsumer: entry('SlowConsumer', 'client does not read fast enough, disconnected'),
  PublishNotStored: entry('PublishNotStored', 'message could not be stored, not acknowledged'),
  // provisioning (CONTRACT §3)
  InvalidRequest: entry('InvalidRequest', 'request payload is invalid', { statusCode: 400 }),
  InvalidCsr: entry('InvalidCsr', 'certificate signing request is invalid', { statusCode: 400 }),
  InvalidCertificateOwnershipToken: entry('InvalidCertificateOwnershipToken', 'certificate ownership token is invalid, used or expired', { statusCode: 400 }),
  TemplateNotFound: entry('TemplateNotFound', 'provisioning template not found', { statusCode: 404 }),
  InvalidParameters: entry('InvalidParameters', 'template parameters are invalid', { statusCode: 400 }),
  ProvisioningDenied: entry('ProvisioningDenied', 'pre-provisioning check refused the request', { statusCode: 403 }),
  DeviceExists: entry('DeviceExists', 'a device with this id is already registered', { statusCode: 400 }),
  Throttled: entry('Throttled', 'too many requests', { statusCode: 429 }),
  RotationNotAllowed: entry('RotationNotAllowed', 'only a connected device may rotate its certificate', { statusCode: 403 }),
  InternalError: entry('InternalError', 'internal error', { statusCode: 500, connack: 3 }),
  // admin API (CONTRACT §8)
  AdminCertificateRequired: entry('AdminCertificateRequired', 'a client certificate from the admin CA is required', { httpStatus: 403 }),
  NotFound: entry('NotFound', 'no such resource', { httpStatus: 404 }),
  DeviceNotFound: entry('DeviceNotFound', 'no such device', { httpStatus: 404 }),
  InvalidCursor: entry('InvalidCursor', 'cursor is malformed or from another listing', { httpStatus: 400 }),
  // configuration lifecycle (CONTRACT §9)
  InvalidConfiguration: entry('InvalidConfiguration', 'configuration is invalid', { httpStatus: 400 }),
  VersionNotFound: entry('VersionNotFound', 'no such configuration version in the history', { httpStatus: 404 }),
  NoLastKnownGood: entry('NoLastKnownGood', 'the device has no version acknowledged as applied to roll back to', { httpStatus: 409 }),
  RolloutNotFound: entry('RolloutNotFound', 'no such rollout', { httpStatus: 404 }),
  RolloutStateConflict: entry('RolloutStateConflict', 'the rollout is not in a state that allows this', { httpStatus: 409 }),
  // token listener (CONTRACT §10, §3.6): every refusal is CONNACK 5 with its own audit reason
  TokenRequired: entry('TokenRequired', 'no token in the password', { connack: 5 }),
  TokenMalformed: entry('TokenMalformed', 'token is not a well-formed JWT', { connack: 5 }),
  TokenExpired: entry('TokenExpired', 'token is expired', { connack: 5 }),
  TokenNotYetValid: entry('TokenNotYetValid', 'token is not yet valid', { connack: 5 }),
  TokenLifetimeTooLong: entry('TokenLifetimeTooLong', 'token expires further ahead than the broker accepts', { connack: 5 }),
  TokenBadSignature: entry('TokenBadSignature', 'token signature does not verify', { connack: 5 }),
  TokenUnknownKey: entry('TokenUnknownKey', 'token key id is not in the key set', { connack: 5 }),
  TokenAlgorithmNotAllowed: entry('TokenAlgorithmNotAllowed', 'token algorithm is not allowed', { connack: 5 }),
  TokenWrongIssuer: entry('TokenWrongIssuer', 'token issuer is not trusted', { connack: 5 }),
  TokenWrongAudience: entry('TokenWrongAudience', 'token audience does not include this broker', { connack: 5 }),
  TokenNoScope: entry('TokenNoScope', 'token scopes allow nothing', { connack: 5 }),
  TokenKeysUnavailable: entry('TokenKeysUnavailable', 'token verification keys are unavailable', { connack: 3 }),
  UnknownClient: entry('UnknownClient', 'unknown OAuth2 client', { connack: 5, httpStatus: 404 }),
  BadClientSecret: entry('BadClientSecret', 'client secret does not match', { connack: 5 }),
  BadSas: entry('BadSas', 'shared access signature is invalid, expired or for another registration id', { connack: 5 }),
  EnrollmentGroupNotFound: entry('EnrollmentGroupNotFound', 'no such enrollment group', { connack: 5, httpStatus: 404 }),
  ClientNotFound: entry('ClientNotFound', 'no such OAuth2 client', { httpStatus: 404 }),
  // POST /oauth/token (RFC 6749 §5.2 answers; broker/token-endpoint.ts maps them)
  UnsupportedGrantType: entry('UnsupportedGrantType', 'only grant_type=client_credentials is supported'),
  InvalidScope: entry('InvalidScope', 'requested scope is unknown or not granted to this client'),
  // personal data (CONTRACT §5)
  PiiDetected: entry('PiiDetected', 'personal data detected in an unannotated field'),
  // start-up
  InvalidConfig: entry('InvalidConfig', 'invalid configuration')
})

export type ErrorCode = keyof typeof Errors

/** An Error that carries its catalogue entry; Aedes reads `returnCode` for CONNACK. */
export class JitpError extends Error {
  readonly code: ErrorCode
  readonly returnCode: number | undefined
  readonly statusCode: number | undefined
  readonly detail: string | undefined

  constructor (code: ErrorCode, detail?: string) {
    const e = Errors[code]
    super(detail ? `${e.message}: ${detail}` : e.message)
    this.name = 'JitpError'
    this.code = code
    this.returnCode = e.connack
    this.statusCode = e.statusCode
    this.detail = detail
  }
}

/** the HTTP status the admin API answers a refusal with */
export function httpStatusOf (code: ErrorCode): number {
  const e: CatalogueEntry = Errors[code]
  return e.httpStatus ?? e.statusCode ?? 500
}

/** The audit fields of a refusal, from the catalogue: `{ errorCode, reason }`. */
export function refusalFields (code: ErrorCode, detail?: string): { errorCode: ErrorCode, reason: string } {
  const e = Errors[code]
  return { errorCode: code, reason: detail ? `${e.message}: ${detail}` : e.message }
}

export function isJitpError (err: unknown): err is JitpError {
  return err instanceof JitpError
}
