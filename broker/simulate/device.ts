/**
 * One virtual device of `aedes-jitp simulate`, written as a correct firmware
 * would be (CONTRACT §3, §9), with MQTT.js over mutual TLS:
 *   claim connect → CSR → register → reconnect with its own certificate
 *   (client id = device id, persistent session) → retained config → ack →
 *   state → telemetry,
 * reacting to new config versions and to the rotate-certificate command, and
 * reconnecting with backoff when its connection drops. Its faults (faults.ts)
 * change exactly one behaviour each. Every wait is bounded.
 *
 * Each connection is a fresh MQTT.js client with its own reconnect turned off: the
 * device decides when to reconnect (at once after a drop, then with jittered
 * backoff) and which certificate to present; what must arrive (the config ack,
 * the first state) is kept until its PUBACK and sent again on the next connection.
 */
import type { SecureContext } from 'node:tls'
import { setTimeout as sleep } from 'node:timers/promises'
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt'
import { createCsr, generateKeyPair, privateKeyToPem } from '../../pki/keys.js'
import type { ConfigFailMode, FaultKind } from './faults.js'
import type { Step } from './stats.js'

export const CSR_TOPIC = '$provision/certificates/create-from-csr/json'
export const ROTATE_TOPIC = '$provision/certificates/rotate/json'
export const registerTopic = (template: string): string => `$provision/templates/${template}/provision/json`

/** how long a slow subscriber holds each incoming message */
export const SLOW_SUBSCRIBER_MS = 500
/** a firmware reports its state even when no configuration came within this */
const CONFIG_WAIT_MS = 10_000
/** bad payloads a bad-payload device sends per minute at most: under BAD_PAYLOADS_PER_MINUTE (30), so it stays connected */
const BAD_PER_MINUTE = 10
/** every n-th telemetry message of a bad-payload device is bad */
const BAD_EVERY = 10
const RECONNECT_ATTEMPTS = 40
const RECONNECT_MAX_DELAY_MS = 5000
const END_TIMEOUT_MS = 3000

/** what every device of one run shares */
export interface FleetContext {
  readonly host: string
  readonly port: number
  readonly ca: string
  readonly claimContext: SecureContext
  readonly template: string
  /** `provision`: stop after the CONNACK of the device's own certificate (what the benchmark measures) */
  readonly lifecycle: 'full' | 'provision'
  /** ms between telemetry messages of one device; null: none */
  readonly telemetryIntervalMs: number | null
  /** bound of each request/reply and connect */
  readonly stepTimeoutMs: number
  /** no new connection attempt after this (ms since the epoch) */
  readonly deadline: () => number
  readonly stopping: () => boolean
  /** a device's connection state changed (progress) */
  readonly changed: () => void
  /** the broker acknowledged (PUBACK) the device's `applied` ack of its first configuration version */
  readonly firstConfigApplied?: (device: VirtualDevice, version: number) => void
}

export interface DeviceRequest { readonly keyPem: string, readonly csr: string }

export type DevicePhase = 'waiting' | 'provisioning' | 'online' | 'offline' | 'done' | 'failed' | 'stopped'

export interface DeviceCounters {
  sent: number
  acknowledged: number
  /** reports received on devices/<id>/errors */
  rejected: number
  rejectedByCode: Record<string, number>
  telemetry: number
  states: number
  configAcks: { applied: number, failed: number }
  /** config versions this device left unacknowledged (config-silent) */
  configsIgnored: number
  badPayloads: number
  commands: number
  rotations: { requested: number, completed: number, failed: number }
  /** connections that dropped without the device ending them */
  connectionsLost: number
  reconnects: number
  subscribeRefused: number
  /** incoming messages a slow subscriber held */
  slowHeld: number
  /** telemetry not sent because the device was offline at its tick */
  skippedOffline: number
}

interface Reply { readonly accepted: boolean, readonly body: Record<string, unknown> }

