/**
 * The mutual-TLS listener's options, in one place so the broker and the
 * benchmark's bare-Aedes baseline are served the same way.
 */
import type { TlsOptions } from 'node:tls'
import type { Trust } from './trust.js'

export function tlsServerOptions (trust: Trust, opts: { noDelay?: boolean } = {}): TlsOptions & { noDelay: boolean } {
  return {
    key: trust.serverKeyPem,
    cert: trust.serverCertPem,
    ca: [...trust.caPems],
    requestCert: true,
    rejectUnauthorized: true,
    minVersion: 'TLSv1.2',
    // without it every handshake waits on a delayed ACK (~40 ms)
    noDelay: opts.noDelay ?? true
    // no ALPNProtocols: offers we do not know (AWS SDKs send x-amzn-mqtt-ca) are ignored
  }
}
