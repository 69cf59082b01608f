/**
 * Inline detection of personal data in unannotated strings (CONTRACT §5):
 * e-mail addresses, phone numbers, payment card numbers and IBANs.
 *
 * Hand-rolled scanners, no regular expressions: one left-to-right pass over the
 * string's char codes, dispatching on the few characters that can start a
 * finding ('@' for an e-mail, a digit / '+' / '(' at a word boundary for a
 * number, two capitals and two digits at a word boundary for an IBAN). Each
 * sub-scanner either consumes what it read (the pass resumes after it) or reads
 * a bounded window: the e-mail scan reads at most 64 characters left of its '@'
 * and stops at the previous '@', and reads right only up to the next '@' (at
 * most 253); the IBAN scan reads at most 34 characters plus its spaces. So every
 * character is read a bounded number of times whatever the input: linear time,
 * no backtracking (test/plugins/pii-detect.test.ts counts the reads on
 * adversarial 64 KiB strings). Strings shorter than the shortest finding (6
 * characters) are not looked at.
 *
 * The rules (docs/PRIVACY.md repeats them for operators):
 * - boundaries: a number or an IBAN starts where the previous character is not
 *   a letter, digit or '_', nor one of - . / + that itself follows a letter or
 *   digit ("SN-0201234567" is an identifier, not a phone number); it ends where
 *   the next character is not a letter, digit or '_', nor one of - . / + : ,
 *   followed by a letter or digit ("10:30", "48.85,2.29").
 * - email: local part of [A-Za-z0-9._%+-] (the 64 characters before the '@'
 *   at most, no leading or trailing dot),
 *   '@', then at least two dot-separated labels of [A-Za-z0-9-] (1–63, no
 *   leading or trailing '-'), the last one letters only (2–63), 253 at most.
 * - number candidates: digit groups joined by ONE separator each (space - . /),
 *   optionally a parenthesised group, optionally led by '+'; the whole maximal
 *   run is judged, never a part of it.
 * - phone, international: '+', a first digit 1–9, 8–15 digits in all (a "(0)"
 *   trunk group not counted), any of the separators.
 * - phone, national: at least two groups (a separator or a parenthesised first
 *   group), the same separator throughout (the one after a ')' excepted), 9–12
 *   digits, and either a trunk prefix (first group 0 then 1–9, 2–5 digits, the
 *   other groups 2–8 digits: "020 7946 0958", "06 12 34 56 78", "030/1234567")
 *   or the North American 3-3-4 shape, optionally after a "1" group, the area
 *   code starting 2–9 ("(415) 555-2671", "415.555.2671", "1-800-555-0199").
 *   A digit string without separators is never a national phone number.
 * - card: 13–19 digits, no '+' or parentheses, either no separator or the same
 *   one (space or '-') throughout with groups of 3 digits or more, the prefix
 *   and length of a card network (Visa 4: 13/16/19; Mastercard 51–55 and
 *   2221–2720: 16; Amex 34/37: 15; Diners 300–305/36/38/39; JCB 3528–3589;
 *   Discover/UnionPay 6011/644–649/65/62; Mir 2200–2204; Maestro 50/56–69),
 *   and a valid Luhn check digit. Epoch timestamps (from 1) and IMEIs (15
 *   digits, Luhn-valid, from 35/49/86/01) are no card numbers.
 * - iban: two capitals, two check digits (02–98), then capitals and digits,
 *   contiguous or in groups of four separated by one space; exactly the
 *   registry's length for a known country (15–34 otherwise); mod 97 == 1.
 */

export type PiiKind = 'email' | 'phone' | 'card' | 'iban'
export const PII_KINDS: readonly PiiKind[] = ['email', 'phone', 'card', 'iban']

export interface PiiFinding { readonly kind: PiiKind, readonly start: number, readonly end: number }

