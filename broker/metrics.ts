/**
 * Prometheus metrics. One registry per broker instance (not prom-client's
 * global one) so several brokers in one process, as in tests, do not collide.
 * With WORKERS > 1 the primary merges the workers' registries (broker/cluster.ts,
 * prom-client's AggregatorRegistry.aggregate): summed, except the metrics marked
 * `aggregator` (what every process counts alike for the whole fleet: max; store_up: min).
 */
import { Counter, Gauge, Registry } from 'prom-client'

export interface Metrics {
  readonly registry: Registry
  readonly connections: Gauge<'role'>
  readonly connectsAccepted: Counter<'role'>
  readonly connectRefusals: Counter<'reason'>
  /** connections the listener holds, by state: open (all), pending (not yet authenticated) */
  readonly listenerConnections: Gauge<'state'>
  /** authenticated connections the listener closed (PacketTooLarge, ProtocolError) */
  readonly connectionsClosed: Counter<'reason'>
  /** TLS handshakes on the MQTTS listener by state: running (holding a slot of MAX_CONCURRENT_HANDSHAKES), waiting */
  readonly handshakes: Gauge<'state'>
  readonly publishes: Counter<'role'>
  /** the hot path's count of `publishes` for one role: a plain number, added to the counter at each scrape */
  publishTally (role: string): Tally
  /**
   * A live figure of `connections` (by role), `listenerConnections` or `handshakes` (by
   * state) kept in a plain number and read at each scrape (the levels of one label summed:
   * two listeners each keep theirs). The connect path changes these several times per
   * connection, and prom-client hashes the labels on every change.
   */
  level (gauge: LevelGauge, label: string): Level
  readonly denials: Counter<'action' | 'rule'>
  readonly payloadRejections: Counter<'schema' | 'errorCode'>
  /** personal data found inline in unannotated strings (CONTRACT §5), by topic filter and kind (email, phone, card, iban) */
  readonly piiDetections: Counter<'topic' | 'kind'>
  readonly offendersDisconnected: Counter
  readonly queueDrops: Counter
  readonly publishesNotStored: Counter
  readonly certificatesIssued: Counter<'flow'>
  readonly registrations: Counter<'template'>
  readonly healthTransitions: Counter<'outcome' | 'check'>
  readonly provisioningRejections: Counter<'errorCode'>
  readonly revocations: Counter
  readonly storeUp: Gauge
  // configuration lifecycle (CONTRACT §9)
  /** acknowledgements and timeouts of configuration versions, by outcome (applied, failed, timeout, stale) */
  readonly configAcks: Counter<'status'>
  readonly configRollbacks: Counter<'reason'>
  /** devices by the status of their current configuration version (current, pending, failed), as this process last counted them */
  readonly configStatus: Gauge<'status'>
  /** devices of each running rollout by state (targeted, published, applied, failed, timedOut, pending) */
  readonly rolloutDevices: Gauge<'rollout' | 'state'>
  // credential lifecycle (CONTRACT §3.4)
  /** active device certificates by time to expiry: 7d, 30d, 90d, later (as this process last counted them) */
  readonly certificatesByExpiry: Gauge<'within'>
  readonly rotations: Counter<'outcome'>
  /** POST /oauth/token answers by outcome: issued, or the RFC 6749 error (invalid_client, throttled, ...) */
  readonly tokenRequests: Counter<'outcome'>
  /** connect authentications by method (certificate, oauth2, broker-token, sas) and outcome (accepted, or the refusal's code) */
  readonly authentications: Counter<'method' | 'outcome'>
  /** audit lines waiting for the Redis stream (Redis away), and lines dropped from it (the audit file has them) */
  readonly auditStreamBacklog: Gauge
  readonly auditStreamDropped: Counter
}

/** a count kept in a plain number; `reported` is what the scrape already carried over */
export class Tally {
  count = 0
  reported = 0
  inc (): void { this.count++ }
}

