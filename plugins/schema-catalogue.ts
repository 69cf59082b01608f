/**
 * The schema catalogue: `topics.json` maps topic filters to schema files (or to a
 * declared binary format). Every schema is compiled once, here, at start-up; a
 * missing file, an invalid schema or a filter mapped twice stops the start and
 * names the file. Per message, only the stored validator is called.
 */
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { Ajv, type ValidateFunction } from 'ajv'
import * as addFormatsModule from 'ajv-formats'
import { JitpError } from '../broker/errors.js'
import { compilePiiMap, type PiiMap } from './pii-map.js'
import { matches } from './policy.js'

// ajv-formats is CommonJS; its default export arrives wrapped under NodeNext
const addFormats = (addFormatsModule as unknown as { default: (ajv: Ajv) => Ajv }).default

export type TopicFormat =
  | { readonly kind: 'json', readonly schema: string, readonly validate: ValidateFunction, readonly pii: PiiMap | null, readonly emptyAs: unknown }
  | { readonly kind: 'binary', readonly schema: string, readonly maxBytes: number }

/** inline detection of personal data in unannotated strings (broker/pii-detect.ts, CONTRACT §5) */
export type DetectMode = 'off' | 'flag' | 'redact' | 'reject'
/** what a subscriber without the `pii` permission gets in place of an x-pii value */
export type PiiTreatment = 'remove' | 'pseudonymize' | 'encrypt'
export const DETECT_MODES: readonly DetectMode[] = ['off', 'flag', 'redact', 'reject']
export const PII_TREATMENTS: readonly PiiTreatment[] = ['remove', 'pseudonymize', 'encrypt']

export interface TopicMapping {
  readonly filter: string
  readonly levels: readonly string[]
  readonly format: TopicFormat
  /** default flag; always off for a binary topic */
  readonly detect: DetectMode
  /** default remove */
  readonly piiTreatment: PiiTreatment
}

export interface SchemaCatalogue {
  readonly mappings: readonly TopicMapping[]
  /** the mapping for a concrete topic, or null (then the publish is refused) */
  lookup (topic: string): TopicMapping | null
}

const mapSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['topics'],
  properties: {
    $comment: { type: 'string' },
    topics: {
      type: 'object',
      additionalProperties: {
        oneOf: [
          {
            type: 'object',
            additionalProperties: false,
            required: ['schema'],
            properties: {
              schema: { type: 'string', pattern: '^[A-Za-z0-9._-]+\\.json$' },
              emptyAs: {},
              detect: { enum: DETECT_MODES },
              pii: { enum: PII_TREATMENTS }
            }
          },
          {
            type: 'object',
            additionalProperties: false,
            required: ['format', 'maxBytes'],
            properties: { format: { const: 'binary' }, maxBytes: { type: 'integer', minimum: 1 } }
          }
        ]
      }
    }
  }
} as const

interface MapFile { topics: Record<string, { schema?: string, emptyAs?: unknown, format?: 'binary', maxBytes?: number, detect?: DetectMode, pii?: PiiTreatment }> }

function readJson (file: string): unknown {
  if (!existsSync(file)) throw new JitpError('InvalidConfig', `SCHEMAS_DIR: missing ${file}`)
  try {
    return JSON.parse(readFileSync(file, 'utf8'))
  } catch (err) {
    throw new JitpError('InvalidConfig', `SCHEMAS_DIR: ${file} is not valid JSON (${(err as Error).message})`)
  }
}

/**
 * Finds a filter mapped twice, which JSON.parse would silently collapse to the
 * last one: scans the keys two objects deep (inside "topics").
 */
function duplicateKey (text: string): string | null {
  const seen = new Set<string>()
  let depth = 0
  for (let i = 0; i < text.length; i++) {
    const ch = text[i]
    if (ch === '{') depth++
    else if (ch === '}') depth--
    else if (ch === '"') {
      let j = i + 1
      while (j < text.length && text[j] !== '"') j += text[j] === '\\' ? 2 : 1
      const key = text.slice(i + 1, j)
      i = j
      let k = j + 1
      while (k < text.length && /\s/.test(text[k] ?? '')) k++
      if (depth === 2 && text[k] === ':') {
        if (seen.has(key)) return key
        seen.add(key)
      }
    }
  }
  return null
}

export function loadSchemaCatalogue (dir: string): SchemaCatalogue {
  const mapFile = join(dir, 'topics.json')
  const raw = readJson(mapFile)
  const ajv = new Ajv({ strict: true, allErrors: false, allowUnionTypes: true })
  addFormats(ajv)
  ajv.addKeyword({ keyword: 'x-pii', schemaType: 'boolean' })
  const validateMap = new Ajv({ strict: true }).compile(mapSchema)
  if (!validateMap(raw)) {
    const e = validateMap.errors?.[0]
    throw new JitpError('InvalidConfig', `SCHEMAS_DIR: ${mapFile}${e?.instancePath ?? ''} ${e?.message ?? 'invalid'}`)
  }
  const dup = duplicateKey(readFileSync(mapFile, 'utf8'))
  if (dup !== null) throw new JitpError('InvalidConfig', `SCHEMAS_DIR: ${mapFile} maps topic filter '${dup}' twice`)

  const compiled = new Map<string, { validate: ValidateFunction, pii: PiiMap | null }>()
  const mappings: TopicMapping[] = []
  for (const [filter, entry] of Object.entries((raw as MapFile).topics)) {
    if (entry.format === 'binary') {
      mappings.push({ filter, levels: filter.split('/'), format: { kind: 'binary', schema: `binary:${filter}`, maxBytes: entry.maxBytes ?? 0 }, detect: 'off', piiTreatment: 'remove' })
      continue
    }
    const name = entry.schema as string
    let c = compiled.get(name)
    if (!c) {
      const file = join(dir, name)
      const schema = readJson(file) as Record<string, unknown>
      try {
        // $id would make a second compile of a shared schema clash; ids are file names here
        const { $id: _id, ...body } = schema
        // where x-pii values can sit, walked once here (null: the topic costs nothing per message)
        c = { validate: ajv.compile(body), pii: compilePiiMap(body) }
      } catch (err) {
        throw new JitpError('InvalidConfig', `SCHEMAS_DIR: ${file} is not a valid JSON Schema (${(err as Error).message})`)
      }
      compiled.set(name, c)
    }
    mappings.push({
      filter,
      levels: filter.split('/'),
      format: { kind: 'json', schema: name.replace(/\.json$/, ''), validate: c.validate, pii: c.pii, emptyAs: entry.emptyAs },
      detect: entry.detect ?? 'flag',
      piiTreatment: entry.pii ?? 'remove'
    })
  }
  // a concrete filter must win over a wildcard one that also matches
  mappings.sort((a, b) => wildcardCount(a.levels) - wildcardCount(b.levels))

  const cache = new Map<string, TopicMapping | null>()
  return Object.freeze({
    mappings,
    lookup (topic: string): TopicMapping | null {
      const hit = cache.get(topic)
      if (hit !== undefined) return hit
      const levels = topic.split('/')
      const found = mappings.find((m) => matches(m.levels, levels)) ?? null
      // bounded: topics are per device, so an unbounded cache would grow with the fleet
      if (cache.size >= 10_000) cache.clear()
      cache.set(topic, found)
      return found
    }
  })
}

function wildcardCount (levels: readonly string[]): number {
  return levels.filter((l) => l === '+' || l === '#').length
}