/** the shortest string that can hold a finding ("a@b.co") */
const MIN_LENGTH = 6
const MAX_LOCAL = 64
const MAX_DOMAIN = 253
const MAX_LABEL = 63

// char codes
const AT = 64
const PLUS = 43
const OPEN = 40
const CLOSE = 41
const SPACE = 32
const DASH = 45
const DOT = 46
const SLASH = 47
const COLON = 58
const COMMA = 44
const UNDERSCORE = 95
const PERCENT = 37

function isDigit (c: number): boolean { return c >= 48 && c <= 57 }
function isUpper (c: number): boolean { return c >= 65 && c <= 90 }
function isLower (c: number): boolean { return c >= 97 && c <= 122 }
function isAlnum (c: number): boolean { return isDigit(c) || isUpper(c) || isLower(c) }
function isWord (c: number): boolean { return isAlnum(c) || c === UNDERSCORE }
/** characters that glue the parts of an identifier or a number together */
function isJoiner (c: number): boolean { return c === DASH || c === DOT || c === SLASH || c === PLUS }

function boundaryBefore (s: string, i: number): boolean {
  if (i === 0) return true
  const p = s.charCodeAt(i - 1)
  if (isWord(p)) return false
  return !(isJoiner(p) && i >= 2 && isAlnum(s.charCodeAt(i - 2)))
}

function boundaryAfter (s: string, j: number): boolean {
  if (j >= s.length) return true
  const c = s.charCodeAt(j)
  if (isWord(c)) return false
  return !((isJoiner(c) || c === COLON || c === COMMA) && j + 1 < s.length && isAlnum(s.charCodeAt(j + 1)))
}

// ---------------------------------------------------------------- e-mail

function isLocalChar (c: number): boolean {
  return isAlnum(c) || c === DOT || c === UNDERSCORE || c === PERCENT || c === PLUS || c === DASH
}
function isLabelChar (c: number): boolean { return isAlnum(c) || c === DASH }

/** the end of the address whose '@' is at `at`, and its start in `found.start`; -1 when there is none */
function emailAt (s: string, at: number, found: { start: number }): number {
  // left: the local part, at most 64 characters, stopping at anything else (a previous '@' included)
  let a = at
  while (a > 0 && at - a < MAX_LOCAL && isLocalChar(s.charCodeAt(a - 1))) a--
  while (a < at && s.charCodeAt(a) === DOT) a++
  if (a === at || s.charCodeAt(at - 1) === DOT) return -1
  // right: labels separated by single dots, at most 253 characters
  const n = s.length
  let b = at + 1
  let labels = 0
  let lastStart = b
  let lastAllLetters = true
  for (;;) {
    const start = b
    let allLetters = true
    while (b < n && isLabelChar(s.charCodeAt(b)) && b - start < MAX_LABEL + 1) {
      const c = s.charCodeAt(b)
      if (!isUpper(c) && !isLower(c)) allLetters = false
      b++
    }
    const len = b - start
    if (len === 0 || len > MAX_LABEL || s.charCodeAt(start) === DASH || s.charCodeAt(b - 1) === DASH) return -1
    labels++
    lastStart = start
    lastAllLetters = allLetters
    if (b - (at + 1) > MAX_DOMAIN) return -1
    // another label only when a dot is followed by a label character (a trailing dot ends a sentence)
    if (b + 1 < n && s.charCodeAt(b) === DOT && isLabelChar(s.charCodeAt(b + 1))) {
      b++
      continue
    }
    break
  }
  if (labels < 2 || !lastAllLetters || b - lastStart < 2) return -1
  if (b < n && isWord(s.charCodeAt(b))) return -1
  found.start = a
  return b
}

// ---------------------------------------------------------------- numbers

/** what one scan of a number candidate found (module scratch: the scan is synchronous) */
const MAX_GROUPS = 32
const groupLen = new Int32Array(MAX_GROUPS)
const groupStart = new Int32Array(MAX_GROUPS)

