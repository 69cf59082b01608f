/**
 * Devices (CONTRACT §8): list with filters and cursors, show with certificates,
 * activity and configuration version, revoke, quarantine, reinstate, rotate (the
 * rotate-certificate command of CONTRACT §3.4, sent on demand). A change is
 * audited once, here, by the process that made it; every broker process closes
 * the device's live sessions when the registry's notice reaches it.
 */
import type { FastifyPluginAsync } from 'fastify'
import { JitpError } from '../../errors.js'
import { configTopic } from '../../config-store.js'
import type { DeviceRecord, DeviceStatus, HealthProgress } from '../../store/registry.js'
import { DEFAULT_HEALTH_CHECK, healthWindow } from '../../../plugins/provisioning/templates.js'
import type { AdminDeps } from '../server.js'
import { noQuery, conflict, deviceDetail, deviceIdParam, deviceStatus, deviceSummary, errorResponses, notFound, pageOf, pageQuery } from '../schemas.js'

type IdParams = { id: string }

const actionResponse = {
  type: 'object',
  required: ['deviceId', 'status'],
  properties: { deviceId: { type: 'string' }, status: deviceStatus }
} as const

function summary (d: DeviceRecord): Record<string, unknown> {
  return { deviceId: d.deviceId, status: d.status, template: d.template, createdAt: d.createdAt, updatedAt: d.updatedAt }
}

/** the version of the retained configuration the broker published for the device, if any */
async function retainedConfigVersion (deps: AdminDeps, deviceId: string): Promise<number | null> {
  const stream = deps.persistence.createRetainedStreamCombi([configTopic(deviceId)])
  for await (const packet of stream) {
    try {
      const version = (JSON.parse(String(packet.payload)) as { version?: unknown }).version
      if (typeof version === 'number') return version
    } catch {
      // the broker is the only publisher of config; a payload it cannot read has no version
    }
  }
  return null
}

/** the health window as the API shows it, with what is still missing */
function healthOf (h: HealthProgress | null): Record<string, unknown> | null {
  return h === null ? null : { deadline: h.deadline, checks: h.checks, met: h.met, missing: h.checks.filter((c) => !h.met.includes(c)) }
}

