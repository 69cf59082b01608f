/**
 * Tells failed TLS handshakes apart for the audit (CONTRACT §6).
 *
 * What Node 20 (OpenSSL 3.0) really reports on a `tlsClientError`, measured with
 * TLS 1.2 and 1.3 clients against `tlsServerOptions`:
 * - no client certificate: `err.code` ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE;
 * - a certificate that fails verification (expired, not yet valid, unknown CA):
 *   Node verifies after the handshake, sets `socket.authorizationError` to the
 *   OpenSSL verify code (CERT_HAS_EXPIRED, CERT_NOT_YET_VALID,
 *   SELF_SIGNED_CERT_IN_CHAIN, UNABLE_TO_VERIFY_LEAF_SIGNATURE, ...), destroys the
 *   socket, and the error itself only says ECONNRESET "socket hang up" (which is
 *   why every one of them used to be audited as ECONNRESET);
 * - bytes that are not TLS: ERR_SSL_WRONG_VERSION_NUMBER, ERR_SSL_HTTP_REQUEST, ...;
 * - Node's own handshake timer: ERR_TLS_HANDSHAKE_TIMEOUT (it does not close the socket).
 */
import type { TLSSocket } from 'node:tls'
import type { ErrorCode } from '../errors.js'

export interface HandshakeFailure {
  readonly code: ErrorCode
  /** the OpenSSL or Node code behind it: a fixed vocabulary, never client text */
  readonly reason: string
}

const EXPIRED = new Set(['CERT_HAS_EXPIRED', 'CERT_NOT_YET_VALID', 'ERROR_IN_CERT_NOT_BEFORE_FIELD', 'ERROR_IN_CERT_NOT_AFTER_FIELD'])
const UNKNOWN_ISSUER = new Set([
  'UNABLE_TO_GET_ISSUER_CERT', 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'SELF_SIGNED_CERT_IN_CHAIN', 'DEPTH_ZERO_SELF_SIGNED_CERT', 'CERT_UNTRUSTED', 'CERT_SIGNATURE_FAILURE'
])
const NO_CERTIFICATE = /PEER_DID_NOT_RETURN_A_CERTIFICATE$|CERTIFICATE_REQUIRED$/
/** record-layer errors: what arrived was not TLS at all (HTTP, plain MQTT, noise) */
const NOT_TLS = /WRONG_VERSION_NUMBER|HTTPS?_(PROXY_)?REQUEST|UNKNOWN_PROTOCOL|PACKET_LENGTH_TOO_LONG|RECORD_LENGTH_MISMATCH|BAD_PACKET_LENGTH|LENGTH_MISMATCH|DECODE_ERROR|UNEXPECTED_MESSAGE|UNEXPECTED_RECORD|BAD_RECORD_TYPE|EXCESSIVE_MESSAGE_SIZE|LENGTH_TOO_SHORT/
/** codes are upper-case identifiers; anything else is not echoed */
const CODE_SHAPE = /^[A-Z0-9_]{1,64}$/

export function classifyHandshakeFailure (err: Error & { code?: unknown }, socket: TLSSocket): HandshakeFailure {
  const verifyError: unknown = socket.authorizationError
  if (typeof verifyError === 'string' && verifyError !== '') {
    const reason = CODE_SHAPE.test(verifyError) ? verifyError : 'VERIFY_ERROR'
    if (EXPIRED.has(verifyError)) return { code: 'CertificateExpired', reason }
    if (UNKNOWN_ISSUER.has(verifyError)) return { code: 'UnknownIssuer', reason }
    if (verifyError === 'CERT_REVOKED') return { code: 'CertificateRevoked', reason }
    return { code: 'TlsHandshakeFailed', reason }
  }
  const code = typeof err.code === 'string' && CODE_SHAPE.test(err.code) ? err.code : 'UNKNOWN'
  if (code === 'ERR_TLS_HANDSHAKE_TIMEOUT') return { code: 'HandshakeTimeout', reason: code }
  if (NO_CERTIFICATE.test(code)) return { code: 'NoClientCertificate', reason: code }
  if (code.startsWith('ERR_SSL_') && NOT_TLS.test(code)) return { code: 'ProtocolError', reason: code }
  return { code: 'TlsHandshakeFailed', reason: code }
}
