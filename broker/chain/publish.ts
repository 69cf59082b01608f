/**
 * The publish flow. A publish is vetted in a fixed order, the first refusal wins:
 *   vetActions = [refuseReservedTopic, authorizeByPlugins, validatePayload]
 * then handed to the broker's own takers (intercept) or accepted for routing.
 *
 * A refused or invalid publish is dropped, not answered with an error: on MQTT
 * 3.1.1 an error from authorizePublish closes the connection without a PUBACK,
 * and the device then resends the same message forever. Instead the packet is
 * moved to an internal quarantine topic that no rule lets anyone subscribe to,
 * with retain cleared, so Aedes acknowledges it and nothing stores or delivers it.
 *
 * This runs per message: synchronous (an async hook could reorder a client's
 * messages), plain calls over a fixed step list, and on the accepted path the one
 * event object is the chain's only allocation.
 */
import type { AedesPublishPacket, Client, PublishPacket } from 'aedes'
import { Errors, JitpError, type ErrorCode } from '../errors.js'
import { isMalformedMqttString } from '../mqtt-strings.js'
import type { PayloadProblem, PublishedEvent, PublishEvent } from '../plugin.js'
import { isReserved } from '../reserved-topics.js'
import { stateOf, type ConnectionState } from '../session.js'
import { auditFields } from './audit-fields.js'
import { reservedTopicCode, type ChainContext } from './context.js'
import { closeMalformed } from './malformed.js'

export const QUARANTINE_TOPIC = '$jitp/quarantine'
const EMPTY = Buffer.alloc(0)

export interface ErrorReport { topic: string, errorCode: string, errors: readonly PayloadProblem[], at: number }

/** why a publish (or a will) was refused */
export interface PublishRefusal {
  readonly event: 'publish.denied' | 'payload.rejected'
  readonly code: ErrorCode
  readonly rule?: string | undefined
  readonly schema?: string
  readonly errors: readonly PayloadProblem[]
}

type VetStep = (chain: ChainContext, ev: PublishEvent) => PublishRefusal | null

const vetActions: readonly VetStep[] = [
  refuseReservedTopic,
  authorizeByPlugins,
  validatePayload
]

/** `$` topics first, before any plugin: no rule opens them (broker/reserved-topics.ts) */
function refuseReservedTopic (chain: ChainContext, ev: PublishEvent): PublishRefusal | null {
  const topic = ev.packet.topic
  if (isReserved(topic) && (ev.identity === null || !chain.reserved.open(ev.identity.role, 'publish', topic))) {
    return { event: 'publish.denied', code: reservedTopicCode(topic), rule: 'reserved-topic', errors: [] }
  }
  return null
}

/** the first non-defer answer wins; everyone deferring is a denial */
function authorizeByPlugins (chain: ChainContext, ev: PublishEvent): PublishRefusal | null {
  for (const plugin of chain.hooks.authorizePublish) {
    const answer = plugin.authorizePublish!(ev)
    if (answer.verdict === 'defer') continue
    if (answer.verdict === 'deny') return { event: 'publish.denied', code: answer.code, rule: answer.rule, errors: [] }
    return null
  }
  return { event: 'publish.denied', code: 'PublishDenied', rule: 'no-rule', errors: [] }
}

function validatePayload (chain: ChainContext, ev: PublishEvent): PublishRefusal | null {
  for (const plugin of chain.hooks.validatePublish) {
    const answer = plugin.validatePublish!(ev)
    if (answer.verdict === 'invalid') return { event: 'payload.rejected', code: answer.code, schema: answer.schema, errors: answer.errors }
    if (answer.payload !== undefined) chain.sealedPayloads.set(ev.packet, answer.payload)
  }
  return null
}

/** what a refusal says when a step threw: nothing of the error, which may quote the payload */
const INTERNAL_PROBLEM: readonly PayloadProblem[] = Object.freeze([Object.freeze({ path: '', message: 'the broker could not check this message' })])

/**
 * Vets a publish (or a will); returns null when allowed, or why not.
 *
 * A step that throws refuses the message (InternalError) instead of letting the
 * exception out: Aedes does not catch what authorizePublish throws, so one payload
 * that made a hook throw (a value nested thousands deep that JSON.stringify cannot
 * serialize when its x-pii values are sealed) took the whole process down with every
 * device on it. Fail closed: the message is dropped like any refused one.
 */
export function vet (chain: ChainContext, ev: PublishEvent): PublishRefusal | null {
  for (let i = 0; i < vetActions.length; i++) {
    const step = vetActions[i]!
    let refusal: PublishRefusal | null
    try {
      refusal = step(chain, ev)
    } catch (err) {
      // the error's name only: its message can quote the payload (V8's JSON errors do)
      chain.ctx.log.error({ step: step.name, error: err instanceof Error ? err.name : typeof err, topic: ev.packet.topic }, 'a publish hook threw: message refused')
      return { event: step === validatePayload ? 'payload.rejected' : 'publish.denied', code: 'InternalError', errors: INTERNAL_PROBLEM }
    }
    if (refusal !== null) return refusal
  }
  return null
}

/** close reasons after which a session publishes nothing, not even its will */
const REVOKED_CLOSES: ReadonlySet<string> = new Set<ErrorCode>(['CertificateRevoked', 'DeviceRevoked', 'SessionRevalidated'])