export function deviceRoutes (deps: AdminDeps): FastifyPluginAsync {
  const { registry, audit } = deps
  return async (app) => {
    app.get<{ Querystring: { status?: DeviceStatus, template?: string, limit: number, cursor?: string } }>('/v1/devices', {
      schema: {
        tags: ['devices'],
        summary: 'List devices, ordered by device id',
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: { status: deviceStatus, template: { type: 'string', pattern: '^[A-Za-z0-9_-]{1,64}$' }, ...pageQuery }
        },
        response: { 200: pageOf(deviceSummary), ...errorResponses }
      }
    }, async (req) => {
      const { status, template, limit, cursor } = req.query
      const page = await registry.listDevicesPage({ status, template, limit, cursor })
      return { items: page.items.map(summary), nextCursor: page.nextCursor }
    })

    app.get<{ Params: IdParams }>('/v1/devices/:id', {
      schema: {
        tags: ['devices'],
        summary: 'One device: record, certificates, activity, configuration version',
        params: deviceIdParam,
        querystring: noQuery,
        response: { 200: deviceDetail, ...errorResponses, ...notFound }
      }
    }, async (req) => {
      const { id } = req.params
      const device = await registry.getDevice(id)
      if (!device) throw new JitpError('DeviceNotFound', id)
      const [certificates, activity, version, configState, health] = await Promise.all([
        registry.certificatesOfDevice(id),
        registry.getActivity(id),
        retainedConfigVersion(deps, id),
        // CONTRACT §9: the configuration store knows the last version the device applied
        deps.configs ? deps.configs.state(id) : null,
        // CONTRACT §3.7: an active (or revoked) device's window is over, whatever is left of it
        device.status === 'provisioned' || device.status === 'quarantined' ? registry.getHealth(id) : null
      ])
      return {
        ...summary(device),
        attributes: device.attributes,
        certificates: certificates.map((c) => ({ ...c, role: 'device' })),
        activity: activity ?? { firstSeen: null, lastSeen: null, connects: 0, messagesIn: 0, rejected: 0, lastErrorCode: null, remoteAddress: null, certificateNotAfter: null },
        config: { version, lastKnownGood: configState?.lastKnownGood ?? null },
        health: healthOf(health)
      }
    })

    app.post<{ Params: IdParams }>('/v1/devices/:id/revoke', {
      schema: {
        tags: ['devices'],
        summary: 'Revoke the device and every certificate of it; its live sessions close on every broker process',
        params: deviceIdParam,
        querystring: noQuery,
        response: { 200: actionResponse, ...errorResponses, ...notFound }
      }
    }, async (req) => {
      const { id } = req.params
      if (!(await registry.revokeDevice(id))) throw new JitpError('DeviceNotFound', id)
      audit.write('device.revoked', { deviceId: id, actor: req.admin?.commonName, reason: 'device and its certificates revoked' }, 'warn')
      return { deviceId: id, status: 'revoked' }
    })

    for (const [action, event] of [['quarantine', 'device.quarantined'], ['reinstate', 'device.reinstated']] as const) {
      app.post<{ Params: IdParams }>(`/v1/devices/:id/${action}`, {
        schema: {
          tags: ['devices'],
          summary: action === 'quarantine'
            ? 'Quarantine the device: it may still connect, report state and receive its configuration, nothing else (CONTRACT §3.7)'
            : 'Reinstate a quarantined device: provisioned again, with a new health window of its template (CONTRACT §3.7); any other status is left as it is',
          params: deviceIdParam,
          querystring: noQuery,
          response: { 200: actionResponse, ...errorResponses, ...notFound, ...conflict }
        }
      }, async (req) => {
        const { id } = req.params
        const before = await registry.getDevice(id)
        if (!before) throw new JitpError('DeviceNotFound', id)
        if (before.status === 'revoked') throw new JitpError('DeviceRevoked', 'a revoked device stays revoked')
        // a reinstated device proves its health again, as a new one does; an active or provisioned one has nothing to be reinstated from
        if (action === 'reinstate' && before.status !== 'quarantined') return { deviceId: id, status: before.status }
        // a template removed since the device registered: the default check
        const window = action === 'reinstate' ? healthWindow(deps.templates.get(before.template)?.healthCheck ?? DEFAULT_HEALTH_CHECK, deps.now()) : null
        const after = window === null ? await registry.setDeviceStatus(id, 'quarantined') : await registry.setDeviceStatus(id, 'provisioned', window)
        if (!after) throw new JitpError('DeviceNotFound', id)
        if (after.status === 'revoked') throw new JitpError('DeviceRevoked', 'a revoked device stays revoked')
        if (before.status !== after.status) {
          const within = window !== null ? ` (health window until ${new Date(window.deadline).toISOString()})` : ''
          audit.write(event, { deviceId: id, actor: req.admin?.commonName, template: before.template, reason: `${before.status} → ${after.status}${within}` }, 'warn')
        }
        return { deviceId: id, status: after.status }
      })
    }

    const rotate = deps.rotate
    if (rotate) {
      app.post<{ Params: IdParams }>('/v1/devices/:id/rotate', {
        schema: {
          tags: ['devices'],
          summary: 'Send the device the rotate-certificate command now (QoS 1: queued for its persistent session while it is offline); audited certificate.rotation.requested',
          params: deviceIdParam,
          querystring: noQuery,
          response: { 200: actionResponse, ...errorResponses, ...notFound, ...conflict }
        }
      }, async (req) => {
        const { id } = req.params
        const device = await registry.getDevice(id)
        if (!device) throw new JitpError('DeviceNotFound', id)
        if (device.status === 'revoked') throw new JitpError('DeviceRevoked', 'a revoked device has nothing to rotate')
        // the plugin audits certificate.rotation.requested with the operator
        await rotate(id, req.admin?.commonName ?? 'unknown')
        return { deviceId: id, status: device.status }
      })
    }
  }
}
