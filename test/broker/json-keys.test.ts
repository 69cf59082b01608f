/**
 * Duplicate member names (broker/json-keys.ts): counted in the text and in the
 * parsed value, equal exactly when no object repeats a name, whatever strings,
 * escapes, whitespace and nesting the payload holds.
 */
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { hasDuplicateMemberNames, memberNamesInText, memberNamesInValue } from '../../broker/json-keys.js'
import { validatePayload } from '../../plugins/validation.js'
import { loadSchemaCatalogue } from '../../plugins/schema-catalogue.js'

const dup = (text: string): boolean => hasDuplicateMemberNames(Buffer.from(text), JSON.parse(text))

t.test('names are counted in the text and in the value alike', async (t) => {
  const cases: Array<[string, number]> = [
    ['{}', 0],
    ['[]', 0],
    ['"a:b"', 0],
    ['42', 0],
    ['{"a":1}', 1],
    ['{ "a" \t\r\n : 1 , "b":{"c":[{"d":null},{"e":"f"}]}}', 5],
    // strings that look like members: a quote, a colon and backslashes inside values and names
    ['{"a":"\\"b\\":1","c\\"":"x:y","\\\\":"\\\\\\"","":":"}', 4],
    ['["k", {"k":"v"}, ":", {"":[]}]', 2],
    // multi-byte UTF-8 names and values
    ['{"température":"21 °C","名前":"値"}', 2],
    // __proto__ is an own member of what JSON.parse returns, like any other
    ['{"__proto__":{"x":1},"y":2}', 3]
  ]
  for (const [text, n] of cases) {
    t.equal(memberNamesInText(Buffer.from(text)), n, `text ${text}`)
    t.equal(memberNamesInValue(JSON.parse(text)), n, `value ${text}`)
    t.equal(dup(text), false)
  }
})

t.test('a repeated name is found at any depth, and only in the same object counts as repeated', async (t) => {
  t.ok(dup('{"a":1,"a":2}'))
  t.ok(dup('{"site":{"contact":"jane@example.org"},"site":{}}'), 'the attack: personal data in the first of two')
  t.ok(dup('{"x":[{"n":1},{"n":2,"n":3}]}'), 'inside an array item')
  t.ok(dup('{"a":{"b":{"c":{"d":1,"d":1}}}}'), 'deep, same value twice')
  t.ok(dup('{"__proto__":1,"__proto__":2}'))
  t.ok(dup('{"a\\u0062":1,"ab":2}'), 'the same name spelled with an escape')
  t.notOk(dup('{"a":{"a":{"a":1}},"b":[{"a":1},{"a":2}]}'), 'the same name in different objects is fine')
})

t.test('thousands deep: no recursion, an answer', async (t) => {
  const depth = 20_000
  const deep = '{"a":'.repeat(depth) + '1' + '}'.repeat(depth)
  t.equal(dup(deep), false)
  const deepDup = '{"a":'.repeat(depth) + '{"z":1,"z":2}' + '}'.repeat(depth)
  t.equal(dup(deepDup), true)
})

t.test('a payload that repeats a name is refused as invalid JSON, before the schema is asked', async (t) => {
  const catalogue = loadSchemaCatalogue(fileURLToPath(new URL('../../../schemas/', import.meta.url)))
  const topic = 'devices/sensor-1/telemetry'
  const ok = validatePayload(catalogue, 65_536, topic, Buffer.from('{"ts":1,"values":{"t":21.5}}'))
  t.equal(ok.verdict, 'valid')
  const hidden = validatePayload(catalogue, 65_536, topic, Buffer.from('{"ts":1,"owner":"Jane Roe","values":{"t":21.5},"owner":"x"}'))
  t.match(hidden, { verdict: 'invalid', code: 'InvalidJson', errors: [{ path: '', message: /repeats a member name/ }] })
  t.notOk(JSON.stringify(hidden).includes('Jane'), 'the refusal does not quote the payload')
  const nested = validatePayload(catalogue, 65_536, topic, Buffer.from('{"ts":1,"values":{"note":"jane@example.org"},"values":{"t":1}}'))
  t.match(nested, { verdict: 'invalid', code: 'InvalidJson' })
})

t.test('an enumerable property on Object.prototype changes no answer and cannot loop the walk', async (t) => {
  const proto = Object.prototype as Record<string, unknown>
  proto.polluted = {}
  try {
    t.equal(dup('{"a":1,"a":2}'), true)
    t.equal(dup('{"a":{"b":1}}'), false)
    t.equal(memberNamesInValue(JSON.parse('{"a":{"b":[{"c":1}]}}')), 3)
  } finally {
    delete proto.polluted
  }
})
