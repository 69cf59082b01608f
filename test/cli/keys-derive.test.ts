/**
 * `aedes-jitp keys derive` (CONTRACT §3.6), the real command line, offline:
 * the device key a factory writes is base64(HMAC-SHA256(base64decode(groupKey),
 * registrationId)), computed here independently with node:crypto, and the
 * device's SAS signed with it verifies the way the broker checks it. Bad input
 * is a one-line refusal with a non-zero exit.
 */
import t from 'tap'
import { createHmac } from 'node:crypto'
import { spawn } from 'node:child_process'
import { cli, CLI } from '../helpers/cli.js'
import { parseSas, verifySas } from '../../plugins/token/sas.js'

// a fixed vector: 48 bytes of group key, as an enrollment group file holds it
const GROUP_KEY = Buffer.from(Array.from({ length: 48 }, (_, i) => (i * 7 + 3) & 0xff)).toString('base64')
const REGISTRATION_ID = 'line7-000042'

function expected (groupKeyB64: string, registrationId: string): string {
  return createHmac('sha256', Buffer.from(groupKeyB64, 'base64')).update(Buffer.from(registrationId, 'utf8')).digest('base64')
}

t.test('prints the device key, equal to the HMAC computed here', async (t) => {
  const r = await cli(['keys', 'derive', '--group-key', GROUP_KEY, '--registration-id', REGISTRATION_ID], {})
  t.equal(r.code, 0, r.stderr)
  t.equal(r.stdout, expected(GROUP_KEY, REGISTRATION_ID) + '\n')
  t.equal(r.stdout.trim().length, 44, 'base64 of 32 bytes')
  const json = await cli(['keys', 'derive', '--group-key', GROUP_KEY, '--registration-id', 'line7-000043', '--json'], {})
  t.same(JSON.parse(json.stdout), { registrationId: 'line7-000043', deviceKey: expected(GROUP_KEY, 'line7-000043') })
  t.not(JSON.parse(json.stdout).deviceKey, r.stdout.trim(), 'another registration id, another key')

  // the firmware side: a SAS signed with the printed key is what the broker accepts for this registration id
  const deviceKey = Buffer.from(r.stdout.trim(), 'base64')
  const se = Math.floor(Date.now() / 1000) + 600
  const sig = createHmac('sha256', deviceKey).update(`${REGISTRATION_ID}\n${se}`).digest('base64')
  const sas = parseSas(`SharedAccessSignature sr=${REGISTRATION_ID}&sig=${encodeURIComponent(sig)}&se=${se}`)
  t.ok(sas, 'parses')
  t.equal(verifySas(sas!, { clientId: REGISTRATION_ID, groupKey: Buffer.from(GROUP_KEY, 'base64'), nowMs: Date.now(), maxSeconds: 3600 }), null, 'the broker\'s check accepts it')
})

t.test('the group key from stdin (out of the shell history)', async (t) => {
  const child = spawn(process.execPath, [CLI, 'keys', 'derive', '--group-key', '-', '--registration-id', REGISTRATION_ID])
  let out = ''
  child.stdout.on('data', (d: Buffer) => { out += d.toString() })
  child.stdin.end(GROUP_KEY + '\n')
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve))
  t.equal(code, 0)
  t.equal(out, expected(GROUP_KEY, REGISTRATION_ID) + '\n')
})

t.test('bad input: one line on stderr, non-zero exit, no key printed', async (t) => {
  for (const [args, why] of [
    [['--group-key', 'not base64!', '--registration-id', REGISTRATION_ID], /not base64/],
    [['--group-key', Buffer.alloc(16, 1).toString('base64'), '--registration-id', REGISTRATION_ID], /at least 32 bytes/],
    [['--group-key', GROUP_KEY, '--registration-id', 'a/b'], /registration-id/],
    [['--group-key', GROUP_KEY], /usage/]
  ] as const) {
    const r = await cli(['keys', 'derive', ...args], {})
    t.not(r.code, 0, args.join(' '))
    t.match(r.stderr, why)
    t.equal(r.stderr.split('\n').filter(Boolean).length, 1, 'one line')
    t.equal(r.stdout, '')
  }
})
