/**
 * Duplicate member names in a JSON payload (CONTRACT §5, issue 9).
 *
 * JSON.parse keeps the LAST of two members with the same name, but the broker
 * routes and stores the payload's own bytes whenever it has nothing to seal or
 * redact. `{"site":{"contact":"jane@x"},"site":{}}` then validated, had no x-pii
 * value to seal (the parser saw `"site":{}`), and went to every subscriber and
 * into the store with the address in clear; a parser that keeps the FIRST member
 * (many do) shows it. The same trick hid addresses from inline detection's
 * redact and reject. RFC 8259 §4 leaves such a payload's meaning to the parser,
 * so the broker refuses it, whatever the topic: one payload, one meaning.
 *
 * How, without a second parser: JSON.parse accepted the text, so every string in
 * it is well formed, and a ':' outside strings follows exactly one member name.
 * The names in the text are counted with one byte scan (about 0.3 µs for the
 * bench's 201-byte telemetry, against 1.4 µs for its JSON.parse);
 * the names that survived the parse are counted over the parsed value. They
 * differ exactly when some object repeated a name. Both are linear, allocate
 * nothing, and never recurse (a payload can nest thousands deep).
 */

const QUOTE = 0x22
const BACKSLASH = 0x5c
const COLON = 0x3a

/**
 * Member names in a JSON text that JSON.parse accepted: in valid JSON a ':' outside
 * strings is only ever the separator after a member name, so the names are the
 * colons outside strings. UTF-8 and Latin-1 alike: '"', '\\' and ':' are ASCII,
 * and no byte of a multi-byte UTF-8 sequence is.
 */
export function memberNamesInText (bytes: Uint8Array): number {
  let names = 0
  const n = bytes.length
  let i = 0
  while (i < n) {
    const c = bytes[i++]
    if (c === COLON) {
      names++
    } else if (c === QUOTE) {
      // to the string's closing quote (an escape takes the next byte with it)
      while (i < n) {
        const d = bytes[i++]
        if (d === QUOTE) break
        if (d === BACKSLASH) i++
      }
    }
  }
  return names
}

/** reused by memberNamesInValue: synchronous, so one at a time */
const pending: object[] = []

/** Own member names of every object in a value JSON.parse returned (arrays walked, their indices not counted). */
export function memberNamesInValue (data: unknown): number {
  if (data === null || typeof data !== 'object') return 0
  let names = 0
  // empty after every walk; cleared first all the same, so no earlier payload is ever followed
  pending.length = 0
  pending.push(data)
  while (pending.length > 0) {
    const v = pending.pop()!
    if (Array.isArray(v)) {
      for (let i = 0; i < v.length; i++) {
        const item: unknown = v[i]
        if (item !== null && typeof item === 'object') pending.push(item)
      }
      continue
    }
    const record = v as Record<string, unknown>
    for (const key in record) {
      // JSON.parse makes own data properties only: anything inherited (an enumerable
      // property someone put on Object.prototype) is not the payload's, and following it
      // could loop (an inherited object reaches itself)
      if (!Object.prototype.hasOwnProperty.call(record, key)) continue
      names++
      const item = record[key]
      if (item !== null && typeof item === 'object') pending.push(item)
    }
  }
  return names
}

/** true when some object of the payload repeated a member name (`data` is JSON.parse of `bytes`) */
export function hasDuplicateMemberNames (bytes: Uint8Array, data: unknown): boolean {
  return memberNamesInText(bytes) !== memberNamesInValue(data)
}
