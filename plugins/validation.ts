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
 * envelopes opened; anyone else gets what the topic's `"pii"` treatment says:
 * the values removed (default), replaced by a keyed pseudonym, or re-sealed
 * under the newest key of PII_KEYS_DIR for offline readers. Whatever the path
 * (live on this broker or another, offline queue, retained, will), one
 * transform per packet and view, shared by every subscriber with that view.
 *
 * Unannotated strings (values and object keys) are scanned inline (broker/pii-detect.ts) as the topic's
 * `"detect"` says: flag (audited `pii.detected` and counted, delivered),
 * redact (the match replaced in what is routed and stored), reject (dropped
 * with PiiDetected like any bad payload), or off. Same parse, before sealing,
 * so a payload is still serialized once.
 */
import type { AedesPublishPacket } from 'aedes'
import { isAscii } from 'node:buffer'
import { auditFields } from '../broker/chain/audit-fields.js'
import { hasDuplicateMemberNames } from '../broker/json-keys.js'
import { JitpError, type ErrorCode } from '../broker/errors.js'
import type { PayloadProblem, Plugin, PluginContext, PluginHooks, PublishEvent, ValidationAnswer } from '../broker/plugin.js'
import { createPiiCipher, piiKeyFrom } from '../broker/pii-crypto.js'
import { createPiiDetectionLog } from '../broker/pii-detection-log.js'
import { mayHoldPii, safePointer, scanJson, type JsonFinding, type PiiKind, type SkipMap } from '../broker/pii-detect.js'
import { isEnvelope, watchPiiKeyring, type PiiKeyringHolder } from '../broker/pii-keys.js'
import { createPersonalData, type PersonalData } from '../broker/store/personal-data.js'
import { maskBeneathPersonal, visitPersonalData, type PiiMap, type PiiVisitor } from './pii-map.js'
import { loadSchemaCatalogue, type PiiTreatment, type SchemaCatalogue, type TopicMapping } from './schema-catalogue.js'

const MAX_MESSAGE = 200
const utf8 = new TextDecoder('utf-8', { fatal: true })

function invalid (code: ErrorCode, schema: string, errors: PayloadProblem[]): ValidationAnswer {
  return { verdict: 'invalid', code, schema, errors }
}

export function validatePayload (catalogue: SchemaCatalogue, maxPayloadBytes: number, topic: string, payload: Buffer | string): ValidationAnswer {
  return check(catalogue, maxPayloadBytes, topic, payload, { data: undefined, mapping: undefined })
}

/** where check() leaves the parsed payload and its mapping of a valid JSON payload: one object per plugin, reused */
interface Parsed { data: unknown, mapping: TopicMapping | undefined }

/** the one "valid" answer per schema: a valid message (the common case) allocates no answer */
const validAnswers = new Map<string, ValidationAnswer>()
function valid (schema: string): ValidationAnswer {
  let answer = validAnswers.get(schema)
  if (answer === undefined) validAnswers.set(schema, answer = Object.freeze({ verdict: 'valid', schema }))
  return answer
}

/**
 * Whether every x-pii position of `before` (a personalValues() map: container → keys)
 * is still an x-pii position of `after`. A redaction renames keys in place, on the
 * same container objects, and never the key of an x-pii value itself: each such
 * value keeps its container and key, and is found again unless a renamed key above
 * it took it out of the schema's reach. Positions, not values: an equal value that
 * became personal elsewhere does not stand in for one that stopped being. Positions
 * that became personal are fine: they get sealed. Only on the redaction path (rare).
 */
function allStillPersonal (before: SkipMap, map: PiiMap, after: unknown): boolean {
  const found = personalValues(map, after)
  for (const [container, keys] of before) {
    const now = found?.get(container)
    for (const key of keys) if (now?.has(key) !== true) return false
  }
  return true
}

