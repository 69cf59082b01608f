/**
 * Payload validation: every publish from a client is checked against the schema
 * mapped to its topic before it is acknowledged or routed (fail closed: no
 * mapping, no publish). Synchronous, one stored validator call per message.
 * Also removes fields marked x-pii from deliveries to subscribers without the
 * `pii` permission; subscribers with the same view share one serialized payload.
 */
import type { AedesPublishPacket } from 'aedes'
import type { ErrorCode } from '../broker/errors.js'
import type { PayloadProblem, Plugin, PluginHooks, ValidationAnswer } from '../broker/plugin.js'
import { loadSchemaCatalogue, type SchemaCatalogue } from './schema-catalogue.js'

const MAX_MESSAGE = 200
const utf8 = new TextDecoder('utf-8', { fatal: true })

function invalid (code: ErrorCode, schema: string, errors: PayloadProblem[]): ValidationAnswer {
  return { verdict: 'invalid', code, schema, errors }
}

export function validatePayload (catalogue: SchemaCatalogue, maxPayloadBytes: number, topic: string, payload: Buffer | string): ValidationAnswer {
  const mapping = catalogue.lookup(topic)
  if (mapping === null) return invalid('NoSchema', 'none', [{ path: '', message: 'no schema is mapped to this topic' }])
  const bytes = typeof payload === 'string' ? Buffer.from(payload) : payload
  const format = mapping.format
  if (format.kind === 'binary') {
    if (bytes.length > format.maxBytes) return invalid('PayloadTooLarge', format.schema, [{ path: '', message: `payload is ${bytes.length} bytes, limit ${format.maxBytes}` }])
    return { verdict: 'valid', schema: format.schema }
  }
  if (bytes.length > maxPayloadBytes) return invalid('PayloadTooLarge', format.schema, [{ path: '', message: `payload is ${bytes.length} bytes, limit ${maxPayloadBytes}` }])
  let data: unknown
  if (bytes.length === 0 && format.emptyAs !== undefined) {
    data = format.emptyAs
  } else {
    let text: string
    try {
      text = utf8.decode(bytes)
    } catch {
      return invalid('InvalidJson', format.schema, [{ path: '', message: 'payload is not valid UTF-8' }])
    }
    try {
      data = JSON.parse(text)
    } catch {
      // V8's parse errors quote the payload: a report or audit line must not
      return invalid('InvalidJson', format.schema, [{ path: '', message: 'payload is not valid JSON' }])
    }
  }
  if (format.validate(data)) return { verdict: 'valid', schema: format.schema }
  // allErrors is off: one error, capped, so a hostile payload cannot make a big report
  const e = format.validate.errors?.[0]
  const path = e ? e.instancePath + (e.keyword === 'required' ? `/${String(e.params.missingProperty)}` : e.keyword === 'additionalProperties' ? `/${String(e.params.additionalProperty)}` : '') : ''
  return invalid('SchemaViolation', format.schema, [{ path, message: (e?.message ?? 'invalid').slice(0, MAX_MESSAGE) }])
}

function stripPaths (data: unknown, paths: readonly (readonly string[])[]): boolean {
  let changed = false
  for (const path of paths) {
    let node = data as Record<string, unknown> | undefined
    for (let i = 0; i < path.length - 1 && node; i++) {
      const next = node[path[i] as string]
      node = next !== null && typeof next === 'object' ? next as Record<string, unknown> : undefined
    }
    const last = path[path.length - 1] as string
    if (node && Object.prototype.hasOwnProperty.call(node, last)) {
      delete node[last]
      changed = true
    }
  }
  return changed
}

export interface ValidationOptions { readonly catalogue?: SchemaCatalogue }

export const validationPlugin: Plugin<ValidationOptions> = {
  name: 'validation',
  setup (ctx, options): PluginHooks {
    const catalogue = options.catalogue ?? loadSchemaCatalogue(ctx.config.schemasDir)
    const max = ctx.config.maxPayloadBytes
    // one redacted copy per routed packet, shared by every subscriber without `pii`
    const redacted = new WeakMap<AedesPublishPacket, AedesPublishPacket>()

    return {
      name: 'validation',
      validatePublish ({ packet }) {
        return validatePayload(catalogue, max, packet.topic, packet.payload)
      },
      transformForward ({ identity, packet }) {
        if (identity.permissions.has('pii')) return packet
        const mapping = catalogue.lookup(packet.topic)
        if (mapping?.format.kind !== 'json' || mapping.format.piiPaths.length === 0) return packet
        const cached = redacted.get(packet)
        if (cached) return cached
        let out = packet
        try {
          const data: unknown = JSON.parse(packet.payload.toString())
          if (stripPaths(data, mapping.format.piiPaths)) {
            out = Object.assign(Object.create(Object.getPrototypeOf(packet) as object) as AedesPublishPacket, packet, { payload: Buffer.from(JSON.stringify(data)) })
          }
        } catch {
          // validated on the way in; a packet that does not parse now carries nothing to strip
        }
        redacted.set(packet, out)
        return out
      }
    }
  }
}
