/**
 * The listeners' TLS options, in one place so the broker and the
 * benchmark's bare-Aedes baseline are served the same way.
 */
import { constants } from 'node:crypto'
import type { TlsOptions } from 'node:tls'
import { mqttTlsMaterial, type Trust } from './trust.js'

export interface ListenerOptions {
  readonly noDelay?: boolean
  /** TLS 1.3 session tickets for resumption (TLS_SESSION_TICKETS) */
  readonly sessionTickets?: boolean
}

export function tlsServerOptions (trust: Trust, opts: ListenerOptions = {}): TlsOptions & { noDelay: boolean } {
  return {
    // what a certificate reload replaces (listener.reloadTls): keep it in mqttTlsMaterial
    ...mqttTlsMaterial(trust),
    requestCert: true,
    rejectUnauthorized: true,
    minVersion: 'TLSv1.2',
    // Node 20's OpenSSL 3.0 serializes and re-parses the session, client certificate
    // chain included, for each of the two tickets it sends after every handshake:
    // a quarter to a third of a handshake's CPU, for resumptions that a provisioning
    // device (claim certificate, then its own) never makes
    secureOptions: opts.sessionTickets === true ? 0 : constants.SSL_OP_NO_TICKET,
    // without it every handshake waits on a delayed ACK (~40 ms)
    noDelay: opts.noDelay ?? true
    // no ALPNProtocols: offers we do not know (AWS SDKs send x-amzn-mqtt-ca) are ignored
  }
}

/** the token listener's reloadable material (CONTRACT §10): the server certificate only, no client CA */
export function tokenTlsMaterial (trust: Trust): { readonly key: string, readonly cert: string } {
  return { key: trust.serverKeyPem, cert: trust.serverCertPem }
}

/**
 * The token listener's options: the same server certificate, TLS versions and
 * ticket policy, but no client certificate is requested (CONTRACT §10): the MQTT
 * password authenticates. A client that sends one anyway is not asked for it and
 * is not classified by it.
 */
export function tokenTlsServerOptions (trust: Trust, opts: ListenerOptions = {}): TlsOptions & { noDelay: boolean } {
  return {
    ...tokenTlsMaterial(trust),
    requestCert: false,
    rejectUnauthorized: false,
    minVersion: 'TLSv1.2',
    secureOptions: opts.sessionTickets === true ? 0 : constants.SSL_OP_NO_TICKET,
    noDelay: opts.noDelay ?? true
  }
}