/** the answer; for a valid JSON payload, also the parsed value and its mapping in `out` (for detection and sealing) */
function check (catalogue: SchemaCatalogue, maxPayloadBytes: number, topic: string, payload: Buffer | string, out: Parsed): ValidationAnswer {
  out.data = undefined
  out.mapping = undefined
  const mapping = catalogue.lookup(topic)
  if (mapping === null) return invalid('NoSchema', 'none', [{ path: '', message: 'no schema is mapped to this topic' }])
  const bytes = typeof payload === 'string' ? Buffer.from(payload) : payload
  const format = mapping.format
  if (format.kind === 'binary') {
    if (bytes.length > format.maxBytes) return invalid('PayloadTooLarge', format.schema, [{ path: '', message: `payload is ${bytes.length} bytes, limit ${format.maxBytes}` }])
    return valid(format.schema)
  }
  if (bytes.length > maxPayloadBytes) return invalid('PayloadTooLarge', format.schema, [{ path: '', message: `payload is ${bytes.length} bytes, limit ${maxPayloadBytes}` }])
  let data: unknown
  if (bytes.length === 0 && format.emptyAs !== undefined) {
    data = format.emptyAs
  } else {
    let text: string
    try {
      // an ASCII payload (nearly every JSON one) is valid UTF-8 as it is: read without the validating decoder
      text = isAscii(bytes) ? bytes.toString('latin1') : utf8.decode(bytes)
    } catch {
      return invalid('InvalidJson', format.schema, [{ path: '', message: 'payload is not valid UTF-8' }])
    }
    try {
      data = JSON.parse(text)
    } catch {
      // V8's parse errors quote the payload: a report or audit line must not
      return invalid('InvalidJson', format.schema, [{ path: '', message: 'payload is not valid JSON' }])
    }
    // the parse kept the last of two same-named members, but these bytes are what is routed
    // and stored: a first one could carry personal data past sealing and detection (broker/json-keys.ts)
    if (hasDuplicateMemberNames(bytes, data)) return invalid('InvalidJson', format.schema, [{ path: '', message: 'payload repeats a member name in an object' }])
  }
  if (format.validate(data)) {
    out.data = data
    out.mapping = mapping
    return valid(format.schema)
  }
  // allErrors is off: one error, capped, so a hostile payload cannot make a big report
  const e = format.validate.errors?.[0]
  const path = e ? e.instancePath + (e.keyword === 'required' ? `/${String(e.params.missingProperty)}` : e.keyword === 'additionalProperties' ? `/${String(e.params.additionalProperty)}` : '') : ''
  // the path names the payload's own keys, and the report goes to `devices/<id>/errors`, which services read:
  // a key that looks like personal data is written '*', and a deep or long path is cut (broker/pii-detect.ts)
  // and a segment beneath an x-pii value is that value's own content (the keys of an x-pii object): '*' too
  return invalid('SchemaViolation', format.schema, [{ path: safePointer(maskBeneathPersonal(format.pii, path)), message: (e?.message ?? 'invalid').slice(0, MAX_MESSAGE) }])
}

export interface ValidationOptions {
  readonly catalogue?: SchemaCatalogue
  /** shared with the persistence wrapper (broker/store/personal-data.ts); built here when absent */
  readonly personalData?: PersonalData
}

/** how every sealed value starts once serialized (broker/pii-crypto.ts, JSON.stringify) */
const ENVELOPE_MARK = Buffer.from('{"enc":"')
/** pii.detected lines per message at most: a payload full of addresses cannot flood the audit log */
const MAX_FINDINGS = 8
const KIND_NAMES: Readonly<Record<PiiKind, string>> = { email: 'an e-mail address', phone: 'a phone number', card: 'a payment card number', iban: 'an IBAN' }

/** what recordPersonal collects into during one personalValues call (synchronous: one at a time) */
let collecting: Map<object, Set<string | number>> | undefined
/** one visitor for every message: the hot path allocates no closure per publish */
const recordPersonal: PiiVisitor = function recordPersonal (container, key) {
  collecting ??= new Map()
  let keys = collecting.get(container as object)
  if (!keys) collecting.set(container as object, keys = new Set())
  keys.add(key)
}

/** where the schema's x-pii values sit in this payload: the detector does not look into them */
function personalValues (map: PiiMap | null, data: unknown): SkipMap | undefined {
  if (map === null) return undefined
  collecting = undefined
  try {
    visitPersonalData(map, data, recordPersonal)
    return collecting
  } finally {
    collecting = undefined
  }
}

