/**
 * The connect flow, run in Aedes' preConnect, in this order:
 *   connectActions = [auditUnsupportedProtocol, refuseMalformedStrings, clampKeepAlive,
 *     classifyPeer, requireClientId, resolveIdentity, runConnectedHooks, vetWill]
 * Each step is a named function over one connect request and answers: go on to the
 * next step, hand the connect to Aedes now, or close the connection with an error.
 * A refusal that must be answered with a CONNACK code is kept in `refusals` and
 * answered in `authenticate`, Aedes' next hook.
 */
import type { Client, ConnectPacket, PublishPacket } from 'aedes'
import { TLSSocket } from 'node:tls'
import { Errors, JitpError, type ErrorCode } from '../errors.js'
import { isMalformedMqttString } from '../mqtt-strings.js'
import type { AuthenticateAnswer, AuthenticateEvent } from '../plugin.js'
import { isTokenSocket, setState, stateOf, type ConnectionState, type PeerCertificate } from '../session.js'
import type { CertificateRecords, Registry } from '../store/registry.js'
import { auditFields } from './audit-fields.js'
import type { ChainContext } from './context.js'
import { auditRefusal, vet } from './publish.js'

interface ConnectRequest {
  readonly chain: ChainContext
  readonly client: Client
  readonly packet: ConnectPacket
  readonly remoteAddress: string
  /** set by classifyPeer */
  state: ConnectionState | null
  readonly done: (err: Error | null, ok: boolean) => void
}

/**
 * 'next': go on; 'handOver': let Aedes go on with the connect now (a refusal kept in
 * `refusals` is answered in authenticate); an Error: close the connection, no CONNACK.
 */
type ConnectAnswer = 'next' | 'handOver' | JitpError
type ConnectStep = (req: ConnectRequest) => ConnectAnswer | Promise<ConnectAnswer>

const connectActions: readonly ConnectStep[] = [
  auditUnsupportedProtocol,
  refuseMalformedStrings,
  clampKeepAlive,
  classifyPeer,
  requireClientId,
  resolveIdentity,
  runConnectedHooks,
  vetWill
]

export function preConnect (chain: ChainContext, client: Client, packet: ConnectPacket, done: (err: Error | null, ok: boolean) => void): void {
  runConnectActions({ chain, client, packet, remoteAddress: remoteAddressOf(client), state: null, done }, 0)
}

/** synchronous steps run synchronously; the series waits only on a step that returns a promise */
function runConnectActions (req: ConnectRequest, from: number): void {
  for (let i = from; i < connectActions.length; i++) {
    const answer = connectActions[i]!(req)
    if (answer === 'next') continue
    if (answer instanceof Promise) {
      answer.then(function stepAnswered (later) {
        if (later === 'next') runConnectActions(req, i + 1)
        else finishConnect(req, later)
      })
      return
    }
    return finishConnect(req, answer)
  }
  finishConnect(req, 'handOver')
}

function finishConnect (req: ConnectRequest, answer: 'handOver' | JitpError): void {
  // preConnect must fail with an Error, or Aedes leaves the socket open
  if (answer === 'handOver') req.done(null, true)
  else req.done(answer, false)
}

function remoteAddressOf (client: Client): string {
  const conn = client.conn
  if (!(conn instanceof TLSSocket)) return 'unknown'
  // the TCP socket under it (Node's internal `_parent`, as broker/listener.ts reads it) knows
  // its address already (the listener asked at accept); the TLS socket would ask the kernel again
  const raw = (conn as unknown as { _parent?: { remoteAddress?: string } | null })._parent
  return raw?.remoteAddress ?? conn.remoteAddress ?? 'unknown'
}

/** a connect refused before anyone is identified: no state, no identity */
function refuseEarly (req: ConnectRequest, code: ErrorCode): void {
  const { audit, metrics } = req.chain.ctx
  metrics.connectRefusals.inc({ reason: code })
  audit.refusal('connect.refused', { clientId: req.packet.clientId, remoteAddress: req.remoteAddress, errorCode: code, reason: Errors[code].message }, 'warn')
}

