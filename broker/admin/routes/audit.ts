/**
 * The audit log (CONTRACT §6, §8): oldest first from `since`, filtered by event
 * glob and device. From the file (or the in-process ring when AUDIT_LOG is
 * stdout) on the memory store; from the capped Redis stream every broker process
 * writes to when REDIS_URL is set, so one query sees the whole cluster.
 */
import type { FastifyPluginAsync } from 'fastify'
import { parseSince } from '../../audit-query.js'
import { JitpError } from '../../errors.js'
import type { AdminDeps } from '../server.js'
import { errorResponses, pageQuery } from '../schemas.js'

const auditItem = {
  type: 'object',
  required: ['time', 'event'],
  additionalProperties: true,
  properties: { time: { type: 'integer' }, level: { type: 'string' }, event: { type: 'string' } }
} as const

/** ISO 8601 or milliseconds since the epoch */
function sinceParam (since: string | undefined): number | undefined {
  if (since === undefined) return undefined
  const ms = parseSince(since)
  if (ms === null) throw new JitpError('InvalidRequest', 'since must be an ISO 8601 time or milliseconds since the epoch')
  return ms
}

export function auditRoutes (deps: AdminDeps): FastifyPluginAsync {
  return async (app) => {
    app.get<{ Querystring: { event?: string, deviceId?: string, since?: string, limit: number, cursor?: string } }>('/v1/audit', {
      schema: {
        tags: ['audit'],
        summary: 'Audit events, oldest first',
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: {
            event: { type: 'string', pattern: '^[A-Za-z0-9_.*?-]{1,64}$', description: 'glob, e.g. device.*' },
            deviceId: { type: 'string', pattern: '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$' },
            since: { type: 'string', minLength: 1, maxLength: 40, description: 'ISO 8601 time or ms since the epoch' },
            ...pageQuery
          }
        },
        response: {
          200: {
            type: 'object',
            required: ['items', 'nextCursor', 'followCursor'],
            properties: {
              items: { type: 'array', items: auditItem },
              nextCursor: { type: ['string', 'null'], description: 'more lines match now: the next page; null at the end of the log' },
              followCursor: { type: 'string', description: 'passed as cursor later, returns only what was written since (`audit --follow`)' }
            }
          },
          ...errorResponses
        }
      }
    }, async (req) => {
      const { event, deviceId, limit, cursor } = req.query
      return deps.auditSource.query({ event, deviceId, since: sinceParam(req.query.since), limit, cursor })
    })
  }
}
