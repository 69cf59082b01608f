/**
 * The one place that assigns Aedes' hook slots. Plugins are composed in a fixed
 * order, and data flows one way:
 *   TLS socket → identity → authorization → schema validation → fan-out → audit
 * Checks answer allow / deny / defer; the first non-defer answer wins and
 * "everyone deferred" means deny.
 *
 * A refused or invalid publish is dropped, not answered with an error: on MQTT
 * 3.1.1 an error from authorizePublish closes the connection without a PUBACK,
 * and the device then resends the same message forever. Instead the packet is
 * moved to an internal quarantine topic that no rule lets anyone subscribe to,
 * with retain cleared, so Aedes acknowledges it and nothing stores or delivers it.
 */
import type { Aedes, AedesPublishPacket, Client, ConnectPacket, PublishPacket, Subscription } from 'aedes'
import { TLSSocket } from 'node:tls'
import { Errors, JitpError, type ErrorCode } from './errors.js'
import { isMalformedMqttString } from './mqtt-strings.js'
import type { AuthenticateAnswer, PayloadProblem, PluginContext, PluginHooks, PublishEvent } from './plugin.js'
import { isReserved, reservedTopics } from './reserved-topics.js'
import { setState, stateOf, type ConnectionState } from './session.js'

export const QUARANTINE_TOPIC = '$jitp/quarantine'
const SYS_PREFIX = '$SYS/'
const EMPTY = Buffer.alloc(0)

export interface ErrorReport { topic: string, errorCode: string, errors: readonly PayloadProblem[], at: number }

export interface Chain {
  /** publishes a rejection report to `devices/<id>/errors` (devices only) */
  report (client: Client, report: ErrorReport): void
}

function remoteAddressOf (client: Client): string {
  const conn = client.conn
  return conn instanceof TLSSocket ? (conn.remoteAddress ?? 'unknown') : 'unknown'
}

function hooksWith<K extends keyof PluginHooks> (plugins: readonly PluginHooks[], key: K): PluginHooks[] {
  return plugins.filter((p) => typeof p[key] === 'function')
}