interface NumberScan {
  /** where the scan stopped (the pass resumes here) */
  next: number
  /** the candidate's end (after its last digit or ')'), and its kind or null */
  end: number
  kind: PiiKind | null
}

const numberScan: NumberScan = { next: 0, end: 0, kind: null }

function luhn (s: string, start: number, end: number): boolean {
  let sum = 0
  let double = false
  for (let k = end - 1; k >= start; k--) {
    const c = s.charCodeAt(k)
    if (!isDigit(c)) continue
    let d = c - 48
    if (double) { d *= 2; if (d > 9) d -= 9 }
    sum += d
    double = !double
  }
  return sum % 10 === 0
}

/**
 * Scans the maximal number candidate starting at `i` (a digit, '+' or '(' at a
 * boundary) and judges it whole. Every character it reads is consumed.
 */
function scanNumber (s: string, i: number): NumberScan {
  const n = s.length
  const out = numberScan
  out.kind = null
  let j = i
  const plus = s.charCodeAt(j) === PLUS
  if (plus) j++
  let groups = 0
  let digits = 0
  let trunkParenDigits = 0
  let parens = 0
  let firstParen = false
  let sep = 0
  let mixed = false
  let end = -1
  let lastWasParen = false
  for (;;) {
    const c = j < n ? s.charCodeAt(j) : -1
    let len = 0
    const start = j
    if (c === OPEN) {
      // a parenthesised group: 1–5 digits then ')'
      let k = j + 1
      while (k < n && isDigit(s.charCodeAt(k)) && k - j <= 5) k++
      if (k === j + 1 || k >= n || s.charCodeAt(k) !== CLOSE) break
      len = k - j - 1
      if (groups === 0) firstParen = true
      parens++
      if (len === 1 && s.charCodeAt(j + 1) === 48) trunkParenDigits += 1
      j = k + 1
      lastWasParen = true
    } else if (isDigit(c)) {
      while (j < n && isDigit(s.charCodeAt(j))) j++
      len = j - start
      lastWasParen = false
    } else {
      break
    }
    if (groups < MAX_GROUPS) {
      groupLen[groups] = len
      groupStart[groups] = lastWasParen ? start + 1 : start
    }
    groups++
    digits += len
    end = j
    // a separator, only when another group follows it
    const d = j < n ? s.charCodeAt(j) : -1
    const following = j + 1 < n ? s.charCodeAt(j + 1) : -1
    if ((d === SPACE || d === DASH || d === DOT || d === SLASH) && (isDigit(following) || following === OPEN)) {
      // the separator after a parenthesised first group ("(415) 555-2671") is its own
      if (!(lastWasParen && groups === 1)) {
        if (sep === 0) sep = d
        else if (sep !== d) mixed = true
      }
      j++
      continue
    }
    // a group straight after ')' (or a '(' straight after digits) is a group of its own
    if ((lastWasParen && isDigit(d)) || (!lastWasParen && d === OPEN)) continue
    break
  }
  out.next = Math.max(j, i + 1)
  out.end = end
  if (end < 0 || !boundaryAfter(s, end)) return out
  const first = groupStart[0]!
  const firstDigit = s.charCodeAt(first) - 48

  if (plus) {
    const counted = digits - trunkParenDigits
    if (firstDigit >= 1 && counted >= 8 && counted <= 15) out.kind = 'phone'
    return out
  }
  if (groups > MAX_GROUPS) return out

  if (parens === 0 && digits >= 13 && digits <= 19) {
    if (sep !== 0 && (mixed || (sep !== SPACE && sep !== DASH))) return out
    if (groups > 1) for (let g = 0; g < groups; g++) if (groupLen[g]! < 3) return out
    if (cardNetwork(s, first, digits) && luhn(s, first, end)) out.kind = 'card'
    return out
  }

  // national phone numbers: grouped, one separator kind, 9–12 digits
  if (groups < 2 || mixed || digits < 9 || digits > 12) return out
  if (parens > (firstParen ? 1 : 0)) return out
  const secondDigit = s.charCodeAt(first + 1) - 48
  if (firstDigit === 0 && secondDigit >= 1 && groupLen[0]! >= 2 && groupLen[0]! <= 5) {
    for (let g = 1; g < groups; g++) if (groupLen[g]! < 2 || groupLen[g]! > 8) return out
    out.kind = 'phone'
    return out
  }
  // North American: [1] 3-3-4, the area code starting 2–9
  const lead = groups === 4 && groupLen[0] === 1 && firstDigit === 1 ? 1 : 0
  if (groups - lead === 3 && groupLen[lead] === 3 && groupLen[lead + 1] === 3 && groupLen[lead + 2] === 4) {
    const area = s.charCodeAt(groupStart[lead]!) - 48
    if (area >= 2 && !(lead === 1 && firstParen)) out.kind = 'phone'
  }
  return out
}

