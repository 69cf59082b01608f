/**
 * Provisioning templates: one JSON file per template in TEMPLATES_DIR, validated
 * at start-up. A template names the JSON Schema of its parameters (compiled once),
 * how the device id is formed from them, an optional pre-provisioning check, the
 * initial configuration and what to do when the device id is already registered.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { basename, join, resolve } from 'node:path'
import { pathToFileURL } from 'node:url'
import { Ajv, type ValidateFunction } from 'ajv'
import { JitpError } from '../../broker/errors.js'

export interface PreProvisioningRequest {
  readonly templateName: string
  readonly parameters: Readonly<Record<string, string>>
  readonly clientId: string
  readonly certificateId: string
  readonly remoteAddress: string
}
export interface PreProvisioningAnswer { allow: boolean, parameterOverrides?: Record<string, string>, reason?: string }
export type PreProvisioningHook = (request: PreProvisioningRequest) => Promise<PreProvisioningAnswer>

export interface Template {
  readonly name: string
  readonly description: string | null
  /** the parameters' JSON Schema as written, for operators (admin API `GET /v1/templates/{name}`) */
  readonly parametersSchema: Readonly<Record<string, unknown>>
  readonly validateParameters: ValidateFunction
  readonly deviceIdPattern: string
  readonly configuration: Readonly<Record<string, unknown>>
  readonly reprovision: 'deny' | 'replace'
  /** CONTRACT §9: the template's own check of every configuration (compiled once), null when it has none */
  readonly validateConfig: ValidateFunction | null
  /** overrides CONFIG_ACK_TIMEOUT_SECONDS for this template's devices */
  readonly configAckTimeoutSeconds: number | null
  /** allow-list: parameter name → accepted values */
  readonly allowList: Readonly<Record<string, readonly string[]>> | null
  readonly hook: PreProvisioningHook | null
  /** manufacturer CA fingerprints this template registers devices for, or 'all' */
  readonly manufacturerCas: 'all' | readonly string[] | null
  /** CONTRACT §3.7: what a newly registered device must do, and within how long, to become active */
  readonly healthCheck: HealthCheck
}

/** a template's `healthCheck`, with its defaults filled in */
export interface HealthCheck {
  /** the window, from registration (or reinstatement) */
  readonly withinSeconds: number
  /** topics under `devices/<id>/` the device must publish one valid message on (`telemetry` also counts `telemetry/<stream>`) */
  readonly requires: readonly string[]
  /** whether the device must acknowledge its configuration `applied` */
  readonly configAck: boolean
}

export const DEFAULT_HEALTH_CHECK: HealthCheck = Object.freeze({ withinSeconds: 300, requires: Object.freeze(['state']), configAck: true })

/** the checks a device is held to (plugins/health.ts): connect with its own certificate, the config ack, one per required topic */
export function healthChecksOf (h: HealthCheck): string[] {
  return [...new Set(['connect', ...(h.configAck ? ['config'] : []), ...h.requires])]
}

/** a health window opening at `now` (registration, reinstatement) */
export function healthWindow (h: HealthCheck, now: number): { readonly deadline: number, readonly checks: readonly string[] } {
  return { deadline: now + h.withinSeconds * 1000, checks: healthChecksOf(h) }
}

const templateSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['parameters', 'deviceId', 'configuration'],
  properties: {
    description: { type: 'string' },
    parameters: { type: 'object' },
    deviceId: { type: 'string', minLength: 1, maxLength: 256 },
    configuration: { type: 'object' },
    reprovision: { enum: ['deny', 'replace'] },
    // configuration lifecycle (CONTRACT §9): a JSON Schema every configuration of this template must meet, and its ack timeout
    configSchema: { type: 'object' },
    configAckTimeoutSeconds: { type: 'integer', minimum: 1, maximum: 86400 },
    // health verification (CONTRACT §3.7): a topic level path under devices/<id>/; `connect` and `config` name the other checks
    healthCheck: {
      type: 'object',
      additionalProperties: false,
      properties: {
        withinSeconds: { type: 'integer', minimum: 1, maximum: 2592000 },
        requires: {
          type: 'array',
          uniqueItems: true,
          items: { type: 'string', pattern: '^[A-Za-z0-9_-]{1,64}(/[A-Za-z0-9_-]{1,64}){0,3}$', not: { enum: ['connect', 'config'] } }
        },
        configAck: { type: 'boolean' }
      }
    },
    preProvisioningCheck: {
      type: 'object',
      additionalProperties: false,
      properties: {
        allow: { type: 'object', additionalProperties: { type: 'array', items: { type: 'string' } } },
        module: { type: 'string', minLength: 1 }
      }
    },
    manufacturerCas: {
      oneOf: [
        { const: 'all' },
        { type: 'array', items: { type: 'string', pattern: '^[0-9a-fA-F:]{64,95}$' } }
      ]
    }
  }
} as const