export function installChain (ctx: PluginContext, plugins: readonly PluginHooks[]): Chain {
  const { broker, audit, metrics } = ctx
  const authenticators = hooksWith(plugins, 'authenticate')
  const connectedHooks = hooksWith(plugins, 'connected')
  const publishChecks = hooksWith(plugins, 'authorizePublish')
  const subscribeChecks = hooksWith(plugins, 'authorizeSubscribe')
  const forwardChecks = hooksWith(plugins, 'authorizeForward')
  const validators = hooksWith(plugins, 'validatePublish')
  const interceptors = hooksWith(plugins, 'intercept')
  const transformers = hooksWith(plugins, 'transformForward')
  const observers = hooksWith(plugins, 'published')
  const disconnectedHooks = hooksWith(plugins, 'disconnected')
  const readyHooks = hooksWith(plugins, 'ready')
  const rejectedHooks = hooksWith(plugins, 'rejected')
  const refusals = new WeakMap<Client, JitpError>()
  // the payload a validator asked to route instead (personal data sealed), per packet
  const sealedPayloads = new WeakMap<PublishPacket, Buffer>()
  const reserved = reservedTopics({ awsTopics: ctx.config.provisioningAwsTopics })
  // bound once: a label lookup per message would cost more than the count
  const publishCounters = new Map(['device', 'claim', 'service', 'unknown'].map((role) => [role, metrics.publishes.labels(role)]))

  function auditFields (client: Client | null, state: ConnectionState | undefined) {
    const identity = state?.identity
    return {
      clientId: client?.id,
      deviceId: identity?.role === 'device' ? identity.name ?? undefined : undefined,
      role: identity?.role ?? state?.peer.issuerRole,
      certificateId: state?.peer.certificateId,
      remoteAddress: state?.remoteAddress
    }
  }

  async function resolveIdentity (client: Client, packet: ConnectPacket, state: ConnectionState): Promise<AuthenticateAnswer> {
    for (const plugin of authenticators) {
      const answer = await plugin.authenticate!({
        client,
        clientId: packet.clientId,
        clean: packet.clean !== false,
        peer: state.peer,
        remoteAddress: state.remoteAddress
      })
      if (answer.verdict !== 'defer') return answer
    }
    return { verdict: 'deny', code: 'UnknownCertificate' }
  }

  function report (client: Client, r: ErrorReport): void {
    const identity = stateOf(client)?.identity
    if (identity?.role !== 'device' || !identity.name) return
    broker.publish({
      cmd: 'publish',
      topic: `devices/${identity.name}/errors`,
      payload: Buffer.from(JSON.stringify(r)),
      qos: 0,
      retain: false,
      dup: false
    }, function reportPublished () {})
  }

  function countOffence (client: Client, state: ConnectionState): void {
    const now = ctx.now()
    if (now - state.offences.windowStart >= 60_000) state.offences = { windowStart: now, count: 0 }
    state.offences.count++
    if (state.offences.count > ctx.config.badPayloadsPerMinute) {
      state.offences.count = 0
      metrics.offendersDisconnected.inc()
      audit.write('client.disconnected.offender', { ...auditFields(client, state), errorCode: 'TooManyBadPayloads', reason: Errors.TooManyBadPayloads.message }, 'warn')
      // after the PUBACK went out, so the device is not left waiting
      setImmediate(() => client.close())
    }
  }

  function quarantine (packet: PublishPacket): void {
    // the patched publish handler (patches/aedes+1.2.0.patch) acknowledges a dropped
    // QoS 0/1 packet without publishing it; the rewrite is the second fence (QoS 2,
    // an unpatched Aedes): nobody may subscribe to the topic, and the payload (a
    // token, a CSR, a rejected body) never reaches the store or Redis pub/sub
    ;(packet as PublishPacket & { dropped?: boolean }).dropped = true
    packet.topic = QUARANTINE_TOPIC
    packet.retain = false
    packet.payload = EMPTY
  }

  /** Vets a publish; returns null when allowed, or why not. */
  function vet (ev: PublishEvent): { event: 'publish.denied' | 'payload.rejected', code: ErrorCode, rule?: string | undefined, schema?: string, errors: readonly PayloadProblem[] } | null {
    // `$` topics first, before any plugin: no rule opens them (broker/reserved-topics.ts)
    const topic = ev.packet.topic
    if (isReserved(topic) && (ev.identity === null || !reserved.open(ev.identity.role, 'publish', topic))) {
      return { event: 'publish.denied', code: topic.startsWith(SYS_PREFIX) ? 'SysTopicReserved' : 'ReservedTopic', rule: 'reserved-topic', errors: [] }
    }
    let allowed = false
    for (const plugin of publishChecks) {
      const answer = plugin.authorizePublish!(ev)
      if (answer.verdict === 'defer') continue
      if (answer.verdict === 'deny') return { event: 'publish.denied', code: answer.code, rule: answer.rule, errors: [] }
      allowed = true
      break
    }
    if (!allowed) return { event: 'publish.denied', code: 'PublishDenied', rule: 'no-rule', errors: [] }
    for (const plugin of validators) {
      const answer = plugin.validatePublish!(ev)
      if (answer.verdict === 'invalid') return { event: 'payload.rejected', code: answer.code, schema: answer.schema, errors: answer.errors }
      if (answer.payload !== undefined) sealedPayloads.set(ev.packet, answer.payload)
    }
    return null
  }

  /** a connect refused before anyone is identified: no state, no identity */
  function refuseEarly (clientId: string, remoteAddress: string, code: ErrorCode): void {
    metrics.connectRefusals.inc({ reason: code })
    audit.write('connect.refused', { clientId, remoteAddress, errorCode: code, reason: Errors[code].message }, 'warn')
  }

  function preConnect (client: Client, packet: ConnectPacket, done: (err: Error | null, ok: boolean) => void): void {
    const remoteAddress = remoteAddressOf(client)
    if (packet.protocolVersion !== 4 && packet.protocolVersion !== 3) {
      // MQTT 5 (AWS's current SDK sample sends it): let it through, and Aedes' own
      // init answers CONNACK 1 and closes [MQTT-3.1.2-2]; the audit line and the count are ours
      refuseEarly(packet.clientId, remoteAddress, 'UnsupportedProtocolVersion')
      return done(null, true)
    }
    if (isMalformedMqttString(packet.clientId) || (packet.will !== undefined && packet.will !== null && isMalformedMqttString(packet.will.topic))) {
      // [MQTT-1.5.3-1], [MQTT-1.5.3-2]: closed, no CONNACK (see broker/mqtt-strings.ts)
      refuseEarly(packet.clientId, remoteAddress, 'MalformedUtf8')
      return done(new JitpError('MalformedUtf8'), false)
    }
    // a silent client is cut after 1.5 × keep-alive [MQTT-3.1.2-24], and 0 would mean never:
    // clamped here, before Aedes' setKeepAlive reads the packet (its keepaliveLimit refuses instead)
    const maxKeepalive = ctx.config.maxKeepaliveSeconds
    const keepalive = packet.keepalive ?? 0
    if (keepalive === 0 || keepalive > maxKeepalive) packet.keepalive = maxKeepalive
    const conn = client.conn
    const peer = conn instanceof TLSSocket ? ctx.trust.classify(conn) : null
    if (peer === null) {
      refuseEarly(packet.clientId, remoteAddress, 'UnknownIssuer')
      // preConnect must fail with an Error, or Aedes leaves the socket open
      return done(new JitpError('UnknownIssuer'), false)
    }
    const state: ConnectionState = { peer, remoteAddress, connectedAt: ctx.now(), identity: null, rules: null, offences: { windowStart: ctx.now(), count: 0 } }
    setState(client, state)
    if (packet.clientId === '' && packet.clean === false) {
      // [MQTT-3.1.3-8]: a persistent session needs a client id. Aedes names the client
      // `aedes_<uuid>` before authenticate, so the refusal is kept here and answered
      // there, with CONNACK 2
      refusals.set(client, new JitpError('ClientIdRequired'))
      return done(null, true)
    }
    resolveIdentity(client, packet, state).then(function identityResolved (answer) {
      if (answer.verdict === 'allow') {
        state.identity = answer.identity
        for (const plugin of connectedHooks) plugin.connected!(client, state)
        vetWill(client, packet, state)
      } else if (answer.verdict === 'deny') {
        refusals.set(client, new JitpError(answer.code, answer.detail))
      }
      done(null, true)
    }, function identityFailed (err: unknown) {
      // An authenticator that throws is the store being down only when the store
      // does not answer: asked, not guessed from the error (ioredis has several
      // shapes of "unavailable"). Anything else is a fault of ours: InternalError,
      // audited as such, CONNACK 3 either way.
      ctx.registry.ping().catch(() => false).then(function storeChecked (storeUp) {
        ctx.log[storeUp ? 'error' : 'warn']({ err }, storeUp ? 'authenticator failed' : 'identity lookup failed: store unavailable')
        refusals.set(client, new JitpError(storeUp ? 'InternalError' : 'StoreUnavailable'))
        done(null, true)
      })
    })
  }

  /** A will is vetted now, while its author is known, so a bad will is never stored. */
  function vetWill (client: Client, packet: ConnectPacket, state: ConnectionState): void {
    const will = packet.will
    if (!will) return
    const willPacket = { cmd: 'publish', topic: will.topic, payload: Buffer.from(will.payload), qos: will.qos, retain: will.retain, dup: false } as PublishPacket
    const problem = vet({ client, identity: state.identity, state, packet: willPacket, isWill: true })
    if (problem === null) return
    delete packet.will
    auditRefusal(client, state, willPacket.topic, problem)
  }

  function auditRefusal (client: Client, state: ConnectionState | undefined, topic: string, problem: NonNullable<ReturnType<typeof vet>>): void {
    if (problem.event === 'publish.denied') {
      metrics.denials.inc({ action: 'publish', rule: problem.rule ?? 'none' })
    } else {
      metrics.payloadRejections.inc({ schema: problem.schema ?? 'none', errorCode: problem.code })
    }
    audit.write(problem.event, { ...auditFields(client, state), topic, errorCode: problem.code, reason: problem.rule ?? problem.errors[0]?.message ?? Errors[problem.code].message }, 'warn')
  }

  function authenticate (client: Client, _username: unknown, _password: unknown, done: (err: (Error & { returnCode: number }) | null, ok: boolean | null) => void): void {
    const state = stateOf(client)
    const refusal = refusals.get(client)
    if (state?.identity && !refusal) return done(null, true)
    const err = refusal ?? new JitpError('UnknownCertificate')
    metrics.connectRefusals.inc({ reason: err.code })
    audit.write('connect.refused', { ...auditFields(client, state), errorCode: err.code, reason: err.message })
    done(err as Error & { returnCode: number }, false)
  }

  function authorizePublish (client: Client | null, packet: PublishPacket, done: (err?: Error | null) => void): void {
    if (client === null) {
      // a dead broker's will, vetted when its author connected; Aedes' own `$SYS` guard
      // (which a custom hook replaces) kept for it, the `$` check in vet() for everyone else
      return done(isReserved(packet.topic) ? new JitpError('SysTopicReserved') : null)
    }
    const state = stateOf(client)
    if (isMalformedMqttString(packet.topic)) return closeMalformed(client, state, packet.topic, done)
    const ev: PublishEvent = { client, identity: state?.identity ?? null, state, packet, isWill: false }
    const problem = vet(ev)
    if (problem !== null) {
      const topic = packet.topic
      quarantine(packet)
      auditRefusal(client, state, topic, problem)
      report(client, { topic, errorCode: problem.code, errors: problem.errors, at: ctx.now() })
      for (const plugin of rejectedHooks) plugin.rejected!({ client, identity: ev.identity, topic, code: problem.code, errors: problem.errors })
      if (state) countOffence(client, state)
      return done(null)
    }
    for (const plugin of interceptors) {
      if (plugin.intercept!(ev)) {
        quarantine(packet)
        return done(null)
      }
    }
    // x-pii values sealed by validation (plugins/validation.ts): the store and Redis
    // pub/sub get the envelopes, never the clear values; requests the broker takes
    // (intercepted above) keep their payload
    const sealed = sealedPayloads.get(packet)
    if (sealed !== undefined) packet.payload = sealed
    publishCounters.get(ev.identity?.role ?? 'unknown')?.inc()
    done(null)
  }

  /** [MQTT-1.5.3-1], [MQTT-1.5.3-2]: an error from the hook makes Aedes close the connection, unanswered */
  function closeMalformed (client: Client, state: ConnectionState | undefined, topic: string, done: (err: Error) => void): void {
    metrics.denials.inc({ action: 'malformed', rule: 'MalformedUtf8' })
    audit.write('connection.closed', { ...auditFields(client, state), topic, errorCode: 'MalformedUtf8', reason: Errors.MalformedUtf8.message }, 'warn')
    done(new JitpError('MalformedUtf8'))
  }

  function authorizeSubscribe (client: Client, subscription: Subscription, done: (err: Error | null, sub?: Subscription | null) => void): void {
    const state = stateOf(client)
    const identity = state?.identity
    if (isMalformedMqttString(subscription.topic)) return closeMalformed(client, state, subscription.topic, done)
    let verdict: 'allow' | 'deny' = 'deny'
    let rule = 'no-rule'
    let code: ErrorCode = 'SubscribeDenied'
    if (isReserved(subscription.topic) && !(identity && reserved.open(identity.role, 'subscribe', subscription.topic))) {
      // `$` filters first, before any plugin: no rule opens them (broker/reserved-topics.ts)
      rule = 'reserved-topic'
      code = subscription.topic.startsWith(SYS_PREFIX) ? 'SysTopicReserved' : 'ReservedTopic'
    } else if (state && identity) {
      for (const plugin of subscribeChecks) {
        const answer = plugin.authorizeSubscribe!({ client, identity, state, subscription })
        if (answer.verdict === 'defer') continue
        verdict = answer.verdict
        rule = answer.rule ?? rule
        break
      }
    }
    if (verdict === 'allow') return done(null, subscription)
    metrics.denials.inc({ action: 'subscribe', rule })
    audit.write('subscribe.denied', { ...auditFields(client, state), topic: subscription.topic, errorCode: code, reason: rule }, 'warn')
    // a null subscription makes Aedes answer SUBACK 0x80 for this filter
    done(null, null)
  }

  function authorizeForward (client: Client, packet: AedesPublishPacket): AedesPublishPacket | null {
    if (packet.topic === QUARANTINE_TOPIC) return null
    const state = stateOf(client)
    const identity = state?.identity
    if (!state || !identity) return null
    if (isReserved(packet.topic) && !reserved.open(identity.role, 'receive', packet.topic)) {
      // `$SYS` and the broker's other `$` topics reach nobody, whatever the rules say
      metrics.denials.inc({ action: 'forward', rule: 'reserved-topic' })
      return null
    }
    let allowed = false
    for (const plugin of forwardChecks) {
      const answer = plugin.authorizeForward!({ client, identity, state, packet })
      if (answer.verdict === 'defer') continue
      allowed = answer.verdict === 'allow'
      break
    }
    if (!allowed) {
      metrics.denials.inc({ action: 'forward', rule: 'default-deny' })
      return null
    }
    let out = packet
    for (const plugin of transformers) out = plugin.transformForward!({ client, identity, state, packet: out })
    return out
  }

  function published (packet: AedesPublishPacket, client: Client | null, done: (err?: Error | null) => void): void {
    if (client !== null && packet.topic !== QUARANTINE_TOPIC && observers.length > 0) {
      const identity = stateOf(client)?.identity ?? null
      for (const plugin of observers) plugin.published!({ client, identity, packet })
    }
    done(null)
  }

  const b = broker as Aedes
  b.preConnect = preConnect
  b.authenticate = authenticate as Aedes['authenticate']
  b.authorizePublish = authorizePublish
  b.authorizeSubscribe = authorizeSubscribe
  b.authorizeForward = authorizeForward
  b.published = published

  broker.on('clientReady', function onClientReady (client) {
    const state = stateOf(client)
    const role = state?.identity?.role ?? 'unknown'
    metrics.connections.inc({ role })
    metrics.connectsAccepted.inc({ role })
    audit.write('connect.accepted', { ...auditFields(client, state), reason: state?.identity?.registeredOnConnect ? 'registered on first connect' : undefined })
    if (state?.identity) for (const plugin of readyHooks) plugin.ready!(client, state)
  })
  broker.on('clientDisconnect', function onClientDisconnect (client) {
    const state = stateOf(client)
    if (!state?.identity) return
    metrics.connections.dec({ role: state.identity.role })
    audit.write('disconnect', { ...auditFields(client, state), ...state.closeReason })
    for (const plugin of disconnectedHooks) plugin.disconnected!(client, state)
  })

  return { report }
}
