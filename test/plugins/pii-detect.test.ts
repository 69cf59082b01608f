/**
 * Inline detection of personal data (broker/pii-detect.ts): a table of public
 * test vectors that must be found (card numbers networks publish for testing,
 * the IBAN registry's examples, e-mail addresses, phone numbers in the formats
 * of several countries) and of look-alikes that must not (Luhn failures,
 * timestamps, serials, IMEIs, versions, coordinates, addresses, dates); the
 * JSON walk (x-pii values skipped, pointers, redaction in place); and the
 * linear bound, counted in character reads on adversarial 64 KiB strings
 * rather than timed.
 */
import t from 'tap'
import { findPii, mayHoldPii, redactText, scanJson, type PiiKind } from '../../broker/pii-detect.js'

const POSITIVES: Array<[string, PiiKind]> = [
  // e-mail
  ['mail jane.doe@example.com', 'email'],
  ['John.Smith+tag@sub.example.co.uk', 'email'],
  ['<admin@example.org>', 'email'],
  ['write to user_name%x@exa-mple.io.', 'email'],
  ['mailto:o.reilly@example.net?subject=x', 'email'],
  // phone, international
  ['+44 20 7946 0958', 'phone'],
  ['+1 (415) 555-2671', 'phone'],
  ['+14155552671', 'phone'],
  ['tel:+33 6 12 34 56 78', 'phone'],
  ['+49 30 1234567', 'phone'],
  ['+44 (0)20 7946 0958', 'phone'],
  ['+81-3-1234-5678', 'phone'],
  // phone, national
  ['020 7946 0958', 'phone'],
  ['06 12 34 56 78', 'phone'],
  ['01.23.45.67.89', 'phone'],
  ['(415) 555-2671', 'phone'],
  ['415.555.2671', 'phone'],
  ['1-800-555-0199', 'phone'],
  ['030/1234567', 'phone'],
  ['call 07700 900123 now', 'phone'],
  ['(030) 1234567', 'phone'],
  // payment cards (network test numbers)
  ['4111 1111 1111 1111', 'card'],
  ['5555 5555 5555 4444', 'card'],
  ['378282246310005', 'card'],
  ['3782 822463 10005', 'card'],
  ['4012-8888-8888-1881', 'card'],
  ['6011111111111117', 'card'],
  ['3530111333300000', 'card'],
  ['30569309025904', 'card'],
  ['38520000023237', 'card'],
  ['2223003122003222', 'card'],
  ['5105105105105100', 'card'],
  ['4222222222222', 'card'],
  ['6200000000000005', 'card'],
  ['paid with 4111111111111111.', 'card'],
  // IBAN (registry examples)
  ['GB82 WEST 1234 5698 7654 32', 'iban'],
  ['DE89 3704 0044 0532 0130 00', 'iban'],
  ['DE89370400440532013000', 'iban'],
  ['FR14 2004 1010 0505 0001 3M02 606', 'iban'],
  ['NL91ABNA0417164300', 'iban'],
  ['BE68 5390 0754 7034', 'iban'],
  ['CH93 0076 2011 6238 5295 7', 'iban'],
  ['NO9386011117947', 'iban'],
  ['IBAN: ES91 2100 0418 4502 0005 1332.', 'iban'],
  ['IT60 X054 2811 1010 0000 0123 456', 'iban'],
  ['PL61 1090 1014 0000 0712 1981 2874', 'iban']
]

const NEGATIVES: string[] = [
  // Luhn failures and non-card digit strings
  '4111 1111 1111 1112',
  '5555555555554445',
  '378282246310006',
  '4111111111111111111111',
  '1763769600000', // epoch ms (Luhn-valid, but no card network starts with 1)
  '1763769600', // epoch s
  '1763769600000000000', // epoch ns
  '356938035643809', // IMEI (Luhn-valid)
  '490154203237518', // IMEI (Luhn-valid)
  // serials and identifiers
  '0123456789', // a 10-digit serial without separators
  'SN-0201-234-567',
  'ABCD1234EFGH5678',
  '550e8400-e29b-41d4-a716-446655440000',
  '00:1A:2B:3C:4D:5E',
  'sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08',
  // times and dates
  '2025-11-22T10:30:00Z',
  '2025-11-22 10:30:00',
  '22.11.2025',
  // versions, addresses, numbers
  'v1.4.2',
  '1.4.2',
  '10.0.19045.3570',
  '192.168.100.200',
  '0.000123456789',
  '12 345 678 901',
  '1.5e+10',
  '+5 degrees',
  '123-456-7890', // NANP area codes do not start with 1
  // coordinates
  '48.858844, 2.294351',
  '-33.8688,151.2093',
  '-0.127758 51.507351',
  // e-mail look-alikes
  'user@localhost',
  '@mention me',
  'a@b',
  'name@example.c',
  'x@1.2.3.4',
  // IBAN look-alikes
  'GB82 WEST 1234 5698 7654 33', // checksum
  'DE89 3704 0044 0532 0130 0', // length
  'DE00 3704 0044 0532 0130 00', // check digits 00
  'XY12'
]

