/**
 * Reading the audit log back (broker/audit-query.ts) from the in-process ring
 * and from the file: filters, since, limit, cursor paging, following, and the
 * bounded scan. The Redis stream: test/e2e/audit-stream.test.ts.
 */
import t from 'tap'
import { appendFileSync, mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import { createAudit } from '../../broker/audit.js'
import { AUDIT_SCAN_MAX, createAuditRing, createAuditSource, globMatcher, type AuditQuery, type AuditRecord, type AuditSource } from '../../broker/audit-query.js'
import { JitpError } from '../../broker/errors.js'

const BASE = 1_763_769_600_000

/** line i: one second apart; every 10th a device event of d<i%3>, the others connects */
function line (i: number): string {
  const device = i % 10 === 0
  return JSON.stringify({
    time: BASE + i * 1000,
    level: device ? 'warn' : 'info',
    event: device ? 'device.registered' : 'connect.accepted',
    deviceId: `d${i % 3}`,
    n: i
  })
}

function sink (): Writable {
  return new Writable({ write (_chunk, _enc, cb) { cb() } })
}

/** every page from `q` on, following nextCursor */
async function all (source: AuditSource, q: AuditQuery): Promise<{ items: AuditRecord[], pages: number }> {
  const items: AuditRecord[] = []
  let cursor: string | undefined
  let pages = 0
  for (;;) {
    const page = await source.query({ ...q, cursor })
    pages++
    items.push(...page.items)
    if (page.nextCursor === null) return { items, pages }
    cursor = page.nextCursor
  }
}

const ns = (items: AuditRecord[]): number[] => items.map((r) => r.n as number)

t.test('the glob: * and ? only, everything else literal', async (t) => {
  t.ok(globMatcher('device.*').test('device.revoked'))
  t.notOk(globMatcher('device.*').test('devicexrevoked'), 'the dot is literal')
  t.ok(globMatcher('connect.?ccepted').test('connect.accepted'))
  t.notOk(globMatcher('connect').test('connect.accepted'), 'anchored')
  t.ok(globMatcher('*').test('') && globMatcher('*').test('anything'), '* alone matches every name')
  t.notOk(globMatcher('?').test(''), '? takes one character')
  t.ok(globMatcher('*.revoked').test('certificate.revoked'))
  t.ok(globMatcher('c*t*d').test('connect.refused'))
  t.notOk(globMatcher('c*t*x').test('connect.refused'))
})

t.test('the glob agrees with the anchored regular expression it stands for, on every name and pattern tried', async (t) => {
  const names = ['', 'a', 'connect.accepted', 'connect.refused', 'device.revoked', 'aaa', 'abcabc', 'x.y.z', 'provision.rejected']
  const patterns = ['', '*', '?', '**', '*?', '?*', 'a*', '*a', 'a?a', '*.*', 'c*d', '*c*c*', 'connect.*', '??????????????????', 'x?y?z', 'a*b*c', '*ed', 'de*.re*']
  const asRegExp = (glob: string): RegExp => new RegExp(`^${glob.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.')}$`)
  let compared = 0
  for (const p of patterns) {
    for (const n of names) {
      if (globMatcher(p).test(n) !== asRegExp(p).test(n)) t.fail(`${JSON.stringify(p)} on ${JSON.stringify(n)}`)
      compared++
    }
  }
  t.equal(compared, patterns.length * names.length, `${compared} pairs agree`)
})

t.test('a glob built to backtrack (*?*?…*?Z, the 64 characters the admin route allows) answers at once', async (t) => {
  // as a regular expression (.*..*.….*.Z) this took seconds per line at 25 characters and grows ×2.7
  // per pair: at 64 it would hold the broker's one thread for good, and this test would time out
  const glob = '*?'.repeat(31) + 'Z'
  const name = 'a'.repeat(200)
  t.notOk(globMatcher(glob).test(name), 'no match, and it returns')
  t.ok(globMatcher(glob).test(name + 'Z'), 'a match, too')
})

t.test('ring: filters, since, limit and cursors; wraps without losing its place', async (t) => {
  // room for the last 100 good lines and the two that are not audit lines
  const ring = createAuditRing(102)
  for (let i = 0; i < 250; i++) ring.push(line(i))
  ring.push('not json')
  ring.push('{"event":"no.time"}')
  const source = createAuditSource({ ring })
  t.equal(source.kind, 'memory')

  const everything = await all(source, { limit: 30 })
  t.same(ns(everything.items), Array.from({ length: 100 }, (_, k) => 150 + k), 'the last 100 lines, oldest first, each once; garbage skipped')
  t.equal(everything.pages, 4)

  const devices = await source.query({ event: 'device.*', deviceId: 'd1', limit: 100 })
  t.same(ns(devices.items), [160, 190, 220], 'event glob and device together')
  t.equal(devices.nextCursor, null)

  const since = await source.query({ since: BASE + 240_000, limit: 5 })
  t.same(ns(since.items), [240, 241, 242, 243, 244])
  t.ok(since.nextCursor, 'more after a full page')
  const rest = await source.query({ since: BASE + 240_000, limit: 50, cursor: since.nextCursor! })
  t.same(ns(rest.items), [245, 246, 247, 248, 249])
  t.equal(rest.nextCursor, null)

  // a cursor older than the oldest line kept resumes at the oldest
  const stale = await source.query({ limit: 1, cursor: 'm:3' })
  t.same(ns(stale.items), [150])

  // following: only what was written after the end seen
  for (let i = 250; i < 253; i++) ring.push(line(i))
  const followed = await source.query({ limit: 100, cursor: rest.followCursor })
  t.same(ns(followed.items), [250, 251, 252])
  const nothingNew = await source.query({ limit: 100, cursor: followed.followCursor })
  t.same(nothingNew.items, [])
  t.equal(nothingNew.followCursor, followed.followCursor)

  for (const bad of ['f:0', 'r:1-0', 'garbage', 'm:-1', 'm:1e3']) {
    await t.rejects(source.query({ limit: 1, cursor: bad }), { name: 'JitpError', code: 'InvalidRequest' }, `cursor ${bad} refused`)
  }
})

t.test('createAudit keeps the same lines in its ring when it writes to stdout or a stream', async (t) => {
  const audit = createAudit(sink(), { memoryLines: 100 })
  t.teardown(() => audit.close())
  for (let i = 0; i < 150; i++) audit.write(i === 149 ? 'admin.request' : 'publish.denied', { clientId: `c${i}`, method: 'GET', url: '/v1/audit?limit=1' })
  const page = await audit.query({ limit: 1000 })
  t.equal(page.items.length, 100, 'memoryLines kept')
  t.equal(page.items[0]!.clientId, 'c50')
  const last = page.items[99]!
  t.same(Object.keys(last).sort(), ['brokerId', 'clientId', 'event', 'hash', 'level', 'method', 'seq', 'time', 'url'])
  t.match(last, { event: 'admin.request', level: 'info', method: 'GET', url: '/v1/audit?limit=1', brokerId: audit.brokerId, seq: 150 })
  t.same(audit.stats(), { backlog: 0, dropped: 0 }, 'no stream without REDIS_URL')
})

t.test('file: paging, filters, since by bisection, bounded scan, a line still being written', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'audit-query-'))
  const file = join(dir, 'audit.log')
  const LINES = AUDIT_SCAN_MAX * 2 + 5000
  const text: string[] = []
  for (let i = 0; i < LINES; i++) {
    text.push(line(i))
    if (i === 7) text.push('not json at all')
  }
  writeFileSync(file, text.join('\n') + '\n')
  const source = createAuditSource({ file })
  t.equal(source.kind, 'file')

  const first = await source.query({ limit: 10 })
  t.same(ns(first.items), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 'oldest first, garbage skipped')
  const second = await source.query({ limit: 3, cursor: first.nextCursor! })
  t.same(ns(second.items), [10, 11, 12], 'the cursor resumes right after the last item')

  // rare matches: each call scans a bounded number of lines and hands back a cursor
  const rare = await source.query({ event: 'device.*', deviceId: 'd2', since: BASE, limit: 1000 })
  // the first scan covers lines 0 .. AUDIT_SCAN_MAX - 2 (one of the lines it looks at is the garbage one)
  const firstScan = Array.from({ length: AUDIT_SCAN_MAX - 1 }, (_, i) => i).filter((i) => i % 30 === 20)
  t.same(ns(rare.items), firstScan, 'one page is one bounded scan')
  t.ok(rare.nextCursor, 'with a cursor to go on')
  const rareAll = await all(source, { event: 'device.*', deviceId: 'd2', limit: 1000 })
  const want = Array.from({ length: LINES }, (_, i) => i).filter((i) => i % 10 === 0 && i % 3 === 2)
  t.same(ns(rareAll.items), want, 'every match exactly once across pages')
  t.equal(rareAll.pages, 3)

  // since: the start is found by bisection, not by scanning 20,000 lines first
  const late = LINES - 3
  const since = await source.query({ since: BASE + late * 1000, limit: 10 })
  t.same(ns(since.items), [late, late + 1, late + 2])
  t.equal(since.nextCursor, null, 'the end of the file')

  // a line without its newline is still being written: not returned, and the cursor stays before it
  const partial = line(LINES)
  appendFileSync(file, partial.slice(0, 20))
  const atEnd = await source.query({ limit: 10, cursor: since.followCursor })
  t.same(atEnd.items, [])
  t.equal(atEnd.followCursor, since.followCursor)
  appendFileSync(file, partial.slice(20) + '\n')
  const finished = await source.query({ limit: 10, cursor: atEnd.followCursor })
  t.same(ns(finished.items), [LINES], 'the finished line, whole')

  // a cursor past the end of the file: the file was rotated, start again
  writeFileSync(file, line(1) + '\n')
  const rotated = await source.query({ limit: 10, cursor: finished.followCursor })
  t.same(ns(rotated.items), [1])

  await t.rejects(source.query({ limit: 1, cursor: 'm:0' }), JitpError)
  const missing = await createAuditSource({ file: join(dir, 'none.log') }).query({ limit: 5 })
  t.same(missing, { items: [], nextCursor: null, followCursor: 'f:0' }, 'no file yet: nothing written yet')
})

t.test('createAudit to a file: a query sees what was just written (flushed first)', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'audit-query-'))
  const file = join(dir, 'sub', 'audit.log')
  const audit = createAudit(file)
  t.teardown(() => audit.close())
  audit.write('device.registered', { deviceId: 'x1', actor: 'ops' })
  audit.write('device.quarantined', { deviceId: 'x1' }, 'warn')
  audit.write('device.registered', { deviceId: 'x2' })
  const page = await audit.query({ event: 'device.*', deviceId: 'x1', limit: 10 })
  t.same(page.items.map((r) => r.event), ['device.registered', 'device.quarantined'])
  t.equal(page.items[0]!.actor, 'ops')
  t.equal(page.items[1]!.level, 'warn')
  t.match(page.followCursor, /^f:\d+$/)
})
