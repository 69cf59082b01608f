/**
 * The token listener's pure parts (CONTRACT §10, §3.6): what a token's scopes
 * grant under the policy, the SAS format and its checks, and the enrollment
 * group files. The listener itself is exercised in test/e2e/token-listener.test.ts.
 */
import t from 'tap'
import { createHmac } from 'node:crypto'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Identity } from '../../broker/session.js'
import { decideDelivery, decidePublish, decideSubscription } from '../../plugins/authorization.js'
import { compileRules, defaultPolicy, loadPolicy, tokenGrant } from '../../plugins/policy.js'
import { loadTemplates } from '../../plugins/provisioning/templates.js'
import { loadEnrollmentGroups } from '../../plugins/token/enrollment-groups.js'
import { deriveDeviceKey, parseSas, signSas, verifySas } from '../../plugins/token/sas.js'

const policy = defaultPolicy({ awsTopics: false })

function tokenService (scopes: string[]): Identity {
  const grant = tokenGrant(policy, scopes)
  return { role: 'service', clientId: 'svc', certificateId: null, name: 'svc', permissions: grant.permissions, auth: { method: 'oauth2', expiresAt: Date.now() + 60_000, issuer: 'iss', oauthClientId: undefined, scopes: grant.scopes } }
}

t.test('scopes: a token gets the scoped rules of its scopes only; a certificate gets them all', async (t) => {
  const reader = compileRules(policy, tokenService(['telemetry:read']))
  t.equal(decideSubscription(reader, 'devices/+/telemetry').verdict, 'allow')
  t.equal(decideSubscription(reader, 'devices/+/state').verdict, 'deny', 'no state:read')
  t.equal(decidePublish(reader, 'devices/d1/commands/reboot', false).verdict, 'deny', 'no commands:write')
  t.equal(decideDelivery(reader, 'devices/d1/config').verdict, 'deny')
  const writer = compileRules(policy, tokenService(['commands:write', 'state:read']))
  t.equal(decidePublish(writer, 'devices/d1/commands/reboot', false).verdict, 'allow')
  t.equal(decideSubscription(writer, 'devices/+/state').verdict, 'allow')
  const byCertificate = compileRules(policy, { role: 'service', clientId: 'svc', certificateId: 'c', name: 'svc', permissions: new Set() })
  for (const filter of ['devices/+/telemetry', 'devices/+/state', 'devices/+/config', 'devices/+/errors']) t.equal(decideSubscription(byCertificate, filter).verdict, 'allow', `certificate: ${filter}`)
  t.equal(decidePublish(byCertificate, 'devices/d1/commands/reboot', false).verdict, 'allow')
})

t.test('tokenGrant: known scopes, pii only when granted, refusal when nothing is allowed', async (t) => {
  t.same([...tokenGrant(policy, ['telemetry:read', 'pii', 'admin:all']).scopes].sort(), ['pii', 'telemetry:read'], 'unknown scopes dropped')
  t.same([...tokenGrant(policy, ['telemetry:read', 'pii']).permissions], ['pii'])
  t.same([...tokenGrant(policy, ['telemetry:read']).permissions], [], 'no pii unless the token grants it')
  t.equal(tokenGrant(policy, ['pii']).allowsSomething, false, 'pii alone allows nothing')
  t.equal(tokenGrant(policy, []).allowsSomething, false)
  t.equal(tokenGrant(policy, ['config:read']).allowsSomething, true)
  const none = { ...policy, permissions: {} }
  t.same([...tokenGrant(none, ['telemetry:read', 'pii']).permissions], [], 'a policy that grants services no pii grants no token pii')
})

t.test('POLICY_FILE: scope on a service rule; refused elsewhere', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'jitp-scope-policy-'))
  const good = join(dir, 'good.json')
  writeFileSync(good, JSON.stringify({ rules: [{ name: 'alerts', role: 'service', scope: 'alerts:read', actions: ['subscribe'], topics: ['alerts/#'] }] }))
  const loaded = loadPolicy(good, { awsTopics: false })
  t.equal(loaded.rules[0]!.scope, 'alerts:read')
  t.equal(tokenGrant(loaded, ['alerts:read']).allowsSomething, true, 'a rule can name any scope')
  const bad = join(dir, 'bad.json')
  writeFileSync(bad, JSON.stringify({ rules: [{ name: 'x', role: 'device', scope: 'a:b', actions: ['publish'], topics: ['a'] }] }))
  t.throws(() => loadPolicy(bad, { awsTopics: false }), /scope only applies to service rules/)
  writeFileSync(bad, JSON.stringify({ rules: [{ name: 'x', role: 'service', scope: 'has space', actions: ['publish'], topics: ['a'] }] }))
  t.throws(() => loadPolicy(bad, { awsTopics: false }), /scope/)
})