/** a live figure kept in a plain number, read by its gauge at each scrape */
export class Level {
  value = 0
  inc (): void { this.value++ }
  dec (): void { this.value-- }
  set (v: number): void { this.value = v }
}

export type LevelGauge = 'connections' | 'listenerConnections' | 'handshakes'

export interface MetricsSources {
  /** the audit writer's stream figures (Audit.stats), read at each scrape */
  auditStream?: () => { backlog: number, dropped: number }
}

export function createMetrics (sources: MetricsSources = {}): Metrics {
  const registry = new Registry()
  const p = 'jitp_'
  let auditDroppedSeen = 0
  const publishTallies = new Map<string, Tally>()
  const levels: Record<LevelGauge, Map<string, Level[]>> = { connections: new Map(), listenerConnections: new Map(), handshakes: new Map() }
  function readLevels<L extends string> (gauge: Gauge<L>, kind: LevelGauge, labelName: L): void {
    for (const [label, list] of levels[kind]) {
      let sum = 0
      for (const l of list) sum += l.value
      gauge.set({ [labelName]: label } as Partial<Record<L, string>>, sum)
    }
  }
  return {
    registry,
    connections: new Gauge({ name: p + 'connections', help: 'Live MQTT connections by role', labelNames: ['role'], registers: [registry], collect () { readLevels(this, 'connections', 'role') } }),
    connectsAccepted: new Counter({ name: p + 'connects_accepted_total', help: 'Accepted MQTT connects by role', labelNames: ['role'], registers: [registry] }),
    connectRefusals: new Counter({ name: p + 'connect_refusals_total', help: 'Refused connects by reason', labelNames: ['reason'], registers: [registry] }),
    listenerConnections: new Gauge({ name: p + 'listener_connections', help: 'TCP connections on the MQTTS listener by state (open, pending = not yet authenticated)', labelNames: ['state'], registers: [registry], collect () { readLevels(this, 'listenerConnections', 'state') } }),
    connectionsClosed: new Counter({ name: p + 'connections_closed_total', help: 'Authenticated connections closed by the listener, by reason', labelNames: ['reason'], registers: [registry] }),
    handshakes: new Gauge({ name: p + 'handshakes', help: 'TLS handshakes on the MQTTS listener by state (running = holding one of MAX_CONCURRENT_HANDSHAKES slots, waiting = queued for one)', labelNames: ['state'], registers: [registry], collect () { readLevels(this, 'handshakes', 'state') } }),
    publishes: new Counter({
      name: p + 'publishes_total',
      help: 'Publishes accepted for routing, by role',
      labelNames: ['role'],
      registers: [registry],
      // counted in plain numbers on the hot path (publishTally), carried over at each scrape:
      // prom-client hashes the labels on every inc(), which cost more than the count itself
      collect () {
        for (const [role, t] of publishTallies) {
          if (t.count > t.reported) this.inc({ role }, t.count - t.reported)
          t.reported = t.count
        }
      }
    }),
    level (gauge: LevelGauge, label: string): Level {
      const l = new Level()
      const byLabel = levels[gauge]
      const list = byLabel.get(label)
      if (list === undefined) byLabel.set(label, [l])
      else list.push(l)
      return l
    },
    publishTally (role: string): Tally {
      let t = publishTallies.get(role)
      if (t === undefined) publishTallies.set(role, t = new Tally())
      return t
    },
    denials: new Counter({ name: p + 'denials_total', help: 'Authorization denials by action and rule', labelNames: ['action', 'rule'], registers: [registry] }),
    payloadRejections: new Counter({ name: p + 'payload_rejections_total', help: 'Dropped payloads by schema and error code', labelNames: ['schema', 'errorCode'], registers: [registry] }),
    piiDetections: new Counter({ name: p + 'pii_detections_total', help: 'Personal data detected in unannotated strings, by topic filter and kind', labelNames: ['topic', 'kind'], registers: [registry] }),
    offendersDisconnected: new Counter({ name: p + 'offenders_disconnected_total', help: 'Clients disconnected for too many bad payloads', registers: [registry] }),
    queueDrops: new Counter({ name: p + 'queue_drops_total', help: 'Messages dropped because a client queue was full', registers: [registry] }),
    publishesNotStored: new Counter({ name: p + 'publishes_not_stored_total', help: 'QoS 1 publishes not acknowledged because the store failed (the client resends)', registers: [registry] }),
    certificatesIssued: new Counter({ name: p + 'certificates_issued_total', help: 'Certificates issued by flow', labelNames: ['flow'], registers: [registry] }),
    registrations: new Counter({ name: p + 'registrations_total', help: 'Devices registered by template', labelNames: ['template'], registers: [registry] }),
    healthTransitions: new Counter({ name: p + 'health_transitions_total', help: 'Health verification outcomes (CONTRACT §3.7): provisioned devices activated, or quarantined by the check they missed first', labelNames: ['outcome', 'check'], registers: [registry] }),
    provisioningRejections: new Counter({ name: p + 'provisioning_rejections_total', help: 'Provisioning rejections by error code', labelNames: ['errorCode'], registers: [registry] }),
    revocations: new Counter({ name: p + 'revocations_total', help: 'Revocations applied', registers: [registry], aggregator: 'max' }),
    storeUp: new Gauge({ name: p + 'store_up', help: '1 when the session/registry store answers', registers: [registry], aggregator: 'min' }),
    configAcks: new Counter({ name: p + 'config_acks_total', help: 'Configuration acknowledgements by outcome (applied, failed, timeout, stale)', labelNames: ['status'], registers: [registry] }),
    configRollbacks: new Counter({ name: p + 'config_rollbacks_total', help: 'Configuration rollbacks by reason (failed, timeout, operator, rollout)', labelNames: ['reason'], registers: [registry] }),
    configStatus: new Gauge({ name: p + 'config_devices', help: 'Devices by configuration status (current, pending, failed)', labelNames: ['status'], registers: [registry], aggregator: 'max' }),
    certificatesByExpiry: new Gauge({ name: p + 'device_certificates_by_expiry', help: 'Active device certificates by time to expiry (7d, 30d, 90d, later)', labelNames: ['within'], registers: [registry], aggregator: 'max' }),
    rotations: new Counter({ name: p + 'certificate_rotations_total', help: 'Device certificate rotations by outcome (issued, rejected, completed, expired)', labelNames: ['outcome'], registers: [registry] }),
    rolloutDevices: new Gauge({ name: p + 'rollout_devices', help: 'Devices of running rollouts by state', labelNames: ['rollout', 'state'], registers: [registry], aggregator: 'max' }),
    tokenRequests: new Counter({ name: p + 'token_requests_total', help: 'POST /oauth/token answers by outcome (issued, invalid_client, invalid_request, invalid_scope, unsupported_grant_type, throttled, unavailable)', labelNames: ['outcome'], registers: [registry] }),
    authentications: new Counter({ name: p + 'authentications_total', help: 'Connect authentications by method (certificate, oauth2, broker-token, sas) and outcome (accepted or the refusal code)', labelNames: ['method', 'outcome'], registers: [registry] }),
    auditStreamBacklog: new Gauge({
      name: p + 'audit_stream_backlog',
      help: 'Audit lines waiting for the Redis stream while it is away',
      registers: [registry],
      collect () { this.set(sources.auditStream?.().backlog ?? 0) }
    }),
    auditStreamDropped: new Counter({
      name: p + 'audit_stream_dropped_total',
      help: 'Audit lines dropped from the Redis stream (backlog full while Redis was away, or refused); the audit file has them',
      registers: [registry],
      collect () {
        const dropped = sources.auditStream?.().dropped ?? 0
        if (dropped > auditDroppedSeen) this.inc(dropped - auditDroppedSeen)
        auditDroppedSeen = dropped
      }
    })
  }
}
