import t from 'tap'
import { createServer, Agent } from 'node:https'
import type { AddressInfo, Socket } from 'node:net'
import { adminCall } from '../../broker/cli/admin-client.js'
import { devPki } from '../helpers/broker.js'

// `aedes-jitp simulate` keeps its admin connections alive; the admin API closes one that
// stayed idle for keepAliveTimeout. A request sent on it just then never reaches the API:
// it failed as "refused the client certificate" (a CI run of test/e2e/simulate.test.ts)
t.test('a request on a kept-alive connection the server just closed goes out once more, on a fresh one', async (t) => {
  const pki = await devPki()
  const connections: Socket[] = []
  const seen: string[] = []
  const server = createServer({ key: pki.read('server.key'), cert: pki.read('server.pem') }, (req, res) => {
    seen.push(`${connections.indexOf(req.socket)}:${req.url ?? ''}`)
    // the second request on the first connection: the server closes it instead of answering,
    // as it does with a connection whose idle timer fired as the request came in
    if (req.url === '/v1/second' && req.socket === connections[0]) {
      req.socket.destroy()
      return
    }
    res.setHeader('content-type', 'application/json')
    res.end(JSON.stringify({ url: req.url }))
  })
  server.on('secureConnection', (socket: Socket) => connections.push(socket))
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()) }))
  const agent = new Agent({ keepAlive: true, maxSockets: 1 })
  t.teardown(() => agent.destroy())
  const target = {
    url: new URL(`https://127.0.0.1:${(server.address() as AddressInfo).port}`),
    cert: pki.read('admin.pem'),
    key: pki.read('admin.key'),
    ca: pki.read('root-ca.pem'),
    agent
  }
  t.same(await adminCall(target, 'GET', '/v1/first'), { url: '/v1/first' })
  t.same(await adminCall(target, 'POST', '/v1/second', { a: 1 }), { url: '/v1/second' }, 'answered, where it failed before')
  t.same(seen, ['0:/v1/first', '0:/v1/second', '1:/v1/second'], 'dropped on the kept-alive connection, answered on a new one')
  t.equal(connections.length, 2)
  // a refusal on a fresh connection is still what it was: no second attempt
  server.removeAllListeners('request')
  server.on('request', (req: { socket: Socket }) => { req.socket.destroy() })
  const fresh = { url: target.url, cert: target.cert, key: target.key, ca: target.ca }
  await t.rejects(adminCall(fresh, 'GET', '/v1/third'), /refused the client certificate/)
  t.equal(connections.length, 3, 'one connection, no retry')
})