t.test('public test vectors: every positive found, with its kind', async (t) => {
  t.ok(POSITIVES.length >= 20 && NEGATIVES.length >= 20, `${POSITIVES.length} positives, ${NEGATIVES.length} negatives`)
  for (const [text, kind] of POSITIVES) {
    const found = findPii(text)
    t.same(found.map((f) => f.kind), [kind], `${kind}: ${text}`)
  }
})

t.test('look-alikes: nothing found', async (t) => {
  for (const text of NEGATIVES) t.same(findPii(text), [], `not personal: ${text}`)
})

t.test('spans and redaction: the match is replaced by its kind, the rest kept', async (t) => {
  const text = 'mail jane.doe@example.com or +44 20 7946 0958, card 4111 1111 1111 1111, IBAN DE89 3704 0044 0532 0130 00.'
  const found = findPii(text)
  t.same(found.map((f) => [f.kind, text.slice(f.start, f.end)]), [
    ['email', 'jane.doe@example.com'],
    ['phone', '+44 20 7946 0958'],
    ['card', '4111 1111 1111 1111'],
    ['iban', 'DE89 3704 0044 0532 0130 00']
  ])
  t.equal(redactText(text, found), 'mail [email] or [phone], card [card], IBAN [iban].')
  t.same(findPii(text, 1).length, 1, 'a limit stops the scan')
  t.same(findPii('a@b.c'), [], 'shorter than the shortest finding: not looked at')
  const glued = '4111111111111111%x@example.com'
  t.same(findPii(glued).map((f) => [f.kind, f.start, f.end]), [['email', 0, glued.length]], 'an address whose local part takes in a card number: one span, nothing left over')
  t.equal(redactText(glued, findPii(glued)), '[email]')
})

t.test('JSON: string leaves and keys, x-pii values skipped, pointers, redaction in place', async (t) => {
  const data = {
    ts: 1763769600000,
    owner: 'jane.doe@example.com', // x-pii: skipped
    contact: { mail: 'jane.doe@example.com' }, // an x-pii object: skipped whole
    values: { note: 'mail jane.doe@example.com', 'a/b~c': 'call 020 7946 0958', serial: '0123456789', n: 4111111111111111 },
    list: ['fine', { card: '4111-1111-1111-1111' }],
    'jane@example.com': 'key is personal: 5555 5555 5555 4444'
  }
  const skip = new Map<object, Set<string | number>>([[data, new Set(['owner', 'contact'])]])
  const flagged = scanJson(data, { skip, redact: false, limit: 8 })
  t.same(flagged.findings.map((f) => `${f.path} ${f.kind}`).sort(), [
    '/* card',
    '/* email',
    '/list/1/card card',
    '/values/a~1b~0c phone',
    '/values/note email'
  ], 'one finding per leaf (and key) and kind; a key that is itself personal data is written *')
  t.equal(flagged.redacted, 0)
  t.equal(data.values.note, 'mail jane.doe@example.com', 'flag changes nothing')

  const limited = scanJson(data, { skip, redact: false, limit: 1 })
  t.equal(limited.findings.length, 1, 'the limit bounds the findings (reject needs one)')

  const redacted = scanJson(data, { skip, redact: true, limit: 8 })
  t.equal(redacted.redacted, 5, 'four values and one key')
  t.same(Object.keys(data), ['ts', 'owner', 'contact', 'values', 'list', '[email]'], 'the key renamed in place, in its place')
  t.equal((data as Record<string, unknown>)['[email]'], 'key is personal: [card]')
  t.equal(redacted.value, data, 'the same value, changed in place')
  t.same(data.values, { note: 'mail [email]', 'a/b~c': 'call [phone]', serial: '0123456789', n: 4111111111111111 })
  t.same(data.list, ['fine', { card: '[card]' }])
  t.equal(data.owner, 'jane.doe@example.com', 'the x-pii value is left to its treatment')

  const bare = scanJson('write to jane@example.com', { redact: true, limit: 8 })
  t.same(bare.findings, [{ path: '', kind: 'email' }], 'a bare string payload: the pointer to the whole document')
  t.equal(bare.value, 'write to [email]')
})

/** a string-like whose charCodeAt counts: the scanners read characters only through it */
function counted (text: string): { reads: number, length: number, charCodeAt (i: number): number } {
  const box = {
    reads: 0,
    length: text.length,
    charCodeAt (i: number): number {
      box.reads++
      return text.charCodeAt(i)
    }
  }
  return box
}

