/**
 * The MQTT listeners, mutual TLS (MQTTS_PORT) and token (MQTTS_TOKEN_PORT, see
 * `ListenerKind`), and everything that happens before a connection is
 * authenticated (CONTRACT §11, §6), the same for both:
 *   accept ─▶ admission (MAX_CONNECTIONS, pending per address, connect rate)
 *          ─▶ a handshake slot (MAX_CONCURRENT_HANDSHAKES, listener/admission.ts)
 *          ─▶ TLS handshake within TLS_HANDSHAKE_TIMEOUT_MS
 *          ─▶ packet-size guard on the TLS socket ─▶ Aedes (CONNECT within CONNECT_TIMEOUT_MS)
 * Refusals on the way are audited through one aggregating log, so a flood costs
 * a handful of lines. Authentication itself stays in `broker/chain.ts`.
 *
 * Node's tls.Server does not close a TCP connection that never completes its
 * handshake: its `handshakeTimeout` only emits `tlsClientError`. So the deadline
 * is ours, on the raw TCP socket, from the `connection` event to `secureConnection`.
 */
import type { Aedes, Client } from 'aedes'
import type { AddressInfo, Socket } from 'node:net'
import { createServer, type Server as TlsServer, type TLSSocket } from 'node:tls'
import type { Audit } from './audit.js'
import type { Config } from './config.js'
import { Errors, isJitpError } from './errors.js'
import { Admission, HandshakeGate } from './listener/admission.js'
import { classifyHandshakeFailure } from './listener/handshake-failure.js'
import { guardPackets, type FixedHeaderScanner, type GuardVerdict } from './listener/packet-guard.js'
import { createRefusalLog } from './listener/refusal-log.js'
import type { AppLogger } from './logger.js'
import type { Metrics } from './metrics.js'
import { markTokenSocket, stateOf } from './session.js'
import { tlsServerOptions, tokenTlsMaterial, tokenTlsServerOptions } from './tls.js'
import { mqttTlsMaterial, type Trust } from './trust.js'