function auditUnsupportedProtocol (req: ConnectRequest): ConnectAnswer {
  const version = req.packet.protocolVersion
  if (version === 4 || version === 3) return 'next'
  // MQTT 5 (AWS's current SDK sample sends it): let it through, and Aedes' own
  // init answers CONNACK 1 and closes [MQTT-3.1.2-2]; the audit line and the count are ours
  refuseEarly(req, 'UnsupportedProtocolVersion')
  return 'handOver'
}

function refuseMalformedStrings (req: ConnectRequest): ConnectAnswer {
  const packet = req.packet
  if (isMalformedMqttString(packet.clientId) || (packet.will !== undefined && packet.will !== null && isMalformedMqttString(packet.will.topic))) {
    // [MQTT-1.5.3-1], [MQTT-1.5.3-2]: closed, no CONNACK (see broker/mqtt-strings.ts)
    refuseEarly(req, 'MalformedUtf8')
    return new JitpError('MalformedUtf8')
  }
  return 'next'
}

function clampKeepAlive (req: ConnectRequest): ConnectAnswer {
  // a silent client is cut after 1.5 × keep-alive [MQTT-3.1.2-24], and 0 would mean never:
  // clamped here, before Aedes' setKeepAlive reads the packet (its keepaliveLimit refuses instead)
  const maxKeepalive = req.chain.ctx.config.maxKeepaliveSeconds
  const keepalive = req.packet.keepalive ?? 0
  if (keepalive === 0 || keepalive > maxKeepalive) req.packet.keepalive = maxKeepalive
  return 'next'
}

/**
 * Which CA issued the client certificate; the connection's state starts here. A
 * token-listener connection has none (it was never asked for one): its password
 * authenticates, in resolveIdentity (CONTRACT §10).
 */
function classifyPeer (req: ConnectRequest): ConnectAnswer {
  const ctx = req.chain.ctx
  const conn = req.client.conn
  const peer = conn instanceof TLSSocket ? ctx.trust.classify(conn) : null
  if (peer === null && isTokenSocket(conn) && !conn.destroyed) {
    const state: ConnectionState = { peer: null, remoteAddress: req.remoteAddress, connectedAt: ctx.now(), identity: null, rules: null, offences: 0, offenceWindowStart: ctx.now() }
    setState(req.client, state)
    req.state = state
    return 'next'
  }
  if (peer === null) {
    // a socket that died while its CONNECT waited (fuzzers, aborted connects) has no
    // peer certificate any more: that is not an unknown issuer, and must not read as one
    const code: ErrorCode = conn instanceof TLSSocket && conn.destroyed ? 'ConnectionClosed' : 'UnknownIssuer'
    refuseEarly(req, code)
    return new JitpError(code)
  }
  const state: ConnectionState = { peer, remoteAddress: req.remoteAddress, connectedAt: ctx.now(), identity: null, rules: null, offences: 0, offenceWindowStart: ctx.now() }
  setState(req.client, state)
  req.state = state
  return 'next'
}

function requireClientId (req: ConnectRequest): ConnectAnswer {
  if (req.packet.clientId === '' && req.packet.clean === false) {
    // [MQTT-3.1.3-8]: a persistent session needs a client id. Aedes names the client
    // `aedes_<uuid>` before authenticate, so the refusal is kept here and answered
    // there, with CONNACK 2
    req.chain.refusals.set(req.client, new JitpError('ClientIdRequired'))
    return 'handOver'
  }
  return 'next'
}

