import t from 'tap'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { loadConfig } from '../../broker/config.js'

t.test('defaults, env coercion and freezing', async (t) => {
  const c = loadConfig({ env: { MQTTS_PORT: '18883', PROVISIONING_AWS_TOPICS: '1', UNRELATED: 'x' } })
  t.equal(c.mqttsPort, 18883)
  t.equal(c.httpPort, 9100)
  t.equal(c.provisioningAwsTopics, true)
  t.equal(c.redisUrl, undefined)
  t.equal(c.tlsSessionTickets, false, 'session tickets are off unless asked for')
  t.equal(loadConfig({ env: { TLS_SESSION_TICKETS: 'on' } }).tlsSessionTickets, true)
  t.ok(Object.isFrozen(c))
})

t.test('a bad value names the key', async (t) => {
  t.throws(() => loadConfig({ env: { MQTTS_PORT: 'abc' } }), /MQTTS_PORT/)
  t.throws(() => loadConfig({ env: { REDIS_URL: 'http://x' } }), /REDIS_URL/)
})

t.test('an unknown key in the config file names the key; env overrides the file', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'cfg-'))
  const bad = join(dir, 'bad.json')
  writeFileSync(bad, JSON.stringify({ MQTTS_PORT: 1, MQTT_PORTT: 2 }))
  t.throws(() => loadConfig({ file: bad, env: {} }), /MQTT_PORTT: unknown configuration key/)
  const good = join(dir, 'good.json')
  writeFileSync(good, JSON.stringify({ MQTTS_PORT: 1000, HTTP_PORT: 1001 }))
  const c = loadConfig({ file: good, env: { HTTP_PORT: '2002' } })
  t.equal(c.mqttsPort, 1000)
  t.equal(c.httpPort, 2002)
  t.throws(() => loadConfig({ file: join(dir, 'missing.json'), env: {} }), /--config/)
})
