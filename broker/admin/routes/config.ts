/**
 * Configuration (CONTRACT §8, §9): a device's desired configuration, its
 * history and rollback, and a template's fleet configuration. Every
 * configuration is checked against the `config` schema and the template's
 * `configSchema` before anything is stored or published (400 naming the path).
 * A template's new configuration reaches devices through a rollout, or at once
 * only when asked for with `"immediate": true`.
 */
import type { FastifyPluginAsync } from 'fastify'
import { JitpError } from '../../errors.js'
import type { ConfigVersion, DeviceConfigState, JsonObject } from '../../store/device-configs.js'
import type { AdminDeps } from '../server.js'
import { conflict, deviceIdParam, errorResponses, noQuery, notFound } from '../schemas.js'

/** what the routes need of the configuration service (broker/config-service.ts) */
export interface ConfigApi {
  setOverrides (deviceId: string, overrides: JsonObject, author: string): Promise<ConfigVersion>
  rollback (deviceId: string, opts: { toVersion?: number, author: string, reason: string }): Promise<ConfigVersion>
  state (deviceId: string): Promise<DeviceConfigState | null>
  history (deviceId: string, limit: number): Promise<ConfigVersion[]>
  validate (template: string, config: JsonObject): void
  templateConfig (template: string): Promise<{ config: JsonObject, author: string, at: number } | null>
  setTemplateConfig (template: string, config: JsonObject, author: string): Promise<void>
  /** `immediate`: every device of the template gets its new effective configuration now */
  applyTemplateNow (template: string, author: string): Promise<number>
}

const configObject = { type: 'object', additionalProperties: true } as const
const versionItem = {
  type: 'object',
  required: ['version', 'config', 'author', 'at', 'hash'],
  properties: { version: { type: 'integer' }, config: configObject, overrides: configObject, author: { type: 'string' }, at: { type: 'integer' }, hash: { type: 'string' }, reason: { type: 'string' } }
} as const
const templateParam = { type: 'object', required: ['name'], additionalProperties: false, properties: { name: { type: 'string', pattern: '^[A-Za-z0-9_-]{1,64}$' } } } as const

function stateBody (deviceId: string, s: DeviceConfigState | null): Record<string, unknown> {
  return {
    deviceId,
    version: s?.current?.version ?? null,
    config: s?.current?.config ?? {},
    overrides: s?.overrides ?? {},
    lastKnownGood: s?.lastKnownGood ?? null,
    status: s?.status ?? 'pending',
    deliveredAt: s?.deliveredAt ?? null
  }
}