interface TemplateFile {
  description?: string
  parameters: Record<string, unknown>
  deviceId: string
  configuration: Record<string, unknown>
  reprovision?: 'deny' | 'replace'
  configSchema?: Record<string, unknown>
  configAckTimeoutSeconds?: number
  healthCheck?: { withinSeconds?: number, requires?: string[], configAck?: boolean }
  preProvisioningCheck?: { allow?: Record<string, string[]>, module?: string }
  manufacturerCas?: 'all' | string[]
}

const TEMPLATE_NAME = /^[A-Za-z0-9_-]{1,64}$/
const validateTemplate = new Ajv({ strict: true }).compile(templateSchema)

export async function loadTemplates (dir: string): Promise<ReadonlyMap<string, Template>> {
  const templates = new Map<string, Template>()
  if (!existsSync(dir)) return templates
  const ajv = new Ajv({ strict: true, allErrors: false })
  for (const file of readdirSync(dir).filter((f) => f.endsWith('.json')).sort()) {
    const path = join(dir, file)
    const name = basename(file, '.json')
    if (!TEMPLATE_NAME.test(name)) throw new JitpError('InvalidConfig', `TEMPLATES_DIR: ${path}: template names are 1-64 of A-Z a-z 0-9 _ -`)
    let raw: unknown
    try {
      raw = JSON.parse(readFileSync(path, 'utf8'))
    } catch (err) {
      throw new JitpError('InvalidConfig', `TEMPLATES_DIR: ${path} is not valid JSON (${(err as Error).message})`)
    }
    if (!validateTemplate(raw)) {
      const e = validateTemplate.errors?.[0]
      throw new JitpError('InvalidConfig', `TEMPLATES_DIR: ${path}${e?.instancePath ?? ''} ${e?.message ?? 'invalid'}`)
    }
    const t = raw as TemplateFile
    let validateParameters: ValidateFunction
    try {
      validateParameters = ajv.compile(t.parameters)
    } catch (err) {
      throw new JitpError('InvalidConfig', `TEMPLATES_DIR: ${path}: parameters is not a valid JSON Schema (${(err as Error).message})`)
    }
    let validateConfig: ValidateFunction | null = null
    if (t.configSchema) {
      try {
        validateConfig = ajv.compile(t.configSchema)
      } catch (err) {
        throw new JitpError('InvalidConfig', `TEMPLATES_DIR: ${path}: configSchema is not a valid JSON Schema (${(err as Error).message})`)
      }
      if (!validateConfig(t.configuration)) {
        const e = validateConfig.errors?.[0]
        throw new JitpError('InvalidConfig', `TEMPLATES_DIR: ${path}: configuration${e?.instancePath ?? ''} breaks configSchema (${e?.message ?? 'invalid'})`)
      }
    }
    let hook: PreProvisioningHook | null = null
    const modulePath = t.preProvisioningCheck?.module
    if (modulePath) {
      const mod = await import(pathToFileURL(resolve(dir, modulePath)).href) as { default?: unknown }
      if (typeof mod.default !== 'function') throw new JitpError('InvalidConfig', `TEMPLATES_DIR: ${path}: ${modulePath} must export a default async function`)
      hook = mod.default as PreProvisioningHook
    }
    templates.set(name, Object.freeze({
      name,
      description: t.description ?? null,
      parametersSchema: Object.freeze(t.parameters),
      validateParameters,
      deviceIdPattern: t.deviceId,
      configuration: Object.freeze(t.configuration),
      reprovision: t.reprovision ?? 'deny',
      validateConfig,
      configAckTimeoutSeconds: t.configAckTimeoutSeconds ?? null,
      allowList: t.preProvisioningCheck?.allow ?? null,
      hook,
      manufacturerCas: t.manufacturerCas === 'all' ? 'all' : (t.manufacturerCas?.map((f) => f.replaceAll(':', '').toLowerCase()) ?? null),
      healthCheck: Object.freeze({
        withinSeconds: t.healthCheck?.withinSeconds ?? DEFAULT_HEALTH_CHECK.withinSeconds,
        requires: Object.freeze([...(t.healthCheck?.requires ?? DEFAULT_HEALTH_CHECK.requires)]),
        configAck: t.healthCheck?.configAck ?? DEFAULT_HEALTH_CHECK.configAck
      })
    }))
  }
  return templates
}

/** A device id is a single topic level: never a wildcard, separator or `$` prefix. */
export const DEVICE_ID = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/

/** Fills `${name}` from the parameters; null when a parameter is missing or the result is not a valid device id. */
export function formDeviceId (pattern: string, parameters: Readonly<Record<string, string>>): string | null {
  let missing = false
  const id = pattern.replace(/\$\{([A-Za-z0-9_]+)\}/g, (_m, name: string) => {
    const v = parameters[name]
    if (v === undefined) missing = true
    return v ?? ''
  })
  return !missing && DEVICE_ID.test(id) ? id : null
}
