/**
 * The DER of a TLS peer's leaf certificate, as cheaply as Node 20 allows.
 *
 * Why not the obvious APIs: `getPeerCertificate()` builds the whole legacy object
 * (subject and issuer objects, the public key, three fingerprints) in C++ on every
 * call: 90–120 µs per fresh socket on the bench machine, some 4 % of a connect.
 * `getPeerX509Certificate()` costs more on first use and grew a Node 20 TLS
 * server's RSS by ~5 KB per connection without a plateau (docs/SECURITY.md).
 *
 * What this reads instead: the server's own SSL_SESSION, serialised by OpenSSL
 * (`getSession()`, ~35 µs). Its ASN.1 (OpenSSL's ssl/ssl_asn1.c, unchanged since
 * 0.9.8) is a SEQUENCE whose field `[3] EXPLICIT Certificate` is the peer's leaf,
 * encoded by the same `i2d_X509` of the same certificate that gives
 * `getPeerCertificate().raw`, so its SHA-256 is the same certificate id. The walk
 * below reads only tags and lengths, within bounds; anything unexpected answers
 * null and the caller falls back to `getPeerCertificate()`. The serialised session
 * also holds the session's master key: the buffer is zeroed before this returns,
 * the certificate copied out.
 */
import type { TLSSocket } from 'node:tls'

/** the tag of OpenSSL's SSL_SESSION `peer` field: context-specific, constructed, number 3 */
const PEER_TAG = 0xa3
const SEQUENCE = 0x30

interface Tlv { readonly tag: number, readonly header: number, readonly length: number }

/** a DER tag-length header at `at`, or null when it does not fit in `end` (short and long form up to 4 length bytes) */
function tlvAt (b: Buffer, at: number, end: number): Tlv | null {
  if (at + 2 > end) return null
  const tag = b[at]!
  // only single-byte tags occur in an SSL_SESSION; a multi-byte one means this is not one
  if ((tag & 0x1f) === 0x1f) return null
  const first = b[at + 1]!
  if (first < 0x80) return at + 2 + first <= end ? { tag, header: 2, length: first } : null
  const bytes = first & 0x7f
  if (bytes === 0 || bytes > 4 || at + 2 + bytes > end) return null
  let length = 0
  for (let i = 0; i < bytes; i++) length = length * 256 + b[at + 2 + i]!
  const header = 2 + bytes
  return at + header + length <= end ? { tag, header, length } : null
}

/** the `peer` field's certificate inside a serialised SSL_SESSION, copied out; null if there is none or the shape is unexpected */
export function peerCertificateFromSession (session: Buffer): Buffer | null {
  const outer = tlvAt(session, 0, session.length)
  if (outer?.tag !== SEQUENCE) return null
  const end = outer.header + outer.length
  for (let at = outer.header; at < end;) {
    const field = tlvAt(session, at, end)
    if (field === null) return null
    if (field.tag === PEER_TAG) {
      const start = at + field.header
      const cert = tlvAt(session, start, start + field.length)
      // exactly one Certificate SEQUENCE fills the explicit tag
      if (cert?.tag !== SEQUENCE || cert.header + cert.length !== field.length) return null
      return Buffer.from(session.subarray(start, start + field.length))
    }
    at += field.header + field.length
  }
  return null
}

/** the peer's leaf certificate (DER) of an authorised TLS socket, or null when it sent none */
export function peerCertificateDer (socket: TLSSocket): Buffer | null {
  // both calls answer null (not undefined, whatever the types say) once the socket's handle is gone
  const session = socket.getSession() as Buffer | null | undefined
  if (session != null) {
    try {
      const der = peerCertificateFromSession(session)
      if (der !== null) return der
    } finally {
      session.fill(0)
    }
  }
  const legacy = socket.getPeerCertificate(false) as ReturnType<TLSSocket['getPeerCertificate']> | null
  const raw = legacy?.raw as Buffer | undefined
  return raw !== undefined && raw.length > 0 ? raw : null
}
