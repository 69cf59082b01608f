/**
 * The personal-data map (plugins/pii-map.ts): x-pii found wherever it sits in a
 * schema, nothing extra, and a walk that neither recurses on the call stack nor
 * loops on a recursive schema.
 */
import t from 'tap'
import { compilePiiMap, maskBeneathPersonal, visitPersonalData, type PiiMap } from '../../plugins/pii-map.js'

const PII = { type: 'string', 'x-pii': true }

/** the JSON-pointer paths of every personal value found */
function found (map: PiiMap | null, data: unknown): string[] {
  if (map === null) return []
  const paths: string[] = []
  // a path per container: the walk does not give one, so find containers by identity
  const where = new Map<object, string>()
  ;(function index (v: unknown, path: string) {
    if (v === null || typeof v !== 'object') return
    where.set(v, path)
    for (const [k, c] of Object.entries(v)) index(c, `${path}/${k}`)
  })(data, '')
  visitPersonalData(map, data, (container, key) => { paths.push(`${where.get(container)}/${key}`) })
  return paths.sort()
}

t.test('no x-pii anywhere: no map at all (the topic costs nothing)', async (t) => {
  t.equal(compilePiiMap({ type: 'object', properties: { a: { type: 'string' }, b: { type: 'array', items: { type: 'object' } } } }), null)
  t.equal(compilePiiMap({ $defs: { p: PII }, type: 'object', properties: { a: { type: 'string' } } }), null, 'an unused definition marks nothing')
  t.equal(compilePiiMap(true), null)
})

t.test('top level and nested objects', async (t) => {
  const map = compilePiiMap({ type: 'object', properties: { owner: PII, ts: { type: 'integer' }, site: { type: 'object', properties: { contact: PII, room: { type: 'string' } } } } })
  t.same(found(map, { owner: 'Jane', ts: 1, site: { contact: 'x@y', room: '4' } }), ['/owner', '/site/contact'])
  t.same(found(map, { ts: 1, site: 'not an object' }), [], 'absent or differently shaped: nothing')
})

t.test('a marked object or array is personal as a whole, nothing beneath it visited twice', async (t) => {
  const map = compilePiiMap({ type: 'object', properties: { person: { type: 'object', 'x-pii': true, properties: { name: PII } } } })
  t.same(found(map, { person: { name: 'Jane', age: 3 } }), ['/person'])
})

t.test('array items: items, prefixItems, draft-07 tuples, additionalItems, contains', async (t) => {
  const items = compilePiiMap({ type: 'object', properties: { people: { type: 'array', items: { type: 'object', properties: { name: PII, role: { type: 'string' } } } } } })
  t.same(found(items, { people: [{ name: 'a', role: 'x' }, { role: 'y' }, { name: 'c' }] }), ['/people/0/name', '/people/2/name'])
  const tuple = compilePiiMap({ type: 'array', prefixItems: [{ type: 'integer' }, PII], items: { type: 'number' } })
  t.same(found(tuple, [1, 'Jane', 3, 4]), ['/1'])
  const restPii = compilePiiMap({ type: 'array', prefixItems: [{ type: 'integer' }], items: PII })
  t.same(found(restPii, [1, 'a', 'b']), ['/1', '/2'])
  const draft7 = compilePiiMap({ type: 'array', items: [{ type: 'integer' }, { type: 'string' }], additionalItems: PII })
  t.same(found(draft7, [1, 'x', 'p1', 'p2']), ['/2', '/3'])
  const contains = compilePiiMap({ type: 'array', contains: PII })
  t.same(found(contains, ['a', 'b']), ['/0', '/1'], 'contains: any item may be the one, so every item is treated as personal')
})

t.test('additionalProperties and patternProperties (a key a pattern takes is not additional)', async (t) => {
  const additional = compilePiiMap({ type: 'object', properties: { ts: { type: 'integer' } }, additionalProperties: PII })
  t.same(found(additional, { ts: 1, a: 'x', b: 'y' }), ['/a', '/b'])
  const patterns = compilePiiMap({
    type: 'object',
    properties: { ts: { type: 'integer' } },
    patternProperties: { '^contact_': PII, '^meta_': { type: 'string' } },
    additionalProperties: { type: 'object', properties: { email: PII } }
  })
  t.same(found(patterns, { ts: 1, contact_1: 'a', meta_x: 'b', other: { email: 'e', n: 1 } }), ['/contact_1', '/other/email'])
  const twoPatterns = compilePiiMap({ type: 'object', patternProperties: { '^a': PII, '^ab': { type: 'object', properties: { x: PII } } } })
  t.same(found(twoPatterns, { abc: { x: 1 } }), ['/abc'], 'two patterns into one value: the outer mark wins, visited once')
})