/**
 * Whether the number's prefix and length are those of a card network (ISO/IEC
 * 7812 issuer ranges): Luhn alone passes one random number in ten, and device
 * identifiers that carry a Luhn digit (IMEIs: 15 digits from 35, 49, 86, ...)
 * are no cards.
 */
function cardNetwork (s: string, first: number, digits: number): boolean {
  let p4 = 0
  for (let k = first, taken = 0; taken < 4; k++) {
    const c = s.charCodeAt(k)
    if (!isDigit(c)) continue
    p4 = p4 * 10 + (c - 48)
    taken++
  }
  const p1 = Math.floor(p4 / 1000)
  const p2 = Math.floor(p4 / 100)
  const p3 = Math.floor(p4 / 10)
  if (p1 === 4) return digits === 13 || digits === 16 || digits === 19 // Visa
  if (p2 >= 51 && p2 <= 55) return digits === 16 // Mastercard
  if (p4 >= 2221 && p4 <= 2720) return digits === 16 // Mastercard 2-series
  if (p4 >= 2200 && p4 <= 2204) return digits >= 16 // Mir
  if (p2 === 34 || p2 === 37) return digits === 15 // American Express
  if ((p3 >= 300 && p3 <= 305) || p2 === 36 || p2 === 38 || p2 === 39) return digits >= 14 // Diners Club
  if (p4 >= 3528 && p4 <= 3589) return digits >= 16 // JCB
  if (p4 === 6011 || (p3 >= 644 && p3 <= 649) || p2 === 65 || p2 === 62) return digits >= 16 // Discover, UnionPay
  if (p2 === 50 || (p2 >= 56 && p2 <= 69)) return true // Maestro (12–19; 13 at least here)
  return false
}

// ---------------------------------------------------------------- IBAN

/** IBAN length by country (SWIFT IBAN registry) */
const IBAN_LENGTH: Readonly<Record<string, number>> = {
  AD: 24, AE: 23, AL: 28, AT: 20, AZ: 28, BA: 20, BE: 16, BG: 22, BH: 22, BI: 27, BR: 29, BY: 28,
  CH: 21, CR: 22, CY: 28, CZ: 24, DE: 22, DJ: 27, DK: 18, DO: 28, EE: 20, EG: 29, ES: 24, FI: 18,
  FK: 18, FO: 18, FR: 27, GB: 22, GE: 22, GI: 23, GL: 18, GR: 27, GT: 28, HN: 28, HR: 21, HU: 28,
  IE: 22, IL: 23, IQ: 23, IS: 26, IT: 27, JO: 30, KW: 30, KZ: 20, LB: 28, LC: 32, LI: 21, LT: 20,
  LU: 20, LV: 21, LY: 25, MC: 27, MD: 24, ME: 22, MK: 19, MN: 20, MR: 27, MT: 31, MU: 30, NI: 28,
  NL: 18, NO: 15, OM: 23, PK: 24, PL: 28, PS: 29, PT: 25, QA: 29, RO: 24, RS: 22, RU: 33, SA: 24,
  SC: 31, SD: 18, SE: 24, SI: 19, SK: 24, SM: 27, SO: 23, ST: 25, SV: 28, TL: 23, TN: 24, TR: 26,
  UA: 29, VA: 22, VG: 24, XK: 20, YE: 30
}
const IBAN_MIN = 15
const IBAN_MAX = 34

