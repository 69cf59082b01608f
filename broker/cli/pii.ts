/**
 * `aedes-jitp pii decrypt --key-dir D`: opens the envelopes of the "encrypt"
 * treatment (CONTRACT §5, broker/pii-keys.ts) offline, for whoever holds the keys.
 *
 * Reads one JSON document from stdin (or, when that does not parse, one JSON
 * document per line: a subscriber's capture), replaces every
 * `{"enc": "...", "kid": "..."}` that a key of D opens by its value, and writes
 * the JSON to stdout (one line per document read). An envelope whose key is not
 * in D, or that does not authenticate, stays as it is.
 *
 * Exit codes: 0 every envelope was opened (or there was none); 2 some stayed
 * sealed (stderr says how many and under which key ids, the output is still
 * written); 1 bad usage, unreadable keys or input that is not JSON.
 * Loads neither the broker nor any store.
 */
import { parseArgs } from 'node:util'
import { isEnvelope, loadPiiKeyring, type PiiKeyring } from '../pii-keys.js'

const USAGE = 'usage: aedes-jitp pii decrypt --key-dir DIR  < document.json > clear.json'

export interface DecryptOutcome { readonly value: unknown, readonly opened: number, readonly sealed: number, readonly unknownKids: ReadonlySet<string> }

/** Opens every envelope it can in `doc`, wherever it sits (an explicit stack: a deep document cannot overflow). */
export function decryptDocument (doc: unknown, keys: PiiKeyring): DecryptOutcome {
  let opened = 0
  let sealed = 0
  const unknownKids = new Set<string>()
  function open (value: unknown): { value: unknown } | undefined {
    if (!isEnvelope(value)) return undefined
    const clear = keys.open(value)
    if (clear === undefined) {
      sealed++
      unknownKids.add(value.kid)
      return undefined
    }
    opened++
    return clear
  }
  const top = open(doc)
  if (top !== undefined) return { value: top.value, opened, sealed, unknownKids }
  const stack: unknown[] = [doc]
  while (stack.length > 0) {
    const node = stack.pop()
    if (node === null || typeof node !== 'object') continue
    const container = node as Record<string | number, unknown>
    const keysOf: Array<string | number> = Array.isArray(node) ? node.map((_v, i) => i) : Object.keys(node)
    for (const k of keysOf) {
      const value = container[k]
      if (value === null || typeof value !== 'object') continue
      const clear = open(value)
      if (clear !== undefined) container[k] = clear.value
      else if (!isEnvelope(value)) stack.push(value)
    }
  }
  return { value: doc, opened, sealed, unknownKids }
}

async function readStdin (): Promise<string> {
  const chunks: Buffer[] = []
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer)
  return Buffer.concat(chunks).toString('utf8')
}

/** the documents in the input: the whole of it, or else one per non-empty line */
function documents (text: string): unknown[] {
  try {
    return [JSON.parse(text) as unknown]
  } catch {
    const lines = text.split('\n').filter((l) => l.trim() !== '')
    if (lines.length === 0) throw new Error('pii decrypt: no JSON on stdin')
    return lines.map((line, i) => {
      try {
        return JSON.parse(line) as unknown
      } catch {
        throw new Error(`pii decrypt: stdin is neither one JSON document nor one per line (line ${i + 1} does not parse)`)
      }
    })
  }
}

export async function piiCommand (argv: string[]): Promise<number> {
  const [sub, ...rest] = argv
  if (sub !== 'decrypt') throw new Error(USAGE)
  const { values } = parseArgs({ args: rest, options: { 'key-dir': { type: 'string' } }, strict: true })
  const dir = values['key-dir']
  if (dir === undefined) throw new Error(USAGE)
  const keys = loadPiiKeyring(dir)
  const docs = documents(await readStdin())
  let sealed = 0
  const unknownKids = new Set<string>()
  const out: string[] = []
  for (const doc of docs) {
    const r = decryptDocument(doc, keys)
    sealed += r.sealed
    for (const kid of r.unknownKids) unknownKids.add(kid)
    out.push(JSON.stringify(r.value))
  }
  process.stdout.write(out.join('\n') + '\n')
  if (sealed === 0) return 0
  process.stderr.write(`aedes-jitp: pii decrypt: ${sealed} envelope(s) left sealed (key ids not in ${dir} or not matching: ${[...unknownKids].map((k) => JSON.stringify(k.slice(0, 64))).join(', ')})\n`)
  return 2
}
