/**
 * The retained device configuration message: the only publisher of
 * `devices/<id>/config`, `{"version": n, "config": {...}}`, QoS 1, retained.
 * Published through Aedes itself, so it lands in the shared retained store (Redis
 * when set) and reaches the device on its first subscribe. Versions, history and
 * audit are the configuration service's (broker/config-service.ts).
 */
import type { Aedes } from 'aedes'
import type { Audit } from './audit.js'
import type { Template } from '../plugins/provisioning/templates.js'

export function configTopic (deviceId: string): string {
  return `devices/${deviceId}/config`
}

/** publishes one version retained; resolves once it is stored */
export function publishRetainedConfig (broker: Aedes, deviceId: string, version: number, config: Readonly<Record<string, unknown>>): Promise<void> {
  return new Promise((resolve, reject) => {
    broker.publish({
      cmd: 'publish',
      topic: configTopic(deviceId),
      payload: Buffer.from(JSON.stringify({ version, config })),
      qos: 1,
      retain: true,
      dup: false
    }, function configPublished (err?: Error) {
      if (err) reject(err)
      else resolve()
    })
  })
}
/** a publish outside the configuration service (no version recorded): for tests that need a retained config without the lifecycle */
/** a publish outside the configuration service (no version recorded): tests and brokers built without the service */
export async function publishDeviceConfig (broker: Aedes, audit: Audit, deviceId: string, version: number, config: Readonly<Record<string, unknown>>): Promise<void> {
  await publishRetainedConfig(broker, deviceId, version, config)
  audit.write('config.published', { deviceId, topic: configTopic(deviceId), version })
}

/** what registration needs of the configuration service */
export interface InitialConfigPublisher {
  effective (template: string, overrides: Readonly<Record<string, unknown>>): Promise<Readonly<Record<string, unknown>>>
  apply (deviceId: string, input: { template: string, config: Readonly<Record<string, unknown>>, overrides?: Readonly<Record<string, unknown>>, author: string }): Promise<unknown>
}

/**
 * A registered device's first configuration (CONTRACT §3.3, §9), through the
 * configuration service: a new version (1 for a new device) authored
 * `registration`, the template's current fleet configuration, no overrides.
 */
export async function publishInitialConfig (deps: { readonly configs: InitialConfigPublisher }, deviceId: string, template: Pick<Template, 'name' | 'configuration'>): Promise<void> {
  const config = await deps.configs.effective(template.name, {})
  await deps.configs.apply(deviceId, { template: template.name, config, overrides: {}, author: 'registration' })
}