/** ISO 7064 mod 97-10 over the IBAN's characters (spaces skipped), first four moved to the end */
function ibanMod97 (s: string, start: number, end: number): number {
  let r = 0
  const add = (c: number): void => {
    if (isDigit(c)) r = (r * 10 + (c - 48)) % 97
    else r = (r * 100 + (c - 55)) % 97
  }
  let seen = 0
  for (let k = start; k < end; k++) {
    const c = s.charCodeAt(k)
    if (c === SPACE) continue
    if (seen++ >= 4) add(c)
  }
  for (let k = start; k < start + 4; k++) add(s.charCodeAt(k))
  return r
}

/** the end of the IBAN starting at `i`, or -1 */
function ibanAt (s: string, i: number): number {
  const n = s.length
  const cc = String.fromCharCode(s.charCodeAt(i), s.charCodeAt(i + 1))
  const check = (s.charCodeAt(i + 2) - 48) * 10 + (s.charCodeAt(i + 3) - 48)
  if (check < 2 || check > 98) return -1
  const known = IBAN_LENGTH[cc]
  const max = known ?? IBAN_MAX
  let count = 0
  let j = i
  while (j < n && count < max) {
    const c = s.charCodeAt(j)
    if (isDigit(c) || isUpper(c)) { count++; j++; continue }
    if (c === SPACE && count > 0 && count % 4 === 0 && j + 1 < n) {
      const next = s.charCodeAt(j + 1)
      if (isDigit(next) || isUpper(next)) { j++; continue }
    }
    break
  }
  if (known !== undefined ? count !== known : count < IBAN_MIN) return -1
  if (!boundaryAfter(s, j)) return -1
  return ibanMod97(s, i, j) === 1 ? j : -1
}

// ---------------------------------------------------------------- the pass

const NONE: PiiFinding[] = Object.freeze([]) as unknown as PiiFinding[]
/** where emailAt puts the start of the address it found (the pass is synchronous) */
const emailFound = { start: 0 }

/**
 * Every finding in `s`, in order, none overlapping. `limit` stops the scan
 * after that many (reject needs one, flag a few).
 */
export function findPii (s: string, limit = Infinity): PiiFinding[] {
  const n = s.length
  if (n < MIN_LENGTH) return NONE
  let out: PiiFinding[] | null = null
  for (let i = 0; i < n && (out === null || out.length < limit);) {
    const c = s.charCodeAt(i)
    if (c === AT) {
      const end = emailAt(s, i, emailFound)
      if (end > 0) {
        out ??= []
        // the local part can reach back over a number already judged ("4111111111111111%x@example.com"):
        // the address takes it in, so a redaction leaves nothing of either
        let start = emailFound.start
        while (out.length > 0 && out[out.length - 1]!.end > start) start = Math.min(start, out.pop()!.start)
        out.push({ kind: 'email', start, end })
        i = end
      } else {
        i++
      }
      continue
    }
    if ((isDigit(c) || c === PLUS || c === OPEN) && boundaryBefore(s, i)) {
      const r = scanNumber(s, i)
      // a local part followed by '@' is the e-mail scanner's, not a number
      if (r.kind !== null && !(r.end < n && s.charCodeAt(r.end) === AT)) (out ??= []).push({ kind: r.kind, start: i, end: r.end })
      i = r.next
      continue
    }
    if (isUpper(c) && i + 3 < n && isUpper(s.charCodeAt(i + 1)) && isDigit(s.charCodeAt(i + 2)) && isDigit(s.charCodeAt(i + 3)) && boundaryBefore(s, i)) {
      const end = ibanAt(s, i)
      if (end > 0) {
        (out ??= []).push({ kind: 'iban', start: i, end })
        i = end
        continue
      }
    }
    i++
  }
  return out ?? NONE
}

