/**
 * A connect that fails inside an authenticator says why: a POLICY_FILE without
 * `permissions` is valid (none granted); an authenticator that throws while the
 * store answers is an InternalError, and only a store that does not answer is
 * StoreUnavailable (both CONNACK 3, told apart in the audit log).
 */
import t from 'tap'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Redis } from 'ioredis'
import { connect, credentials, endClient, registerDevice, sleep, startBroker } from '../helpers/broker.js'
import { defaultPolicy } from '../../plugins/policy.js'

async function refusalCode (p: Promise<unknown>): Promise<number | string | undefined> {
  try {
    await p
    return 0
  } catch (err) {
    return (err as Error & { code?: number | string }).code
  }
}

t.test('a POLICY_FILE without permissions works', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'jitp-policy-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const policyFile = join(dir, 'policy.json')
  writeFileSync(policyFile, JSON.stringify({ rules: defaultPolicy({ awsTopics: false }).rules }))
  const tb = await startBroker({ store: 'memory', overrides: { POLICY_FILE: policyFile } })
  t.teardown(() => tb.close())
  const service = await connect(tb, credentials(tb.pki, 'service'))
  const device = await connect(tb, await registerDevice(tb, 'perm-d1'), { clientId: 'perm-d1' })
  t.ok(service.connected && device.connected, 'service and device connect')
  t.same(tb.events('connect.refused'), [], 'nothing refused')
  await Promise.all([endClient(service), endClient(device)])
})

t.test('an authenticator that throws is an InternalError; a store that is down is StoreUnavailable', async (t) => {
  const tb = await startBroker({ store: 'redis' })
  t.teardown(() => tb.close())
  const creds = await registerDevice(tb, 'corrupt-d1')
  // a device record the registry cannot parse: getDevice throws while Redis answers
  const raw = new Redis(tb.redis!.url)
  await raw.hset('jitp:device:corrupt-d1', 'attributes', '{not json')
  await raw.quit()

  t.equal(await refusalCode(connect(tb, creds, { clientId: 'corrupt-d1' })), 3, 'CONNACK 3')
  const line = tb.events('connect.refused').find((l) => l.clientId === 'corrupt-d1')
  t.equal(line?.errorCode, 'InternalError', 'audited as InternalError, not as the store being down')

  const healthy = await registerDevice(tb, 'healthy-d1')
  await tb.redis!.kill()
  t.equal(await refusalCode(connect(tb, healthy, { clientId: 'healthy-d1' })), 3, 'CONNACK 3 with Redis down')
  const down = tb.events('connect.refused').find((l) => l.clientId === 'healthy-d1')
  t.equal(down?.errorCode, 'StoreUnavailable', 'audited as StoreUnavailable')
  await tb.redis!.restart()
  // closing while the connections are still reconnecting is another test's subject: wait for ready
  const start = Date.now()
  while (!(await tb.handle.ready()).ready && Date.now() - start < 15_000) await sleep(100)
})