/** an MQTT refusal or a socket error, with whether trying again can help */
class ConnectError extends Error {
  constructor (message: string, readonly fatal: boolean) {
    super(message)
  }
}

interface OpenOptions {
  readonly clientId: string
  readonly clean: boolean
  readonly cert?: string
  readonly key?: string
  readonly secureContext?: SecureContext
  /** attached before CONNECT goes out: a queued message may follow the CONNACK in the same read */
  readonly onMessage?: (topic: string, payload: Buffer) => void
  readonly slow?: () => void
}

/** one MQTT connection; resolves at CONNACK 0 */
function openClient (ctx: FleetContext, o: OpenOptions): Promise<{ client: MqttClient, sessionPresent: boolean }> {
  return new Promise((resolve, reject) => {
    const options: IClientOptions & { secureContext?: SecureContext } = {
      protocol: 'mqtts',
      host: ctx.host,
      port: ctx.port,
      ca: ctx.ca,
      clientId: o.clientId,
      clean: o.clean,
      protocolVersion: 4,
      keepalive: 60,
      reconnectPeriod: 0,
      resubscribe: false,
      connectTimeout: ctx.stepTimeoutMs,
      ...(o.secureContext ? { secureContext: o.secureContext } : { cert: o.cert, key: o.key })
    }
    const client = mqtt.connect(options)
    if (o.onMessage) client.on('message', o.onMessage)
    if (o.slow) {
      const hold = o.slow
      // MQTT.js reads the next packet only once this calls back: the broker meets real back-pressure
      client.handleMessage = (_packet, done) => {
        hold()
        setTimeout(done, SLOW_SUBSCRIBER_MS).unref()
      }
    }
    let settled = false
    const fail = (err: Error): void => {
      if (settled) return
      settled = true
      client.end(true)
      const code = (err as Error & { code?: unknown }).code
      // CONNACK 2, 4, 5: identifier rejected, bad credentials, not authorized: asking again will not help
      const fatal = typeof code === 'number' && [2, 4, 5].includes(code)
      reject(new ConnectError(typeof code === 'number' ? `CONNACK ${code} (${err.message})` : err.message, fatal))
    }
    client.once('connect', (connack) => {
      if (settled) return
      settled = true
      client.removeListener('close', onClose)
      resolve({ client, sessionPresent: connack.sessionPresent })
    })
    // after CONNACK errors are the close that follows; before it they fail the attempt
    client.on('error', (err) => { if (!settled) fail(err) })
    const onClose = (): void => fail(new Error('connection closed before CONNACK'))
    client.once('close', onClose)
  })
}

function subscribe (client: MqttClient, topics: string[]): Promise<number> {
  return new Promise((resolve, reject) => {
    client.subscribe(topics, { qos: 1 }, (err, granted) => {
      if (err) return reject(err)
      resolve((granted ?? []).filter((g) => g.qos === 128).length)
    })
  })
}