/** `s` with every finding's span replaced by its kind in brackets: "mail [email]" */
export function redactText (s: string, findings: readonly PiiFinding[]): string {
  let out = ''
  let from = 0
  for (const f of findings) {
    out += s.slice(from, f.start) + `[${f.kind}]`
    from = f.end
  }
  return out + s.slice(from)
}

// ---------------------------------------------------------------- JSON values

/** where a finding sits: a JSON pointer (RFC 6901) and the kind, never the value */
export interface JsonFinding { readonly path: string, readonly kind: PiiKind }

/** the (container, key) pairs the walk must not look into: the schema's x-pii values */
export type SkipMap = ReadonlyMap<object, ReadonlySet<string | number>>

export interface ScanOptions {
  readonly skip?: SkipMap | undefined
  /** replace each finding's span in place (the container is modified) */
  readonly redact: boolean
  /** stop recording (and, when not redacting, scanning) after this many */
  readonly limit: number
}

export interface ScanResult {
  readonly findings: JsonFinding[]
  /** strings (values and keys) changed by a redaction */
  readonly redacted: number
  /**
   * Redacting only: the pointer of a key that holds personal data and cannot be
   * renamed (its value is x-pii, or the new name is taken); the caller refuses
   * the payload, the value having been left partly changed.
   */
  readonly unredactable?: string
}

interface PathLink { readonly parent: PathLink | null, readonly key: string | number }

/**
 * A pointer goes into audit lines and into reports that services read on
 * `devices/<id>/errors`: a payload nested thousands deep, or a 60 KiB key, must
 * not make each of them as big as the payload. Kept: the last segments, each
 * cut to a length; the rest is written '…'.
 */
const MAX_POINTER_SEGMENTS = 16
const MAX_SEGMENT_CHARS = 64
const ELIDED = '\u2026'