export function configRoutes (deps: AdminDeps & { configs: ConfigApi }): FastifyPluginAsync {
  const { configs, registry } = deps
  async function device (id: string): Promise<{ template: string }> {
    const d = await registry.getDevice(id)
    if (!d) throw new JitpError('DeviceNotFound', id)
    return d
  }
  return async (app) => {
    app.get<{ Params: { id: string } }>('/v1/devices/:id/config', {
      schema: {
        tags: ['config'],
        summary: 'The device\'s current configuration version, its overrides, last known good and ack status',
        params: deviceIdParam,
        querystring: noQuery,
        response: {
          200: {
            type: 'object',
            required: ['deviceId', 'version', 'config', 'lastKnownGood', 'status'],
            properties: {
              deviceId: { type: 'string' }, version: { type: ['integer', 'null'] }, config: configObject, overrides: configObject,
              lastKnownGood: { type: ['integer', 'null'] }, status: { type: 'string', enum: ['current', 'pending', 'failed'] }, deliveredAt: { type: ['integer', 'null'] }
            }
          },
          ...errorResponses,
          ...notFound
        }
      }
    }, async (req) => {
      await device(req.params.id)
      return stateBody(req.params.id, await configs.state(req.params.id))
    })

    app.put<{ Params: { id: string }, Body: { config: JsonObject } }>('/v1/devices/:id/config', {
      schema: {
        tags: ['config'],
        summary: 'Replace the device\'s overrides: a new version, published retained at once',
        params: deviceIdParam,
        querystring: noQuery,
        body: { type: 'object', required: ['config'], additionalProperties: false, properties: { config: configObject } },
        response: {
          200: { type: 'object', required: ['deviceId', 'version', 'config'], properties: { deviceId: { type: 'string' }, version: { type: 'integer' }, config: configObject } },
          ...errorResponses,
          ...notFound
        }
      }
    }, async (req) => {
      await device(req.params.id)
      const v = await configs.setOverrides(req.params.id, req.body.config, req.admin?.commonName ?? 'admin')
      return { deviceId: req.params.id, version: v.version, config: v.config }
    })

    app.get<{ Params: { id: string }, Querystring: { limit: number } }>('/v1/devices/:id/config/history', {
      schema: {
        tags: ['config'],
        summary: 'The device\'s configuration versions, newest first (at least 20 kept)',
        params: deviceIdParam,
        querystring: { type: 'object', additionalProperties: false, properties: { limit: { type: 'integer', minimum: 1, maximum: 100, default: 20 } } },
        response: { 200: { type: 'object', required: ['items'], properties: { items: { type: 'array', items: versionItem } } }, ...errorResponses, ...notFound }
      }
    }, async (req) => {
      await device(req.params.id)
      return { items: await configs.history(req.params.id, req.query.limit) }
    })

    app.post<{ Params: { id: string }, Body: { toVersion?: number } | undefined }>('/v1/devices/:id/config/rollback', {
      schema: {
        tags: ['config'],
        summary: 'Roll back at once to a version of the history (default: the last known good), as a new version',
        params: deviceIdParam,
        querystring: noQuery,
        body: { type: 'object', additionalProperties: false, properties: { toVersion: { type: 'integer', minimum: 1 } } },
        response: {
          200: { type: 'object', required: ['deviceId', 'version'], properties: { deviceId: { type: 'string' }, version: { type: 'integer' }, fromVersion: { type: 'integer' } } },
          ...errorResponses,
          ...notFound,
          ...conflict
        }
      }
    }, async (req) => {
      await device(req.params.id)
      const toVersion = req.body?.toVersion
      const v = await configs.rollback(req.params.id, { ...(toVersion === undefined ? {} : { toVersion }), author: req.admin?.commonName ?? 'admin', reason: 'operator rollback' })
      return { deviceId: req.params.id, version: v.version }
    })

    app.get<{ Params: { name: string } }>('/v1/templates/:name/config', {
      schema: {
        tags: ['config'],
        summary: 'The template\'s fleet configuration',
        params: templateParam,
        querystring: noQuery,
        response: {
          200: { type: 'object', required: ['template', 'config'], properties: { template: { type: 'string' }, config: configObject, author: { type: 'string' }, at: { type: ['integer', 'null'] } } },
          ...errorResponses,
          ...notFound
        }
      }
    }, async (req) => {
      const t = deps.templates.get(req.params.name)
      if (!t) throw new JitpError('TemplateNotFound', req.params.name)
      const stored = await configs.templateConfig(t.name)
      return { template: t.name, config: stored?.config ?? t.configuration, author: stored?.author ?? 'template file', at: stored?.at ?? null }
    })

    app.put<{ Params: { name: string }, Body: { config: JsonObject, immediate?: boolean, rollout?: Record<string, unknown> } }>('/v1/templates/:name/config', {
      schema: {
        tags: ['config'],
        summary: 'A new fleet configuration: through a staged rollout (`rollout`: waves, minWaitSeconds, abortThreshold), or to every device at once with `"immediate": true`',
        params: templateParam,
        querystring: noQuery,
        body: {
          type: 'object',
          required: ['config'],
          additionalProperties: false,
          properties: {
            config: configObject,
            immediate: { type: 'boolean' },
            rollout: {
              type: 'object',
              additionalProperties: false,
              properties: {
                waves: { anyOf: [{ type: 'array', minItems: 1, maxItems: 20, items: { type: 'number', minimum: 0.001, maximum: 100 } }, { type: 'object', required: ['base', 'factor'], additionalProperties: false, properties: { base: { type: 'number', minimum: 0.001, maximum: 100 }, factor: { type: 'number', minimum: 1.001, maximum: 100 } } }] },
                minWaitSeconds: { type: 'integer', minimum: 0, maximum: 604800 },
                abortThreshold: { type: 'number', minimum: 0, maximum: 1 },
                minSample: { type: 'integer', minimum: 1 }
              }
            }
          }
        },
        response: {
          200: { type: 'object', required: ['template'], properties: { template: { type: 'string' }, devices: { type: 'integer' }, rolloutId: { type: 'string' } } },
          ...errorResponses,
          ...notFound
        }
      }
    }, async (req) => {
      const t = deps.templates.get(req.params.name)
      if (!t) throw new JitpError('TemplateNotFound', req.params.name)
      const { config, immediate, rollout } = req.body
      const author = req.admin?.commonName ?? 'admin'
      configs.validate(t.name, config)
      if (immediate === true && rollout !== undefined) throw new JitpError('InvalidRequest', 'either "immediate": true or a "rollout", not both')
      if (immediate === true) {
        await configs.setTemplateConfig(t.name, config, author)
        return { template: t.name, devices: await configs.applyTemplateNow(t.name, author) }
      }
      if (rollout === undefined) throw new JitpError('InvalidRequest', 'a template configuration reaches devices through a rollout: give "rollout": {...}, or "immediate": true')
      if (!deps.rollouts) throw new JitpError('InvalidRequest', 'rollouts are not available on this broker: use "immediate": true')
      const started = await deps.rollouts.start({
        target: { template: t.name },
        config,
        waves: (rollout.waves as number[] | { base: number, factor: number } | undefined) ?? [1, 10, 50, 100],
        minWaitSeconds: (rollout.minWaitSeconds as number | undefined) ?? 60,
        abortThreshold: (rollout.abortThreshold as number | undefined) ?? 0.2,
        ...(rollout.minSample === undefined ? {} : { minSample: rollout.minSample as number })
      }, author)
      return { template: t.name, rolloutId: started.id }
    })
  }
}