export function authorizePublish (chain: ChainContext, client: Client | null, packet: PublishPacket, done: (err?: Error | null) => void): void {
  if (client === null) {
    // a dead broker's will, vetted when its author connected; Aedes' own `$SYS` guard
    // (which a custom hook replaces) kept for it, the `$` check in vet() for everyone else
    return done(isReserved(packet.topic) ? new JitpError('SysTopicReserved') : null)
  }
  const state = stateOf(client)
  if (state?.closeReason !== undefined && REVOKED_CLOSES.has(state.closeReason.errorCode)) {
    // a session closed because its certificate or device was revoked gets nothing more
    // out: Aedes publishes the will of a client it closes (lib/client.js, finish) through
    // this hook, and a leaked certificate must not get one last command through it
    chain.ctx.audit.write('publish.denied', { ...auditFields(client, state), topic: packet.topic, errorCode: state.closeReason.errorCode, reason: 'will of a revoked session' }, 'warn')
    return done(new JitpError(state.closeReason.errorCode as ErrorCode))
  }
  if (isMalformedMqttString(packet.topic)) return closeMalformed(chain, client, state, packet.topic, done)
  const ev: PublishEvent = { client, identity: state?.identity ?? null, state, packet, isWill: false }
  const refusal = vet(chain, ev)
  if (refusal !== null) {
    drop(chain, client, state, ev, refusal)
    return done(null)
  }
  if (intercepted(chain, ev)) {
    quarantine(packet)
    return done(null)
  }
  accept(chain, ev)
  done(null)
}

/** the drop path: quarantine, audit, report to the device, tell the plugins, count the offence */
function drop (chain: ChainContext, client: Client, state: ConnectionState | undefined, ev: PublishEvent, refusal: PublishRefusal): void {
  const topic = ev.packet.topic
  quarantine(ev.packet)
  auditRefusal(chain, client, state, topic, refusal)
  report(chain, client, { topic, errorCode: refusal.code, errors: refusal.errors, at: chain.ctx.now() })
  for (const plugin of chain.hooks.rejected) plugin.rejected!({ client, identity: ev.identity, topic, code: refusal.code, errors: refusal.errors })
  // a quarantined device's telemetry is refused by design (CONTRACT §3.7): not an offence to disconnect it for
  if (state && refusal.rule !== 'quarantine') countOffence(chain, client, state)
}

/** a request addressed to the broker itself (e.g. `$provision/...`), taken by a plugin */
function intercepted (chain: ChainContext, ev: PublishEvent): boolean {
  for (const plugin of chain.hooks.intercept) {
    if (plugin.intercept!(ev)) return true
  }
  return false
}

function accept (chain: ChainContext, ev: PublishEvent): void {
  // x-pii values sealed by validation (plugins/validation.ts): the store and Redis
  // pub/sub get the envelopes, never the clear values; requests the broker takes
  // (intercepted above) keep their payload
  const sealed = chain.sealedPayloads.get(ev.packet)
  if (sealed !== undefined) ev.packet.payload = sealed
  chain.publishCounters.get(ev.identity?.role ?? 'unknown')?.inc()
}

export function quarantine (packet: PublishPacket): void {
  // the patched publish handler (patches/aedes+1.2.0.patch) acknowledges a dropped
  // QoS 0/1 packet without publishing it; the rewrite is the second fence (QoS 2,
  // an unpatched Aedes): nobody may subscribe to the topic, and the payload (a
  // token, a CSR, a rejected body) never reaches the store or Redis pub/sub
  ;(packet as PublishPacket & { dropped?: boolean }).dropped = true
  packet.topic = QUARANTINE_TOPIC
  packet.retain = false
  packet.payload = EMPTY
}

export function auditRefusal (chain: ChainContext, client: Client, state: ConnectionState | undefined, topic: string, refusal: PublishRefusal): void {
  const { audit, metrics } = chain.ctx
  if (refusal.event === 'publish.denied') {
    metrics.denials.inc({ action: 'publish', rule: refusal.rule ?? 'none' })
  } else {
    metrics.payloadRejections.inc({ schema: refusal.schema ?? 'none', errorCode: refusal.code })
  }
  audit.write(refusal.event, { ...auditFields(client, state), topic, errorCode: refusal.code, reason: refusal.rule ?? refusal.errors[0]?.message ?? Errors[refusal.code].message }, 'warn')
}

/** publishes a rejection report to `devices/<id>/errors` (devices only) */
export function report (chain: ChainContext, client: Client, r: ErrorReport): void {
  const identity = stateOf(client)?.identity
  if (identity?.role !== 'device' || !identity.name) return
  chain.ctx.broker.publish({
    cmd: 'publish',
    topic: `devices/${identity.name}/errors`,
    payload: Buffer.from(JSON.stringify(r)),
    qos: 0,
    retain: false,
    dup: false
  }, function reportPublished () {})
}

function countOffence (chain: ChainContext, client: Client, state: ConnectionState): void {
  const { audit, config, metrics } = chain.ctx
  const now = chain.ctx.now()
  if (now - state.offenceWindowStart >= 60_000) {
    state.offenceWindowStart = now
    state.offences = 0
  }
  state.offences++
  if (state.offences > config.badPayloadsPerMinute) {
    state.offences = 0
    metrics.offendersDisconnected.inc()
    audit.write('client.disconnected.offender', { ...auditFields(client, state), errorCode: 'TooManyBadPayloads', reason: Errors.TooManyBadPayloads.message }, 'warn')
    // after the PUBACK went out, so the device is not left waiting
    setImmediate(() => client.close())
  }
}

/** after the broker routed a publish: told to the observers (not for dropped packets) */
export function published (chain: ChainContext, packet: AedesPublishPacket, client: Client | null, done: (err?: Error | null) => void): void {
  const observers = chain.hooks.published
  if (client !== null && packet.topic !== QUARANTINE_TOPIC && observers.length > 0) {
    const ev: PublishedEvent = { client, identity: stateOf(client)?.identity ?? null, packet }
    for (const plugin of observers) plugin.published!(ev)
  }
  done(null)
}
