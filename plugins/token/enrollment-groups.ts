/**
 * Enrollment groups (CONTRACT §3.6): one JSON file per group in ENROLLMENT_DIR,
 *   { "name": "line-7", "groupKey": "<base64, at least 32 bytes>", "template": "sensor-sas",
 *     "registrationIdPattern": "^line7-[0-9]{6}$" }
 * validated at start-up (one schema, compiled once; the process refuses to start
 * naming the file). The group key is kept as bytes in a frozen record that has no
 * enumerable key field, so logging a group cannot print it.
 *
 * A group registers devices with its template only, `registrationId` available
 * as a parameter. "A registration id enrolls once" is the template's device id:
 * it must be formed from `${registrationId}` alone, so a second enrollment of the
 * same registration id meets the same device id and the template's reprovision
 * policy (`deny`: DeviceExists, `replace`) decides, atomically in the registry.
 * And it must not be the bare registration id: that is the enrollment
 * connection's client id, and a device's client id is its device id; the two
 * sessions must never be one.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { Ajv } from 'ajv'
import { JitpError } from '../../broker/errors.js'
import { DEVICE_ID, type Template } from '../provisioning/templates.js'

export interface EnrollmentGroup {
  readonly name: string
  readonly template: string
  /** registration ids this group admits, besides being a valid client id */
  readonly registrationIdPattern: RegExp | null
  /** the decoded group key: the HMAC key of every device key (non-enumerable) */
  readonly groupKey: Buffer
}

const GROUP_NAME = /^[A-Za-z0-9_-]{1,64}$/
/** 32 bytes is HMAC-SHA256's block-size-worthy minimum; Azure's keys are 64 */
const MIN_KEY_BYTES = 32

const groupSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['name', 'groupKey', 'template'],
  properties: {
    name: { type: 'string', pattern: GROUP_NAME.source },
    groupKey: { type: 'string', pattern: '^[A-Za-z0-9+/]+={0,2}$', minLength: 44 },
    template: { type: 'string', minLength: 1 },
    registrationIdPattern: { type: 'string', minLength: 1, maxLength: 512 }
  }
} as const

interface GroupFile { name: string, groupKey: string, template: string, registrationIdPattern?: string }

const validateGroup = new Ajv({ strict: true }).compile(groupSchema)

/** a valid registration id is a valid device-id-like client id (one topic level), and matches its group's pattern */
export function admitsRegistrationId (group: EnrollmentGroup, registrationId: string): boolean {
  return DEVICE_ID.test(registrationId) && (group.registrationIdPattern === null || group.registrationIdPattern.test(registrationId))
}

function invalid (path: string, message: string): JitpError {
  // the message never quotes the file's content: it holds the group key
  return new JitpError('InvalidConfig', `ENROLLMENT_DIR: ${path}: ${message}`)
}

function checkTemplate (path: string, template: Template | undefined, name: string): void {
  if (!template) throw invalid(path, `no template '${name}' in TEMPLATES_DIR`)
  if (template.manufacturerCas !== null) throw invalid(path, `template '${name}' registers manufacturer certificates, not enrollments`)
  const variables = [...template.deviceIdPattern.matchAll(/\$\{([A-Za-z0-9_]+)\}/g)].map((m) => m[1])
  if (variables.length === 0 || variables.some((v) => v !== 'registrationId')) {
    throw invalid(path, `template '${name}': its deviceId must be formed from \${registrationId} alone (a registration id enrolls once)`)
  }
  if (template.deviceIdPattern === '${registrationId}') {
    throw invalid(path, `template '${name}': its deviceId must add fixed text to \${registrationId} (the enrollment connection's client id is the registration id)`)
  }
}

export function loadEnrollmentGroups (dir: string | undefined, templates: ReadonlyMap<string, Template>): ReadonlyMap<string, EnrollmentGroup> {
  const groups = new Map<string, EnrollmentGroup>()
  if (dir === undefined) return groups
  if (!existsSync(dir)) throw new JitpError('InvalidConfig', `ENROLLMENT_DIR: ${dir} does not exist`)
  for (const file of readdirSync(dir).filter((f) => f.endsWith('.json')).sort()) {
    const path = join(dir, file)
    let raw: unknown
    try {
      raw = JSON.parse(readFileSync(path, 'utf8'))
    } catch {
      throw invalid(path, 'not valid JSON')
    }
    if (!validateGroup(raw)) {
      const e = validateGroup.errors?.[0]
      throw invalid(path, `${e?.instancePath || '/'} ${e?.message ?? 'invalid'}`)
    }
    const g = raw as GroupFile
    if (groups.has(g.name)) throw invalid(path, `a second group named '${g.name}'`)
    const groupKey = Buffer.from(g.groupKey, 'base64')
    if (groupKey.length < MIN_KEY_BYTES || groupKey.toString('base64') !== g.groupKey) throw invalid(path, `groupKey must be canonical base64 of at least ${MIN_KEY_BYTES} bytes`)
    checkTemplate(path, templates.get(g.template), g.template)
    let registrationIdPattern: RegExp | null = null
    if (g.registrationIdPattern !== undefined) {
      try {
        registrationIdPattern = new RegExp(g.registrationIdPattern)
      } catch {
        throw invalid(path, 'registrationIdPattern is not a valid regular expression')
      }
    }
    const group = { name: g.name, template: g.template, registrationIdPattern } as EnrollmentGroup
    Object.defineProperty(group, 'groupKey', { value: groupKey, enumerable: false })
    groups.set(g.name, Object.freeze(group))
  }
  return groups
}
