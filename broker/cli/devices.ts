/**
 * `aedes-jitp devices list | show <id> | revoke <id>`: works on the same store as
 * the broker, so it needs REDIS_URL (an in-memory store lives inside the broker
 * process and cannot be reached from here).
 */
import { parseArgs } from 'node:util'
import { loadConfig } from '../config.js'
import { createRegistry } from '../store/create-registry.js'
import { auditAction } from './certificates.js'

export async function devicesCommand (args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { config: { type: 'string' }, json: { type: 'boolean', default: false } } })
  const [action, id] = positionals
  const config = loadConfig({ file: values.config })
  if (!config.redisUrl) throw new Error('devices: REDIS_URL is not set; the in-memory store of a running broker cannot be reached from another process')
  const registry = createRegistry({ redisUrl: config.redisUrl })
  try {
    if (!(await registry.ping())) throw new Error(`devices: cannot reach Redis at ${config.redisUrl}`)
    switch (action) {
      case 'list': {
        const devices = await registry.listDevices()
        if (values.json) {
          process.stdout.write(JSON.stringify(devices) + '\n')
        } else {
          for (const d of devices.sort((a, b) => a.deviceId.localeCompare(b.deviceId))) {
            process.stdout.write(`${d.deviceId}\t${d.status}\t${d.template}\t${new Date(d.createdAt).toISOString()}\n`)
          }
        }
        return 0
      }
      case 'show': {
        if (!id) throw new Error('usage: aedes-jitp devices show <id>')
        const device = await registry.getDevice(id)
        if (!device) throw new Error(`devices: no device '${id}'`)
        const certificates = await registry.certificatesOfDevice(id)
        process.stdout.write(JSON.stringify({ ...device, certificates }, null, 2) + '\n')
        return 0
      }
      case 'revoke': {
        if (!id) throw new Error('usage: aedes-jitp devices revoke <id>')
        if (!(await registry.revokeDevice(id))) throw new Error(`devices: no device '${id}'`)
        // audited once, here, with the actor; each broker audits only the sessions it closes
        await auditAction(config, 'device.revoked', { deviceId: id, reason: 'device and its certificates revoked' })
        process.stdout.write(`revoked ${id}\n`)
        return 0
      }
      default:
        throw new Error('usage: aedes-jitp devices list|show <id>|revoke <id>')
    }
  } finally {
    await registry.close()
  }
}
