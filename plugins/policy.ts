/**
 * Topic rules per role (CONTRACT §4). The default table is built in; POLICY_FILE
 * replaces it and is validated at start-up. Rules are ordered and say `allow`
 * (the default) or `deny`; for a topic, the first rule that matches decides, and
 * no rule matching means deny. Rules are compiled per connection, once, with
 * `${deviceId}`, `${clientId}` and `${commonName}` filled in, into the lists the
 * authorization plugin scans (plugins/authorization.ts says what they answer).
 */
import { readFileSync } from 'node:fs'
import { Ajv } from 'ajv'
import { JitpError, type ErrorCode } from '../broker/errors.js'
import { deny, type Allow, type Deny } from '../broker/plugin.js'
import { AWS_PROVISIONING_REQUESTS, PROVISIONING_REQUESTS, ROTATION_REQUESTS } from '../broker/reserved-topics.js'
import type { Identity, Role } from '../broker/session.js'
import { intersect, scopeOf, type Levels } from './topic-filters.js'

// the filter algebra lives in topic-filters.ts; `matches` stays importable from here
export { matches } from './topic-filters.js'

export type Action = 'publish' | 'subscribe'
export type Effect = 'allow' | 'deny'

export interface PolicyRule {
  readonly name: string
  readonly role: Role
  /** `allow` when absent */
  readonly effect?: Effect
  readonly actions: readonly Action[]
  readonly topics: readonly string[]
  /** publishing retained messages is allowed on these topics (allow rules only) */
  readonly retain?: boolean
  /**
   * Service rules only (CONTRACT §10): the OAuth2 scope a token must grant for the
   * rule to apply to it. A service certificate holds every scope; a rule without
   * one applies to every service.
   */
  readonly scope?: string
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
          effect: { enum: ['allow', 'deny'] },
          actions: { type: 'array', minItems: 1, items: { enum: ['publish', 'subscribe'] } },
          topics: { type: 'array', minItems: 1, items: { type: 'string', minLength: 1 } },
          retain: { type: 'boolean' },
          // an RFC 6749 scope token: printable ASCII without space, quote or backslash
          scope: { type: 'string', pattern: '^[\\x21\\x23-\\x5b\\x5d-\\x7e]{1,128}$' }
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
const rotationReplies = ROTATION_REQUESTS.map((t) => `${t}/+`)

export function defaultPolicy (opts: { awsTopics: boolean }): Policy {
  const claimRequests = opts.awsTopics ? [...provisionRequests, ...awsRequests] : provisionRequests
  return {
    permissions: { service: ['pii'] },
    rules: [
      { name: 'device-telemetry', role: 'device', actions: ['publish'], topics: [`${dev}/telemetry`, `${dev}/telemetry/+`] },
      { name: 'device-state', role: 'device', actions: ['publish'], topics: [`${dev}/state`], retain: true },
      { name: 'device-config-ack', role: 'device', actions: ['publish'], topics: [`${dev}/config/ack`] },
      { name: 'device-inbox', role: 'device', actions: ['subscribe'], topics: [`${dev}/config`, `${dev}/commands/+`, `${dev}/errors`] },
      // CONTRACT §3.4: a device rotates its own certificate (plugins/rotation.ts); the reply goes to the requesting connection only
      { name: 'device-rotation', role: 'device', actions: ['publish'], topics: ROTATION_REQUESTS },
      { name: 'device-rotation-replies', role: 'device', actions: ['subscribe'], topics: rotationReplies },
      { name: 'claim-requests', role: 'claim', actions: ['publish'], topics: claimRequests },
      { name: 'claim-replies', role: 'claim', actions: ['subscribe'], topics: claimRequests.map((t) => `${t}/+`) },
      // a claim or service connection asking to rotate is refused (403 RotationNotAllowed): it may receive the refusal
      { name: 'claim-rotation-refusals', role: 'claim', actions: ['subscribe'], topics: rotationReplies },
      // one rule per OAuth2 scope (CONTRACT §10): a token gets the rules of its scopes, a service certificate all of them
      { name: 'service-telemetry', role: 'service', scope: 'telemetry:read', actions: ['subscribe'], topics: ['devices/+/telemetry', 'devices/+/telemetry/+', 'devices/+/errors'] },
      { name: 'service-state', role: 'service', scope: 'state:read', actions: ['subscribe'], topics: ['devices/+/state'] },
      { name: 'service-config', role: 'service', scope: 'config:read', actions: ['subscribe'], topics: ['devices/+/config', 'devices/+/config/ack'] },
      { name: 'service-commands', role: 'service', scope: 'commands:write', actions: ['publish'], topics: ['devices/+/commands/+'] },
      { name: 'service-rotation-refusals', role: 'service', actions: ['subscribe'], topics: rotationReplies }
    ]
  }
}

const VARIABLE = /\$\{(deviceId|clientId|commonName)\}/g
const ANY_VARIABLE = /\$\{([^}]*)\}/g

