import t from 'tap'
import { TLSSocket } from 'node:tls'
import { Socket } from 'node:net'
import { guardPackets } from '../../broker/listener/packet-guard.js'

// the guard's state lives on the socket and one shared `read` serves every socket:
// a second guard would take that shared read for the original and call itself for ever
t.test('a socket is guarded once: a second guard is refused, the first keeps working', async (t) => {
  const socket = new TLSSocket(new Socket())
  t.teardown(() => socket.destroy())
  const first = guardPackets(socket, 1024, () => {}, null)
  const read = socket.read
  t.throws(() => guardPackets(socket, 1024, () => {}, null), /guarded already/)
  t.equal(socket.read, read, 'the refused guard did not replace read')
  t.equal(first.beforeFirstPacket, true)
  t.equal(socket.read(0), null, 'reading an empty socket through the guard answers null, no recursion')
})

t.test('each socket gets its own state behind the one shared read', async (t) => {
  const a = new TLSSocket(new Socket())
  const b = new TLSSocket(new Socket())
  t.teardown(() => { a.destroy(); b.destroy() })
  const told: Array<[string, string]> = []
  const ga = guardPackets(a, 1024, (verdict, _scanner, ctx: string) => { told.push([verdict, ctx]) }, 'a')
  const gb = guardPackets(b, 1024, (verdict, _scanner, ctx: string) => { told.push([verdict, ctx]) }, 'b')
  t.equal(a.read, b.read, 'one function for every socket')
  t.not(ga, gb)
  // a CONNECT header announcing more than the CONNECT limit, scanned on a only
  t.equal(ga.scan(Buffer.from([0x10, 0xff, 0xff, 0x03])), 'PacketTooLarge')
  t.equal(gb.scan(Buffer.from([0x10, 0x02])), 'ok', 'b scans on its own state')
  t.same(told, [], 'scan alone tells nobody: only a read that trips does')
})

t.test('a violation: the chunk withheld, the socket destroyed, the listener told once with its context', async (t) => {
  const socket = new TLSSocket(new Socket())
  t.teardown(() => socket.destroy())
  const told: Array<[string, string]> = []
  guardPackets(socket, 1024, (verdict, scanner, ctx: string) => { told.push([verdict, `${ctx}:${scanner.announced}`]) }, 'conn-1')
  // a first packet that is a CONNECT announcing 65,536 + 2 bytes, beyond the CONNECT limit
  socket.push(Buffer.from([0x10, 0x80, 0x80, 0x04]))
  t.equal(socket.read(), null, 'the offending chunk never reaches the reader')
  t.ok(socket.destroyed)
  t.same(told, [['PacketTooLarge', 'conn-1:65540']])
})
