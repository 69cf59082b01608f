/**
 * OAuth2 clients through the admin API (CONTRACT §8, §10), on both stores:
 * - POST /v1/clients returns the secret once (201); GET (paginated) and
 *   GET /v1/clients/{id} never show it; DELETE removes the client (then 404)
 * - the store keeps a salted scrypt hash only (read raw from Redis), verifies
 *   in constant time, and 100 wrong secrets at once do not stall the event loop
 * - every input that breaks a schema is 400 InvalidRequest; the routes are in
 *   /openapi.json; client.created / client.deleted audited with the operator,
 *   never the secret
 * - the real CLI: clients create / list / delete, tables and --json
 */
import t from 'tap'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { Redis } from 'ioredis'
import { adminRequest } from '../helpers/admin.js'
import { startBroker, STORES, type TestBroker } from '../helpers/broker.js'
import { cli } from '../helpers/cli.js'
import { clientSecretMatches, hashClientSecret, HashingBusy } from '../../broker/store/client-secrets.js'

function port (tb: TestBroker): number {
  if (tb.adminPort === null) throw new Error('the admin API did not start')
  return tb.adminPort
}

for (const store of STORES) {
  t.test(`OAuth2 clients on the ${store} store`, async (t) => {
    const tb = await startBroker({ store })
    t.teardown(() => tb.close())
    const p = port(tb)
    const secrets: string[] = []

    t.test('create: 201 with the secret, once; GET never shows it', async (t) => {
      const res = await adminRequest(p, tb.pki, 'POST', '/v1/clients', { body: { name: 'grafana bridge', scopes: ['telemetry:read', 'state:read'] } })
      t.equal(res.status, 201, res.raw)
      const c = res.body as { clientId: string, clientSecret: string, scopes: string[], name: string }
      t.match(c, { clientId: /^[0-9a-f]{32}$/, clientSecret: /^[A-Za-z0-9_-]{43}$/, scopes: ['telemetry:read', 'state:read'], name: 'grafana bridge' })
      secrets.push(c.clientSecret)
      const one = await adminRequest(p, tb.pki, 'GET', `/v1/clients/${c.clientId}`)
      t.match(one, { status: 200, body: { clientId: c.clientId, name: 'grafana bridge', scopes: ['telemetry:read', 'state:read'], createdAt: Number } })
      t.notOk('clientSecret' in one.body, 'no secret field')
      t.notOk(one.raw.includes(c.clientSecret), 'the secret is not in the answer')
      const list = await adminRequest(p, tb.pki, 'GET', '/v1/clients')
      t.notOk(list.raw.includes(c.clientSecret), 'nor in the list')
      t.notMatch(list.raw + one.raw, /scrypt\$/, 'nor its hash')
      await tb.handle.audit.flush()
      t.match(tb.events('client.created').at(-1), { oauthClientId: c.clientId, actor: 'admin-dev', scope: 'telemetry:read state:read' })
    })

    t.test('the store keeps a salted slow hash and checks it', async (t) => {
      const clients = tb.handle.oauthClients
      const c = await clients.create('hash check', ['pii'])
      secrets.push(c.clientSecret)
      t.equal(await clients.verify(c.clientId, c.clientSecret), 'ok')
      t.equal(await clients.verify(c.clientId, c.clientSecret.slice(0, -1) + (c.clientSecret.endsWith('A') ? 'B' : 'A')), 'bad-secret')
      t.equal(await clients.verify('ffffffffffffffffffffffffffffffff', c.clientSecret), 'unknown')
      if (tb.redis) {
        const raw = new Redis(tb.redis.url)
        t.teardown(() => raw.disconnect())
        const stored = await raw.hgetall('jitp:oauth:clients')
        const text = JSON.stringify(stored)
        for (const s of secrets) t.notOk(text.includes(s), 'no secret in Redis')
        t.match(JSON.parse(stored[c.clientId]!).secretHash, /^scrypt\$16384\$8\$1\$[A-Za-z0-9_-]{22}\$[A-Za-z0-9_-]{43}$/, 'scrypt, its salt and hash')
      }
      // salted: the same secret hashes differently twice, and both verify
      const [a, b] = await Promise.all([hashClientSecret('same'), hashClientSecret('same')])
      t.not(a, b, 'a salt per hash')
      t.ok(await clientSecretMatches('same', a) && await clientSecretMatches('same', b))
      t.notOk(await clientSecretMatches('same', 'scrypt$1099511627776$8$1$AAAA$AAAA'), 'a tampered cost is refused, not run')
    })

    if (store === 'memory') {
      t.test('100 wrong secrets at once: hashed a few at a time, off the event loop; the rest turned away', async (t) => {
        const c = await tb.handle.oauthClients.create('stall check', ['state:read'])
        const h = monitorEventLoopDelay({ resolution: 10 })
        h.enable()
        const started = Date.now()
        // the synchronous part of starting 100 checks: a hash done on the event loop would show here (~50 ms each)
        let syncNs = 0n
        const checks: Array<Promise<string>> = []
        for (let i = 0; i < 100; i++) {
          const t0 = process.hrtime.bigint()
          checks.push(tb.handle.oauthClients.verify(c.clientId, `wrong-${i}`).catch((err: unknown) => err instanceof HashingBusy ? 'busy' : 'error'))
          syncNs += process.hrtime.bigint() - t0
        }
        const outcomes = await Promise.all(checks)
        h.disable()
        const checked = outcomes.filter((o) => o === 'bad-secret').length
        t.equal(checked + outcomes.filter((o) => o === 'busy').length, 100, `every guess refused (${checked} hashed, the rest busy)`)
        t.ok(checked <= 18, 'at most 2 hashing and 16 waiting')
        const syncMs = Number(syncNs) / 1e6
        t.ok(syncMs < 200, `starting 100 checks held the event loop ${syncMs.toFixed(1)} ms in all`)
        t.comment(`event loop delay while hashing: max ${(h.max / 1e6).toFixed(0)} ms over ${Date.now() - started} ms (a loaded machine adds its own)`)
        t.equal(await tb.handle.oauthClients.verify(c.clientId, 'wrong'), 'bad-secret', 'the queue drains: the next check runs')
      })
    }

    t.test('list is paginated and ordered by client id', async (t) => {
      for (const name of ['p1', 'p2', 'p3']) t.equal((await adminRequest(p, tb.pki, 'POST', '/v1/clients', { body: { name, scopes: ['config:read'] } })).status, 201)
      const all = (await tb.handle.oauthClients.list()).map((c) => c.clientId)
      t.ok(all.length >= 5)
      t.same(all, [...all].sort(), 'ordered')
      const seen: string[] = []
      let cursor: string | null = null
      for (let i = 0; i < 10; i++) {
        const page = await adminRequest(p, tb.pki, 'GET', `/v1/clients?limit=2${cursor ? `&cursor=${cursor}` : ''}`)
        t.equal(page.status, 200, page.raw)
        t.ok(page.body.items.length <= 2)
        seen.push(...(page.body.items as Array<{ clientId: string }>).map((c) => c.clientId))
        cursor = page.body.nextCursor as string | null
        if (!cursor) break
      }
      t.same(seen, all, 'the pages add up to the whole list')
      t.match(await adminRequest(p, tb.pki, 'GET', '/v1/clients?cursor=bm90LWEtY3Vyc29y'), { status: 400, body: { errorCode: 'InvalidCursor' } })
    })

    t.test('delete: 200, then 404; audited with the operator', async (t) => {
      const made = await adminRequest(p, tb.pki, 'POST', '/v1/clients', { body: { name: 'short lived', scopes: ['commands:write'] } })
      const id = made.body.clientId as string
      secrets.push(made.body.clientSecret as string)
      t.match(await adminRequest(p, tb.pki, 'DELETE', `/v1/clients/${id}`), { status: 200, body: { clientId: id, deleted: true } })
      t.match(await adminRequest(p, tb.pki, 'GET', `/v1/clients/${id}`), { status: 404, body: { errorCode: 'ClientNotFound' } })
      t.match(await adminRequest(p, tb.pki, 'DELETE', `/v1/clients/${id}`), { status: 404, body: { errorCode: 'ClientNotFound' } })
      t.equal(await tb.handle.oauthClients.verify(id, made.body.clientSecret as string), 'unknown', 'its secret verifies no more')
      t.match(tb.events('client.deleted').at(-1), { oauthClientId: id, actor: 'admin-dev' })
    })

    t.test('inputs that break the schemas: 400 InvalidRequest', async (t) => {
      const bad: Array<[string, string, unknown?]> = [
        ['POST', '/v1/clients', { name: 'x', scopes: [] }],
        ['POST', '/v1/clients', { name: 'x', scopes: ['admin'] }],
        ['POST', '/v1/clients', { name: 'x', scopes: ['pii', 'pii'] }],
        ['POST', '/v1/clients', { scopes: ['pii'] }],
        ['POST', '/v1/clients', { name: '', scopes: ['pii'] }],
        ['POST', '/v1/clients', { name: 'line\nbreak', scopes: ['pii'] }],
        ['POST', '/v1/clients', { name: 'x', scopes: ['pii'], clientSecret: 'chosen-by-me' }],
        ['GET', '/v1/clients?limit=0'],
        ['GET', '/v1/clients?x=1'],
        ['GET', '/v1/clients/bad%2Fid'],
        ['DELETE', '/v1/clients/bad.id']
      ]
      for (const [method, path, body] of bad) {
        const res = await adminRequest(p, tb.pki, method, path, { body })
        t.match(res, { status: 400, body: { errorCode: 'InvalidRequest' } }, `${method} ${path} ${JSON.stringify(body) ?? ''}`)
      }
    })

    if (store === 'memory') {
      t.test('/openapi.json lists the client routes', async (t) => {
        const doc = await adminRequest(p, tb.pki, 'GET', '/openapi.json')
        const paths = doc.body.paths as Record<string, Record<string, unknown>>
        t.ok(paths['/v1/clients']?.post && paths['/v1/clients']?.get, 'POST and GET /v1/clients')
        t.ok(paths['/v1/clients/{id}']?.get && paths['/v1/clients/{id}']?.delete, 'GET and DELETE /v1/clients/{id}')
      })

      t.test('the CLI: clients create, list, delete', async (t) => {
        const env = { CERTS_DIR: tb.pki.dir, ADMIN_PORT: String(p) }
        const created = await cli(['clients', 'create', '--name', 'cli service', '--scopes', 'telemetry:read,commands:write', '--json'], env)
        t.equal(created.code, 0, created.stderr)
        const c = JSON.parse(created.stdout) as { clientId: string, clientSecret: string, scopes: string[] }
        t.match(c, { clientId: /^[0-9a-f]{32}$/, clientSecret: /^[A-Za-z0-9_-]{43}$/, scopes: ['telemetry:read', 'commands:write'] })
        secrets.push(c.clientSecret)
        t.equal(await tb.handle.oauthClients.verify(c.clientId, c.clientSecret), 'ok', 'the printed secret is the real one')
        const human = await cli(['clients', 'create', '--name', 'cli table', '--scopes', 'state:read'], env)
        t.equal(human.code, 0, human.stderr)
        t.match(human.stdout, /^client secret\s+[A-Za-z0-9_-]{43}$/m, 'a table with the secret')
        t.match(human.stderr, /shown only now/)
        secrets.push(/client secret\s+(\S+)/.exec(human.stdout)![1]!)

        const list = await cli(['clients', 'list'], env)
        t.equal(list.code, 0, list.stderr)
        t.match(list.stdout, /^CLIENT\s+NAME\s+SCOPES\s+CREATED/m)
        t.match(list.stdout, new RegExp(`^${c.clientId}\\s+cli service\\s+telemetry:read commands:write`, 'm'))
        const json = JSON.parse((await cli(['clients', 'list', '--json'], env)).stdout) as Array<{ clientId: string }>
        t.ok(json.some((x) => x.clientId === c.clientId))
        t.notOk(list.stdout.includes(c.clientSecret), 'list never prints a secret')

        const del = await cli(['clients', 'delete', c.clientId], env)
        t.equal(del.code, 0, del.stderr)
        t.equal(del.stdout, `${c.clientId}: deleted\n`)
        const again = await cli(['clients', 'delete', c.clientId], env)
        t.not(again.code, 0, 'deleting twice fails')
        t.match(again.stderr, /ClientNotFound/)
        const badScope = await cli(['clients', 'create', '--name', 'x', '--scopes', 'root'], env)
        t.not(badScope.code, 0)
        t.match(badScope.stderr, /unknown scope 'root'/)
      })
    }

    t.test('no secret in the audit log', async (t) => {
      await tb.handle.audit.flush()
      const all = tb.audit.raw.join('\n')
      t.ok(secrets.length >= 3)
      for (const s of secrets) t.notOk(all.includes(s), 'secret not audited')
    })
  })
}
