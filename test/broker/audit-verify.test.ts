/**
 * The verifiable audit log (CONTRACT §6, issue 15): a real broker run writes
 * its audit file (provisioning, connects, a refusal, admin requests), and the
 * real `aedes-jitp audit verify` passes on it; a copy with one field edited, a
 * line deleted, two lines swapped, a line inserted is each named at the right
 * line and seq. A restart on the same file goes on with the chain and the
 * sequence; a rotation (renamed, noticed by the periodic check or on SIGHUP;
 * truncated in place) starts the new file with a line naming the last hash of
 * the old one, and both verify, alone and as one chain.
 */
import t from 'tap'
import { appendFileSync, copyFileSync, existsSync, mkdtempSync, readFileSync, renameSync, rmSync, truncateSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pino from 'pino'
import { createAudit } from '../../broker/audit.js'
import { GENESIS_HASH, verifyFiles } from '../../broker/audit-chain.js'
import { buildBroker, type BrokerHandle } from '../../broker/build.js'
import { loadConfig } from '../../broker/config.js'
import { adminRequest } from '../helpers/admin.js'
import { auditCapture, connect, devPki, endClient, unregisteredDevice, waitFor, type Pki, type TestBroker } from '../helpers/broker.js'
import { cli } from '../helpers/cli.js'
import { provision } from '../helpers/provisioning.js'

const dir = mkdtempSync(join(tmpdir(), 'jitp-audit-verify-'))
t.teardown(() => rmSync(dir, { recursive: true, force: true }))

async function fileBroker (pki: Pki, file: string): Promise<TestBroker & { handle: BrokerHandle }> {
  const config = loadConfig({
    env: {},
    overrides: { MQTTS_PORT: 0, HTTP_PORT: 0, ADMIN_PORT: 0, HOST: '127.0.0.1', CERTS_DIR: pki.dir, GENERATE_DEV_CERTS: false, AUDIT_LOG: file }
  })
  const handle = await buildBroker(config, { log: pino({ level: 'silent' }) })
  return {
    handle,
    audit: auditCapture(),
    pki,
    port: handle.mqttsPort,
    httpPort: handle.httpPort,
    adminPort: handle.adminPort,
    events: () => [],
    close: () => handle.close()
  }
}

const lines = (file: string): string[] => readFileSync(file, 'utf8').split('\n').filter((l) => l !== '')
const parsed = (file: string): Array<Record<string, unknown>> => lines(file).map((l) => JSON.parse(l) as Record<string, unknown>)
const verify = (...args: string[]): ReturnType<typeof cli> => cli(['audit', 'verify', ...args], {})
/** the same check in process (what the CLI runs), where the exit code and the message are not the point */
const intactInProcess = async (files: string[], opts: { merged?: boolean, partial?: boolean } = {}): Promise<boolean> => (await verifyFiles(files, opts)).ok

/** a copy of `file` with its lines changed by `change` */
function tampered (file: string, name: string, change: (lines: string[]) => void): string {
  const copy = join(dir, name)
  const ls = lines(file)
  change(ls)
  writeFileSync(copy, ls.join('\n') + '\n')
  return copy
}

t.test('a broker run, a restart and rotations: every file verifies, every kind of tampering is named', async (t) => {
  const pki = await devPki()
  const file = join(dir, 'audit.log')

  // ---- a realistic run: provisioning, connects, a refusal, admin requests
  const tb = await fileBroker(pki, file)
  const device = await provision(tb, 'SN-VERIFY-1', 'ec')
  const client = await connect(tb, device.creds, { clientId: device.deviceId })
  await endClient(client)
  await t.rejects(connect(tb, unregisteredDevice(tb, 'ghost-verify'), { clientId: 'ghost-verify' }), 'an unregistered device is refused')
  t.equal((await adminRequest(tb.adminPort!, pki, 'GET', '/v1/devices')).status, 200)
  t.equal((await adminRequest(tb.adminPort!, pki, 'GET', '/v1/devices/no-such-device')).status, 404)
  await tb.close()

  const run = parsed(file)
  const events = new Set(run.map((l) => l.event))
  for (const e of ['broker.started', 'provision.certificate.issued', 'device.registered', 'connect.accepted', 'connect.refused', 'admin.request', 'broker.stopped']) {
    t.ok(events.has(e), `the run wrote ${e}`)
  }
  t.same(run.map((l) => l.seq), run.map((_l, i) => i + 1), 'seq 1, 2, 3, ... on every line')
  t.ok(run.every((l) => l.brokerId === tb.handle.broker.id), 'every line names the broker process (the Aedes id)')
  const intact = await verify(file)
  t.equal(intact.code, 0, `verify passes on the broker's file (${intact.stderr.trim()})`)
  t.match(intact.stdout, new RegExp(`^audit verify: intact: ${run.length} lines, seq 1\\.\\.${run.length}, from the genesis hash, last hash ${String(run.at(-1)!.hash)}\\n$`))

  // ---- tampering, each on a copy; k is a line in the middle (1-based)
  const k = Math.floor(run.length / 2)
  const seqAt = (line: number): number => run[line - 1]!.seq as number
  // the four of the contract through the real CLI (exit code and message), the variants through the same function in process
  const cases: Array<[name: string, change: (ls: string[]) => void, expect: RegExp, viaCli?: 'cli']> = [
    ['edited', (ls) => {
      const rec = JSON.parse(ls[k - 1]!) as Record<string, unknown>
      rec.time = (rec.time as number) + 1
      ls[k - 1] = JSON.stringify(rec)
    }, new RegExp(`line ${k} \\(seq ${seqAt(k)}\\): changed: its content does not match its hash`), 'cli'],
    ['event-renamed', (ls) => { ls[k - 1] = ls[k - 1]!.replace(/"event":"[^"]+"/, '"event":"broker.started"') }, new RegExp(`line ${k} \\(seq ${seqAt(k)}\\): changed`)],
    ['hash-edited', (ls) => { ls[k - 1] = ls[k - 1]!.replace(/"hash":"[0-9a-f]/, (m) => m.endsWith('0') ? m.slice(0, -1) + '1' : m.slice(0, -1) + '0') }, new RegExp(`line ${k} \\(seq ${seqAt(k)}\\): changed`)],
    ['seq-edited', (ls) => { ls[k - 1] = ls[k - 1]!.replace(/"seq":\d+/, `"seq":${seqAt(k) + 7}`) }, new RegExp(`line ${k} \\(seq ${seqAt(k) + 7}\\): changed: its seq was ${seqAt(k)}`)],
    ['deleted', (ls) => { ls.splice(k - 1, 1) }, new RegExp(`line ${k} \\(seq ${seqAt(k + 1)}\\): removed: seq ${seqAt(k)} missing before this line`), 'cli'],
    ['two-deleted', (ls) => { ls.splice(k - 1, 2) }, new RegExp(`line ${k} \\(seq ${seqAt(k + 2)}\\): removed: seq ${seqAt(k)}\\.\\.${seqAt(k + 1)} missing`)],
    ['swapped', (ls) => { [ls[k - 1], ls[k]] = [ls[k]!, ls[k - 1]!] }, new RegExp(`line ${k} \\(seq ${seqAt(k + 1)}\\): reordered: seq ${seqAt(k + 1)} comes before seq ${seqAt(k)}`), 'cli'],
    ['copy-inserted', (ls) => { ls.splice(k - 1, 0, ls[k - 2]!) }, new RegExp(`line ${k} \\(seq ${seqAt(k - 1)}\\): inserted`)],
    ['forged-inserted', (ls) => {
      const forged = { level: 'info', time: run[k - 1]!.time, event: 'admin.request', actor: 'ops', brokerId: run[0]!.brokerId, seq: seqAt(k), hash: 'f'.repeat(64) }
      ls.splice(k - 1, 0, JSON.stringify(forged))
    }, new RegExp(`line ${k} \\(seq ${seqAt(k)}\\): inserted: the next line carries seq ${seqAt(k)}`), 'cli'],
    ['plain-inserted', (ls) => { ls.splice(k - 1, 0, '{"level":"info","time":1,"event":"connect.accepted","clientId":"x"}') }, new RegExp(`line ${k} \\(seq ${seqAt(k)}\\): inserted`)],
    ['head-removed', (ls) => { ls.splice(0, 2) }, /line 1 \(seq 3\): removed: the chain starts at seq 3/]
  ]
  await Promise.all(cases.map(async ([name, change, expect, viaCli]) => {
    const copy = tampered(file, `${name}.log`, change)
    if (viaCli === undefined) {
      const result = await verifyFiles([copy])
      t.match(result.ok ? 'intact' : `line ${result.line} (seq ${result.seq}): ${result.message}`, expect, `${name}: named at the right line`)
      return
    }
    const result = await verify(copy)
    t.equal(result.code, 1, `${name}: exit 1`)
    t.match(result.stderr, new RegExp(`^aedes-jitp: audit verify: \\S+${name}\\.log ${expect.source}`), `${name}: named at the right line`)
    t.equal(result.stderr.trim().split('\n').length, 1, `${name}: one line`)
  }))

  // ---- a restart on the same file goes on with its chain and sequence
  const tb2 = await fileBroker(pki, file)
  t.equal((await adminRequest(tb2.adminPort!, pki, 'GET', '/v1/devices')).status, 200)
  await tb2.handle.audit.flush()
  const restarted = parsed(file)
  const resumed = restarted[run.length]!
  t.match(resumed, { event: 'audit.chain.started', prevHash: run.at(-1)!.hash, seq: run.length + 1, brokerId: tb2.handle.broker.id, reason: /restarted/ },
    'the restarted process\'s first line names the last hash before it and goes on with seq')
  t.ok(await intactInProcess([file]), 'verify passes across the restart')
  // everything before the restart deleted: the rest looked like a chain continuing another one
  const cut = tampered(file, 'cut-before-restart', (ls) => { ls.splice(0, run.length) })
  const cutResult = await verify(cut)
  t.equal(cutResult.code, 1, 'a file that starts at a restart on itself: exit 1')
  t.match(cutResult.stderr, /cut-before-restart line 1 \(seq \d+\): removed: the chain starts at a restart on the same file/, 'named: its beginning was removed')
  t.ok(await intactInProcess([cut], { partial: true }), 'with --partial (a copy of part of a file) it is taken as it is')

  // ---- logrotate, create mode without a signal: renamed, noticed by the periodic check
  const rotated1 = `${file}.1`
  renameSync(file, rotated1)
  await waitFor(() => existsSync(file) && readFileSync(file, 'utf8').includes('\n'), 5000, 'the new audit file after the rename')
  const lastOf1 = parsed(rotated1).at(-1)!
  t.match(parsed(file)[0], { event: 'audit.chain.started', prevHash: lastOf1.hash, seq: (lastOf1.seq as number) + 1, reason: /rotated|moved/ },
    'the new file starts with a line naming the last hash of the old one')
  t.equal((await adminRequest(tb2.adminPort!, pki, 'GET', '/v1/devices/no-such-device')).status, 404)

  // ---- and again, this time told at once (SIGHUP in `aedes-jitp start` calls checkRotation)
  await tb2.handle.audit.flush()
  const rotated2 = `${file}.2`
  renameSync(file, rotated2)
  await tb2.handle.audit.checkRotation()
  t.equal((await adminRequest(tb2.adminPort!, pki, 'GET', '/v1/devices')).status, 200)
  await tb2.close()
  t.equal(parsed(file)[0]!.prevHash, parsed(rotated2).at(-1)!.hash, 'the newest file names the last hash of the one before')
  for (const f of [rotated1, rotated2, file]) t.ok(await intactInProcess([f]), `${f} verifies on its own`)
  const all = await verify(rotated1, rotated2, file)
  t.equal(all.code, 0, 'and the three as one chain, oldest first')
  t.match(all.stdout, /intact: \d+ lines, seq 1\.\.\d+, from the genesis hash/)
  t.notOk(await intactInProcess([rotated2, rotated1]), 'files in the wrong order do not make one chain')
})

t.test('copytruncate, a line cut by a crash, a line being written, and a merged view', async (t) => {
  const file = join(dir, 'copytruncate.log')
  const audit = createAudit(file, { log: { warn () {} } })
  for (let i = 0; i < 5; i++) audit.write('publish.denied', { clientId: `c${i}` })
  await audit.flush()
  await audit.checkRotation() // the periodic check has seen the file at its size
  copyFileSync(file, `${file}.1`)
  truncateSync(file, 0)
  audit.write('publish.denied', { clientId: 'after-truncate' }) // lands before the writer notices
  await audit.flush()
  await audit.checkRotation()
  audit.write('publish.denied', { clientId: 'later' })
  await audit.close()
  const after = parsed(file)
  t.match(after.map((l) => [l.event, l.seq]), [['publish.denied', 6], ['audit.chain.started', 7], ['publish.denied', 8]], 'a chain.started line where the writing goes on')
  t.match(after[1], { prevHash: after[0]!.hash, reason: /truncated in place/, level: 'warn' })
  t.ok(await intactInProcess([`${file}.1`]), 'the copy verifies')
  const strict = await verify(file)
  t.equal(strict.code, 1, 'the truncated file starts mid-chain')
  t.match(strict.stderr, /line 1 \(seq 6\): removed: the chain starts at seq 6 .*--partial/)
  t.equal((await verify('--partial', file)).code, 0, 'and verifies with --partial')
  t.ok(await intactInProcess([`${file}.1`, file]), 'or after its copy, as one chain')

  // a crash in the middle of a line: the next start puts it on a line of its own, and verify names it
  const crashed = join(dir, 'crashed.log')
  const first = createAudit(crashed, { log: { warn () {} } })
  for (let i = 0; i < 3; i++) first.write('connect.accepted', { clientId: `d${i}` })
  await first.close()
  appendFileSync(crashed, '{"level":"info","time":17000,"event":"conn')
  const second = createAudit(crashed, { log: { warn () {} } })
  second.write('broker.started')
  await second.close()
  const back = lines(crashed)
  t.equal(back[3], '{"level":"info","time":17000,"event":"conn', 'the cut line stays one line')
  t.match(JSON.parse(back[4]!), { event: 'audit.chain.started', seq: 4, level: 'warn', reason: /cut short/ })
  const cut = await verify(crashed)
  t.equal(cut.code, 1)
  t.match(cut.stderr, /crashed\.log line 4 \(seq 4\): cut short .*the chain resumes on the next line/)

  // a line still being written (no newline yet) is not a fault
  const live = join(dir, 'live.log')
  copyFileSync(`${file}.1`, live)
  appendFileSync(live, '{"level":"info","time":1')
  t.match(await verifyFiles([live]), { ok: true, lines: 5, notes: [/line 6 has no newline yet/] })

  // two processes' lines interleaved (a file both appended to, the stream): one chain per brokerId
  const a = createAudit(join(dir, 'a.log'))
  const b = createAudit(join(dir, 'b.log'))
  for (let i = 0; i < 4; i++) {
    a.write('connect.accepted', { clientId: `a${i}` })
    b.write('connect.accepted', { clientId: `b${i}` })
  }
  await Promise.all([a.close(), b.close()])
  const la = lines(join(dir, 'a.log'))
  const lb = lines(join(dir, 'b.log'))
  const merged = join(dir, 'merged.log')
  writeFileSync(merged, la.flatMap((l, i) => [l, lb[i]!]).join('\n') + '\n')
  const m = await verify('--merged', merged)
  t.equal(m.code, 0, `--merged verifies each process's chain (${m.stderr.trim()})`)
  t.match(m.stdout, /^audit verify: intact: 8 lines, 2 chains \(one per brokerId\)\n$/)
  t.notOk(await intactInProcess([merged]), 'without --merged the interleaving is a fault')
  const mergedBad = tampered(merged, 'merged-bad.log', (ls) => { ls.splice(4, 1) }) // a's seq 3 removed
  t.match(await verifyFiles([mergedBad], { merged: true }), { ok: false, line: 6, seq: 4, fault: 'removed', message: /seq 3 missing/ })
  t.ok(JSON.parse(la[0]!).hash !== GENESIS_HASH)
})
