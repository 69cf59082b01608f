import t from 'tap'
import { writeFileSync, mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { compileRules, defaultPolicy, loadPolicy, permissionsFor, type Policy, type PolicyRule } from '../../plugins/policy.js'
import { decideDelivery, decidePublish, decideSubscription } from '../../plugins/authorization.js'
import { coveredByAny, covers, intersect, matches, matchesTopic, scopeOf } from '../../plugins/topic-filters.js'
import type { Identity } from '../../broker/session.js'

const split = (s: string): string[] => s.split('/')
const device = (id: string, quarantined = false): Identity => ({ role: 'device', clientId: id, certificateId: `cert-${id}`, name: id, permissions: new Set(), quarantined })
const service: Identity = { role: 'service', clientId: 'svc', certificateId: 'cert-svc', name: 'svc', permissions: new Set() }

t.test('matches: MQTT filter semantics', async (t) => {
  t.ok(matches(split('devices/+/telemetry'), split('devices/a/telemetry')))
  t.notOk(matches(split('devices/+/telemetry'), split('devices/a/b/telemetry')))
  t.ok(matches(split('a/#'), split('a/b/c')))
  t.ok(matches(split('a/#'), split('a')), '# matches its parent level [MQTT-4.7.1-2]')
  t.notOk(matches(split('a/b'), split('a/b/c')))
})

t.test('matchesTopic answers as matches does, on the unsplit topic', async (t) => {
  const filters = ['a', 'a/b', 'a/+', '+', '+/+', 'a/#', '#', '+/#', 'a/+/c', 'ab/+', 'a/bc', '+/b/#', 'a//c', 'a/+/+']
  const topics = ['a', 'ab', 'a/b', 'a/bc', 'a/b/c', 'a//c', 'a/', '/a', 'b', 'a/b/c/d', 'ab/b', 'a/bcd', '/']
  let wrong = 0
  for (const f of filters) {
    for (const topic of topics) {
      if (matchesTopic(split(f), topic) !== matches(split(f), split(topic))) {
        wrong++
        t.fail(`${f} vs ${topic}`)
      }
    }
  }
  t.equal(wrong, 0, `${filters.length * topics.length} pairs agree`)
})

t.test('covers: one filter inside another', async (t) => {
  t.ok(covers(split('devices/d1/commands/+'), split('devices/d1/commands/+')))
  t.ok(covers(split('devices/d1/commands/+'), split('devices/d1/commands/reboot')))
  t.notOk(covers(split('devices/d1/commands/+'), split('devices/+/commands/+')))
  t.notOk(covers(split('devices/d1/commands/+'), split('devices/d1/#')))
  t.notOk(covers(split('devices/d1/config'), split('#')))
  t.ok(covers(split('a/#'), split('a/b/#')))
})

t.test('intersect and scopeOf', async (t) => {
  t.same(intersect(split('devices/+/#'), split('devices/x/secrets')), split('devices/x/secrets'))
  t.same(intersect(split('a/#'), split('a')), ['a'], '# shares its parent')
  t.same(intersect(split('a/+/c'), split('+/b/#')), split('a/b/c'))
  t.equal(intersect(split('a/b'), split('a/c')), null)
  t.equal(intersect(split('a/b'), split('a/b/c')), null)
  t.same(intersect(split('#'), split('#')), ['#'])
  t.same(scopeOf(split('devices/${deviceId}/config')), split('devices/${deviceId}/#'))
  t.same(scopeOf(split('devices/+/#')), split('devices/+/#'))
  t.same(scopeOf(['alerts']), ['alerts'], 'a one-level rule is its own scope, never the whole tree')
})

t.test('permissionsFor: one sealed set per policy and role, shared by every identity of the role', async (t) => {
  const policy = defaultPolicy({ awsTopics: false })
  const service = permissionsFor(policy, 'service')
  t.ok(service.has('pii'), 'the default policy grants services pii')
  t.equal(permissionsFor(policy, 'service'), service, 'the same set for the next identity: none built per connection')
  t.notOk(permissionsFor(policy, 'device').has('pii'))
  t.not(permissionsFor(defaultPolicy({ awsTopics: false }), 'service'), service, 'another policy object (a reload) gets sets of its own')
  // shared by every connection of the role: a change through a cast would grant or take a permission for all of them
  const mutable = permissionsFor(policy, 'device') as Set<string>
  t.throws(() => mutable.add('pii'), TypeError)
  t.throws(() => (service as Set<string>).delete('pii'), TypeError)
  t.throws(() => (service as Set<string>).clear(), TypeError)
  t.notOk(permissionsFor(policy, 'device').has('pii'), 'the refused add left nothing behind')
  t.ok(permissionsFor(policy, 'service').has('pii'))
})

// an oracle for the union check: every topic over a small alphabet, `c` standing for
// any value no filter names, up to one level longer than the longest filter
function topicsOf (maxLevels: number): string[][] {
  let layer: string[][] = [[]]
  const all: string[][] = []
  for (let n = 1; n <= maxLevels; n++) {
    layer = layer.flatMap((prefix) => ['a', 'b', 'c'].map((v) => [...prefix, v]))
    all.push(...layer)
  }
  return all
}

function randomFilter (rand: () => number): string[] {
  const n = 1 + Math.floor(rand() * 3)
  const out: string[] = []
  for (let i = 0; i < n; i++) out.push(['a', 'b', '+'][Math.floor(rand() * 3)]!)
  if (rand() < 0.3) out.push('#')
  return out
}

function seeded (seed: number): () => number {
  let s = seed
  return () => ((s = (s * 1103515245 + 12345) % 2147483648) / 2147483648)
}

t.test('coveredByAny agrees with brute force on random filters', async (t) => {
  const rand = seeded(7)
  const topics = topicsOf(5)
  let disagreements = 0
  let coveredCases = 0
  for (let round = 0; round < 3000; round++) {
    const filter = randomFilter(rand)
    const filters = Array.from({ length: 1 + Math.floor(rand() * 4) }, () => randomFilter(rand))
    const expected = topics.every((topic) => !matches(filter, topic) || filters.some((f) => matches(f, topic)))
    if (expected) coveredCases++
    if (coveredByAny(filter, filters) !== expected) {
      disagreements++
      if (disagreements < 5) t.fail(`${filter.join('/')} by [${filters.map((f) => f.join('/')).join(', ')}]: expected ${String(expected)}`)
    }
  }
  t.equal(disagreements, 0, 'no disagreement in 3000 cases')
  t.ok(coveredCases > 100, `both answers exercised (${coveredCases} covered)`)
  t.ok(coveredByAny(split('a/#'), [['a'], split('a/+'), split('a/+/+/#')]), 'a union covers where no single filter does')
  t.notOk(coveredByAny(split('a/+'), [split('a/b'), split('a/c')]), 'literals never cover a `+`')
})

t.test('decideSubscription grants exactly the filters within a scope that can match an allowed topic', async (t) => {
  const rand = seeded(11)
  const topics = topicsOf(5)
  let wrong = 0
  let granted = 0
  for (let round = 0; round < 2000; round++) {
    const rules: PolicyRule[] = Array.from({ length: 1 + Math.floor(rand() * 4) }, (_, i) => ({
      name: `r${i}`, role: 'service', effect: rand() < 0.4 ? 'deny' : 'allow', actions: ['subscribe'], topics: [randomFilter(rand).join('/')]
    }))
    const compiled = compileRules({ permissions: {}, rules }, service)
    const filter = randomFilter(rand)
    const firstMatch = (topic: string[]): PolicyRule | undefined => rules.find((r) => matches(split(r.topics[0]!), topic))
    const inScope = rules.some((r) => r.effect !== 'deny' && covers(scopeOf(split(r.topics[0]!)), filter))
    const expected = inScope && topics.some((topic) => matches(filter, topic) && firstMatch(topic)?.effect !== 'deny' && firstMatch(topic) !== undefined)
    if (expected) granted++
    if ((decideSubscription(compiled, filter.join('/')).verdict === 'allow') !== expected) {
      wrong++
      if (wrong < 5) t.fail(`${filter.join('/')} under ${rules.map((r) => `${r.effect ?? 'allow'} ${r.topics[0]!}`).join(', ')}: expected ${String(expected)}`)
    }
    // and every delivery is the first matching rule's answer
    for (const topic of topics.slice(0, 40)) {
      const allowed = decideDelivery(compiled, topic.join('/')).verdict === 'allow'
      if (allowed !== (firstMatch(topic)?.effect === 'allow')) wrong++
    }
  }
  t.equal(wrong, 0, 'no disagreement in 2000 random policies')
  t.ok(granted > 100 && granted < 1900, `both answers exercised (${granted} granted)`)
})

const denyFirst: Policy = {
  permissions: {},
  rules: [
    { name: 'no-secrets', role: 'service', effect: 'deny', actions: ['publish', 'subscribe'], topics: ['devices/+/secrets'] },
    { name: 'all-devices', role: 'service', actions: ['publish', 'subscribe'], topics: ['devices/+/#'] }
  ]
}
const allowFirst: Policy = { permissions: {}, rules: [denyFirst.rules[1]!, denyFirst.rules[0]!] }

t.test('deny rules: the first rule that matches decides, in the order written', async (t) => {
  const d = compileRules(denyFirst, service)
  t.same(decidePublish(d, 'devices/x/secrets', false), { verdict: 'deny', code: 'PublishDenied', rule: 'no-secrets', detail: undefined })
  t.equal(decidePublish(d, 'devices/x/telemetry', false).verdict, 'allow')
  t.equal(decideDelivery(d, 'devices/x/secrets').verdict, 'deny')
  t.equal(decideDelivery(d, 'devices/x/state').verdict, 'allow')
  t.equal(decideSubscription(d, 'devices/+/secrets').verdict, 'deny', 'a filter that only the deny rule answers is refused')
  t.equal(decideSubscription(d, 'devices/x/secrets').verdict, 'deny')
  t.equal(decideSubscription(d, 'devices/+/#').verdict, 'allow', 'a wider filter is granted: delivery filters it')
  t.equal(decideSubscription(d, 'devices/+/+').verdict, 'allow')
  t.equal(decideSubscription(d, 'devices/#').verdict, 'deny', 'reaches `devices` itself, outside the rule\'s scope')
  t.equal(decideSubscription(d, '#').verdict, 'deny')

  const a = compileRules(allowFirst, service)
  t.equal(decidePublish(a, 'devices/x/secrets', false).verdict, 'allow', 'the allow rule written first wins')
  t.equal(decideDelivery(a, 'devices/x/secrets').verdict, 'allow')
  t.equal(decideSubscription(a, 'devices/+/secrets').verdict, 'allow')
})

t.test('nothing matching is a denial; a policy of deny rules grants nothing', async (t) => {
  const onlyDeny: Policy = { permissions: {}, rules: [{ name: 'nope', role: 'service', effect: 'deny', actions: ['subscribe'], topics: ['#'] }] }
  const rules = compileRules(onlyDeny, service)
  t.equal(decideSubscription(rules, 'devices/x/state').verdict, 'deny')
  t.equal(decideDelivery(rules, 'devices/x/state').verdict, 'deny')
  t.equal(decidePublish(rules, 'devices/x/state', false).verdict, 'deny')
})

t.test('default policy: a device subscribes inside its namespace and receives what the rules allow', async (t) => {
  const rules = compileRules(defaultPolicy({ awsTopics: false }), device('d1'))
  for (const filter of ['devices/d1/commands/#', 'devices/d1/#', 'devices/d1/commands/+', 'devices/d1/config', 'devices/d1/+']) {
    t.equal(decideSubscription(rules, filter).verdict, 'allow', `${filter} granted`)
  }
  for (const filter of ['devices/d1/telemetry', 'devices/d1/state', 'devices/d2/#', 'devices/+/commands/+', 'devices/#', '#', '+/d1/#', 'devices/d1/commands']) {
    t.equal(decideSubscription(rules, filter).verdict, 'deny', `${filter} refused`)
  }
  for (const topic of ['devices/d1/config', 'devices/d1/commands/reboot', 'devices/d1/errors']) t.equal(decideDelivery(rules, topic).verdict, 'allow', `receives ${topic}`)
  for (const topic of ['devices/d1/telemetry', 'devices/d1/state', 'devices/d1/config/ack', 'devices/d2/commands/reboot', 'devices/d1/commands/a/b']) {
    t.equal(decideDelivery(rules, topic).verdict, 'deny', `does not receive ${topic}`)
  }
})

t.test('default policy: a service reads every device inside `devices/+/...` but not `#`', async (t) => {
  const rules = compileRules(defaultPolicy({ awsTopics: false }), service)
  t.equal(decideSubscription(rules, 'devices/+/#').verdict, 'allow')
  t.equal(decideSubscription(rules, 'devices/+/commands/+').verdict, 'deny', 'commands are written, not read')
  t.equal(decideSubscription(rules, '#').verdict, 'deny')
  t.equal(decideSubscription(rules, 'devices/#').verdict, 'deny')
  t.equal(decideDelivery(rules, 'devices/x/commands/reboot').verdict, 'deny')
})

t.test('a quarantined device: publish state and config/ack, receive config and errors, nothing else', async (t) => {
  const rules = compileRules(defaultPolicy({ awsTopics: false }), device('q1', true))
  t.equal(decidePublish(rules, 'devices/q1/state', true).verdict, 'allow', 'retained state, as the policy allows it')
  t.equal(decidePublish(rules, 'devices/q1/config/ack', false).verdict, 'allow')
  t.same(decidePublish(rules, 'devices/q1/telemetry', false), { verdict: 'deny', code: 'PublishDenied', rule: 'quarantine', detail: undefined })
  t.equal(decidePublish(rules, 'devices/q1/telemetry/s', false).verdict, 'deny')
  t.equal(decideDelivery(rules, 'devices/q1/config').verdict, 'allow')
  t.equal(decideDelivery(rules, 'devices/q1/errors').verdict, 'allow')
  t.same(decideDelivery(rules, 'devices/q1/commands/reboot'), { verdict: 'deny', code: 'SubscribeDenied', rule: 'quarantine', detail: undefined })
  t.equal(decideSubscription(rules, 'devices/q1/#').verdict, 'allow', 'its namespace, delivering config and errors only')
  t.same(decideSubscription(rules, 'devices/q1/commands/+'), { verdict: 'deny', code: 'SubscribeDenied', rule: 'quarantine', detail: undefined })
  const fenced: Policy = { permissions: {}, rules: [{ name: 'everything', role: 'device', actions: ['publish', 'subscribe'], topics: ['devices/${deviceId}/#'] }] }
  const wide = compileRules(fenced, device('q1', true))
  t.equal(decidePublish(wide, 'devices/q1/state', false).verdict, 'allow', 'a wide rule is cut down to the fence')
  t.equal(decidePublish(wide, 'devices/q1/secrets', false).verdict, 'deny')
  t.equal(decideDelivery(wide, 'devices/q1/commands/x').verdict, 'deny')
  const none: Policy = { permissions: {}, rules: [] }
  t.equal(decidePublish(compileRules(none, device('q1', true)), 'devices/q1/state', false).verdict, 'deny', 'the fence grants nothing the policy does not')
})

t.test('variables that could act as wildcards void the rule', async (t) => {
  const evil: Identity = { role: 'device', clientId: '+', certificateId: 'x', name: '+', permissions: new Set() }
  const rules = compileRules(defaultPolicy({ awsTopics: false }), evil)
  t.equal(rules.publish.filter((r) => r.levels.includes('+') && r.levels[0] === 'devices').length, 0)
  t.equal(decidePublish(rules, 'devices/other/telemetry', false).verdict, 'deny')
  t.equal(decideSubscription(rules, 'devices/other/#').verdict, 'deny')
})

t.test('retain is allowed only where the rule says so', async (t) => {
  const rules = compileRules(defaultPolicy({ awsTopics: false }), device('d1'))
  t.equal(decidePublish(rules, 'devices/d1/state', true).verdict, 'allow')
  t.equal(decidePublish(rules, 'devices/d1/telemetry', true).verdict, 'deny')
  t.equal(decidePublish(rules, 'devices/d1/telemetry', false).verdict, 'allow')
  t.equal(decidePublish(rules, 'devices/d1/config', false).verdict, 'deny', 'only the config store publishes config')
})

t.test('POLICY_FILE is validated', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'policy-'))
  const write = (name: string, rules: unknown[]): string => {
    const file = join(dir, name)
    writeFileSync(file, JSON.stringify({ rules }))
    return file
  }
  const rule = (extra: Partial<Record<keyof PolicyRule, unknown>>): Record<string, unknown> => ({ name: 'r', role: 'device', actions: ['publish'], topics: ['x/${deviceId}'], ...extra })
  const good = write('good.json', [rule({ effect: 'deny' }), rule({ effect: 'allow', retain: true }), rule({})])
  t.same(loadPolicy(good, { awsTopics: false }).rules.map((r) => r.effect), ['deny', 'allow', undefined])
  t.same(loadPolicy(good, { awsTopics: false }).permissions, {}, 'permissions are optional: none granted')
  const bad: Array<[string, Record<string, unknown>, RegExp]> = [
    ['role', rule({ role: 'admin' }), /rules\/0\/role/],
    ['effect', rule({ effect: 'block' }), /rules\/0\/effect/],
    ['deny with retain', rule({ effect: 'deny', retain: true }), /rules\/0\/retain only applies to allow rules/],
    ['# in the middle', rule({ topics: ['a/#/b'] }), /rules\/0\/topics\/0 "a\/#\/b": `#` must be the last level/],
    ['partial wildcard', rule({ topics: ['a/b+'] }), /`\+` and `#` must fill a whole level/],
    ['unknown variable', rule({ topics: ['devices/${deviceID}/x'] }), /unknown variable \$\{deviceID\}/]
  ]
  for (const [what, r, message] of bad) {
    t.throws(() => loadPolicy(write(`${what}.json`, [r]), { awsTopics: false }), { message: /POLICY_FILE/ }, what)
    t.throws(() => loadPolicy(write(`${what}.json`, [r]), { awsTopics: false }), { message }, `${what}: the message names it`)
  }
})

t.test('provisioning request topics', async (t) => {
  const { parseRequestTopic } = await import('../../plugins/provisioning/requests.js')
  t.same(parseRequestTopic('$provision/certificates/create/json', false)?.kind, 'create')
  t.same(parseRequestTopic('$provision/certificates/create-from-csr/json', false)?.kind, 'createFromCsr')
  t.same(parseRequestTopic('$provision/templates/sensor/provision/json', false)?.template, 'sensor')
  t.equal(parseRequestTopic('$aws/certificates/create/json', false), null, '$aws off unless enabled')
  t.same(parseRequestTopic('$aws/provisioning-templates/sensor/provision/json', true), { kind: 'register', topic: '$aws/provisioning-templates/sensor/provision/json', template: 'sensor', aws: true })
  t.equal(parseRequestTopic('$provision/certificates/create/json/accepted', false), null)
  t.equal(parseRequestTopic('$provision/certificates/delete/json', false), null)
})
