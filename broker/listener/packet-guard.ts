/**
 * The packet-size guard: reads each MQTT fixed header as the bytes arrive and
 * closes the connection as soon as a header announces a packet larger than the
 * limit, before its body is buffered anywhere (CONTRACT §11).
 *
 * Why a wrapper around the socket's `read`: neither Aedes 1.2 nor mqtt-packet
 * has a size limit. Aedes' client calls `conn.read(null)` on 'readable' and
 * feeds every chunk to mqtt-packet, which keeps the bytes in a BufferList until
 * the whole packet is there; only then does any hook (preConnect, authorizePublish)
 * see it. A claim certificate could make the broker hold 256 MB per packet.
 * Wrapping `read` on the one TLS socket puts the check in the only path the
 * bytes take on their way to the parser (Aedes reads in paused mode; a 'data'
 * listener in flowing mode would bypass `read`, and nothing here attaches one).
 *
 * The scanner is cheap on the hot path: a body is skipped with one subtraction
 * per chunk, and only the 2 to 5 header bytes of each packet are looked at.
 */
import type { TLSSocket } from 'node:tls'

/** [MQTT-3.1] a CONNECT is small: client id, will, credentials; 16 KiB is generous */
export const MAX_CONNECT_BYTES = 16 * 1024

export type GuardVerdict = 'ok' | 'PacketTooLarge' | 'ProtocolError'

/**
 * Incremental fixed-header scanner over one connection's byte stream.
 * The remaining length is a variable byte integer of at most 4 bytes [MQTT-2.2.3].
 */
export class FixedHeaderScanner {
  /** bytes of the current packet's body still to pass through */
  private skip = 0
  /** 0 at a packet boundary, 1 after the type byte, 2..5 after each length byte */
  private headerBytes = 0
  private length = 0
  private multiplier = 1
  private first = true
  /** the announced size of the packet that broke the limit, for the audit */
  announced = 0

  constructor (private readonly maxPacketBytes: number, private readonly maxConnectBytes = MAX_CONNECT_BYTES) {}

  scan (chunk: Buffer): GuardVerdict {
    const n = chunk.length
    let i = 0
    while (i < n) {
      if (this.skip > 0) {
        const take = Math.min(this.skip, n - i)
        this.skip -= take
        i += take
        continue
      }
      if (this.headerBytes === 0) {
        // the type and flags byte; the parser judges the flags. The first packet
        // must be a CONNECT [MQTT-3.1.0-1]: Aedes would close the socket silently
        if (this.first && (chunk[i]! >> 4) !== 1) return 'ProtocolError'
        this.headerBytes = 1
        this.length = 0
        this.multiplier = 1
        i++
        continue
      }
      const b = chunk[i++]!
      this.length += (b & 0x7f) * this.multiplier
      this.multiplier *= 128
      this.headerBytes++
      if ((b & 0x80) !== 0) {
        // a fifth length byte is malformed [MQTT-2.2.3]
        if (this.headerBytes === 5) return 'ProtocolError'
        continue
      }
      const size = this.headerBytes + this.length
      const limit = this.first ? this.maxConnectBytes : this.maxPacketBytes
      if (size > limit) {
        this.announced = size
        return 'PacketTooLarge'
      }
      this.first = false
      this.skip = this.length
      this.headerBytes = 0
    }
    return 'ok'
  }

  /** true until the first packet's header (the CONNECT's) has passed */
  get beforeFirstPacket (): boolean {
    return this.first
  }
}

/** what a guarded socket carries: its scanner, whether it tripped, and whom to tell */
class SocketGuard<C> extends FixedHeaderScanner {
  tripped = false
  constructor (
    maxPacketBytes: number,
    readonly read: TLSSocket['read'],
    readonly onViolation: (verdict: Exclude<GuardVerdict, 'ok'>, scanner: FixedHeaderScanner, context: C) => void,
    readonly context: C
  ) {
    super(maxPacketBytes)
  }
}

const kGuard = Symbol('packet guard')
type GuardedSocket = TLSSocket & { [kGuard]: SocketGuard<unknown> }

/**
 * The one `read` every guarded socket gets: its state is the socket's guard, so a
 * connection costs one object here instead of a closure with its context (the
 * broker keeps thousands of idle connections).
 */
function guardedRead (this: GuardedSocket, size?: number): unknown {
  const guard = this[kGuard]
  const chunk: unknown = guard.read.call(this, size)
  if (chunk === null || guard.tripped || !Buffer.isBuffer(chunk)) return chunk
  const verdict = guard.scan(chunk)
  if (verdict === 'ok') return chunk
  guard.tripped = true
  this.destroy()
  guard.onViolation(verdict, guard, guard.context)
  return null
}

/**
 * Wraps `socket.read` so every chunk Aedes takes is scanned first. On a violation
 * the socket is destroyed, `onViolation` is told once (with `context`), and the
 * chunk is withheld (Aedes gets null, as from an empty socket).
 */
export function guardPackets<C> (
  socket: TLSSocket,
  maxPacketBytes: number,
  onViolation: (verdict: Exclude<GuardVerdict, 'ok'>, scanner: FixedHeaderScanner, context: C) => void,
  context: C
): FixedHeaderScanner {
  // a second guard would take the shared guardedRead for the original read and call itself
  if (kGuard in socket) throw new Error('packet guard: this socket is guarded already')
  const guard = new SocketGuard(maxPacketBytes, socket.read, onViolation, context)
  ;(socket as GuardedSocket)[kGuard] = guard as SocketGuard<unknown>
  socket.read = guardedRead as TLSSocket['read']
  return guard
}
