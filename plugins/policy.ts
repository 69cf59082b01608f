/**
 * Topic rules per role. The default table is CONTRACT §4; POLICY_FILE replaces
 * it and is validated at start-up. Rules are compiled per connection, once, with
 * `${deviceId}`, `${clientId}` and `${commonName}` filled in.
 */
import { readFileSync } from 'node:fs'
import { Ajv } from 'ajv'
import { JitpError } from '../broker/errors.js'
import { AWS_PROVISIONING_REQUESTS, PROVISIONING_REQUESTS } from '../broker/reserved-topics.js'
import type { Identity, Role } from '../broker/session.js'

export type Action = 'publish' | 'subscribe'

export interface PolicyRule {
  readonly name: string
  readonly role: Role
  readonly actions: readonly Action[]
  readonly topics: readonly string[]
  /** publishing retained messages is allowed on these topics */
  readonly retain?: boolean
}

export interface Policy {
  readonly rules: readonly PolicyRule[]
  /** extra permissions per role, e.g. `pii` to receive fields marked x-pii; optional in a POLICY_FILE (none) */
  readonly permissions: Readonly<Partial<Record<Role, readonly string[]>>>
}

const policySchema = {
  type: 'object',
  additionalProperties: false,
  required: ['rules'],
  properties: {
    permissions: {
      type: 'object',
      additionalProperties: false,
      properties: {
        device: { type: 'array', items: { type: 'string' } },
        claim: { type: 'array', items: { type: 'string' } },
        service: { type: 'array', items: { type: 'string' } }
      }
    },
    rules: {
      type: 'array',
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['name', 'role', 'actions', 'topics'],
        properties: {
          name: { type: 'string', minLength: 1 },
          role: { enum: ['device', 'claim', 'service'] },
          actions: { type: 'array', minItems: 1, items: { enum: ['publish', 'subscribe'] } },
          topics: { type: 'array', minItems: 1, items: { type: 'string', minLength: 1 } },
          retain: { type: 'boolean' }
        }
      }
    }
  }
} as const

const validatePolicy = new Ajv({ strict: true }).compile(policySchema)

const dev = 'devices/${deviceId}'
// the provisioning topics (CONTRACT §3) are also the only `$` topics the
// broker's reserved-topic check leaves open (broker/reserved-topics.ts)
const provisionRequests = PROVISIONING_REQUESTS
const awsRequests = AWS_PROVISIONING_REQUESTS

export function defaultPolicy (opts: { awsTopics: boolean }): Policy {
  const claimRequests = opts.awsTopics ? [...provisionRequests, ...awsRequests] : provisionRequests
  return {
    permissions: { service: ['pii'] },
    rules: [
      { name: 'device-telemetry', role: 'device', actions: ['publish'], topics: [`${dev}/telemetry`, `${dev}/telemetry/+`] },
      { name: 'device-state', role: 'device', actions: ['publish'], topics: [`${dev}/state`], retain: true },
      { name: 'device-config-ack', role: 'device', actions: ['publish'], topics: [`${dev}/config/ack`] },
      { name: 'device-inbox', role: 'device', actions: ['subscribe'], topics: [`${dev}/config`, `${dev}/commands/+`, `${dev}/errors`] },
      { name: 'claim-requests', role: 'claim', actions: ['publish'], topics: claimRequests },
      { name: 'claim-replies', role: 'claim', actions: ['subscribe'], topics: claimRequests.map((t) => `${t}/+`) },
      {
        name: 'service-read',
        role: 'service',
        actions: ['subscribe'],
        topics: ['devices/+/telemetry', 'devices/+/telemetry/+', 'devices/+/state', 'devices/+/config', 'devices/+/config/ack', 'devices/+/errors']
      },
      { name: 'service-commands', role: 'service', actions: ['publish'], topics: ['devices/+/commands/+'] }
    ]
  }
}

export function loadPolicy (file: string | undefined, opts: { awsTopics: boolean }): Policy {
  if (!file) return defaultPolicy(opts)
  let parsed: unknown
  try {
    parsed = JSON.parse(readFileSync(file, 'utf8'))
  } catch (err) {
    throw new JitpError('InvalidConfig', `POLICY_FILE: cannot read ${file} as JSON (${(err as Error).message})`)
  }
  if (!validatePolicy(parsed)) {
    const e = validatePolicy.errors?.[0]
    throw new JitpError('InvalidConfig', `POLICY_FILE: ${file}${e?.instancePath ?? ''} ${e?.message ?? 'invalid'}`)
  }
  // `permissions` is optional: a policy that names none grants none
  const policy = parsed as Omit<Policy, 'permissions'> & { permissions?: Policy['permissions'] }
  return { rules: policy.rules, permissions: policy.permissions ?? {} }
}

export interface CompiledRule { readonly name: string, readonly levels: readonly string[], readonly retain: boolean }
export interface CompiledRules { readonly publish: readonly CompiledRule[], readonly subscribe: readonly CompiledRule[] }

const VARIABLE = /\$\{(deviceId|clientId|commonName)\}/g

/** Fills variables; a value that could act as a wildcard or level separator voids the rule. */
function fill (topic: string, identity: Identity): string | null {
  let void_ = false
  const out = topic.replace(VARIABLE, (_m, name: string) => {
    const value = name === 'clientId' ? identity.clientId : identity.name
    if (!value || /[+#/]/.test(value)) void_ = true
    return value ?? ''
  })
  return void_ ? null : out
}

export function compileRules (policy: Policy, identity: Identity): CompiledRules {
  const publish: CompiledRule[] = []
  const subscribe: CompiledRule[] = []
  for (const rule of policy.rules) {
    if (rule.role !== identity.role) continue
    for (const topic of rule.topics) {
      const filled = fill(topic, identity)
      if (filled === null) continue
      const compiled = { name: rule.name, levels: filled.split('/'), retain: rule.retain === true }
      if (rule.actions.includes('publish')) publish.push(compiled)
      if (rule.actions.includes('subscribe')) subscribe.push(compiled)
    }
  }
  return { publish, subscribe }
}

/** MQTT topic matching of a concrete topic against a rule filter. */
export function matches (filter: readonly string[], topic: readonly string[]): boolean {
  for (let i = 0; i < filter.length; i++) {
    const f = filter[i]
    if (f === '#') return true
    const t = topic[i]
    if (t === undefined) return false
    if (f === '+') continue
    if (f !== t) return false
  }
  return filter.length === topic.length
}

/**
 * True when every topic the subscription filter can match is matched by the rule
 * filter, so a wildcard subscription can never reach past what the rule grants.
 */
export function covers (rule: readonly string[], sub: readonly string[]): boolean {
  for (let i = 0; i < rule.length; i++) {
    const r = rule[i]
    if (r === '#') return true
    const s = sub[i]
    if (s === undefined || s === '#') return false
    if (r === '+') continue
    if (s === '+' || r !== s) return false
  }
  return rule.length === sub.length
}

export function permissionsFor (policy: Policy, role: Role): ReadonlySet<string> {
  return new Set(policy.permissions?.[role] ?? [])
}
