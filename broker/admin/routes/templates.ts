/** Provisioning templates (CONTRACT §3.3, §8): what operators can see of them. */
import type { FastifyPluginAsync } from 'fastify'
import { JitpError } from '../../errors.js'
import type { Template } from '../../../plugins/provisioning/templates.js'
import type { AdminDeps } from '../server.js'
import { noQuery, errorResponses, notFound } from '../schemas.js'

const templateSummary = {
  type: 'object',
  required: ['name', 'description', 'reprovision'],
  properties: {
    name: { type: 'string' },
    description: { type: ['string', 'null'] },
    reprovision: { type: 'string', enum: ['deny', 'replace'] },
    manufacturerCas: { anyOf: [{ type: 'string' }, { type: 'array', items: { type: 'string' } }, { type: 'null' }] }
  }
} as const

const templateDetail = {
  type: 'object',
  required: ['name', 'description', 'reprovision', 'deviceId', 'parameters', 'configuration'],
  properties: {
    ...templateSummary.properties,
    deviceId: { type: 'string', description: 'device id pattern, `${parameter}` filled in' },
    parameters: { type: 'object', additionalProperties: true, description: 'JSON Schema of the register parameters' },
    configuration: { type: 'object', additionalProperties: true, description: 'initial configuration' },
    preProvisioningCheck: {
      type: 'object',
      properties: {
        allowList: { type: ['object', 'null'], additionalProperties: { type: 'array', items: { type: 'string' } } },
        module: { type: 'boolean', description: 'a pre-provisioning module is configured' }
      }
    },
    healthCheck: {
      type: 'object',
      description: 'CONTRACT §3.7: what a new device must do, within how long, to become active (defaults filled in)',
      properties: {
        withinSeconds: { type: 'integer' },
        requires: { type: 'array', items: { type: 'string' } },
        configAck: { type: 'boolean' }
      }
    }
  }
} as const

function summary (t: Template): Record<string, unknown> {
  return { name: t.name, description: t.description, reprovision: t.reprovision, manufacturerCas: t.manufacturerCas }
}

export function templateRoutes (deps: AdminDeps): FastifyPluginAsync {
  return async (app) => {
    app.get('/v1/templates', {
      schema: {
        tags: ['templates'],
        summary: 'Provisioning templates loaded at start-up',
        querystring: noQuery,
        response: { 200: { type: 'object', required: ['items'], properties: { items: { type: 'array', items: templateSummary } } }, ...errorResponses }
      }
    }, async () => ({ items: [...deps.templates.values()].map(summary) }))

    app.get<{ Params: { name: string } }>('/v1/templates/:name', {
      schema: {
        tags: ['templates'],
        summary: 'One provisioning template',
        querystring: noQuery,
        params: { type: 'object', required: ['name'], additionalProperties: false, properties: { name: { type: 'string', pattern: '^[A-Za-z0-9_-]{1,64}$' } } },
        response: { 200: templateDetail, ...errorResponses, ...notFound }
      }
    }, async (req) => {
      const t = deps.templates.get(req.params.name)
      if (!t) throw new JitpError('TemplateNotFound', req.params.name)
      return {
        ...summary(t),
        deviceId: t.deviceIdPattern,
        parameters: t.parametersSchema,
        configuration: t.configuration,
        preProvisioningCheck: { allowList: t.allowList, module: t.hook !== null },
        healthCheck: t.healthCheck
      }
    })
  }
}
