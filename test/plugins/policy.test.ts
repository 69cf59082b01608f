import t from 'tap'
import { writeFileSync, mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { compileRules, covers, defaultPolicy, loadPolicy, matches } from '../../plugins/policy.js'
import { checkPublish } from '../../plugins/authorization.js'
import type { Identity } from '../../broker/session.js'

const split = (s: string): string[] => s.split('/')

t.test('matches: MQTT filter semantics', async (t) => {
  t.ok(matches(split('devices/+/telemetry'), split('devices/a/telemetry')))
  t.notOk(matches(split('devices/+/telemetry'), split('devices/a/b/telemetry')))
  t.ok(matches(split('a/#'), split('a/b/c')))
  t.notOk(matches(split('a/b'), split('a/b/c')))
})

t.test('covers: a subscription is granted only inside the rule', async (t) => {
  t.ok(covers(split('devices/d1/commands/+'), split('devices/d1/commands/+')))
  t.ok(covers(split('devices/d1/commands/+'), split('devices/d1/commands/reboot')))
  t.notOk(covers(split('devices/d1/commands/+'), split('devices/+/commands/+')))
  t.notOk(covers(split('devices/d1/commands/+'), split('devices/d1/#')))
  t.notOk(covers(split('devices/d1/config'), split('#')))
  t.ok(covers(split('a/#'), split('a/b/#')))
})

t.test('variables that could act as wildcards void the rule', async (t) => {
  const evil: Identity = { role: 'device', clientId: '+', certificateId: 'x', name: '+', permissions: new Set() }
  const rules = compileRules(defaultPolicy({ awsTopics: false }), evil)
  t.equal(rules.publish.filter((r) => r.levels.includes('+') && r.levels[0] === 'devices').length, 0)
  t.equal(checkPublish(rules, 'devices/other/telemetry', false).verdict, 'deny')
})

t.test('retain is allowed only where the rule says so', async (t) => {
  const d: Identity = { role: 'device', clientId: 'd1', certificateId: 'x', name: 'd1', permissions: new Set() }
  const rules = compileRules(defaultPolicy({ awsTopics: false }), d)
  t.equal(checkPublish(rules, 'devices/d1/state', true).verdict, 'allow')
  t.equal(checkPublish(rules, 'devices/d1/telemetry', true).verdict, 'deny')
  t.equal(checkPublish(rules, 'devices/d1/telemetry', false).verdict, 'allow')
  t.equal(checkPublish(rules, 'devices/d1/config', false).verdict, 'deny', 'only the config store publishes config')
})

t.test('POLICY_FILE is validated', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'policy-'))
  const good = join(dir, 'good.json')
  writeFileSync(good, JSON.stringify({ rules: [{ name: 'r', role: 'device', actions: ['publish'], topics: ['x/${deviceId}'] }] }))
  t.equal(loadPolicy(good, { awsTopics: false }).rules.length, 1)
  t.same(loadPolicy(good, { awsTopics: false }).permissions, {}, 'permissions are optional: none granted')
  const bad = join(dir, 'bad.json')
  writeFileSync(bad, JSON.stringify({ rules: [{ name: 'r', role: 'admin', actions: ['publish'], topics: ['x'] }] }))
  t.throws(() => loadPolicy(bad, { awsTopics: false }), /POLICY_FILE/)
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
