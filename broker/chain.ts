/**
 * The one place that assigns Aedes' hook slots. Plugins are composed in a fixed
 * order, and data flows one way:
 *   TLS socket → identity → authorization → schema validation → fan-out → audit
 * Checks answer allow / deny / defer; the first non-defer answer wins and
 * "everyone deferred" means deny.
 *
 * One file per flow, as Aedes' `lib/handlers/`:
 *   chain/connect.ts    preConnect (connectActions) and authenticate
 *   chain/publish.ts    authorizePublish (vetActions, drop path, intercept, accept), published
 *   chain/subscribe.ts  authorizeSubscribe
 *   chain/forward.ts    authorizeForward (live delivery and the offline queue)
 *   chain/lifecycle.ts  clientReady / beforeQueue / clientDisconnect / keepaliveTimeout
 * They share one ChainContext (chain/context.ts), built here once.
 */
import type { Aedes, AedesPublishPacket, Client, ConnectPacket, PublishPacket, Subscription } from 'aedes'
import type { PluginContext, PluginHooks } from './plugin.js'
import { authenticate, preConnect } from './chain/connect.js'
import { createChainContext } from './chain/context.js'
import { authorizeForward, mayReceive } from './chain/forward.js'
import { beforeQueue, clientDisconnect, clientReady, keepaliveTimeout } from './chain/lifecycle.js'
import { authorizePublish, published, report, type ErrorReport } from './chain/publish.js'
import { authorizeSubscribe } from './chain/subscribe.js'

export { QUARANTINE_TOPIC, type ErrorReport } from './chain/publish.js'

export interface Chain {
  /** publishes a rejection report to `devices/<id>/errors` (devices only) */
  report (client: Client, report: ErrorReport): void
  /** whether `client` may receive `packet`, as a delivery would answer (nothing counted) */
  mayReceive (client: Client, packet: AedesPublishPacket): boolean
  /** whether `client`'s stored messages may be handed out now (the plugins' beforeQueue) */
  beforeQueue (client: Client): Promise<boolean>
}

export function installChain (ctx: PluginContext, plugins: readonly PluginHooks[]): Chain {
  const chain = createChainContext(ctx, plugins)
  const b = ctx.broker as Aedes
  b.preConnect = function chainPreConnect (client: Client, packet: ConnectPacket, done: (err: Error | null, ok: boolean) => void) {
    preConnect(chain, client, packet, done)
  }
  b.authenticate = function chainAuthenticate (client: Client, _username: unknown, _password: unknown, done: (err: (Error & { returnCode: number }) | null, ok: boolean | null) => void) {
    authenticate(chain, client, done)
  } as Aedes['authenticate']
  b.authorizePublish = function chainAuthorizePublish (client: Client | null, packet: PublishPacket, done: (err?: Error | null) => void) {
    authorizePublish(chain, client, packet, done)
  }
  b.authorizeSubscribe = function chainAuthorizeSubscribe (client: Client, subscription: Subscription, done: (err: Error | null, sub?: Subscription | null) => void) {
    authorizeSubscribe(chain, client, subscription, done)
  }
  b.authorizeForward = function chainAuthorizeForward (client: Client, packet: AedesPublishPacket) {
    return authorizeForward(chain, client, packet)
  }
  b.published = function chainPublished (packet: AedesPublishPacket, client: Client | null, done: (err?: Error | null) => void) {
    published(chain, packet, client, done)
  }

  ctx.broker.on('clientReady', function onClientReady (client) { clientReady(chain, client) })
  ctx.broker.on('clientDisconnect', function onClientDisconnect (client) { clientDisconnect(chain, client) })
  ctx.broker.on('keepaliveTimeout', function onKeepaliveTimeout (client) { keepaliveTimeout(chain, client) })

  return {
    report (client: Client, r: ErrorReport): void { report(chain, client, r) },
    mayReceive (client: Client, packet: AedesPublishPacket): boolean { return mayReceive(chain, client, packet) },
    beforeQueue (client: Client): Promise<boolean> { return beforeQueue(chain, client) }
  }
}
