/**
 * The audit stream on a real redis-server: two writers (two broker processes'
 * audit logs) append to one capped stream, and a query through either sees
 * both. Redis killed and restarted: write() never throws, close() stays bounded,
 * the lines kept meanwhile arrive once Redis is back.
 */
import t from 'tap'
import { Writable } from 'node:stream'
import { Redis } from 'ioredis'
import { createAudit, type Audit } from '../../broker/audit.js'
import { ChainVerifier } from '../../broker/audit-chain.js'
import { createMetrics } from '../../broker/metrics.js'
import type { AuditQuery, AuditRecord } from '../../broker/audit-query.js'
import { startRedisServer } from '../helpers/redis-server.js'

function sink (): Writable {
  return new Writable({ write (_chunk, _enc, cb) { cb() } })
}

async function until (check: () => Promise<boolean> | boolean, what: string, timeoutMs = 5000): Promise<void> {
  const start = Date.now()
  while (!await check()) {
    if (Date.now() - start > timeoutMs) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

async function everything (audit: Audit, q: Omit<AuditQuery, 'limit' | 'cursor'>): Promise<AuditRecord[]> {
  const items: AuditRecord[] = []
  let cursor: string | undefined
  do {
    const page = await audit.query({ ...q, limit: 100, cursor })
    items.push(...page.items)
    cursor = page.nextCursor ?? undefined
  } while (cursor !== undefined)
  return items
}

t.test('audit stream on one Redis', async (t) => {
  const redis = await startRedisServer()
  const admin = new Redis(redis.url, { lazyConnect: true, maxRetriesPerRequest: 1, retryStrategy: () => 200 })
  admin.on('error', () => {})
  await admin.connect()
  t.teardown(() => { admin.disconnect() })
  const open: Audit[] = []
  t.teardown(async () => { await Promise.all(open.map((a) => a.close())) })
  const writer = (opts: Parameters<typeof createAudit>[1] = {}): Audit => {
    const audit = createAudit(sink(), { redisUrl: redis.url, log: { warn () {} }, ...opts })
    open.push(audit)
    return audit
  }

  await t.test('a query through one process sees the other one\'s lines', async (t) => {
    const a = writer({ streamKey: 't:shared' })
    const b = writer({ streamKey: 't:shared' })
    for (let i = 0; i < 120; i++) a.write('device.registered', { deviceId: `a${i}`, actor: 'ops-a' })
    // a's lines leave in its next batch; flushed here so that they are in the stream before b's
    await a.flush()
    // (flush waits a bounded time for a connection just made: on a loaded machine the stream says when)
    await until(async () => await admin.xlen('t:shared') === 120, 'a\'s 120 lines in the stream')
    // b's own line is flushed by its query, even on a connection that has just been made
    b.write('device.revoked', { deviceId: 'a7', actor: 'ops-b' })
    const lines = await everything(b, {})
    t.equal(lines.length, 121, 'both writers\' lines, each once across pages')
    t.same(lines.slice(0, 3).map((r) => r.deviceId), ['a0', 'a1', 'a2'], 'oldest first')
    const a7 = await b.query({ deviceId: 'a7', event: 'device.*', limit: 10 })
    t.same(a7.items.map((r) => [r.event, r.actor]), [['device.registered', 'ops-a'], ['device.revoked', 'ops-b']])
    t.equal(a7.nextCursor, null)
    const page = await a.query({ limit: 50 })
    t.equal(page.items.length, 50)
    t.match(page.nextCursor, /^r:\d+-\d+$/)
    const since = await a.query({ since: lines[100]!.time, limit: 1000 })
    t.ok(since.items.every((r) => r.time >= lines[100]!.time), 'since filters by the line\'s own time')
    t.ok(since.items.length >= 21)
    // batches are retried only for what was not delivered: no line appended twice
    const xadds = Number(/cmdstat_xadd:calls=(\d+)/.exec(await admin.info('commandstats'))?.[1])
    t.equal(xadds, 121, 'one XADD per line')
    await t.rejects(a.query({ limit: 1, cursor: 'f:0' }), { code: 'InvalidRequest' })
  })

  await t.test('MAXLEN caps the stream', async (t) => {
    const capped = writer({ streamKey: 't:capped', streamMaxLen: 100 })
    for (let i = 0; i < 3000; i++) capped.write('publish.denied', { clientId: `c${i}` })
    await capped.flush()
    await until(() => capped.stats().backlog === 0, 'the backlog sent')
    const len = await admin.xlen('t:capped')
    t.ok(len >= 100 && len < 400, `about 100 entries kept (MAXLEN ~): ${len}`)
    const page = await capped.query({ limit: 1000 })
    t.equal(page.items.at(-1)?.clientId, 'c2999', 'the newest kept')
  })

  await t.test('Redis killed and restarted: writes never throw, close is bounded, lines arrive again', async (t) => {
    const steadyWarnings: string[] = []
    const warnings: string[] = []
    const steady = writer({ streamKey: 't:outage', log: { warn: (_obj: object, msg: string) => { steadyWarnings.push(msg) } } })
    const small = writer({ streamKey: 't:outage', backlogLines: 100, log: { warn: (_obj: object, msg: string) => { warnings.push(msg) } } })
    // like small, but still running when Redis returns: the stream is told what it missed
    const gappy = writer({ streamKey: 't:outage', backlogLines: 100 })
    steady.write('broker.started', { reason: 'before' })
    await steady.flush()

    await redis.kill()
    await until(() => steadyWarnings.some((w) => w.includes('Redis unavailable')), 'the writer noticing the outage')
    t.equal(steadyWarnings.length, 1, 'one warning for the outage, not one per reconnect attempt')
    for (let i = 0; i < 500; i++) steady.write('publish.denied', { clientId: `during${i}` })
    for (let i = 0; i < 300; i++) small.write('publish.denied', { clientId: `small${i}` })
    for (let i = 0; i < 300; i++) gappy.write('payload.rejected', { clientId: `gappy${i}` })
    await until(() => small.stats().dropped >= 200, 'the small backlog dropping its oldest lines')
    t.ok(small.stats().backlog <= 100, 'the backlog stays bounded')
    t.equal(warnings.filter((w) => w.includes('dropped')).length, 1, 'one warning for the drops, not one per line')
    await t.rejects(steady.query({ limit: 10 }), { code: 'StoreUnavailable' }, 'a query says Redis is away')

    const started = Date.now()
    await small.close()
    await small.close()
    t.ok(Date.now() - started < 2500, `close() with Redis dead returned in ${Date.now() - started} ms`)

    // no AOF: the restarted server is empty, and what steady kept arrives now
    await redis.restart()
    steady.write('broker.started', { reason: 'after' })
    let during: AuditRecord[] = []
    await until(async () => {
      during = await everything(steady, { event: 'publish.denied' }).catch(() => [])
      return during.length >= 500
    }, 'the backlog delivered after the restart')
    t.equal(during.length, 500, 'every line written during the outage, once')
    t.equal(during[0]!.clientId, 'during0')
    await until(async () => (await steady.query({ event: 'broker.started', limit: 10 })).items.some((r) => r.reason === 'after'), 'a new line')
    t.equal(steady.stats().dropped, 0)

    // the gap: gappy kept its newest 100 lines, and says in the stream that 200 are only in its file
    let gaps: AuditRecord[] = []
    await until(async () => {
      gaps = await everything(steady, { event: 'audit.stream.gap' }).catch(() => [])
      return gaps.length > 0
    }, 'the gap reported in the stream')
    t.match(gaps, [{ brokerId: gappy.brokerId, count: 200, level: 'warn', seq: 301 }], 'one audit.stream.gap line: how many lines, from which process')
    const kept = await everything(steady, { event: 'payload.rejected' })
    t.same([kept.length, kept[0]?.seq, kept.at(-1)?.seq], [100, 201, 300], 'the newest 100 arrived, in order')
    const scrape = await createMetrics({ auditStream: () => gappy.stats() }).registry.metrics()
    t.match(scrape, /jitp_audit_stream_dropped_total 200\n/, 'and a metric counts them')
    t.match(scrape, /jitp_audit_stream_backlog 0\n/)

    // the stream verifies per process: each chain from its first line kept (the restarted Redis lost the older ones)
    const raw = await admin.xrange('t:outage', '-', '+')
    const verifier = new ChainVerifier({ merged: true, partial: true })
    raw.forEach(([, fields], i) => { verifier.push('stream', i + 1, fields[1] ?? '') })
    t.match(verifier.finish(), { ok: true, chains: 2, lines: raw.length }, 'steady\'s and gappy\'s chains intact in the stream')
    // and so does what a query returns (parsed, re-serialized: the canonical form does not depend on bytes or key order)
    const viaQuery = new ChainVerifier({ merged: true, partial: true })
    ;(await everything(steady, {})).forEach((r, i) => { viaQuery.push('query', i + 1, JSON.stringify({ hash: r.hash, ...r })) })
    t.match(viaQuery.finish(), { ok: true, chains: 2 })
  })
})
