/**
 * Rollouts (CONTRACT §8, §9): a configuration change applied to a set of devices
 * in waves, advancing only while the share of failed and timed-out
 * acknowledgements stays under the abort threshold; pause, resume, abort.
 * Driven by one broker process of a cluster at a time (broker/rollouts.ts).
 */
import type { FastifyPluginAsync } from 'fastify'
import { JitpError } from '../../errors.js'
import type { Rollouts, RolloutSpec } from '../../rollouts.js'
import type { AdminDeps } from '../server.js'
import { conflict, errorResponses, noQuery, notFound } from '../schemas.js'

/** what the routes need of the rollout engine (broker/rollouts.ts) */
export type RolloutsApi = Pick<Rollouts, 'start' | 'get' | 'list' | 'pause' | 'resume' | 'abort'>

const configObject = { type: 'object', additionalProperties: true } as const
const waveItem = {
  type: 'object',
  required: ['percent', 'targeted', 'published', 'applied', 'failed', 'timedOut', 'pending'],
  properties: {
    percent: { type: 'number' }, targeted: { type: 'integer' }, published: { type: 'integer' }, applied: { type: 'integer' },
    failed: { type: 'integer' }, timedOut: { type: 'integer' }, pending: { type: 'integer' },
    skipped: { type: 'integer', description: 'changed by someone else first, gone, or its configuration refused' }
  }
} as const
const rolloutSchema = {
  type: 'object',
  required: ['id', 'status', 'waves'],
  additionalProperties: true,
  properties: { id: { type: 'string' }, status: { type: 'string', enum: ['running', 'paused', 'aborted', 'completed'] }, waves: { type: 'array', items: waveItem } }
} as const
const idParam = { type: 'object', required: ['id'], additionalProperties: false, properties: { id: { type: 'string', pattern: '^[A-Za-z0-9_-]{1,64}$' } } } as const

export function rolloutRoutes (deps: AdminDeps & { rollouts: RolloutsApi }): FastifyPluginAsync {
  const { rollouts } = deps
  return async (app) => {
    app.post<{ Body: RolloutSpec }>('/v1/rollouts', {
      schema: {
        tags: ['rollouts'],
        summary: 'Start a rollout: a new template configuration (`config`) or a patch of device overrides (`patch`) to a template, a list of devices or a filter, in waves',
        querystring: noQuery,
        body: {
          type: 'object',
          required: ['target', 'waves'],
          additionalProperties: false,
          properties: {
            target: {
              type: 'object',
              additionalProperties: false,
              minProperties: 1,
              properties: {
                template: { type: 'string', pattern: '^[A-Za-z0-9_-]{1,64}$' },
                deviceIds: { type: 'array', minItems: 1, maxItems: 100000, items: { type: 'string', pattern: '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$' } },
                status: { type: 'string', enum: ['provisioned', 'active', 'quarantined'] }
              }
            },
            config: configObject,
            patch: configObject,
            waves: { anyOf: [{ type: 'array', minItems: 1, maxItems: 20, items: { type: 'number', minimum: 0.001, maximum: 100 } }, { type: 'object', required: ['base', 'factor'], additionalProperties: false, properties: { base: { type: 'number', minimum: 0.001, maximum: 100 }, factor: { type: 'number', minimum: 1.001, maximum: 100 } } }] },
            minWaitSeconds: { type: 'integer', minimum: 0, maximum: 604800, default: 60 },
            abortThreshold: { type: 'number', minimum: 0, maximum: 1, default: 0.2 },
            minSample: { type: 'integer', minimum: 1 }
          }
        },
        response: { 200: rolloutSchema, ...errorResponses, ...notFound }
      }
    }, async (req) => {
      const spec = req.body
      if ((spec.config === undefined) === (spec.patch === undefined)) throw new JitpError('InvalidRequest', 'give exactly one of "config" (a new template configuration) or "patch" (merged into each device\'s overrides)')
      return rollouts.start(spec, req.admin?.commonName ?? 'admin')
    })

    app.get('/v1/rollouts', {
      schema: {
        tags: ['rollouts'],
        summary: 'Every rollout, newest first',
        querystring: noQuery,
        response: { 200: { type: 'object', required: ['items'], properties: { items: { type: 'array', items: rolloutSchema } } }, ...errorResponses }
      }
    }, async () => ({ items: await rollouts.list() }))

    app.get<{ Params: { id: string } }>('/v1/rollouts/:id', {
      schema: { tags: ['rollouts'], summary: 'One rollout, with its progress per wave', params: idParam, querystring: noQuery, response: { 200: rolloutSchema, ...errorResponses, ...notFound } }
    }, async (req) => {
      const r = await rollouts.get(req.params.id)
      if (!r) throw new JitpError('RolloutNotFound', req.params.id)
      return r
    })

    for (const action of ['pause', 'resume', 'abort'] as const) {
      app.post<{ Params: { id: string } }>(`/v1/rollouts/:id/${action}`, {
        schema: {
          tags: ['rollouts'],
          summary: action === 'abort' ? 'Abort: every device the rollout changed goes back to its previous version' : `${action[0]!.toUpperCase()}${action.slice(1)} the rollout`,
          params: idParam,
          querystring: noQuery,
          response: { 200: rolloutSchema, ...errorResponses, ...notFound, ...conflict }
        }
      }, async (req) => rollouts[action](req.params.id, req.admin?.commonName ?? 'admin'))
    }
  }
}
