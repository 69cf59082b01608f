/**
 * The device configuration store: the only publisher of `devices/<id>/config`,
 * as a retained, versioned message `{"version": n, "config": {...}}`. Published
 * through Aedes itself, so it lands in the shared retained store (Redis when set)
 * and reaches the device on its first subscribe.
 */
import type { Aedes } from 'aedes'
import type { Audit } from './audit.js'

export function configTopic (deviceId: string): string {
  return `devices/${deviceId}/config`
}

export function publishDeviceConfig (broker: Aedes, audit: Audit, deviceId: string, version: number, config: Readonly<Record<string, unknown>>): Promise<void> {
  const topic = configTopic(deviceId)
  return new Promise((resolve, reject) => {
    broker.publish({
      cmd: 'publish',
      topic,
      payload: Buffer.from(JSON.stringify({ version, config })),
      qos: 1,
      retain: true,
      dup: false
    }, (err?: Error) => {
      if (err) return reject(err)
      audit.write('config.published', { deviceId, topic, version })
      resolve()
    })
  })
}
