/**
 * `aedes-jitp devices list [--status S] [--template T] | show <id> | revoke <id> | quarantine <id> | reinstate <id> | rotate <id>`:
 * a client of the admin API (broker/cli/admin-client.ts), so it works the same
 * on the embedded in-memory broker and a cluster. Tables by default, `--json` for scripts.
 * The change is audited once, by the broker process that made it, with the operator's CN.
 * `rotate` sends the device the rotate-certificate command (CONTRACT §3.4), queued while it is offline.
 */
import { parseArgs } from 'node:util'
import { ADMIN_OPTIONS, adminCall, adminTarget, allPages, iso, table } from './admin-client.js'
import { escapeControl } from './audit.js'

const USAGE = 'usage: aedes-jitp devices list [--status provisioned|active|quarantined|revoked] [--template NAME] | show <id> | revoke <id> | quarantine <id> | reinstate <id> | rotate <id> [--json] [--admin-url URL] [--cert F --key F --ca F]'

interface DeviceSummary { deviceId: string, status: string, template: string, createdAt: number, updatedAt: number }
interface DeviceDetail extends DeviceSummary {
  attributes?: Record<string, string>
  certificates: Array<{ certificateId: string, status: string, notAfter: number, serialNumber?: string }>
  activity: { firstSeen: number | null, lastSeen: number | null, connects: number, messagesIn: number, rejected: number, lastErrorCode: string | null, remoteAddress?: string | null, certificateNotAfter?: number | null }
  config: { version: number | null, lastKnownGood: number | null }
  /** CONTRACT §3.7: the health window of a provisioned (or the failed one of a quarantined) device */
  health?: { deadline: number, checks: string[], met: string[], missing: string[] } | null
}

export async function devicesCommand (args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { ...ADMIN_OPTIONS, status: { type: 'string' }, template: { type: 'string' } }
  })
  const [action, id, ...extra] = positionals
  if (extra.length > 0) throw new Error(USAGE)
  const out = (text: string): void => { process.stdout.write(text) }
  switch (action) {
    case 'list': {
      const target = adminTarget(values)
      const devices = await allPages<DeviceSummary>(target, '/v1/devices', { status: values.status, template: values.template })
      if (values.json) {
        out(JSON.stringify(devices) + '\n')
        return 0
      }
      out(table(['DEVICE', 'STATUS', 'TEMPLATE', 'REGISTERED'], devices.map((d) => [d.deviceId, d.status, d.template, iso(d.createdAt)])))
      return 0
    }
    case 'show': {
      if (!id) throw new Error(USAGE)
      const d = await adminCall<DeviceDetail>(adminTarget(values), 'GET', `/v1/devices/${encodeURIComponent(id)}`)
      if (values.json) {
        out(JSON.stringify(d, null, 2) + '\n')
        return 0
      }
      const a = d.activity
      out(table(['FIELD', 'VALUE'], [
        ['device', d.deviceId], ['status', d.status], ['template', d.template], ['registered', iso(d.createdAt)],
        ...Object.entries(d.attributes ?? {}).map(([k, v]) => [`attribute ${escapeControl(k)}`, escapeControl(v)]),
        ['first seen', iso(a.firstSeen)], ['last seen', iso(a.lastSeen)], ['connects', String(a.connects)],
        ['messages in', String(a.messagesIn)], ['rejected payloads', String(a.rejected)], ['last error', a.lastErrorCode ?? '-'],
        ['remote address', a.remoteAddress ?? '-'], ['certificate expires', iso(a.certificateNotAfter)],
        ['config version', d.config.version === null ? '-' : String(d.config.version)],
        ...(d.health ? [['health window until', iso(d.health.deadline)], ['health checks met', d.health.met.join(', ') || '-'], ['health checks missing', d.health.missing.join(', ') || '-']] : [])
      ]))
      out('\n' + table(['CERTIFICATE', 'STATUS', 'NOT AFTER'], d.certificates.map((c) => [c.certificateId, c.status, iso(c.notAfter)])))
      return 0
    }
    case 'revoke':
    case 'quarantine':
    case 'reinstate': {
      if (!id) throw new Error(USAGE)
      const r = await adminCall<{ deviceId: string, status: string }>(adminTarget(values), 'POST', `/v1/devices/${encodeURIComponent(id)}/${action}`)
      out(values.json ? JSON.stringify(r) + '\n' : `${r.deviceId}: ${r.status}\n`)
      return 0
    }
    case 'rotate': {
      if (!id) throw new Error(USAGE)
      const r = await adminCall<{ deviceId: string, status: string }>(adminTarget(values), 'POST', `/v1/devices/${encodeURIComponent(id)}/rotate`)
      out(values.json ? JSON.stringify({ ...r, command: 'rotate-certificate' }) + '\n' : `${r.deviceId}: rotate-certificate command sent\n`)
      return 0
    }
    default:
      throw new Error(USAGE)
  }
}