t.test('combinators: allOf, anyOf, oneOf, if/then/else: any branch marks', async (t) => {
  const map = compilePiiMap({
    type: 'object',
    allOf: [{ properties: { a: PII } }],
    anyOf: [{ properties: { b: PII } }, { properties: { b: { type: 'string' } } }],
    oneOf: [{ properties: { c: { type: 'object', properties: { d: PII } } } }, { required: ['z'] }],
    if: { properties: { kind: { const: 'person' } } },
    then: { properties: { e: PII } },
    else: { properties: { f: PII } },
    properties: { g: { type: 'string' } }
  })
  t.same(found(map, { a: 1, b: 2, c: { d: 3, x: 4 }, e: 5, f: 6, g: 7, kind: 'person' }), ['/a', '/b', '/c/d', '/e', '/f'])
  // a key one branch declares and another leaves to additionalProperties: both apply
  const mixed = compilePiiMap({ anyOf: [{ properties: { k: { type: 'string' } } }, { additionalProperties: PII }] })
  t.same(found(mixed, { k: 'v', j: 'w' }), ['/j', '/k'])
})

t.test('$ref: #/$defs, #/definitions, #, and a recursive schema', async (t) => {
  const map = compilePiiMap({
    type: 'object',
    $defs: { person: { type: 'object', properties: { name: PII, age: { type: 'integer' } } } },
    definitions: { email: PII },
    properties: {
      owner: { $ref: '#/$defs/person' },
      contacts: { type: 'array', items: { $ref: '#/definitions/email' } },
      plain: { type: 'string' }
    }
  })
  t.same(found(map, { owner: { name: 'Jane', age: 3 }, contacts: ['a@b', 'c@d'], plain: 'p' }), ['/contacts/0', '/contacts/1', '/owner/name'])

  const tree = compilePiiMap({
    $defs: { node: { type: 'object', properties: { label: PII, children: { type: 'array', items: { $ref: '#/$defs/node' } } } } },
    $ref: '#/$defs/node'
  })
  t.same(found(tree, { label: 'root', children: [{ label: 'a', children: [{ label: 'b', children: [] }] }, { children: [] }] }),
    ['/children/0/children/0/label', '/children/0/label', '/label'])
  const self = compilePiiMap({ type: 'object', properties: { name: PII, next: { $ref: '#' } } })
  t.same(found(self, { name: 'a', next: { name: 'b', next: { other: 1 } } }), ['/name', '/next/name'])
  const loop = compilePiiMap({ $defs: { a: { $ref: '#/$defs/b' }, b: { $ref: '#/$defs/a', properties: { p: PII } } }, $ref: '#/$defs/a' })
  t.same(found(loop, { p: 1, q: 2 }), ['/p'], 'a $ref cycle on the same value terminates')
  t.throws(() => compilePiiMap({ properties: { a: { $ref: '#/$defs/missing' } } }), /does not resolve/)
  t.throws(() => compilePiiMap({ properties: { a: { $ref: 'other.json' } } }), /outside this schema/)
})

t.test('wide and deep payloads do not exhaust the call stack', async (t) => {
  const map = compilePiiMap({ type: 'object', properties: { people: { type: 'array', items: { type: 'object', properties: { name: PII } } } } })!
  const people = Array.from({ length: 10_000 }, (_, i) => ({ name: `n${i}`, n: i }))
  let count = 0
  visitPersonalData(map, { people }, (container, key) => { count++; delete (container as Record<string, unknown>)[key as string] })
  t.equal(count, 10_000, 'every item visited')
  t.ok(people.every((p) => !('name' in p)), 'and every value removed')

  const deep = compilePiiMap({ type: 'object', properties: { name: PII, next: { $ref: '#' } } })!
  let data: Record<string, unknown> = { name: 'last' }
  for (let i = 0; i < 20_000; i++) data = { name: `n${i}`, next: data }
  count = 0
  visitPersonalData(deep, data, () => { count++ })
  t.equal(count, 20_001, '20,000 levels of nesting, no stack overflow')
})

t.test('the presence test reads the declared keys that lead to personal data, and only those', async (t) => {
  const map = compilePiiMap({
    type: 'object',
    properties: { ts: { type: 'integer' }, owner: PII, site: { type: 'object', properties: { contact: PII, room: { type: 'string' } } }, values: { type: 'object' } }
  })
  t.ok(map !== null)
  t.same([...map!.liveKeys].sort(), ['owner', 'site'])
  t.same(map!.props.get('ts'), null, 'a declared key with nothing personal beneath stays declared (it still exempts the key)')
  // absent: nothing to visit; present, even inherited-looking names, only own keys count
  t.same(found(map, { ts: 1, values: { owner: 'x' } }), [])
  t.same(found(map, Object.assign(Object.create({ owner: 'inherited' }) as object, { ts: 1 })), [])
  t.same(found(map, { ts: 1, owner: 'Jane Roe' }), ['/owner'])
  t.same(found(map, { site: { contact: 'a@b.example', room: 'B-12' } }), ['/site/contact'])
})

