/**
 * Audits a device's acknowledgement of a configuration version
 * (`devices/<id>/config/ack`, already authorized and schema-valid by now).
 */
import type { Plugin, PluginHooks } from '../broker/plugin.js'

export const configAckPlugin: Plugin = {
  name: 'config-ack',
  setup (ctx): PluginHooks {
    return {
      name: 'config-ack',
      published ({ client, identity, packet }) {
        // every routed publish passes here: the cheap test first
        if (!packet.topic.endsWith('/config/ack') || identity?.role !== 'device' || packet.topic !== `devices/${identity.name ?? ''}/config/ack`) return
        let ack: { version?: unknown, status?: unknown }
        try {
          ack = JSON.parse(packet.payload.toString()) as typeof ack
        } catch {
          return
        }
        ctx.audit.write('config.acknowledged', {
          clientId: client?.id,
          deviceId: identity.name ?? undefined,
          role: 'device',
          topic: packet.topic,
          version: typeof ack.version === 'number' ? ack.version : undefined,
          reason: typeof ack.status === 'string' ? ack.status : undefined
        }, ack.status === 'failed' ? 'warn' : 'info')
      }
    }
  }
}