t.test('SAS: the contract\'s HMAC inputs, and every refusal', async (t) => {
  const groupKey = Buffer.alloc(64, 1)
  const deviceKey = deriveDeviceKey(groupKey, 'reg-1')
  t.same(deviceKey, createHmac('sha256', groupKey).update('reg-1').digest(), 'device key = HMAC-SHA256(group key bytes, registration id)')
  const now = 1_800_000_000_000
  const se = now / 1000 + 300
  const sas = signSas(deviceKey, 'reg-1', se)
  const expectedSig = createHmac('sha256', deviceKey).update(`reg-1\n${se}`).digest('base64')
  t.equal(sas, `SharedAccessSignature sr=reg-1&sig=${encodeURIComponent(expectedSig)}&se=${se}`, 'sig = HMAC-SHA256(device key, registrationId + "\\n" + expiry)')
  const parsed = parseSas(sas)!
  const check = { clientId: 'reg-1', groupKey, nowMs: now, maxSeconds: 600 }
  t.equal(verifySas(parsed, check), null, 'holds')
  t.equal(verifySas(parseSas(`SharedAccessSignature se=${se}&skn=registration&sig=${encodeURIComponent(expectedSig)}&sr=reg-1`)!, check), null, 'any order, skn tolerated')
  t.equal(verifySas(parsed, { ...check, clientId: 'reg-2' }), 'for another registration id')
  t.equal(verifySas(parsed, { ...check, nowMs: (se + 1) * 1000 }), 'expired')
  t.equal(verifySas(parsed, { ...check, maxSeconds: 100 }), 'expiry too far in the future')
  t.equal(verifySas(parseSas(signSas(groupKey, 'reg-1', se))!, check), 'signature does not verify', 'the group key itself does not sign')
  t.equal(verifySas(parseSas(signSas(deriveDeviceKey(groupKey, 'reg-2'), 'reg-1', se))!, check), 'signature does not verify', 'another device\'s key does not sign')
  for (const malformed of ['', 'Bearer x', 'SharedAccessSignature sr=a&sig=AAAA&se=1', `SharedAccessSignature sr=a&sig=${encodeURIComponent(expectedSig)}`, `SharedAccessSignature sr=a&sr=b&sig=${encodeURIComponent(expectedSig)}&se=1`, `SharedAccessSignature sr=a&sig=${encodeURIComponent(expectedSig)}&se=1&x=y`, `SharedAccessSignature sr=%E0%A4%A&sig=${encodeURIComponent(expectedSig)}&se=1`, `SharedAccessSignature sr=a&sig=${encodeURIComponent(expectedSig)}&se=-1`]) {
    t.equal(parseSas(malformed), null, `malformed: ${malformed.slice(0, 40)}`)
  }
})

t.test('enrollment groups: validated at start, the key never in an error or a log', async (t) => {
  const templatesDir = mkdtempSync(join(tmpdir(), 'jitp-group-templates-'))
  const params = { type: 'object' }
  writeFileSync(join(templatesDir, 'ok.json'), JSON.stringify({ parameters: params, deviceId: 'sas-${registrationId}', configuration: {} }))
  writeFileSync(join(templatesDir, 'bare.json'), JSON.stringify({ parameters: params, deviceId: '${registrationId}', configuration: {} }))
  writeFileSync(join(templatesDir, 'serial.json'), JSON.stringify({ parameters: params, deviceId: 'x-${registrationId}-${serial}', configuration: {} }))
  const templates = await loadTemplates(templatesDir)
  const key = Buffer.alloc(32, 4).toString('base64')
  const load = (group: Record<string, unknown>): ReturnType<typeof loadEnrollmentGroups> => {
    const dir = mkdtempSync(join(tmpdir(), 'jitp-groups-'))
    writeFileSync(join(dir, 'g.json'), JSON.stringify(group))
    return loadEnrollmentGroups(dir, templates)
  }
  const groups = load({ name: 'line', groupKey: key, template: 'ok', registrationIdPattern: '^l-[0-9]+$' })
  const line = groups.get('line')!
  t.equal(line.groupKey.toString('base64'), key)
  t.notOk(JSON.stringify(line).includes(key), 'the key is not enumerable: logging a group cannot print it')
  t.ok(line.registrationIdPattern!.test('l-12'))
  t.equal(loadEnrollmentGroups(undefined, templates).size, 0, 'no ENROLLMENT_DIR: no groups')
  const refusals: Array<[string, Record<string, unknown>, RegExp]> = [
    ['short key', { name: 'g', groupKey: Buffer.alloc(16).toString('base64'), template: 'ok' }, /groupKey/],
    ['unknown template', { name: 'g', groupKey: key, template: 'nope' }, /no template 'nope'/],
    ['device id = registration id', { name: 'g', groupKey: key, template: 'bare' }, /fixed text/],
    ['device id from other parameters', { name: 'g', groupKey: key, template: 'serial' }, /registrationId\} alone/],
    ['bad pattern', { name: 'g', groupKey: key, template: 'ok', registrationIdPattern: '(' }, /registrationIdPattern/],
    ['unknown field', { name: 'g', groupKey: key, template: 'ok', extra: 1 }, /additional/]
  ]
  for (const [name, group, message] of refusals) {
    let err: Error | null = null
    try { load(group) } catch (e) { err = e as Error }
    t.match(err?.message, message, name)
    t.notOk(err?.message.includes(key), `${name}: the key is not in the message`)
  }
})