/** why a rule's topic filter cannot be used, or null when it can */
function filterProblem (filter: string): string | null {
  const levels = filter.split('/')
  for (let i = 0; i < levels.length; i++) {
    const level = levels[i]!
    if (level === '#' && i !== levels.length - 1) return '`#` must be the last level'
    if (level !== '#' && level !== '+' && /[+#]/.test(level)) return '`+` and `#` must fill a whole level'
  }
  for (const [, name] of filter.matchAll(ANY_VARIABLE)) {
    if (name !== 'deviceId' && name !== 'clientId' && name !== 'commonName') return `unknown variable \${${name ?? ''}}`
  }
  return null
}

/** what the JSON Schema cannot say clearly: well-formed filters, known variables, retain on allow rules only */
function checkRules (file: string, rules: readonly PolicyRule[]): void {
  rules.forEach((rule, r) => {
    if (rule.effect === 'deny' && rule.retain !== undefined) {
      throw new JitpError('InvalidConfig', `POLICY_FILE: ${file}/rules/${r}/retain only applies to allow rules`)
    }
    if (rule.scope !== undefined && rule.role !== 'service') {
      throw new JitpError('InvalidConfig', `POLICY_FILE: ${file}/rules/${r}/scope only applies to service rules`)
    }
    rule.topics.forEach((topic, t) => {
      const problem = filterProblem(topic)
      if (problem !== null) throw new JitpError('InvalidConfig', `POLICY_FILE: ${file}/rules/${r}/topics/${t} ${JSON.stringify(topic)}: ${problem}`)
    })
  })
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
  checkRules(file, policy.rules)
  return { rules: policy.rules, permissions: policy.permissions ?? {} }
}

export interface CompiledRule {
  readonly name: string
  readonly effect: Effect
  readonly levels: Levels
  readonly retain: boolean
  /** what the rule answers when it decides, built once: the hot path hands it out as it is */
  readonly answer: Allow | Deny
  /** publish only: the answer to a retained publish an allow rule does not let retain */
  readonly retainRefused: Deny
  /** the deny rules before this one in its list: what they take away from an allow rule */
  readonly deniedBefore: readonly Levels[]
}

export interface CompiledRules {
  /** in policy order: the first match decides */
  readonly publish: readonly CompiledRule[]
  /** in policy order: the first match decides, on subscribe and on every delivery */
  readonly subscribe: readonly CompiledRule[]
  /** how far a subscription filter may reach: the scope of each subscribe allow rule (topic-filters.ts, scopeOf) */
  readonly scopes: readonly Levels[]
}

/**
 * CONTRACT §3.7: what a quarantined device may still do, whatever else the policy
 * grants it. Its rules are the policy's cut down to these topics (each rule
 * intersected with each of them), then a `quarantine` rule denies the rest.
 */
export const QUARANTINE_FENCE: Readonly<Record<Action, readonly string[]>> = {
  publish: [`${dev}/state`, `${dev}/config/ack`],
  subscribe: [`${dev}/config`, `${dev}/errors`]
}
export const QUARANTINE_RULE = 'quarantine'

/** an identity's value for a variable, or null when it has none or it could act as a wildcard or level separator */
function variableValue (name: string, identity: Identity): string | null {
  const value = name === 'clientId' ? identity.clientId : identity.name
  return !value || /[+#/]/.test(value) ? null : value
}

/** Fills variables; a value that could act as a wildcard or level separator voids the rule. */
function fill (topic: string, identity: Identity): string | null {
  // the common level: one variable and nothing else, whose value is the level (no new string)
  if (topic === '${clientId}' || topic === '${deviceId}' || topic === '${commonName}') return variableValue(topic.slice(2, -1), identity)
  let void_ = false
  const out = topic.replace(VARIABLE, (_m, name: string) => {
    const value = variableValue(name, identity)
    if (value === null) void_ = true
    return value ?? ''
  })
  return void_ ? null : out
}

/**
 * A policy topic's levels with the identity's values put in. The constant levels
 * are the template's own strings, split once (the templates are the policy's and
 * the fence's topics: a fixed set); a level that is exactly one variable is the
 * identity's value itself. Null when a value voids the rule (fill).
 */
const templateLevels = new Map<string, readonly string[]>()
function fillLevels (topic: string, identity: Identity): Levels | null {
  let parts = templateLevels.get(topic)
  if (parts === undefined) templateLevels.set(topic, parts = Object.freeze(topic.split('/')))
  const out: string[] = new Array<string>(parts.length)
  for (let i = 0; i < parts.length; i++) {
    const part = parts[i]!
    if (!part.includes('${')) {
      out[i] = part
      continue
    }
    const filled = fill(part, identity)
    if (filled === null) return null
    out[i] = filled
  }
  return out
}

interface RuleTopic { readonly name: string, readonly effect: Effect, readonly levels: Levels, readonly retain: boolean }

/**
 * The answers a rule gives, one frozen object per action, effect and rule name, shared
 * by every identity's compiled rules (rule names are the policy's: a short, fixed list).
 */
const sharedAnswers = new Map<string, Allow | Deny>()
function answerOf (action: Action, effect: Effect, name: string): Allow | Deny {
  const key = `${action}\u0000${effect}\u0000${name}`
  let answer = sharedAnswers.get(key)
  if (answer === undefined) sharedAnswers.set(key, answer = Object.freeze(effect === 'allow' ? { verdict: 'allow', rule: name } : deny(DENY_CODE[action], name)))
  return answer
}
const sharedRetainRefusals = new Map<string, Deny>()
function retainRefusedOf (name: string): Deny {
  let answer = sharedRetainRefusals.get(name)
  if (answer === undefined) sharedRetainRefusals.set(name, answer = Object.freeze(deny('PublishDenied', name, 'retain not allowed')))
  return answer
}
const NO_DENIALS: readonly Levels[] = Object.freeze([])

const DENY_CODE: Readonly<Record<Action, ErrorCode>> = { publish: 'PublishDenied', subscribe: 'SubscribeDenied' }

function compileList (action: Action, topics: readonly RuleTopic[]): CompiledRule[] {
  const denied: Levels[] = []
  return topics.map((t) => {
    const rule: CompiledRule = {
      name: t.name,
      effect: t.effect,
      levels: t.levels,
      retain: t.retain,
      answer: answerOf(action, t.effect, t.name),
      retainRefused: retainRefusedOf(t.name),
      deniedBefore: denied.length === 0 ? NO_DENIALS : [...denied]
    }
    if (t.effect === 'deny') denied.push(t.levels)
    return rule
  })
}

/** every rule topic cut down to the fence's topics, then everything else denied */
function fenced (topics: readonly RuleTopic[], fence: readonly Levels[]): RuleTopic[] {
  const out: RuleTopic[] = []
  for (const t of topics) {
    for (const f of fence) {
      const levels = intersect(t.levels, f)
      if (levels !== null) out.push({ ...t, levels })
    }
  }
  out.push({ name: QUARANTINE_RULE, effect: 'deny', levels: ['#'], retain: false })
  return out
}

/**
 * What compileRules reads of an identity, as one string: two identities with the
 * same key get the same rules (the authorization plugin keeps compiled rules by it).
 * Keep in step with compileRules and fill.
 */
export function rulesKey (identity: Identity): string {
  const auth = identity.auth
  const scopes = auth?.method === 'oauth2' || auth?.method === 'broker-token' ? [...auth.scopes].sort().join(' ') : '*'
  // join makes one flat string: a template literal leaves a tree of ten concatenation nodes,
  // which the rules cache would keep as its key (about 300 bytes per cached identity)
  return [identity.role, identity.clientId, identity.name ?? '', identity.name === null ? 0 : 1, identity.quarantined === true ? 1 : 0, scopes].join('\u0000')
}

export function compileRules (policy: Policy, identity: Identity): CompiledRules {
  const lists: Record<Action, RuleTopic[]> = { publish: [], subscribe: [] }
  // a token identity gets the scoped rules of its scopes only; a certificate holds every scope
  const scopes = identity.auth?.method === 'oauth2' || identity.auth?.method === 'broker-token' ? identity.auth.scopes : null
  for (const rule of policy.rules) {
    if (rule.role !== identity.role) continue
    if (rule.scope !== undefined && scopes !== null && !scopes.has(rule.scope)) continue
    for (const topic of rule.topics) {
      const levels = fillLevels(topic, identity)
      if (levels === null) continue
      const t: RuleTopic = { name: rule.name, effect: rule.effect ?? 'allow', levels, retain: rule.retain === true }
      for (const action of rule.actions) lists[action].push(t)
    }
  }
  if (identity.role === 'device' && identity.quarantined === true) {
    for (const action of ['publish', 'subscribe'] as const) {
      const fence = QUARANTINE_FENCE[action].map((f) => fillLevels(f, identity)).filter((levels) => levels !== null)
      lists[action] = fenced(lists[action], fence)
    }
  }
  const subscribe = compileList('subscribe', lists.subscribe)
  return {
    publish: compileList('publish', lists.publish),
    subscribe,
    scopes: subscribe.filter((r) => r.effect === 'allow').map((r) => scopeOf(r.levels))
  }
}

/**
 * A role's permissions under `policy`: one set per policy and role, shared by every
 * identity of that role (a Set per connection was a few hundred bytes each). Nothing
 * adds to it: identities only ask `has`.
 */
const rolePermissions = new WeakMap<Policy, Map<Role, ReadonlySet<string>>>()
export function permissionsFor (policy: Policy, role: Role): ReadonlySet<string> {
  let byRole = rolePermissions.get(policy)
  if (byRole === undefined) rolePermissions.set(policy, byRole = new Map())
  let set = byRole.get(role)
  if (set === undefined) byRole.set(role, set = new SealedSet(policy.permissions?.[role] ?? []))
  return set
}

/**
 * A set that refuses changes once built: shared by every identity of a role, a change
 * made through a cast would grant (or take) a permission on every connection at once.
 */
class SealedSet<T> extends Set<T> {
  private readonly sealed: boolean
  constructor (values: Iterable<T>) {
    super(values)
    this.sealed = true
  }

  override add (value: T): this {
    // the constructor fills the set through add, before it is sealed
    if (this.sealed) throw new TypeError('a role\'s permissions cannot be changed')
    return super.add(value)
  }

  override delete (): boolean {
    throw new TypeError('a role\'s permissions cannot be changed')
  }

  override clear (): void {
    throw new TypeError('a role\'s permissions cannot be changed')
  }
}

export interface TokenGrant {
  /** the token's scopes the policy knows: each names a service rule or a service permission */
  readonly scopes: ReadonlySet<string>
  /** the service permissions among them (e.g. `pii`): a token holds only what it was granted */
  readonly permissions: ReadonlySet<string>
  /** whether any of them names an allow rule: a token whose scopes allow nothing is refused */
  readonly allowsSomething: boolean
}

/** What a service token's scopes grant under `policy` (CONTRACT §10). */
export function tokenGrant (policy: Policy, scopes: Iterable<string>): TokenGrant {
  const servicePermissions = new Set(policy.permissions?.service ?? [])
  const ruleScopes = new Set<string>()
  const allowScopes = new Set<string>()
  for (const rule of policy.rules) {
    if (rule.role !== 'service' || rule.scope === undefined) continue
    ruleScopes.add(rule.scope)
    if ((rule.effect ?? 'allow') === 'allow') allowScopes.add(rule.scope)
  }
  const known = new Set<string>()
  const permissions = new Set<string>()
  let allowsSomething = false
  for (const scope of scopes) {
    if (servicePermissions.has(scope)) permissions.add(scope)
    if (allowScopes.has(scope)) allowsSomething = true
    if (ruleScopes.has(scope) || servicePermissions.has(scope)) known.add(scope)
  }
  return { scopes: known, permissions, allowsSomething }
}