/** the key ring of the "encrypt" treatment, or null when no topic asks for it; refuses to start without keys */
function encryptKeys (ctx: PluginContext, catalogue: SchemaCatalogue): PiiKeyringHolder | null {
  const encrypting = catalogue.mappings.find((m) => m.piiTreatment === 'encrypt')
  if (encrypting === undefined) return null
  const dir = ctx.config.piiKeysDir
  if (dir === undefined) throw new JitpError('InvalidConfig', `PII_KEYS_DIR: topic '${encrypting.filter}' asks for "pii": "encrypt" and no key directory is set`)
  try {
    return watchPiiKeyring(dir, ctx.log)
  } catch (err) {
    throw new JitpError('InvalidConfig', (err as Error).message)
  }
}

export const validationPlugin: Plugin<ValidationOptions> = {
  name: 'validation',
  setup (ctx, options): PluginHooks {
    const catalogue = options.catalogue ?? loadSchemaCatalogue(ctx.config.schemasDir)
    const personalData = options.personalData ??
      createPersonalData(catalogue, createPiiCipher(piiKeyFrom(ctx.config.piiKey, ctx.trust.deviceCaKeyPem)))
    const cipher = personalData.cipher
    const keys = encryptKeys(ctx, catalogue)
    const max = ctx.config.maxPayloadBytes
    // pii.detected lines bounded per client and interval, like refusals before authentication
    const detections = createPiiDetectionLog(ctx.audit, ctx.config.auditAggregateSeconds * 1000)
    // one copy per routed packet and view, shared by every subscriber with that view
    const opened = new WeakMap<AedesPublishPacket, AedesPublishPacket>()
    const treated = new WeakMap<AedesPublishPacket, AedesPublishPacket>()
    /** check()'s output for the message being validated (validatePublish runs synchronously, one at a time) */
    const parsed: Parsed = { data: undefined, mapping: undefined }

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
    /** the clear value behind an x-pii value: opened, or as it is when nothing sealed it; undefined for a foreign envelope */
    function clearOf (value: unknown): { value: unknown } | undefined {
      const clear = cipher.open(value)
      if (clear !== undefined) return clear
      return isEnvelope(value) ? undefined : { value }
    }
    const pseudonymizeValue: PiiVisitor = function pseudonymizeValue (container, key, value) {
      const clear = clearOf(value)
      let token: string | undefined
      try {
        if (clear !== undefined) token = cipher.pseudonym(clear.value)
      } catch {
        // too deep to serialize: nothing to derive a token from, so nothing is shown
      }
      if (token === undefined) removeValue(container, key, value)
      else (container as Record<string | number, unknown>)[key] = token
    }
    const encryptValue: PiiVisitor = function encryptValue (container, key, value) {
      const clear = clearOf(value)
      if (clear === undefined || keys === null) removeValue(container, key, value)
      else (container as Record<string | number, unknown>)[key] = keys.current().seal(clear.value)
    }
    const treatments: Readonly<Record<PiiTreatment, PiiVisitor>> = { remove: removeValue, pseudonymize: pseudonymizeValue, encrypt: encryptValue }

    /** flag and redact: one audit line per finding (never the value), and the count per topic filter and kind */
    function reportFindings (ev: PublishEvent, mapping: TopicMapping, findings: readonly JsonFinding[], action: 'flagged' | 'redacted'): void {
      const fields = auditFields(ev.client, ev.state)
      for (const f of findings) {
        ctx.metrics.piiDetections.inc({ topic: mapping.filter, kind: f.kind })
        detections.write(fields, { topic: ev.packet.topic, path: f.path, kind: f.kind, action })
      }
    }

    /**
     * Inline detection over the parsed, valid payload (the schema's x-pii values
     * excepted): an invalid answer for reject (or a redaction that no longer fits
     * the schema), else whether `data` was changed in place.
     */
    function detect (ev: PublishEvent, mapping: TopicMapping, data: unknown): ValidationAnswer | { changed: unknown } | null {
      const mode = mapping.detect
      const format = mapping.format
      if (mode === 'off' || format.kind !== 'json') return null
      const skip = personalValues(format.pii, data)
      // nothing to find (nearly every message): one walk that allocates nothing, and done
      if (!mayHoldPii(data, skip)) return null
      const result = scanJson(data, {
        skip,
        redact: mode === 'redact',
        limit: mode === 'reject' ? 1 : MAX_FINDINGS
      })
      if (result.unredactable !== undefined) {
        // a key holding personal data that cannot be renamed: nothing redacted can be routed, so nothing is
        const kind = result.findings[0]?.kind
        if (kind !== undefined && !ev.isWill) ctx.metrics.piiDetections.inc({ topic: mapping.filter, kind })
        return invalid('PiiDetected', format.schema, [{ path: result.unredactable, message: 'a key holds personal data and cannot be redacted' }])
      }
      if (result.findings.length === 0) return null
      if (mode === 'reject') {
        const f = result.findings[0]!
        // counted here; the drop path audits payload.rejected and reports to the device
        if (!ev.isWill) ctx.metrics.piiDetections.inc({ topic: mapping.filter, kind: f.kind })
        return invalid('PiiDetected', format.schema, [{ path: f.path, message: `${KIND_NAMES[f.kind]} in a field not marked x-pii` }])
      }
      // a will is vetted at CONNECT and again when it is published: reported once, then
      if (!ev.isWill) reportFindings(ev, mapping, result.findings, mode === 'redact' ? 'redacted' : 'flagged')
      if (mode === 'flag') return null
      // A renamed key can take x-pii values beneath it out of the schema's reach (a
      // patternProperties key that held an address no longer matches as "[email]"): they
      // would then be routed and stored in clear. Every x-pii position found before the
      // redaction (`skip`: containers are renamed in place, so it still names them) must
      // still be one after it, or nothing is routed.
      if (skip !== undefined && format.pii !== null && !allStillPersonal(skip, format.pii, result.value)) {
        const kind = result.findings[0]?.kind
        if (kind !== undefined && !ev.isWill) ctx.metrics.piiDetections.inc({ topic: mapping.filter, kind })
        return invalid('PiiDetected', format.schema, [{ path: result.findings[0]?.path ?? '', message: 'a key above personal data cannot be redacted' }])
      }
      // what is routed must still be what the schema promises subscribers
      if (!format.validate(result.value)) {
        return invalid('PiiDetected', format.schema, [{ path: result.findings[0]!.path, message: 'the redacted payload no longer fits its schema' }])
      }
      return { changed: result.value }
    }

    return {
      name: 'validation',
      validatePublish (ev) {
        const { packet } = ev
        const answer = check(catalogue, max, packet.topic, packet.payload, parsed)
        const { data, mapping } = parsed
        // not kept past this call: the next message reuses the object
        parsed.data = undefined
        parsed.mapping = undefined
        if (answer.verdict !== 'valid' || data === undefined || mapping === undefined) return answer
        const detected = detect(ev, mapping, data)
        if (detected !== null && 'verdict' in detected) return detected
        const value = detected === null ? data : detected.changed
        const sealed = personalData.sealParsed(packet.topic, value)
        if (sealed !== null) return { ...answer, payload: sealed }
        // nothing to seal: what is routed holds no x-pii value in clear, and the store
        // (a persistent subscriber's queue) need not parse it again to find that out
        const hasPiiMap = mapping.format.kind === 'json' && mapping.format.pii !== null
        if (detected === null) {
          if (hasPiiMap) personalData.noteClearOfPii(packet.payload)
          return answer
        }
        // redacted: the one serialization of what is routed
        const payload = Buffer.from(JSON.stringify(value))
        if (hasPiiMap) personalData.noteClearOfPii(payload)
        return { ...answer, payload }
      },
      transformForward ({ identity, packet }) {
        const mapping = catalogue.lookup(packet.topic)
        const format = mapping?.format
        if (mapping === null || mapping === undefined || format?.kind !== 'json' || format.pii === null) return packet
        // every x-pii value in flight was sealed when its publish was accepted (or by the
        // store wrapper): a payload with no envelope carries none, and then every view of
        // it is the packet itself. One byte search instead of a parse per message
        if (typeof packet.payload !== 'string' && !packet.payload.includes(ENVELOPE_MARK)) return packet
        const holder = identity.permissions.has('pii')
        const views = holder ? opened : treated
        const cached = views.get(packet)
        if (cached) return cached
        let out = packet
        try {
          const data: unknown = JSON.parse(packet.payload.toString())
          if (visitPersonalData(format.pii, data, holder ? openValue : treatments[mapping.piiTreatment]) > 0) {
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
      },
      async close () {
        keys?.close()
        detections.close()
      }
    }
  }
}
