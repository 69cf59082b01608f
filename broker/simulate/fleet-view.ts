/**
 * What the broker says about the simulated devices, read through the admin API
 * only (CONTRACT §8), so the simulator works against any broker it can reach:
 * the template's health window, the decisions as they are audited
 * (`device.activated`, `device.quarantined` with its `check`), the registry record
 * of each device, and the audit lines that tell what became of each fault.
 */
import { adminCall, AdminApiError, withQuery, type AdminTarget } from '../cli/admin-client.js'

export interface TemplateHealth {
  /** seconds from registration within which a device must pass its checks (CONTRACT §3.7, default 300) */
  readonly withinSeconds: number
  /** false when the broker does not say (a broker without health verification) */
  readonly reported: boolean
}

export async function templateHealth (admin: AdminTarget, template: string): Promise<TemplateHealth> {
  let t: { healthCheck?: { withinSeconds?: number } }
  try {
    t = await adminCall(admin, 'GET', `/v1/templates/${encodeURIComponent(template)}`)
  } catch (err) {
    if (err instanceof AdminApiError && err.statusCode === 404) throw new Error(`the broker has no provisioning template '${template}' (aedes-jitp simulate --template NAME)`)
    throw err
  }
  const within = t.healthCheck?.withinSeconds
  return typeof within === 'number' && within > 0 ? { withinSeconds: within, reported: true } : { withinSeconds: 300, reported: false }
}

export interface AuditLine { readonly time: number, readonly event: string, readonly [k: string]: unknown }

interface AuditPage { items: AuditLine[], nextCursor: string | null, followCursor: string }

const MAX_PAGES = 200

/**
 * Audit lines matching `event` (a glob), from `since` or from a cursor, every page;
 * returns them and the cursor to follow from. Bounded in pages.
 */
export async function auditSince (admin: AdminTarget, event: string, from: { since: number } | { cursor: string }): Promise<{ lines: AuditLine[], follow: string }> {
  const lines: AuditLine[] = []
  let cursor = 'cursor' in from ? from.cursor : undefined
  let follow = cursor ?? ''
  for (let page = 0; page < MAX_PAGES; page++) {
    const query = cursor === undefined ? { event, since: 'since' in from ? from.since : undefined, limit: 1000 } : { event, cursor, limit: 1000 }
    const r = await adminCall<AuditPage>(admin, 'GET', withQuery('/v1/audit', query))
    lines.push(...r.items)
    follow = r.followCursor
    if (!r.nextCursor) break
    cursor = r.nextCursor
  }
  return { lines, follow }
}

export interface RegistryDevice {
  readonly deviceId: string
  readonly status: string
  readonly template?: string
  readonly activity?: { connects?: number, messagesIn?: number, rejected?: number, lastErrorCode?: string | null }
  readonly config?: { version: number | null, lastKnownGood: number | null }
}

/** GET /v1/devices/{id}; null when the broker does not know the device */
export async function registryDevice (admin: AdminTarget, deviceId: string): Promise<RegistryDevice | null> {
  try {
    return await adminCall<RegistryDevice>(admin, 'GET', `/v1/devices/${encodeURIComponent(deviceId)}`)
  } catch (err) {
    if (err instanceof AdminApiError && err.statusCode === 404) return null
    throw err
  }
}

/** `fn` over `items`, `concurrency` at a time */
export async function eachLimited<T, R> (items: readonly T[], concurrency: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length)
  let next = 0
  async function lane (): Promise<void> {
    while (next < items.length) {
      const i = next++
      out[i] = await fn(items[i]!)
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, lane))
  return out
}

/** the audit events the fault report looks at (the routine ones of every device are left out) */
export const NOTABLE_EVENTS = ['device.*', 'config.*', 'payload.rejected', 'publish.denied', 'subscribe.denied', 'connect.*', 'client.disconnected.*', 'certificate.*'] as const

const ROUTINE = new Set(['connect.accepted', 'config.published', 'device.registered', 'device.provisioned', 'certificate.issued', 'disconnect'])

/** a short name for what an audit line says, e.g. `device.quarantined check=state`, `payload.rejected SchemaViolation` */
export function auditKey (line: AuditLine): string | null {
  if (ROUTINE.has(line.event)) return null
  const str = (k: string): string | null => typeof line[k] === 'string' && line[k] !== '' ? line[k] as string : null
  switch (line.event) {
    case 'device.quarantined': return `device.quarantined check=${str('check') ?? str('reason') ?? '?'}`
    case 'config.acknowledged': {
      const reason = str('reason') ?? ''
      const what = reason.split(/[:;]/)[0]!.trim() || '?'
      const notRolledBack = /not rolled back: ([^;(]+)/.exec(reason)?.[1]?.trim()
      return `config.acknowledged ${what}${notRolledBack ? ` (not rolled back: ${notRolledBack})` : ''}`
    }
    case 'connect.refused': return `connect.refused ${str('reason') ?? str('errorCode') ?? ''}`.trim()
    default: {
      const detail = str('errorCode')
      return detail ? `${line.event} ${detail}` : line.event
    }
  }
}
