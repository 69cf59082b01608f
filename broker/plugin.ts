/**
 * The plugin contract. A plugin is a named module whose `setup(ctx)` returns
 * typed hooks; `broker/chain.ts` is the only place that wires them into Aedes,
 * in one fixed order. Checks answer allow, deny or defer; the chain stops at
 * the first non-defer answer, and when every plugin defers the answer is deny.
 */
import type { Aedes, Client, AedesPublishPacket, PublishPacket, Subscription } from 'aedes'
import type { Audit } from './audit.js'
import type { Config } from './config.js'
import type { ErrorCode } from './errors.js'
import type { AppLogger } from './logger.js'
import type { Metrics } from './metrics.js'
import type { ConnectionState, Identity, PeerCertificate } from './session.js'
import type { CertificateRecords, Registry } from './store/registry.js'
import type { Trust } from './trust.js'

export interface PluginContext {
  readonly config: Config
  readonly broker: Aedes
  readonly registry: Registry
  readonly trust: Trust
  readonly audit: Audit
  readonly log: AppLogger
  readonly metrics: Metrics
  /** when this process must consider the time to be (injectable for tests) */
  readonly now: () => number
}

export type Defer = { readonly verdict: 'defer' }
export type Deny = { readonly verdict: 'deny', readonly code: ErrorCode, readonly rule?: string, readonly detail?: string }
export type Allow = { readonly verdict: 'allow', readonly rule?: string }

export const DEFER: Defer = Object.freeze({ verdict: 'defer' })
export const ALLOW: Allow = Object.freeze({ verdict: 'allow' })
export function deny (code: ErrorCode, rule?: string, detail?: string): Deny {
  return { verdict: 'deny', code, rule, detail }
}

export interface AuthenticateEvent {
  readonly client: Client
  readonly clientId: string
  readonly clean: boolean
  /** the verified client certificate; null on the token listener (then `credentials` authenticate) */
  readonly peer: PeerCertificate | null
  readonly remoteAddress: string
  /**
   * The CONNECT's username and password, on the token listener only (CONTRACT §10):
   * on MQTTS_PORT the certificate alone authenticates and they are never read. Never logged.
   */
  readonly credentials: { readonly username: string | undefined, readonly password: Buffer | undefined } | null
  /**
   * The store's records of `peer` (revocation list, certificate, its device), read
   * in one round trip the first time an authenticator asks and shared by the
   * others (chain/connect.ts); absent on the token listener.
   */
  readonly records?: () => Promise<CertificateRecords>
}
export type AuthenticateAnswer = Defer | Deny | { readonly verdict: 'allow', readonly identity: Identity }

export interface PublishEvent {
  /** null for wills restored from a broker that died */
  readonly client: Client | null
  readonly identity: Identity | null
  readonly state: ConnectionState | undefined
  readonly packet: PublishPacket
  readonly isWill: boolean
}

export interface SubscribeEvent {
  readonly client: Client
  readonly identity: Identity
  readonly state: ConnectionState
  readonly subscription: Subscription
}

export interface ForwardEvent {
  readonly client: Client
  readonly identity: Identity
  readonly state: ConnectionState
  readonly packet: AedesPublishPacket
}

export interface PayloadProblem { readonly path: string, readonly message: string }
export type ValidationAnswer =
  /** `payload`: what to route and store instead (x-pii values sealed), applied once the publish is allowed */
  | { readonly verdict: 'valid', readonly schema?: string, readonly payload?: Buffer }
  | { readonly verdict: 'invalid', readonly code: ErrorCode, readonly schema: string, readonly errors: readonly PayloadProblem[] }

export interface PublishedEvent {
  readonly client: Client | null
  readonly identity: Identity | null
  readonly packet: AedesPublishPacket
}

export interface RejectedEvent {
  readonly client: Client
  readonly identity: Identity | null
  readonly topic: string
  readonly code: ErrorCode
  readonly errors: readonly PayloadProblem[]
}

export interface PluginHooks {
  readonly name: string
  /** async: may consult the registry; runs once per connect */
  authenticate? (ev: AuthenticateEvent): Promise<AuthenticateAnswer>
  /** runs once the identity is known, before CONNACK; compile per-connection caches here */
  connected? (client: Client, state: ConnectionState): void
  /** synchronous: keeps a client's messages in order */
  authorizePublish? (ev: PublishEvent): Allow | Deny | Defer
  authorizeSubscribe? (ev: SubscribeEvent): Allow | Deny | Defer
  authorizeForward? (ev: ForwardEvent): Allow | Deny | Defer
  /** synchronous payload check, after authorization allowed the publish */
  validatePublish? (ev: PublishEvent): ValidationAnswer
  /** may return a different packet for this subscriber (e.g. without personal data) */
  transformForward? (ev: ForwardEvent): AedesPublishPacket
  /**
   * Takes a request addressed to the broker itself (e.g. `$provision/...`):
   * returning true consumes it, so it is acknowledged but never routed or stored.
   */
  intercept? (ev: PublishEvent): boolean
  /** told when a publish was dropped; provisioning answers `<request>/rejected` here */
  rejected? (ev: RejectedEvent): void
  /** after the broker routed a publish from a client */
  published? (ev: PublishedEvent): void
  /**
   * after CONNACK, once the client is registered (Aedes' `clientReady`): a last
   * look at what may have changed while the connect was in flight (a revocation)
   */
  ready? (client: Client, state: ConnectionState): void
  /**
   * after CONNACK, before the session's stored messages are handed out (every
   * connect, clean or not): false withholds them, and the plugin has closed the
   * session. Where a check that `ready` would make too late (a revocation that
   * landed while the connect was in flight) is made first.
   */
  beforeQueue? (client: Client, state: ConnectionState): boolean | Promise<boolean>
  disconnected? (client: Client, state: ConnectionState): void
  close? (): Promise<void>
}

export interface Plugin<Options = undefined> {
  readonly name: string
  setup (ctx: PluginContext, options: Options): Promise<PluginHooks> | PluginHooks
}