/** the error Aedes' client emits when its connectTimeout fires (aedes/lib/client.js) */
const AEDES_CONNECT_TIMEOUT = 'connect did not arrive in time'
/** mqtt-packet's messages are fixed texts; anything else is not echoed into the audit */
const PARSER_MESSAGE = /^[A-Za-z0-9 ,.'=<>-]{1,120}$/

export interface ListenerContext {
  readonly config: Config
  readonly trust: Trust
  readonly broker: Aedes
  readonly audit: Audit
  readonly metrics: Metrics
  readonly log: AppLogger
}

export interface Listener {
  readonly server: TlsServer
  listen (port: number, host: string): Promise<number>
  /**
   * Serves new handshakes with the trust's current server certificate, key and CAs
   * (after a reload of CERTS_DIR); connections already up keep theirs.
   */
  reloadTls (): void
  /** stops accepting, drops every unauthenticated connection, flushes the aggregated audit */
  close (): Promise<void>
}

/** one accepted TCP connection, from accept to close */
interface Connection {
  readonly raw: Socket
  readonly address: string
  tls: TLSSocket | null
  handshakeTimer: NodeJS.Timeout | null
  /** authenticated (Aedes registered the client), or closed: no longer pending */
  settled: boolean
  authenticated: boolean
  /** its raw socket closed and the counts were taken down */
  closed: boolean
}

function noop (): void {}

/**
 * The TCP socket under a server-side TLSSocket. Node's tls.Server builds the
 * TLSSocket before it emits `connection`, and links it only through this
 * long-standing internal property (lib/_tls_wrap.js).
 */
function rawSocketOf (socket: TLSSocket): Socket | undefined {
  return (socket as unknown as { _parent?: Socket | null })._parent ?? undefined
}

function clientOf (socket: TLSSocket): Client | undefined {
  return (socket as unknown as { client?: Client }).client
}

/** the limits at accept (CONTRACT §11), one for every MQTT listener of a process (MAX_CONNECTIONS counts them all); HTTP_PORT has one of its own, with HTTP_MAX_CONNECTIONS */
export function createAdmission (config: Config, maxConnections: number = config.maxConnections): Admission {
  return new Admission({
    maxConnections,
    maxPendingPerAddress: config.maxPendingConnectionsPerAddress,
    connectRatePerAddress: config.connectRatePerAddress
  })
}

export interface ListenerKind {
  /**
   * certificate (MQTTS_PORT, the default): a client certificate is required and authenticates;
   * token (MQTTS_TOKEN_PORT, CONTRACT §10): none is asked for, the MQTT password authenticates
   * (plugins/token-identity.ts). Everything else of this file applies to both alike.
   */
  readonly auth?: 'certificate' | 'token'
  /** shared with the other listener, so the limits hold across both; default: one of its own */
  readonly admission?: Admission
}

export function createListener (ctx: ListenerContext, kind: ListenerKind = {}): Listener {
  const { config, broker, audit, metrics } = ctx
  const tokens = kind.auth === 'token'
  const admission = kind.admission ?? createAdmission(config)
  const refusals = createRefusalLog(audit, metrics)
  const live = new Set<Connection>()
  const byRaw = new WeakMap<Socket, Connection>()
  const byTls = new WeakMap<TLSSocket, Connection>()
  /** raw sockets the listener closed and already audited: their `tlsClientError` is an echo */
  const silenced = new WeakSet<Socket>()
  const openGauge = metrics.level('listenerConnections', 'open')
  const pendingGauge = metrics.level('listenerConnections', 'pending')

  const tlsOptions = { sessionTickets: config.tlsSessionTickets }
  const server = createServer(tokens ? tokenTlsServerOptions(ctx.trust, tlsOptions) : tlsServerOptions(ctx.trust, tlsOptions))
  const handshakeGauges = { running: metrics.level('handshakes', 'running'), waiting: metrics.level('handshakes', 'waiting') }
  // a reconnect storm's handshakes are spread over time (MAX_CONCURRENT_HANDSHAKES): the gate starts each one's TLS
  const handshakes = new HandshakeGate(server, {
    maxConcurrent: config.maxConcurrentHandshakes,
    turnBudgetMs: config.handshakeTurnBudgetMs,
    onChange (running, waiting) {
      handshakeGauges.running.set(running)
      handshakeGauges.waiting.set(waiting)
    },
    onRefused: refuseHandshake
  })
  server.on('connection', accept)
  server.on('secureConnection', handshakeDone)
  server.on('tlsClientError', handshakeFailed)
  broker.on('client', authenticated)
  broker.on('connectionError', connectionFailed)

  function accept (raw: Socket): void {
    // the TLS socket on top reports the errors; the raw one must not crash the process
    raw.on('error', noop)
    const address = raw.remoteAddress ?? 'unknown'
    const refusal = admission.admit(address)
    if (refusal !== null) {
      silenced.add(raw)
      raw.destroy()
      refusals.refuse(address, refusal)
      return
    }
    openGauge.inc()
    pendingGauge.inc()
    const conn: Connection = { raw, address, tls: null, handshakeTimer: null, settled: false, authenticated: false, closed: false }
    conn.handshakeTimer = setTimeout(handshakeExpired, config.tlsHandshakeTimeoutMs, conn)
    live.add(conn)
    byRaw.set(raw, conn)
    // one listener function for every connection, no closure per socket ('close' comes once)
    raw.on('close', rawClosed)
    if (handshakes.admit(raw) === 'refused') refuseHandshake(raw)
  }

  /** too many connections wait for a handshake slot: closed before any TLS work */
  function refuseHandshake (raw: Socket): void {
    silenced.add(raw)
    raw.destroy()
    refusals.refuse(byRaw.get(raw)?.address, 'TooManyHandshakes')
  }

  function handshakeExpired (conn: Connection): void {
    conn.handshakeTimer = null
    silenced.add(conn.raw)
    conn.raw.destroy()
    refusals.refuse(conn.address, 'HandshakeTimeout')
  }

  function handshakeDone (socket: TLSSocket): void {
    const raw = rawSocketOf(socket)
    const conn = raw && byRaw.get(raw)
    if (!conn) {
      // not accepted through `accept` (cannot happen with Node 20): do not serve it unguarded
      socket.destroy()
      return
    }
    if (conn.handshakeTimer) clearTimeout(conn.handshakeTimer)
    conn.handshakeTimer = null
    handshakes.done(conn.raw)
    conn.tls = socket
    byTls.set(socket, conn)
    // the chain reads the password of these, and never a certificate (broker/chain/connect.ts, classifyPeer)
    if (tokens) markTokenSocket(socket)
    guardPackets(socket, config.maxPacketBytes, oversizeOrMalformed, conn)
    // Aedes' connectTimeout (CONNECT_TIMEOUT_MS, set in build.ts) runs from here
    broker.handle(socket)
  }

  function handshakeFailed (err: Error & { code?: unknown }, socket: TLSSocket): void {
    const raw = rawSocketOf(socket)
    if (raw) handshakes.done(raw)
    if (raw && silenced.has(raw)) return
    if (raw) silenced.add(raw)
    const failure = classifyHandshakeFailure(err, socket)
    refusals.refuse(raw ? byRaw.get(raw)?.address : undefined, failure.code, failure.reason)
    // Node's own handshake timeout reports without closing
    if (!socket.destroyed) socket.destroy()
  }

  function oversizeOrMalformed (verdict: Exclude<GuardVerdict, 'ok'>, scanner: FixedHeaderScanner, conn: Connection): void {
    silenced.add(conn.raw)
    const reason = verdict === 'PacketTooLarge'
      ? `packet of ${scanner.announced} bytes announced, limit ${scanner.beforeFirstPacket ? 'for CONNECT ' : ''}exceeded`
      : Errors.ProtocolError.message
    if (!conn.authenticated) return refusals.refuse(conn.address, verdict, reason)
    const client = conn.tls ? clientOf(conn.tls) : undefined
    const identity = stateOf(client)?.identity
    metrics.connectionsClosed.inc({ reason: verdict })
    audit.write('connection.closed', {
      clientId: client?.id ?? undefined,
      deviceId: identity?.role === 'device' ? identity.name ?? undefined : undefined,
      role: identity?.role,
      remoteAddress: conn.address,
      errorCode: verdict,
      reason
    }, 'warn')
  }

  function authenticated (client: Client): void {
    const conn = byTls.get(client.conn as TLSSocket)
    if (!conn) return
    conn.authenticated = true
    // a claim session (the public claim certificate, a symmetric-key enrollment) names nobody: it keeps its
    // place in its address's MAX_PENDING_CONNECTIONS_PER_ADDRESS until it closes. Settled like any other,
    // one address with the claim certificate held CONNACK'd sessions up to MAX_CONNECTIONS, and every
    // device was refused at accept
    if (stateOf(client)?.identity?.role === 'claim') return
    settle(conn)
  }

  /** Aedes reports a connection that failed before its CONNECT was through */
  function connectionFailed (client: Client, err: Error & { code?: unknown }): void {
    const socket = client.conn as TLSSocket
    const conn = byTls.get(socket)
    if (!conn || conn.authenticated || silenced.has(conn.raw)) return
    // the chain audits its own refusals; a system error is a client that went away
    if (isJitpError(err) || typeof err.code === 'string') return
    silenced.add(conn.raw)
    if (err.message === AEDES_CONNECT_TIMEOUT) {
      refusals.refuse(conn.address, 'ConnectTimeout')
    } else {
      refusals.refuse(conn.address, 'ProtocolError', PARSER_MESSAGE.test(err.message) ? err.message : Errors.ProtocolError.message)
    }
    // Aedes destroys it in _onError; make sure, whatever its version does
    if (!socket.destroyed) socket.destroy()
  }

  function settle (conn: Connection): void {
    if (conn.settled) return
    conn.settled = true
    admission.settle(conn.address)
    pendingGauge.dec()
  }

  function rawClosed (this: Socket): void {
    const conn = byRaw.get(this)
    if (conn) closed(conn)
  }

  function closed (conn: Connection): void {
    // counted down once, whatever emits 'close' (the listener is `on`, not `once`)
    if (conn.closed) return
    conn.closed = true
    if (conn.handshakeTimer) clearTimeout(conn.handshakeTimer)
    conn.handshakeTimer = null
    handshakes.done(conn.raw)
    settle(conn)
    admission.closed()
    openGauge.dec()
    live.delete(conn)
  }

  return {
    server,
    reloadTls () {
      // only the context's material: requestCert, rejectUnauthorized and the options stay the server's
      server.setSecureContext(tokens ? tokenTlsMaterial(ctx.trust) : mqttTlsMaterial(ctx.trust))
    },
    listen (port, host) {
      return new Promise((resolve, reject) => {
        server.once('error', reject)
        server.listen(port, host, () => {
          server.off('error', reject)
          resolve((server.address() as AddressInfo).port)
        })
      })
    },
    async close () {
      broker.off('client', authenticated)
      broker.off('connectionError', connectionFailed)
      const closing = new Promise<void>((resolve) => server.close(() => resolve()))
      // authenticated clients are Aedes' to close (broker.close); nobody else will close these
      for (const conn of live) {
        if (conn.authenticated) continue
        silenced.add(conn.raw)
        if (conn.tls) conn.tls.destroy()
        else conn.raw.destroy()
      }
      await closing
      handshakes.close()
      refusals.close()
    }
  }
}