const ADVERSARIAL: Record<string, (n: number) => string> = {
  'at signs': (n) => '@'.repeat(n),
  'local parts and at signs': (n) => ('a'.repeat(60) + '@').repeat(Math.ceil(n / 61)).slice(0, n),
  'a long local part': (n) => 'a.'.repeat(n / 2 - 1) + '@x',
  'long domains': (n) => ('@' + 'a-b.'.repeat(70)).repeat(Math.ceil(n / 281)).slice(0, n),
  'dotted labels': (n) => 'x@x.'.repeat(n / 4),
  'digits and spaces': (n) => '1 '.repeat(n / 2),
  'plus groups': (n) => '+1 '.repeat(Math.ceil(n / 3)).slice(0, n),
  'parentheses': (n) => '('.repeat(n),
  'paren groups': (n) => '(1)'.repeat(Math.ceil(n / 3)).slice(0, n),
  'IBAN-like groups': (n) => 'AB12 '.repeat(n / 5 + 1).slice(0, n),
  'GB IBAN-like groups': (n) => 'GB82 '.repeat(n / 5 + 1).slice(0, n),
  'one long digit run': (n) => '4'.repeat(n),
  'dash-joined digits': (n) => '0-'.repeat(n / 2),
  'mixed': (n) => 'a@b.co +44 (0)20 7946 0958 4111 1111 1111 1111 GB82 WEST '.repeat(Math.ceil(n / 58)).slice(0, n)
}

t.test('linear by construction: character reads per input character stay bounded on adversarial 64 KiB strings', async (t) => {
  const big = 64 * 1024
  const small = 4 * 1024
  for (const [name, make] of Object.entries(ADVERSARIAL)) {
    const large = counted(make(big))
    findPii(large as unknown as string)
    const little = counted(make(small))
    findPii(little as unknown as string)
    const perChar = large.reads / large.length
    t.ok(perChar <= 16, `${name}: ${perChar.toFixed(2)} reads per character (bound 16)`)
    // 16 times the input, about 16 times the reads: not quadratic
    const ratio = large.reads / little.reads
    t.ok(ratio < 16 * 1.25, `${name}: reads grow ${ratio.toFixed(1)}x for 16x the input`)
  }
})

t.test('mayHoldPii: false exactly when scanJson finds nothing (the quick walk never misses)', async (t) => {
  // the JSON test's document, its parts, and generated ones mixing every positive and negative string
  const strings = [...POSITIVES.map(([text]) => text), ...NEGATIVES, 'fine', 'closed', '1.4.2', '']
  let seed = 7
  const rand = (n: number): number => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed % n }
  function generate (depth: number): unknown {
    const pick = rand(depth > 3 ? 3 : 6)
    if (pick === 0) return strings[rand(strings.length)]
    if (pick === 1) return rand(1_000_000_000) * 1000
    if (pick === 2) return rand(2) === 0 ? null : true
    if (pick === 3) return Array.from({ length: rand(4) }, () => generate(depth + 1))
    const o: Record<string, unknown> = {}
    for (let i = rand(4); i > 0; i--) o[rand(5) === 0 ? strings[rand(strings.length)]! : `k${rand(100)}`] = generate(depth + 1)
    return o
  }
  let positives = 0
  for (let i = 0; i < 3000; i++) {
    const data = generate(0)
    // skip one key of the root now and then, as the x-pii map does
    const keys = data !== null && typeof data === 'object' && !Array.isArray(data) ? Object.keys(data) : []
    const skip = keys.length > 0 && rand(2) === 0 ? new Map<object, Set<string | number>>([[data as object, new Set([keys[0]!])]]) : undefined
    const found = scanJson(data, { skip, redact: false, limit: 8 }).findings.length > 0
    if (found) positives++
    if (mayHoldPii(data, skip) !== found) {
      t.fail(`disagrees with scanJson on ${JSON.stringify(data)}`)
      return
    }
  }
  t.ok(positives > 300 && positives < 2700, `both answers exercised (${positives} of 3000 hold something)`)
  // deeper than the quick walk follows: it answers true, never a miss
  let deep: unknown = { note: 'fine' }
  for (let i = 0; i < 100; i++) deep = { d: deep }
  t.equal(mayHoldPii(deep), true, 'past its depth it leaves the answer to scanJson')
  t.equal(scanJson(deep, { redact: false, limit: 8 }).findings.length, 0)
  t.equal(mayHoldPii('a@b.co'), findPii('a@b.co').length > 0, 'a bare string: as scanJson, whatever its length')
})

t.test('mayHoldPii remembers clean keys, bounded: past the bound it starts over and still misses nothing', async (t) => {
  // more distinct clean keys than the memory holds (4,096), twice over
  for (let round = 0; round < 2; round++) {
    for (let i = 0; i < 5000; i++) {
      const o = { [`reading-${i}`]: `state-${i}`, note: 'closed' }
      if (mayHoldPii(o)) {
        t.fail(`a clean payload judged otherwise: ${JSON.stringify(o)}`)
        return
      }
    }
  }
  // the same keys, now with personal data in a value and in a key: found whatever was remembered
  t.equal(mayHoldPii({ 'reading-1': 'jane.roe@example.org', note: 'closed' }), true, 'an e-mail address in a value')
  t.equal(mayHoldPii({ 'jane.roe@example.org': 'state-1', note: 'closed' }), true, 'an e-mail address as a key')
  t.equal(mayHoldPii({ note: '4111 1111 1111 1111' }), true, 'a card number where a clean value stood')
  // a long string (past the remembered length) is scanned every time
  const long = `${'x'.repeat(100)} jane.roe@example.org`
  t.equal(mayHoldPii({ note: 'x'.repeat(120) }), false)
  t.equal(mayHoldPii({ note: long }), true, 'a long value')
})
