/**
 * Attack: a service whose policy has a `#` rule reads `$SYS` (every client id
 * that connects) or writes there.
 * Defence (CONTRACT §4): topics beginning with `$` are reserved for publish,
 * subscribe and delivery whatever the rules say, checked before any plugin
 * (broker/reserved-topics.ts); only the provisioning topics stay open to the
 * roles of §3 (test/e2e/provisioning.test.ts).
 */
import t from 'tap'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import {
  collect, connect, credentials, endClient, publish, registerDevice, startBroker, subscribe, waitFor
} from '../helpers/broker.js'
import { defaultPolicy } from '../../plugins/policy.js'

t.test('a service with a # rule gets nothing of $SYS', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'jitp-sys-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const policyFile = join(dir, 'policy.json')
  // the default rules for devices and claims, and a service allowed everything; no `permissions`
  const rules = [
    ...defaultPolicy({ awsTopics: false }).rules.filter((r) => r.role !== 'service'),
    { name: 'service-everything', role: 'service', actions: ['publish', 'subscribe'], topics: ['#'] }
  ]
  writeFileSync(policyFile, JSON.stringify({ rules }))
  const tb = await startBroker({ store: 'memory', overrides: { POLICY_FILE: policyFile } })
  t.teardown(() => tb.close())

  const spy = await connect(tb, credentials(tb.pki, 'service'), { clientId: 'spy' })
  const got = collect(spy)
  t.same(await subscribe(spy, ['$SYS/#', '$SYS/+/new/clients', '$jitp/#']), [128, 128, 128], 'every `$` filter refused (SUBACK 0x80)')
  t.same(await subscribe(spy, '#'), [1], 'the # rule itself still works')
  const denied = tb.events('subscribe.denied').filter((l) => l.clientId === 'spy')
  t.same(denied.map((l) => [l.topic, l.errorCode]), [['$SYS/#', 'SysTopicReserved'], ['$SYS/+/new/clients', 'SysTopicReserved'], ['$jitp/#', 'ReservedTopic']], 'audited')

  // clients connect (Aedes announces each one on $SYS/<broker>/new/clients)
  const creds = await registerDevice(tb, 'sys-d1')
  const device = await connect(tb, creds, { clientId: 'sys-d1' })
  const other = await connect(tb, credentials(tb.pki, 'service'), { clientId: 'sys-other' })
  await waitFor(() => tb.events('connect.accepted').some((l) => l.clientId === 'sys-other'), 10_000, 'the connects')
  // a barrier: a message published after the connects reaches the spy, so anything of $SYS would have too
  await publish(device, 'devices/sys-d1/telemetry', JSON.stringify({ ts: 1, seq: 1, values: {} }))
  await waitFor(() => got.some((m) => m.topic === 'devices/sys-d1/telemetry'), 10_000, 'the barrier message')
  t.same(got.filter((m) => m.topic.startsWith('$')), [], 'nothing of $SYS delivered')
  t.notOk(got.some((m) => m.payload.includes('sys-other')), 'no client id leaked')

  // publishing: refused and audited, the connection stays (no resend loop)
  const before = got.length
  await publish(spy, '$SYS/x', 'forged')
  await publish(spy, '$jitp/quarantine', 'forged')
  const publishDenied = tb.events('publish.denied').filter((l) => l.clientId === 'spy')
  t.same(publishDenied.map((l) => [l.topic, l.errorCode]), [['$SYS/x', 'SysTopicReserved'], ['$jitp/quarantine', 'ReservedTopic']], 'both audited')
  t.ok(spy.connected, 'the publisher is still connected (the publish was acknowledged and dropped)')
  await publish(device, 'devices/sys-d1/telemetry', JSON.stringify({ ts: 2, seq: 2, values: {} }))
  await waitFor(() => got.filter((m) => m.topic === 'devices/sys-d1/telemetry').length === 2, 10_000, 'the second barrier')
  t.same(got.slice(before).map((m) => m.topic), ['devices/sys-d1/telemetry'], 'the forged $ publishes reached nobody')

  await Promise.all([endClient(spy), endClient(device), endClient(other)])
})