function resolveIdentity (req: ConnectRequest): Promise<ConnectAnswer> {
  const { chain, client } = req
  const state = req.state!
  return askAuthenticators(req, state).then(function identityResolved (answer): ConnectAnswer {
    if (answer.verdict === 'allow') {
      state.identity = answer.identity
      return 'next'
    }
    if (answer.verdict === 'deny') chain.refusals.set(client, new JitpError(answer.code, answer.detail))
    return 'handOver'
  }, function identityFailed (err: unknown) {
    // An authenticator that throws is the store being down only when the store
    // does not answer: asked, not guessed from the error (ioredis has several
    // shapes of "unavailable"). Anything else is a fault of ours: InternalError,
    // audited as such, CONNACK 3 either way.
    return chain.ctx.registry.ping().catch(() => false).then(function storeChecked (storeUp): ConnectAnswer {
      chain.ctx.log[storeUp ? 'error' : 'warn']({ err }, storeUp ? 'authenticator failed' : 'identity lookup failed: store unavailable')
      chain.refusals.set(client, new JitpError(storeUp ? 'InternalError' : 'StoreUnavailable'))
      return 'handOver'
    })
  })
}

/**
 * The store's records of a certificate, read once per connect, when first asked:
 * revocation and identity share one round trip (registry.certificateRecords).
 * First asked by the revocation plugin, after it noted the epoch its check starts under.
 */
function recordsOnce (registry: Registry, peer: PeerCertificate): () => Promise<CertificateRecords> {
  let read: Promise<CertificateRecords> | undefined
  return function records () {
    read ??= registry.certificateRecords({ certificateId: peer.certificateId, issuerFingerprint: peer.issuerFingerprint, serialNumber: peer.serialNumber })
    return read
  }
}

/** the first non-defer answer wins; everyone deferring is a denial */
async function askAuthenticators (req: ConnectRequest, state: ConnectionState): Promise<AuthenticateAnswer> {
  const peer = state.peer
  // one event for every authenticator (they only read it)
  const ev: AuthenticateEvent = {
    client: req.client,
    clientId: req.packet.clientId,
    clean: req.packet.clean !== false,
    peer,
    remoteAddress: state.remoteAddress,
    credentials: peer === null ? { username: req.packet.username, password: req.packet.password } : null,
    ...(peer === null ? {} : { records: recordsOnce(req.chain.ctx.registry, peer) })
  }
  for (const plugin of req.chain.hooks.authenticate) {
    const answer = await plugin.authenticate!(ev)
    if (answer.verdict !== 'defer') return answer
  }
  return { verdict: 'deny', code: state.peer === null ? 'TokenRequired' : 'UnknownCertificate' }
}

function runConnectedHooks (req: ConnectRequest): ConnectAnswer {
  for (const plugin of req.chain.hooks.connected) plugin.connected!(req.client, req.state!)
  return 'next'
}

/** A will is vetted now, while its author is known, so a bad will is never stored. */
function vetWill (req: ConnectRequest): ConnectAnswer {
  const { chain, client, packet } = req
  const state = req.state!
  const will = packet.will
  if (!will) return 'next'
  const willPacket = { cmd: 'publish', topic: will.topic, payload: Buffer.from(will.payload), qos: will.qos, retain: will.retain, dup: false } as PublishPacket
  const refusal = vet(chain, { client, identity: state.identity, state, packet: willPacket, isWill: true })
  if (refusal === null) return 'next'
  delete packet.will
  auditRefusal(chain, client, state, willPacket.topic, refusal)
  return 'next'
}

/**
 * Aedes' authenticate: the identity resolved in preConnect, or the refusal kept
 * there (its CONNACK code from the catalogue).
 */
export function authenticate (chain: ChainContext, client: Client, done: (err: (Error & { returnCode: number }) | null, ok: boolean | null) => void): void {
  const state = stateOf(client)
  const refusal = chain.refusals.get(client)
  if (state?.identity && !refusal) return done(null, true)
  const err = refusal ?? new JitpError('UnknownCertificate')
  chain.ctx.metrics.connectRefusals.inc({ reason: err.code })
  // a token connection's refusals are counted by method where the token is read (plugins/token-identity.ts)
  if (state?.peer) chain.ctx.metrics.authentications.inc({ method: 'certificate', outcome: err.code })
  chain.ctx.audit.refusal('connect.refused', { ...auditFields(client, state), errorCode: err.code, reason: err.message }, 'info')
  done(err as Error & { returnCode: number }, false)
}
