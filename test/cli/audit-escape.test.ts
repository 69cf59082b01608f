/**
 * Attack: a client id (chosen by the client, written to the audit log) holding a
 * newline and ANSI escapes, to forge a second line or repaint an operator's
 * terminal when `aedes-jitp audit` prints the log.
 * Defence (CONTRACT §6): the viewer escapes every control character (C0, DEL,
 * C1, U+2028/U+2029). Runs the real CLI from dist (npm test's pretest builds it).
 */
import t from 'tap'
import { spawnSync } from 'node:child_process'
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'

const CLI = resolve('dist/bin/aedes-jitp.js')
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u2028\u2029]/

t.test('a forged client id prints as one escaped line', async (t) => {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run npm run build first`)
  const dir = mkdtempSync(join(tmpdir(), 'jitp-audit-view-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const forged = 'evil\n2026-01-01T00:00:00.000Z INFO  connect.accepted             clientId=admin role=service\u001b[2J\u001b[31m\r\u0085\u007f\u2028\u2029\ttab\\x1b'
  const lines = [
    { level: 'warn', time: 1_700_000_000_000, event: 'connect.refused', clientId: forged, errorCode: 'ClientIdInUse', reason: 'a registered device id' },
    { level: 'info', time: 1_700_000_000_001, event: 'connect.accepted', clientId: 'plain-1', role: 'device' }
  ]
  const file = join(dir, 'audit.log')
  writeFileSync(file, lines.map((l) => JSON.stringify(l)).join('\n') + '\n')

  const run = spawnSync(process.execPath, [CLI, 'audit', file], { encoding: 'utf8', timeout: 30_000 })
  t.equal(run.status, 0, `exit 0 (stderr: ${run.stderr})`)
  const printed = run.stdout.split('\n').filter((l) => l !== '')
  t.equal(printed.length, 2, 'two entries, two lines: nothing forged')
  t.notOk(printed.some((l) => CONTROL.test(l)), 'no control character reaches the terminal')
  t.match(printed[0], /clientId=evil\\n2026-01-01T00:00:00\.000Z INFO {2}connect\.accepted/, 'the newline shows as \\n')
  t.match(printed[0], /\\x1b\[2J\\x1b\[31m\\r\\x85\\x7f\\u2028\\u2029\\ttab\\\\x1b/, 'ANSI, CR, C1, DEL, separators, tab escaped; a literal backslash doubled')
  t.match(printed[0], /errorCode=ClientIdInUse/, 'the fields after the forged one are on the same line')
  t.match(printed[1], /connect\.accepted\s+clientId=plain-1 role=device$/)
})
