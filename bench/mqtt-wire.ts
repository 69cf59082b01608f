/**
 * The smallest MQTT 3.1.1 codec a load generator needs: CONNECT, SUBSCRIBE,
 * PUBLISH, PUBACK, DISCONNECT out; CONNACK, SUBACK, PUBLISH, PUBACK in. Lean on
 * purpose, so the generator is never the bottleneck of a measurement.
 */

export const PacketType = Object.freeze({ CONNACK: 2, PUBLISH: 3, PUBACK: 4, SUBACK: 9, PINGRESP: 13 })

export const DISCONNECT = Buffer.from([0xe0, 0x00])

/** the fixed header's variable-length Remaining Length [MQTT-2.2.3] (the security tests announce sizes with it) */
export function remainingLength (n: number): number[] {
  const out: number[] = []
  do {
    let byte = n % 128
    n = Math.floor(n / 128)
    if (n > 0) byte |= 0x80
    out.push(byte)
  } while (n > 0)
  return out
}

export function withHeader (first: number, body: Buffer): Buffer {
  const len = remainingLength(body.length)
  const out = Buffer.allocUnsafe(1 + len.length + body.length)
  out[0] = first
  for (let i = 0; i < len.length; i++) out[1 + i] = len[i]!
  body.copy(out, 1 + len.length)
  return out
}

/** an MQTT UTF-8 string: two bytes of length, then the bytes */
export function utf8Field (s: string): Buffer {
  const b = Buffer.from(s, 'utf8')
  const out = Buffer.allocUnsafe(2 + b.length)
  out.writeUInt16BE(b.length, 0)
  b.copy(out, 2)
  return out
}

export function connectPacket (clientId: string, opts: { clean: boolean, keepalive: number }): Buffer {
  const head = Buffer.from([0x00, 0x04, 0x4d, 0x51, 0x54, 0x54, 0x04, opts.clean ? 0x02 : 0x00, opts.keepalive >> 8, opts.keepalive & 0xff])
  return withHeader(0x10, Buffer.concat([head, utf8Field(clientId)]))
}

export function subscribePacket (messageId: number, topics: string | readonly string[], qos: 0 | 1): Buffer {
  const id = Buffer.from([messageId >> 8, messageId & 0xff])
  const filters = (typeof topics === 'string' ? [topics] : topics).flatMap((t) => [utf8Field(t), Buffer.from([qos])])
  return withHeader(0x82, Buffer.concat([id, ...filters]))
}

/** topic pre-encoded once per device (see topicField), payload per message */
export function publishPacket (topicField: Buffer, payload: Buffer, qos: 0 | 1, messageId: number): Buffer {
  const idLen = qos > 0 ? 2 : 0
  const bodyLen = topicField.length + idLen + payload.length
  const len = remainingLength(bodyLen)
  const out = Buffer.allocUnsafe(1 + len.length + bodyLen)
  let o = 0
  out[o++] = 0x30 | (qos << 1)
  for (const b of len) out[o++] = b
  o += topicField.copy(out, o)
  if (qos > 0) {
    out[o++] = messageId >> 8
    out[o++] = messageId & 0xff
  }
  payload.copy(out, o)
  return out
}

export function topicField (topic: string): Buffer {
  return utf8Field(topic)
}

export function pubackPacket (messageId: number): Buffer {
  return Buffer.from([0x40, 0x02, messageId >> 8, messageId & 0xff])
}

export type OnPacket = (type: number, flags: number, body: Buffer) => void

/** Splits a byte stream into packets; `push` each chunk as it arrives. */
export class PacketReader {
  private pending: Buffer | null = null

  constructor (private readonly onPacket: OnPacket) {}

  push (chunk: Buffer): void {
    let buf = this.pending ? Buffer.concat([this.pending, chunk]) : chunk
    this.pending = null
    let o = 0
    while (o < buf.length) {
      const first = buf[o]!
      let len = 0
      let mul = 1
      let i = o + 1
      let complete = false
      while (i < buf.length) {
        const b = buf[i++]!
        len += (b & 0x7f) * mul
        mul *= 128
        if ((b & 0x80) === 0) {
          complete = true
          break
        }
      }
      if (!complete || i + len > buf.length) break
      this.onPacket(first >> 4, first & 0x0f, buf.subarray(i, i + len))
      o = i + len
    }
    if (o < buf.length) this.pending = Buffer.from(buf.subarray(o))
    buf = Buffer.alloc(0)
  }
}

/** A PUBLISH body: topic, message id (QoS > 0) and payload. */
export function parsePublish (flags: number, body: Buffer): { topic: string, qos: number, messageId: number, payload: Buffer } {
  const qos = (flags >> 1) & 3
  const topicLen = body.readUInt16BE(0)
  const topic = body.toString('utf8', 2, 2 + topicLen)
  let o = 2 + topicLen
  let messageId = 0
  if (qos > 0) {
    messageId = body.readUInt16BE(o)
    o += 2
  }
  return { topic, qos, messageId, payload: body.subarray(o) }
}
