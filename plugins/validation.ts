/**
 * Payload validation: every publish from a client is checked against the schema
 * mapped to its topic before it is acknowledged or routed (fail closed: no
 * mapping, no publish). Synchronous, one stored validator call per message.
 *
 * Personal data (CONTRACT §5): once a payload is valid, every value marked x-pii
 * (wherever it sits, plugins/pii-map.ts) is sealed into an AES-256-GCM envelope
 * before Aedes stores, queues or emits the packet (broker/chain.ts routes the
 * sealed payload), so neither the session store nor Redis pub/sub ever sees it
 * in clear. On delivery, a subscriber with the `pii` permission gets the
 * envelopes opened; anyone else gets the values removed. Whatever the path
 * (live on this broker or another, offline queue, retained, will), one
 * transform per packet and view, shared by every subscriber with that view.
 */
import type { AedesPublishPacket } from 'aedes'
import type { ErrorCode } from '../broker/errors.js'
import type { PayloadProblem, Plugin, PluginHooks, ValidationAnswer } from '../broker/plugin.js'
import { createPiiCipher, piiKeyFrom } from '../broker/pii-crypto.js'
import { createPersonalData, type PersonalData } from '../broker/store/personal-data.js'
import { visitPersonalData, type PiiVisitor } from './pii-map.js'
import { loadSchemaCatalogue, type SchemaCatalogue } from './schema-catalogue.js'

const MAX_MESSAGE = 200
const utf8 = new TextDecoder('utf-8', { fatal: true })

function invalid (code: ErrorCode, schema: string, errors: PayloadProblem[]): ValidationAnswer {
  return { verdict: 'invalid', code, schema, errors }
}

export function validatePayload (catalogue: SchemaCatalogue, maxPayloadBytes: number, topic: string, payload: Buffer | string): ValidationAnswer {
  return check(catalogue, maxPayloadBytes, topic, payload).answer
}

function no (answer: ValidationAnswer): { answer: ValidationAnswer } {
  return { answer }
}

/** the answer, and the parsed payload when it is valid JSON (for sealing its personal data) */
function check (catalogue: SchemaCatalogue, maxPayloadBytes: number, topic: string, payload: Buffer | string): { answer: ValidationAnswer, data?: unknown } {
  const mapping = catalogue.lookup(topic)
  if (mapping === null) return no(invalid('NoSchema', 'none', [{ path: '', message: 'no schema is mapped to this topic' }]))
  const bytes = typeof payload === 'string' ? Buffer.from(payload) : payload
  const format = mapping.format
  if (format.kind === 'binary') {
    if (bytes.length > format.maxBytes) return no(invalid('PayloadTooLarge', format.schema, [{ path: '', message: `payload is ${bytes.length} bytes, limit ${format.maxBytes}` }]))
    return { answer: { verdict: 'valid', schema: format.schema } }
  }
  if (bytes.length > maxPayloadBytes) return no(invalid('PayloadTooLarge', format.schema, [{ path: '', message: `payload is ${bytes.length} bytes, limit ${maxPayloadBytes}` }]))
  let data: unknown
  if (bytes.length === 0 && format.emptyAs !== undefined) {
    data = format.emptyAs
  } else {
    let text: string
    try {
      text = utf8.decode(bytes)
    } catch {
      return no(invalid('InvalidJson', format.schema, [{ path: '', message: 'payload is not valid UTF-8' }]))
    }
    try {
      data = JSON.parse(text)
    } catch {
      // V8's parse errors quote the payload: a report or audit line must not
      return no(invalid('InvalidJson', format.schema, [{ path: '', message: 'payload is not valid JSON' }]))
    }
  }
  if (format.validate(data)) return { answer: { verdict: 'valid', schema: format.schema }, data }
  // allErrors is off: one error, capped, so a hostile payload cannot make a big report
  const e = format.validate.errors?.[0]
  const path = e ? e.instancePath + (e.keyword === 'required' ? `/${String(e.params.missingProperty)}` : e.keyword === 'additionalProperties' ? `/${String(e.params.additionalProperty)}` : '') : ''
  return no(invalid('SchemaViolation', format.schema, [{ path, message: (e?.message ?? 'invalid').slice(0, MAX_MESSAGE) }]))
}

export interface ValidationOptions {
  readonly catalogue?: SchemaCatalogue
  /** shared with the persistence wrapper (broker/store/personal-data.ts); built here when absent */
  readonly personalData?: PersonalData
}

/** how every sealed value starts once serialized (broker/pii-crypto.ts, JSON.stringify) */
const ENVELOPE_MARK = Buffer.from('{"enc":"')

export const validationPlugin: Plugin<ValidationOptions> = {
  name: 'validation',
  setup (ctx, options): PluginHooks {
    const catalogue = options.catalogue ?? loadSchemaCatalogue(ctx.config.schemasDir)
    const personalData = options.personalData ??
      createPersonalData(catalogue, createPiiCipher(piiKeyFrom(ctx.config.piiKey, ctx.trust.deviceCaKeyPem)))
    const cipher = personalData.cipher
    const max = ctx.config.maxPayloadBytes
    // one copy per routed packet and view, shared by every subscriber with that view
    const opened = new WeakMap<AedesPublishPacket, AedesPublishPacket>()
    const removed = new WeakMap<AedesPublishPacket, AedesPublishPacket>()

    const openValue: PiiVisitor = function openValue (container, key, value) {
      // a value in clear (a path nothing sealed) stays; an envelope of another key stays sealed
      const clear = cipher.open(value)
      if (clear !== undefined) (container as Record<string | number, unknown>)[key] = clear.value
    }
    const removeValue: PiiVisitor = function removeValue (container, key) {
      // an array item becomes null: removing it would shift the positions after it
      if (Array.isArray(container)) container[key as number] = null
      else delete container[key as string]
    }

    return {
      name: 'validation',
      validatePublish ({ packet }) {
        const { answer, data } = check(catalogue, max, packet.topic, packet.payload)
        if (answer.verdict !== 'valid' || data === undefined) return answer
        const sealed = personalData.sealParsed(packet.topic, data)
        return sealed === null ? answer : { ...answer, payload: sealed }
      },
      transformForward ({ identity, packet }) {
        const format = catalogue.lookup(packet.topic)?.format
        if (format?.kind !== 'json' || format.pii === null) return packet
        // every x-pii value in flight was sealed when its publish was accepted (or by the
        // store wrapper): a payload with no envelope carries none, and then every view of
        // it is the packet itself. One byte search instead of a parse per message
        if (typeof packet.payload !== 'string' && !packet.payload.includes(ENVELOPE_MARK)) return packet
        const holder = identity.permissions.has('pii')
        const views = holder ? opened : removed
        const cached = views.get(packet)
        if (cached) return cached
        let out = packet
        try {
          const data: unknown = JSON.parse(packet.payload.toString())
          if (visitPersonalData(format.pii, data, holder ? openValue : removeValue) > 0) {
            const payload = Buffer.from(JSON.stringify(data))
            // the store keeps the sealed original, never this view (broker/store/personal-data.ts)
            personalData.noteForwarded(payload, packet.payload)
            out = Object.assign(Object.create(Object.getPrototypeOf(packet) as object) as AedesPublishPacket, packet, { payload })
          }
        } catch {
          // validated on the way in; a packet that does not parse now carries nothing to open or remove
        }
        views.set(packet, out)
        return out
      }
    }
  }
}
