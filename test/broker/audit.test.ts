import t from 'tap'
import { spawnSync } from 'node:child_process'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { createAudit, type AuditFields } from '../../broker/audit.js'
import { formatLine } from '../../broker/cli/audit.js'
import { auditCapture } from '../helpers/broker.js'

// built from parts: a literal key header in the repository reads as a committed key
const PEM_KEY_HEADER = `-----BEGIN PRIVATE ${'KEY'}-----`

t.test('only allow-listed fields are written; key material never', async (t) => {
  const capture = auditCapture()
  const audit = createAudit(capture.stream)
  const sneaky = { clientId: 'c1', deviceId: 'd1', privateKey: `${PEM_KEY_HEADER}x`, certificateOwnershipToken: 'tok', password: 'pw' } as AuditFields
  audit.write('connect.accepted', sneaky)
  audit.write('connect.refused', { clientId: `${PEM_KEY_HEADER} in a client id`, reason: 'x'.repeat(1000) })
  await audit.flush()
  t.equal(capture.lines.length, 2)
  const [a, b] = capture.lines
  t.same(Object.keys(a!).sort(), ['brokerId', 'clientId', 'deviceId', 'event', 'hash', 'level', 'seq', 'time'], 'the fields, and the writer\'s brokerId, seq and hash')
  t.equal(a!.level, 'info')
  t.type(a!.time, 'number')
  t.equal(b!.clientId, '[redacted]', 'a client-chosen string carrying a key header is redacted')
  t.ok(String(b!.reason).length <= 260, 'long values are capped')
  t.notOk(capture.raw.join('\n').includes('tok'))
})

t.test('the audit log is flushed to a file on close', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'audit-'))
  const file = join(dir, 'sub', 'audit.log')
  const audit = createAudit(file)
  for (let i = 0; i < 1000; i++) audit.write('publish.denied', { clientId: `c${i}` })
  await audit.close()
  const run = spawnSync(process.execPath, [resolve('dist/bin/aedes-jitp.js'), 'audit', file], { encoding: 'utf8' })
  t.equal(run.status, 0)
  t.equal(run.stdout.trim().split('\n').length, 1000, 'every line there after close')
})

t.test('aedes-jitp audit filters by event glob and device', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'audit-'))
  const file = join(dir, 'audit.log')
  const lines = [
    { time: 1763769600000, level: 'info', event: 'connect.accepted', deviceId: 'd1', clientId: 'd1', role: 'device' },
    { time: 1763769600001, level: 'warn', event: 'connect.refused', clientId: 'x', errorCode: 'UnknownCertificate' },
    { time: 1763769600002, level: 'warn', event: 'payload.rejected', deviceId: 'd1', errorCode: 'SchemaViolation' }
  ]
  writeFileSync(file, lines.map((l) => JSON.stringify(l)).join('\n') + '\nnot json\n')
  const run = (args: string[]) => spawnSync(process.execPath, [resolve('dist/bin/aedes-jitp.js'), 'audit', ...args, file], { encoding: 'utf8' })
  t.equal(run([]).stdout.trim().split('\n').length, 3, 'all events, the bad line skipped')
  const connects = run(['--event', 'connect.*']).stdout.trim().split('\n')
  t.equal(connects.length, 2)
  t.match(connects[1], /connect\.refused.*errorCode=UnknownCertificate/)
  const d1 = run(['--device', 'd1']).stdout.trim().split('\n')
  t.equal(d1.length, 2)
  t.match(d1[0], /^2025-11-22T00:00:00.000Z INFO +connect\.accepted/)
  t.equal(formatLine('{"event": 3}', {}), null)
  const missing = spawnSync(process.execPath, [resolve('dist/bin/aedes-jitp.js'), 'audit', join(dir, 'nope.log')], { encoding: 'utf8' })
  t.not(missing.status, 0)
  t.match(missing.stderr, /no such file/)
})
