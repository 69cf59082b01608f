/**
 * The keys of the "encrypt" treatment of x-pii values (CONTRACT §5): what a
 * subscriber without the `pii` permission receives in place of a value is an
 * AES-256-GCM envelope `{"enc": "<base64 of iv|ciphertext|tag>", "kid": "<key id>"}`
 * that holders of the key open offline (`aedes-jitp pii decrypt --key-dir D`).
 *
 * PII_KEYS_DIR holds one file per key: the file name is the key id, the content
 * the base64 of 32 random bytes (`openssl rand -base64 32 > 2026-07`). The key
 * whose id sorts LAST (plain code-unit order, so date-prefixed ids such as
 * 2026-01, 2026-07 work) encrypts; every key decrypts, so an envelope made
 * before a key was added still opens. Name order rather than modification time,
 * so every broker process given the same files picks the same key whatever the
 * copy did to the file times. Dotfiles and names outside [A-Za-z0-9._-] (editor
 * backups such as `k1~`) are ignored; any other file must hold a valid key, or
 * the start (and a reload) is refused naming the file.
 *
 * These keys are not the storage key (PII_KEY, broker/pii-crypto.ts): they are
 * meant to be handed to whoever may read the values downstream, and their
 * envelopes are bound to this purpose by their own associated data.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { watchDir } from './dir-watch.js'
import type { AppLogger } from './logger.js'
import { isEnvelope, openJson, sealJson, type Envelope } from './pii-crypto.js'

export { isEnvelope }

export interface PiiKeyring {
  readonly dir: string
  /** the key id that encrypts: the last in name order */
  readonly newest: string
  readonly kids: readonly string[]
  /** a fresh envelope of the value's JSON under the newest key */
  seal (value: unknown): Envelope
  /** the value in an envelope one of these keys made, or undefined (not an envelope, unknown kid, altered) */
  open (value: unknown): { value: unknown } | undefined
}

const AAD = Buffer.from('aedes-jitp x-pii encrypt v1')
const KID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/
const KEY_TEXT = /^[A-Za-z0-9+/]{43}=$/
/** the base64 of 32 bytes, with room for line endings and blanks around it */
const MAX_KEY_FILE_BYTES = 256

/** Reads every key in `dir`; throws an Error naming the file (or the directory) when one is unusable. */
export function loadPiiKeyring (dir: string): PiiKeyring {
  let names: string[]
  try {
    names = readdirSync(dir)
  } catch (err) {
    throw new Error(`PII_KEYS_DIR: cannot read ${dir} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`)
  }
  const keys = new Map<string, Buffer>()
  for (const name of names) {
    if (!KID.test(name)) continue
    const file = join(dir, name)
    const stat = statSync(file)
    if (!stat.isFile()) continue
    // a key file is 44 characters and a newline: anything much bigger is not a key, and is not read whole
    if (stat.size > MAX_KEY_FILE_BYTES) throw new Error(`PII_KEYS_DIR: ${file} does not hold the base64 of 32 bytes (${stat.size} bytes)`)
    const text = readFileSync(file, 'utf8').trim()
    if (!KEY_TEXT.test(text)) throw new Error(`PII_KEYS_DIR: ${file} does not hold the base64 of 32 bytes`)
    keys.set(name, Buffer.from(text, 'base64'))
  }
  if (keys.size === 0) throw new Error(`PII_KEYS_DIR: ${dir} holds no key (one file per key id, the base64 of 32 bytes)`)
  const kids = [...keys.keys()].sort((a, b) => a < b ? -1 : a > b ? 1 : 0)
  const newest = kids[kids.length - 1]!
  const sealKey = keys.get(newest)!

  return Object.freeze({
    dir,
    newest,
    kids,
    seal (value: unknown): Envelope {
      return { enc: sealJson(sealKey, AAD, value), kid: newest }
    },
    open (value: unknown): { value: unknown } | undefined {
      if (!isEnvelope(value)) return undefined
      const key = keys.get(value.kid)
      return key === undefined ? undefined : openJson(key, AAD, value.enc)
    }
  })
}

export interface PiiKeyringHolder {
  current (): PiiKeyring
  close (): void
}

/**
 * The keyring, read again when the directory changes (a key added for a
 * rotation is used without a restart). A directory that becomes unusable keeps
 * the keys last read, with a warning: encryption never stops, nor falls back.
 */
export function watchPiiKeyring (dir: string, log: Pick<AppLogger, 'warn'>): PiiKeyringHolder {
  let ring = loadPiiKeyring(dir)
  const watcher = watchDir({
    dir,
    wants: (name) => KID.test(name),
    debounceMs: 200,
    pollMs: 10_000,
    log,
    what: 'PII keys',
    onChange () {
      try {
        const next = loadPiiKeyring(dir)
        const changed = next.kids.join('\n') !== ring.kids.join('\n')
        ring = next
        if (changed) log.warn({ newest: next.newest, keys: next.kids.length }, 'PII_KEYS_DIR changed: keys read again')
      } catch (err) {
        log.warn({ err: (err as Error).message }, 'PII_KEYS_DIR: keys not read again, the previous ones stay in use')
      }
    }
  })
  return {
    current: () => ring,
    close: () => watcher.close()
  }
}