/** the same string for the same JSON content whatever its keys' order: what "content applied before" compares */
export function canonicalJson (value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`
  if (value !== null && typeof value === 'object') {
    const o = value as Record<string, unknown>
    return `{${Object.keys(o).sort().map((k) => `${JSON.stringify(k)}:${canonicalJson(o[k])}`).join(',')}}`
  }
  return JSON.stringify(value) ?? 'null'
}

/** DISCONNECT after the in-flight messages are acknowledged, bounded */
function endClient (client: MqttClient, timeoutMs = END_TIMEOUT_MS): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      client.end(true)
      resolve()
    }, timeoutMs)
    timer.unref()
    client.end(false, {}, () => {
      clearTimeout(timer)
      resolve()
    })
  })
}

function reason (err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).split('\n')[0]!.slice(0, 200)
}

function errorSummary (body: Record<string, unknown>): string {
  return `${String(body.statusCode ?? '?')} ${String(body.errorCode ?? 'rejected')}: ${String(body.errorMessage ?? '')}`.trim()
}

export class VirtualDevice {
  phase: DevicePhase = 'waiting'
  deviceId: string | null = null
  /** ms since the epoch at the register reply: the health window opens about then */
  registeredAt: number | null = null
  readonly steps: Partial<Record<Step, number>> = {}
  error: { step: string, message: string } | null = null
  /** config versions received, in order (a version delivered again is not repeated) */
  readonly configVersions: number[] = []
  /** the newest version this device acknowledged `applied` (0: none) */
  lastApplied = 0
  /** the versions it acknowledged `failed` */
  readonly failedVersions: number[] = []
  /** ms offline for each connection loss the device recovered from, and when (performance.now()) it happened */
  readonly outages: Array<{ at: number, ms: number }> = []
  configMissing = false
  readonly counters: DeviceCounters = {
    sent: 0,
    acknowledged: 0,
    rejected: 0,
    rejectedByCode: {},
    telemetry: 0,
    states: 0,
    configAcks: { applied: 0, failed: 0 },
    configsIgnored: 0,
    badPayloads: 0,
    commands: 0,
    rotations: { requested: 0, completed: 0, failed: 0 },
    connectionsLost: 0,
    reconnects: 0,
    subscribeRefused: 0,
    slowHeld: 0,
    skippedOffline: 0
  }

  private keyPem: string
  private certPem: string | null = null
  private client: MqttClient | null = null
  /** clients this device ended itself: their close is not a loss */
  private readonly ended = new WeakSet<MqttClient>()
  private firstOnlineAt: number | null = null
  private lostAt: number | null = null
  private handledVersion = 0
  /** canonical content of every configuration this device applied */
  private readonly appliedContents = new Set<string>()
  private stateSent = false
  private telemetryTimer: NodeJS.Timeout | null = null
  private configTimer: NodeJS.Timeout | null = null
  private seq = 0
  private badWindow = { start: 0, count: 0 }
  private reconnecting: Promise<void> | null = null
  private rotating = false
  private rotationReply: ((reply: Reply) => void) | null = null
  /** sent again on every new connection until acknowledged */
  private readonly pending = new Map<'ack' | 'state', { topic: string, payload: string, acked: () => void }>()
  private readonly onlineWaiters: Array<() => void> = []

  constructor (
    readonly index: number,
    readonly parameters: Readonly<Record<string, string>>,
    readonly faults: ReadonlySet<FaultKind>,
    private readonly request: DeviceRequest,
    private readonly ctx: FleetContext,
    /** how it fails its configurations when it has the config-fail fault (faults.ts configFailModes; default: every version) */
    readonly configFail: ConfigFailMode | null = faults.has('config-fail') ? 'never-applies' : null
  ) {
    this.keyPem = request.keyPem
  }

  get online (): boolean {
    return this.phase === 'online'
  }

  /** resolves once the device is online, or can no longer be */
  whenOnline (): Promise<void> {
    if (this.phase !== 'offline' && this.phase !== 'provisioning' && this.phase !== 'waiting') return Promise.resolve()
    return new Promise((resolve) => this.onlineWaiters.push(resolve))
  }

  /** true once it did what a healthy device does first (or, by its faults, decided not to) */
  get settled (): boolean {
    return this.phase === 'failed' || this.phase === 'done' || this.phase === 'stopped' || (this.stateSent && !this.pending.has('state')) ||
      (this.faults.has('silent') && this.handledVersion > 0)
  }

  /** claim → CSR → register → own connection; the rest of its life follows from the messages it gets */
  async provision (): Promise<void> {
    const ctx = this.ctx
    this.phase = 'provisioning'
    let step = 'claimConnect'
    let claim: MqttClient | null = null
    let waiter: ((topic: string, body: Record<string, unknown>) => void) | null = null
    try {
      let t = performance.now()
      claim = (await openClient(ctx, {
        clientId: `sim-claim-${this.parameters.serialNumber ?? String(this.index)}`.toLowerCase().replace(/[^a-z0-9_.:-]/g, '-').slice(0, 64),
        clean: true,
        secureContext: ctx.claimContext,
        onMessage: (topic, payload) => {
          let body: Record<string, unknown> = {}
          try { body = JSON.parse(payload.toString('utf8')) as Record<string, unknown> } catch { /* a non-JSON reply: the waiter sees an empty body */ }
          waiter?.(topic, body)
        }
      })).client
      this.steps.claimConnect = performance.now() - t
      const claimClient = claim
      const ask = (topic: string, body: unknown): Promise<Reply> => new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no reply on ${topic} within ${ctx.stepTimeoutMs / 1000} s`)), ctx.stepTimeoutMs)
        waiter = (replyTopic, replyBody) => {
          if (replyTopic !== `${topic}/accepted` && replyTopic !== `${topic}/rejected`) return
          clearTimeout(timer)
          waiter = null
          resolve({ accepted: replyTopic.endsWith('/accepted'), body: replyBody })
        }
        claimClient.publish(topic, JSON.stringify(body), { qos: 1 })
      })
      const register = registerTopic(ctx.template)
      step = 'subscribe'
      await subscribe(claim, [`${CSR_TOPIC}/accepted`, `${CSR_TOPIC}/rejected`, `${register}/accepted`, `${register}/rejected`])
      step = 'csr'
      t = performance.now()
      const created = await ask(CSR_TOPIC, { certificateSigningRequest: this.request.csr })
      if (!created.accepted) throw new Error(errorSummary(created.body))
      this.steps.csr = performance.now() - t
      step = 'register'
      t = performance.now()
      const registered = await ask(register, { certificateOwnershipToken: created.body.certificateOwnershipToken, parameters: this.parameters })
      if (!registered.accepted) throw new Error(errorSummary(registered.body))
      this.steps.register = performance.now() - t
      this.registeredAt = Date.now()
      this.deviceId = String(registered.body.deviceId)
      // the leaf alone, as returned: what fleet-provisioning firmware presents
      this.certPem = String(registered.body.certificatePem ?? created.body.certificatePem)
      // the claim connection's work is done; its DISCONNECT is not part of the device's time
      void endClient(claim)
      claim = null
      step = 'reconnect'
      t = performance.now()
      if (ctx.lifecycle === 'provision') {
        const { client } = await openClient(ctx, { clientId: this.deviceId, clean: false, cert: this.certPem, key: this.keyPem })
        this.steps.reconnect = performance.now() - t
        this.phase = 'done'
        await endClient(client)
        return
      }
      try {
        await this.connectOwn()
      } catch (err) {
        // a refusal for good fails the device; anything else (a busy listener) is tried again as after a drop
        if (err instanceof ConnectError && err.fatal) throw err
        this.phase = 'offline'
        await this.reconnect()
        if (!this.online) return
      }
      this.steps.reconnect = performance.now() - t
    } catch (err) {
      this.fail(step, err)
      if (claim) claim.end(true)
    }
  }

  private fail (step: string, err: unknown): void {
    this.error ??= { step, message: reason(err) }
    this.phase = 'failed'
    this.wakeWaiters()
    this.ctx.changed()
  }

  private wakeWaiters (): void {
    for (const w of this.onlineWaiters.splice(0)) w()
  }

  private topic (leaf: string): string {
    return `devices/${this.deviceId!}/${leaf}`
  }

  /** a connection with the device's own certificate, its subscriptions, and what is still unacknowledged sent again */
  private async connectOwn (): Promise<void> {
    const { client, sessionPresent } = await openClient(this.ctx, {
      clientId: this.deviceId!,
      clean: false,
      cert: this.certPem!,
      key: this.keyPem,
      onMessage: (topic, payload) => this.onMessage(topic, payload),
      ...(this.faults.has('slow-subscriber') ? { slow: () => { this.counters.slowHeld++ } } : {})
    })
    if (this.ctx.stopping() || this.phase === 'stopped') {
      this.ended.add(client)
      await endClient(client)
      return
    }
    this.client = client
    client.on('close', () => this.onClose(client))
    this.phase = 'online'
    const now = performance.now()
    if (this.lostAt !== null) {
      this.outages.push({ at: this.lostAt, ms: now - this.lostAt })
      this.lostAt = null
    }
    if (this.firstOnlineAt === null) {
      this.firstOnlineAt = now
      // a firmware reports its state even when no configuration comes
      this.configTimer = setTimeout(() => {
        if (this.handledVersion > 0 || this.ctx.stopping()) return
        this.configMissing = true
        this.afterFirstConfig()
      }, CONFIG_WAIT_MS)
      this.configTimer.unref()
    }
    // a session the broker kept still has its subscriptions (and queued what came meanwhile)
    if (!sessionPresent) {
      this.counters.subscribeRefused += await subscribe(client, [this.topic('config'), this.topic('errors'), this.topic('commands/#')])
    }
    for (const p of this.pending.values()) this.send(p.topic, p.payload, p.acked)
    this.wakeWaiters()
    this.ctx.changed()
  }

  private onClose (client: MqttClient): void {
    if (client !== this.client || this.ended.has(client)) return
    this.client = null
    if (this.ctx.stopping() || this.phase === 'stopped') return
    this.phase = 'offline'
    this.counters.connectionsLost++
    this.lostAt ??= performance.now()
    this.ctx.changed()
    void this.reconnect()
  }

  /** at once, then with jittered exponential backoff, until connected, refused for good, or past the deadline */
  private reconnect (): Promise<void> {
    this.reconnecting ??= (async () => {
      try {
        for (let attempt = 0; attempt < RECONNECT_ATTEMPTS; attempt++) {
          if (attempt > 0) await sleep(Math.min(RECONNECT_MAX_DELAY_MS, 200 * 2 ** attempt) * (0.5 + Math.random() / 2))
          if (this.ctx.stopping() || this.phase === 'stopped' || Date.now() > this.ctx.deadline()) return
          this.counters.reconnects++
          try {
            await this.connectOwn()
            return
          } catch (err) {
            if (err instanceof ConnectError && err.fatal) throw err
          }
        }
        throw new Error(`still offline after ${RECONNECT_ATTEMPTS} attempts`)
      } finally {
        this.reconnecting = null
      }
    })().catch((err: unknown) => this.fail('reconnect', err))
    return this.reconnecting
  }

  private onMessage (topic: string, payload: Buffer): void {
    if (this.deviceId === null) return
    const prefix = `devices/${this.deviceId}/`
    let body: Record<string, unknown> | null = null
    try {
      const parsed = JSON.parse(payload.toString('utf8')) as unknown
      if (typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed)) body = parsed as Record<string, unknown>
    } catch { /* not JSON: ignored as a firmware would */ }
    if (topic.startsWith(ROTATE_TOPIC + '/')) {
      this.rotationReply?.({ accepted: topic.endsWith('/accepted'), body: body ?? {} })
      return
    }
    if (!topic.startsWith(prefix) || body === null) return
    const leaf = topic.slice(prefix.length)
    if (leaf === 'config') return this.onConfig(body)
    if (leaf === 'errors') {
      this.counters.rejected++
      const code = typeof body.errorCode === 'string' ? body.errorCode : 'unknown'
      this.counters.rejectedByCode[code] = (this.counters.rejectedByCode[code] ?? 0) + 1
      return
    }
    if (leaf.startsWith('commands/')) {
      if (leaf === 'commands/rotate-certificate' || body.name === 'rotate-certificate') {
        void this.rotate()
        return
      }
      this.counters.commands++
    }
  }

  private onConfig (doc: Record<string, unknown>): void {
    const version = doc.version
    if (typeof version !== 'number' || !Number.isInteger(version)) return
    if (this.handledVersion === 0 && this.firstOnlineAt !== null) this.steps.config = performance.now() - this.firstOnlineAt
    // the retained copy delivered again (a new subscription) is not a new version
    if (version <= this.handledVersion) return
    const first = this.handledVersion === 0
    this.handledVersion = version
    this.configVersions.push(version)
    if (this.faults.has('config-silent')) {
      this.counters.configsIgnored++
    } else {
      const content = canonicalJson(doc.config ?? null)
      const failed = this.failsConfig(content)
      const ack = failed ? { version, status: 'failed', error: 'simulated: the firmware could not apply this configuration' } : { version, status: 'applied' }
      const sentAt = performance.now()
      if (failed) {
        this.failedVersions.push(version)
      } else {
        this.appliedContents.add(content)
        this.lastApplied = version
      }
      this.must('ack', this.topic('config/ack'), JSON.stringify(ack), () => {
        if (this.steps.ack === undefined) this.steps.ack = performance.now() - sentAt
        if (first && !failed) this.ctx.firstConfigApplied?.(this, version)
      })
      if (failed) this.counters.configAcks.failed++
      else this.counters.configAcks.applied++
    }
    if (first) this.afterFirstConfig()
  }

  /**
   * config-fail (faults.ts): `never-applies` fails everything; `fails-updates` applies its
   * first configuration and any content it applied before (what a rollback to its last
   * known good delivers), and fails content it never applied
   */
  private failsConfig (content: string): boolean {
    if (this.configFail === 'never-applies') return true
    if (this.configFail === 'fails-updates') return this.appliedContents.size > 0 && !this.appliedContents.has(content)
    return false
  }

  /** state (unless silent), then telemetry */
  private afterFirstConfig (): void {
    if (this.configTimer) clearTimeout(this.configTimer)
    if (this.stateSent) return
    this.stateSent = true
    if (this.faults.has('silent')) {
      this.startTelemetry()
      this.ctx.changed()
      return
    }
    const sentAt = performance.now()
    const state = { ts: Date.now(), status: 'online', firmware: 'aedes-jitp-simulate/1', details: { configVersion: this.handledVersion } }
    this.counters.states++
    this.must('state', this.topic('state'), JSON.stringify(state), () => {
      this.steps.firstState = performance.now() - sentAt
      this.ctx.changed()
      this.startTelemetry()
    })
  }

  private startTelemetry (): void {
    if (this.telemetryTimer !== null || this.ctx.stopping()) return
    // one bad payload at once, whatever the rate: every bad-payload device is seen
    if (this.faults.has('bad-payload')) this.sendBad()
    const interval = this.ctx.telemetryIntervalMs
    if (interval === null) return
    // spread over the interval, so the fleet does not publish in lockstep
    this.telemetryTimer = setTimeout(() => {
      this.tick()
      this.telemetryTimer = setInterval(() => this.tick(), interval)
      this.telemetryTimer.unref()
    }, Math.random() * interval)
    this.telemetryTimer.unref()
  }

  private tick (): void {
    if (!this.online) {
      this.counters.skippedOffline++
      return
    }
    this.seq++
    if (this.faults.has('bad-payload') && this.seq % BAD_EVERY === 0 && this.sendBad()) return
    const reading = { ts: Date.now(), seq: this.seq, values: { temperature: Math.round((20 + Math.random() * 5) * 10) / 10, humidity: Math.round(40 + Math.random() * 20), battery: 3.7 } }
    this.counters.telemetry++
    this.send(this.topic('telemetry'), JSON.stringify(reading))
  }

  /** alternately a schema violation and something that is not JSON, at most BAD_PER_MINUTE */
  private sendBad (): boolean {
    const now = Date.now()
    if (now - this.badWindow.start >= 60_000) this.badWindow = { start: now, count: 0 }
    if (this.badWindow.count >= BAD_PER_MINUTE || !this.online) return false
    this.badWindow.count++
    const bad = this.counters.badPayloads++ % 2 === 0
      ? JSON.stringify({ ts: 'not-a-time', values: 'not-an-object' })
      : '{"ts": 1, "values": {"temperature": 21.5'
    this.send(this.topic('telemetry'), bad)
    return true
  }

  /** QoS 1; false when offline (nothing sent) */
  private send (topic: string, payload: string, acked?: () => void): boolean {
    const client = this.client
    if (client === null || !client.connected) return false
    this.counters.sent++
    client.publish(topic, payload, { qos: 1 }, (err) => {
      if (err) return
      this.counters.acknowledged++
      acked?.()
    })
    return true
  }

  /** kept until its PUBACK, sent again on every new connection (at least once) */
  private must (kind: 'ack' | 'state', topic: string, payload: string, acked: () => void): void {
    const entry = {
      topic,
      payload,
      acked: () => {
        if (this.pending.get(kind) !== entry) return
        this.pending.delete(kind)
        acked()
      }
    }
    this.pending.set(kind, entry)
    this.send(topic, payload, entry.acked)
  }

  /** CONTRACT §3.4: a new key and CSR, the request on the current connection, then a reconnect with the new certificate */
  private async rotate (): Promise<void> {
    const client = this.client
    if (this.rotating || client === null || this.ctx.stopping()) return
    this.rotating = true
    this.counters.rotations.requested++
    const previous = { certPem: this.certPem, keyPem: this.keyPem }
    try {
      const keys = generateKeyPair('ec')
      const keyPem = privateKeyToPem(keys.privateKey)
      const csr = createCsr({ commonName: this.deviceId!, ...keys })
      await subscribe(client, [`${ROTATE_TOPIC}/accepted`, `${ROTATE_TOPIC}/rejected`])
      const reply = await new Promise<Reply>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('no reply to the rotation request')), this.ctx.stepTimeoutMs)
        this.rotationReply = (r) => {
          clearTimeout(timer)
          resolve(r)
        }
        this.counters.sent++
        client.publish(ROTATE_TOPIC, JSON.stringify({ certificateSigningRequest: csr }), { qos: 1 }, (err) => { if (!err) this.counters.acknowledged++ })
      }).finally(() => { this.rotationReply = null })
      if (!reply.accepted || typeof reply.body.certificatePem !== 'string') throw new Error(errorSummary(reply.body))
      // stored before use; the first connect with it revokes the old one
      this.certPem = reply.body.certificatePem
      this.keyPem = keyPem
      await this.switchConnection(client)
      if (this.online) {
        this.counters.rotations.completed++
        return
      }
      // the new certificate was refused: the old one works until its grace ends
      this.certPem = previous.certPem
      this.keyPem = previous.keyPem
      this.counters.rotations.failed++
      await this.switchConnection(null)
    } catch {
      this.counters.rotations.failed++
    } finally {
      this.rotating = false
    }
  }

  /** ends `client` (ours) and connects again with the current certificate */
  private async switchConnection (client: MqttClient | null): Promise<void> {
    if (client !== null) {
      this.ended.add(client)
      if (this.client === client) this.client = null
      this.phase = 'offline'
      this.lostAt = performance.now()
      await endClient(client)
    }
    if (this.phase === 'failed') this.phase = 'offline'
    await this.reconnect()
  }

  /** disconnect-storm: the connection drops as in a network outage (no DISCONNECT); the device reconnects at once */
  dropConnection (): boolean {
    const client = this.client
    if (client === null || !this.online) return false
    // offline from now: whoever waits for it to be back must not see the old connection
    this.phase = 'offline'
    this.lostAt = performance.now()
    client.stream.destroy()
    return true
  }

  /** telemetry stops; DISCONNECT once the in-flight messages are acknowledged (bounded) */
  async stop (): Promise<void> {
    if (this.telemetryTimer) {
      clearTimeout(this.telemetryTimer)
      clearInterval(this.telemetryTimer)
    }
    if (this.configTimer) clearTimeout(this.configTimer)
    // a reconnect under way sees the phase after its sleep or its CONNACK, and ends there
    const client = this.client
    if (this.phase !== 'failed' && this.phase !== 'done') this.phase = 'stopped'
    this.wakeWaiters()
    if (client !== null) {
      this.ended.add(client)
      this.client = null
      await endClient(client)
    }
  }
}