t.test('x-pii that marks the whole payload is refused at start-up: nothing could seal it in place', async (t) => {
  const whole = /marks the whole payload/
  t.throws(() => compilePiiMap({ type: 'string', 'x-pii': true }), whole, 'at the root')
  t.throws(() => compilePiiMap({ allOf: [{ type: 'object' }, { 'x-pii': true }] }), whole, 'through a combinator at the root')
  t.throws(() => compilePiiMap({ anyOf: [{ type: 'object', properties: { a: { type: 'string' } } }, { type: 'string', 'x-pii': true }] }), whole, 'one branch is enough')
  t.throws(() => compilePiiMap({ $defs: { secret: PII }, $ref: '#/$defs/secret' }), whole, 'through a $ref at the root')
  // personal data beneath the root is what the map is for
  t.ok(compilePiiMap({ type: 'array', items: PII }), 'array items at the root are fine: the array is their container')
})

t.test('a declared key that also matches a pattern: both apply, as in the validator', async (t) => {
  const map = compilePiiMap({
    type: 'object',
    properties: { email: { type: 'string' }, '😀': { type: 'string' } },
    patternProperties: { '^\\u{65}mail$': PII, '^.$': PII }
  })
  t.same(found(map, { email: 'secret-value' }), ['/email'], 'the pattern marks a declared key')
  t.same(found(map, { '😀': 'secret-value' }), ['/😀'], 'one astral character is one character (unicode flag, as AJV)')
  t.same(found(map, { other: 'x' }), [])
  // additionalProperties still applies only when neither properties nor a pattern does
  const withAdditional = compilePiiMap({ type: 'object', properties: { a: { type: 'string' } }, additionalProperties: PII })
  t.same(found(withAdditional, { a: 'not personal', b: 'personal' }), ['/b'])
})

t.test('schemas the map cannot follow as the validator does are refused at start-up', async (t) => {
  t.throws(() => compilePiiMap({
    definitions: { p: { type: 'object' } },
    type: 'object',
    properties: { c: { $id: 'inner.json', definitions: { p: { type: 'object', properties: { name: PII } } }, properties: { x: { $ref: '#/definitions/p' } } } }
  }), /nested \$id/, 'a nested $id: $ref would resolve elsewhere than in AJV')
  t.throws(() => compilePiiMap({ type: 'object', propertyNames: { type: 'string', 'x-pii': true }, properties: { a: PII } }), /propertyNames/, 'x-pii on keys cannot be enforced')
  t.ok(compilePiiMap({ type: 'object', properties: { $id: { type: 'string' }, owner: PII } }), 'a payload property named $id is just a name')
})

t.test('an error path beneath a personal value names none of its contents', async (t) => {
  const map = compilePiiMap({
    type: 'object',
    properties: {
      guests: { type: 'object', 'x-pii': true, additionalProperties: { type: 'string' } },
      list: { type: 'array', items: { type: 'object', properties: { name: PII, tags: { type: 'object' } } } },
      plain: { type: 'object' }
    },
    patternProperties: { '^p-': { type: 'object', properties: { who: { type: 'object', 'x-pii': true } } } }
  })
  t.equal(maskBeneathPersonal(map, '/guests/Jane Roe'), '/guests/*')
  t.equal(maskBeneathPersonal(map, '/guests/Jane Roe/deeper'), '/guests/*/*')
  t.equal(maskBeneathPersonal(map, '/guests'), '/guests', 'the personal value\'s own name is the schema\'s')
  t.equal(maskBeneathPersonal(map, '/list/3/name'), '/list/3/name')
  t.equal(maskBeneathPersonal(map, '/list/3/tags/x'), '/list/3/tags/x', 'nothing personal beneath: kept')
  t.equal(maskBeneathPersonal(map, '/p-1/who/Jane~1Roe'), '/p-1/who/*', 'through a pattern, escaped segment')
  t.equal(maskBeneathPersonal(map, '/plain/anything'), '/plain/anything')
  t.equal(maskBeneathPersonal(null, '/guests/Jane Roe'), '/guests/Jane Roe', 'no map: nothing is personal')
})

t.test('the start-up refusals follow $refs', async (t) => {
  t.throws(() => compilePiiMap({ definitions: { nm: { type: 'string', 'x-pii': true } }, type: 'object', propertyNames: { $ref: '#/definitions/nm' }, properties: { a: PII } }),
    /propertyNames/, 'x-pii on keys through a $ref')
  t.throws(() => compilePiiMap({
    definitions: {
      a: { $id: 'http://example.com/a', definitions: { b: { $ref: '#/definitions/c' }, c: { type: 'object', properties: { secret: PII } } } },
      c: { type: 'object', properties: { secret: { type: 'number' } } }
    },
    type: 'object',
    properties: { p: { $ref: '#/definitions/a/definitions/b' }, q: PII }
  }), /nested \$id/, 'a $ref that passes through a nested $id')
  t.ok(compilePiiMap({ definitions: { $id: { type: 'object', properties: { n: PII } } }, type: 'object', properties: { x: { $ref: '#/definitions/$id' } } }),
    'a definition named $id is a name, not an $id')
})
