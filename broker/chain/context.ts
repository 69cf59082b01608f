/**
 * What every flow of the chain shares, built once by `installChain`: the plugin
 * context, the plugins' hooks grouped per kind (in plugin order), and the
 * per-client and per-packet state the flows hand to each other.
 */
import type { Client, PublishPacket } from 'aedes'
import type { JitpError } from '../errors.js'
import type { PluginContext, PluginHooks } from '../plugin.js'
import { reservedTopics, type ReservedTopics } from '../reserved-topics.js'

const SYS_PREFIX = '$SYS/'

export type HookKind = Exclude<keyof PluginHooks, 'name' | 'close'>
export type HooksByKind = { readonly [K in HookKind]: readonly PluginHooks[] }

const HOOK_KINDS: readonly HookKind[] = [
  'authenticate', 'connected', 'authorizePublish', 'authorizeSubscribe', 'authorizeForward', 'validatePublish',
  'transformForward', 'intercept', 'rejected', 'published', 'ready', 'beforeQueue', 'disconnected'
]

export interface ChainContext {
  readonly ctx: PluginContext
  readonly hooks: HooksByKind
  /** a connect refused in preConnect, answered in authenticate (where Aedes sends the CONNACK code) */
  readonly refusals: WeakMap<Client, JitpError>
  /** the payload a validator asked to route instead (personal data sealed), per packet */
  readonly sealedPayloads: WeakMap<PublishPacket, Buffer>
  readonly reserved: ReservedTopics
  /** bound once, plain numbers: a label lookup (or prom-client's label hashing) per message would cost more than the count */
  readonly publishCounters: ReadonlyMap<string, { inc (): void }>
  /** live connections by role (the `connections` gauge, read at each scrape) */
  readonly connections: ReadonlyMap<string, { inc (): void, dec (): void }>
}

/** the role labels the chain counts under (`unknown`: a connection with no identity yet) */
const COUNTED_ROLES = ['device', 'claim', 'service', 'unknown'] as const

export function createChainContext (ctx: PluginContext, plugins: readonly PluginHooks[]): ChainContext {
  const hooks = {} as Record<HookKind, readonly PluginHooks[]>
  for (const kind of HOOK_KINDS) hooks[kind] = plugins.filter((p) => typeof p[kind] === 'function')
  return {
    ctx,
    hooks,
    refusals: new WeakMap(),
    sealedPayloads: new WeakMap(),
    reserved: reservedTopics({ awsTopics: ctx.config.provisioningAwsTopics }),
    publishCounters: new Map(COUNTED_ROLES.map((role) => [role, ctx.metrics.publishTally(role)])),
    connections: new Map(COUNTED_ROLES.map((role) => [role, ctx.metrics.level('connections', role)]))
  }
}

/** the catalogue code for a refused `$` topic or filter */
export function reservedTopicCode (topic: string): 'SysTopicReserved' | 'ReservedTopic' {
  return topic.startsWith(SYS_PREFIX) ? 'SysTopicReserved' : 'ReservedTopic'
}
