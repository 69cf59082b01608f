/** `aedes-jitp audit [--follow] [--event GLOB] [--device ID] [FILE]`: the audit log for humans. */
import { createReadStream, existsSync, statSync, watch } from 'node:fs'
import { createInterface } from 'node:readline'
import { parseArgs } from 'node:util'

function globToRegExp (glob: string): RegExp {
  const escaped = glob.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.')
  return new RegExp(`^${escaped}$`)
}

/**
 * Every control character a terminal could act on: C0, DEL, C1, and the Unicode
 * line and paragraph separators. A client id is chosen by the client: unescaped,
 * `\n` would forge a second audit line and ANSI escapes would repaint the screen.
 */
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g
const NAMED: Readonly<Record<string, string>> = { '\n': '\\n', '\r': '\\r', '\t': '\\t' }

/** `\n`, `\r`, `\t` by name, the others as `\xNN` or `\uNNNN`; a backslash doubled so an escape cannot be forged either */
export function escapeControl (value: string): string {
  return value.replace(/\\/g, '\\\\').replace(CONTROL, (c) => {
    const named = NAMED[c]
    if (named !== undefined) return named
    const code = c.charCodeAt(0)
    return code <= 0xff ? `\\x${code.toString(16).padStart(2, '0')}` : `\\u${code.toString(16).padStart(4, '0')}`
  })
}

const SHOWN = ['clientId', 'deviceId', 'role', 'topic', 'errorCode', 'reason', 'remoteAddress', 'certificateId', 'template', 'version', 'count']

export function formatLine (line: string, filter: { event?: RegExp, device?: string }): string | null {
  let entry: Record<string, unknown>
  try {
    entry = JSON.parse(line) as Record<string, unknown>
  } catch {
    return null
  }
  if (typeof entry.event !== 'string') return null
  if (filter.event && !filter.event.test(entry.event)) return null
  if (filter.device && entry.deviceId !== filter.device) return null
  const time = typeof entry.time === 'number' ? new Date(entry.time).toISOString() : '-'
  const level = typeof entry.level === 'string' ? escapeControl(entry.level.toUpperCase()) : ''
  const details = SHOWN.filter((k) => entry[k] !== undefined).map((k) => `${k}=${escapeControl(String(entry[k]))}`).join(' ')
  return `${time} ${level.padEnd(5)} ${escapeControl(entry.event).padEnd(28)} ${details}`
}

export async function auditCommand (args: string[]): Promise<number | null> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { follow: { type: 'boolean', short: 'f', default: false }, event: { type: 'string' }, device: { type: 'string' } }
  })
  const file = positionals[0] ?? process.env.AUDIT_LOG
  const filter = { event: values.event ? globToRegExp(values.event) : undefined, device: values.device }
  const print = (line: string): void => {
    const out = formatLine(line, filter)
    if (out !== null) process.stdout.write(out + '\n')
  }
  if (!file || file === 'stdout' || file === '-') {
    for await (const line of createInterface({ input: process.stdin })) print(line)
    return 0
  }
  if (!existsSync(file)) throw new Error(`audit: no such file ${file}`)
  let position = 0
  const readFrom = async (start: number): Promise<number> => {
    const size = statSync(file).size
    if (size < start) start = 0 // rotated or truncated
    if (size === start) return start
    const rl = createInterface({ input: createReadStream(file, { start, end: size - 1 }) })
    let consumed = start
    for await (const line of rl) {
      consumed += Buffer.byteLength(line) + 1
      print(line)
    }
    return Math.min(consumed, size)
  }
  position = await readFrom(0)
  if (!values.follow) return 0
  let busy = false
  watch(file, () => {
    if (busy) return
    busy = true
    readFrom(position).then((p) => { position = p; busy = false }, () => { busy = false })
  })
  return null
}