/** one pointer segment (its key unescaped) as it may be written: '*' when it looks like personal data, cut when long */
function safeSegment (k: string): string {
  // a key that itself looks like personal data is not written out (checked whole, before any cut)
  if (findPii(k, 1).length > 0) return '*'
  const escaped = k.replace(/~/g, '~0').replace(/\//g, '~1')
  return escaped.length > MAX_SEGMENT_CHARS ? escaped.slice(0, MAX_SEGMENT_CHARS) + ELIDED : escaped
}

function escapeSegment (key: string | number): string {
  return typeof key === 'number' ? String(key) : safeSegment(key)
}

/** the document itself: its children's pointers start here */
const DOC: PathLink = { parent: null, key: '' }

function pointer (link: PathLink, key: string | number): string {
  const parts = [escapeSegment(key)]
  let l = link
  for (; l !== DOC && l.parent !== null && parts.length < MAX_POINTER_SEGMENTS; l = l.parent) parts.push(escapeSegment(l.key))
  if (l !== DOC && l.parent !== null) parts.push(ELIDED)
  return '/' + parts.reverse().join('/')
}

/**
 * A JSON pointer from elsewhere (a schema validator's instancePath, which names
 * the payload's own keys) made fit for a log line or an error report, as the
 * detector's own pointers are: a segment that looks like personal data is '*',
 * long segments are cut, and only the last segments are kept.
 */
export function safePointer (path: string): string {
  if (path === '' || path[0] !== '/') return path
  const segments = path.slice(1).split('/')
  const kept = segments.length > MAX_POINTER_SEGMENTS ? segments.slice(-MAX_POINTER_SEGMENTS) : segments
  const out = kept.map((s) => safeSegment(s.replace(/~1/g, '/').replace(/~0/g, '~')))
  return '/' + (kept.length < segments.length ? [ELIDED, ...out] : out).join('/')
}

/** `container` with some keys renamed, in place and in the same order (once per container, whatever the number of keys) */
function renameKeys (container: Record<string, unknown>, renames: ReadonlyMap<string, string>): void {
  const entries = Object.entries(container)
  for (const [k] of entries) delete container[k]
  // defineProperty: a key such as "__proto__" stays an own property, as JSON.parse made it
  for (const [k, v] of entries) Object.defineProperty(container, renames.get(k) ?? k, { value: v, writable: true, enumerable: true, configurable: true })
}

/** how deep mayHoldPii follows nested containers before it leaves the payload to scanJson (which keeps its own stack) */
const QUICK_DEPTH = 32

/**
 * Whether scanJson could find anything in `data`: the same strings looked at (keys,
 * and values of MIN_LENGTH or more outside the skipped x-pii values), with no path
 * recorded and nothing allocated. Every message of a topic with detection on passes
 * here, and almost none holds anything: those cost one walk. Past QUICK_DEPTH it
 * answers true (never a miss: scanJson then walks it all); recursion stays shallow.
 */
export function mayHoldPii (data: unknown, skip?: SkipMap): boolean {
  // a bare string payload is looked at whatever its length, as scanJson does
  if (typeof data === 'string') return findPii(data, 1).length > 0
  if (data === null || typeof data !== 'object') return false
  return containerMayHold(data, skip, 0)
}

/**
 * Object keys findPii found nothing in, so the quick walk need not scan them
 * again: a topic's payloads repeat their keys ("temperature", "battery"), and a
 * Set lookup is cheaper than a scan. The answer depends on the string alone, so
 * a hit is exact. Keys only: values are where free text (a name, an address the
 * detector does not know) sits, and the process should not keep those. Bounded
 * in entries and in the length of what is kept; full, it starts over (payloads
 * of ever-new keys only cost the insert).
 */
const CLEAN_MAX_LENGTH = 64
const CLEAN_MAX_ENTRIES = 4096
const cleanKeys = new Set<string>()

function keyMayHold (key: string): boolean {
  if (key.length < MIN_LENGTH) return false
  if (key.length > CLEAN_MAX_LENGTH) return findPii(key, 1).length > 0
  if (cleanKeys.has(key)) return false
  if (findPii(key, 1).length > 0) return true
  if (cleanKeys.size >= CLEAN_MAX_ENTRIES) cleanKeys.clear()
  cleanKeys.add(key)
  return false
}

function containerMayHold (container: object, skip: SkipMap | undefined, depth: number): boolean {
  if (depth >= QUICK_DEPTH) return true
  const skipped = skip?.get(container)
  if (Array.isArray(container)) {
    for (let i = 0; i < container.length; i++) {
      if (skipped?.has(i) === true) continue
      if (valueMayHold(container[i], skip, depth)) return true
    }
    return false
  }
  const record = container as Record<string, unknown>
  // for-in over a parsed JSON object: its own keys (nothing enumerable is inherited), no array allocated
  for (const key in record) {
    if (keyMayHold(key)) return true
    if (skipped?.has(key) === true) continue
    if (valueMayHold(record[key], skip, depth)) return true
  }
  return false
}

function valueMayHold (value: unknown, skip: SkipMap | undefined, depth: number): boolean {
  if (typeof value === 'string') return value.length >= MIN_LENGTH && findPii(value, 1).length > 0
  return value !== null && typeof value === 'object' && containerMayHold(value, skip, depth + 1)
}

/**
 * One walk over a parsed JSON value's string leaves (object values and array
 * items) and object keys, with an explicit stack. Per string, one pass of
 * findPii; one finding recorded per leaf (or key) and kind. Keys are scanned
 * because free-form maps (telemetry `values`, state `details`) are keyed by
 * whatever the firmware chose, a user's e-mail address included; a key finding
 * is written with the key as '*'. Redacting renames such a key (its kinds in
 * brackets), unless its value is x-pii (the schema's mapping, which may match
 * keys by pattern, decides that value's treatment: renaming could take it out)
 * or the new name is taken: then `unredactable`. Returns the value (the same
 * one, modified in place when redacting; a new string for a bare string).
 * Allocates nothing per leaf when nothing is found: this runs on every payload.
 */
export function scanJson (data: unknown, opts: ScanOptions): ScanResult & { readonly value: unknown } {
  const findings: JsonFinding[] = []
  if (typeof data === 'string') {
    const found = findPii(data, opts.redact ? Infinity : opts.limit)
    for (const kind of kindsOf(found)) if (findings.length < opts.limit) findings.push({ path: '', kind })
    return { findings, redacted: opts.redact && found.length > 0 ? 1 : 0, value: opts.redact && found.length > 0 ? redactText(data, found) : data }
  }
  if (data === null || typeof data !== 'object') return { findings, redacted: 0, value: data }
  let redacted = 0
  const skip = opts.skip
  const perString = opts.redact ? Infinity : opts.limit
  // parallel stacks: a container and the path to it
  const containers: object[] = [data]
  const links: PathLink[] = [DOC]
  while (containers.length > 0) {
    const container = containers.pop() as Record<string | number, unknown>
    const link = links.pop()!
    const skipped = skip?.get(container)
    const isArray = Array.isArray(container)
    const keys: ReadonlyArray<string | number> | null = isArray ? null : Object.keys(container)
    const count = isArray ? (container as unknown as unknown[]).length : keys!.length
    /** redacting: the keys of this container to rename once its walk is done (old → new) */
    let renames: Map<string, string> | null = null
    /** the new names: two keys must not become one */
    let renamedTo: Set<string> | null = null
    for (let k = 0; k < count; k++) {
      const key = isArray ? k : keys![k]!
      /** the key under which the value will be found once renamed (the pointers of what is below it) */
      let name = key
      if (typeof key === 'string' && key.length >= MIN_LENGTH) {
        const keyFound = findPii(key, perString)
        if (keyFound.length > 0) {
          if (findings.length < opts.limit) {
            const path = pointer(link, key)
            for (const kind of kindsOf(keyFound)) if (findings.length < opts.limit) findings.push({ path, kind })
          }
          if (opts.redact) {
            const renamed = redactText(key, keyFound)
            if (skipped?.has(key) === true || Object.prototype.hasOwnProperty.call(container, renamed) || renamedTo?.has(renamed) === true) {
              return { findings, redacted, value: data, unredactable: pointer(link, key) }
            }
            (renames ??= new Map()).set(key, renamed)
            ;(renamedTo ??= new Set()).add(renamed)
            name = renamed
            redacted++
          } else if (findings.length >= opts.limit) {
            return { findings, redacted, value: data }
          }
        }
      }
      const value = container[key]
      if (typeof value === 'string') {
        if (value.length < MIN_LENGTH || skipped?.has(key)) continue
        const found = findPii(value, perString)
        if (found.length === 0) continue
        if (findings.length < opts.limit) {
          const path = pointer(link, name)
          for (const kind of kindsOf(found)) if (findings.length < opts.limit) findings.push({ path, kind })
        }
        if (opts.redact) {
          container[key] = redactText(value, found)
          redacted++
        } else if (findings.length >= opts.limit) {
          return { findings, redacted, value: data }
        }
      } else if (value !== null && typeof value === 'object' && !skipped?.has(key)) {
        containers.push(value)
        links.push({ parent: link, key: name })
      }
    }
    if (renames !== null) renameKeys(container as Record<string, unknown>, renames)
  }
  return { findings, redacted, value: data }
}

function kindsOf (found: readonly PiiFinding[]): PiiKind[] {
  const kinds: PiiKind[] = []
  for (const f of found) if (!kinds.includes(f.kind)) kinds.push(f.kind)
  return kinds
}
