/**
 * Envelopes for personal data (CONTRACT §5, the "encrypt" form): a value marked
 * x-pii is kept in the session store and sent over Redis pub/sub only as
 * `{"enc": "<base64 of iv|ciphertext|tag>", "kid": "<key id>"}`, AES-256-GCM.
 *
 * The key is PII_KEY (base64 of 32 bytes) or, when unset, derived with
 * HKDF-SHA256 from the device CA private key: every broker process of a cluster
 * reads the same CERTS_DIR, so they all derive the same key with no extra
 * secret to distribute. `kid` is the first 8 hex digits of SHA-256 of the key,
 * so an envelope names the key that opens it and a key change is detectable.
 */
import { createCipheriv, createDecipheriv, createHash, createHmac, createPrivateKey, hkdfSync, randomBytes } from 'node:crypto'

export interface Envelope { readonly enc: string, readonly kid: string }

export interface PiiCipher {
  readonly kid: string
  /** a fresh envelope of the value's JSON */
  seal (value: unknown): Envelope
  /**
   * Opens an envelope made with this key, and again while the result is one
   * (a device may itself send something shaped like an envelope). Returns
   * `undefined` when `value` is not an envelope this key opens.
   */
  open (value: unknown): { value: unknown } | undefined
  /**
   * The "pseudonymize" treatment: `pii_` + base64url of the first 12 bytes of
   * HMAC-SHA256 over the value's canonical JSON, under a key derived from this
   * one (pseudonymKeyFrom). Stable: the same value gives the same token on every
   * process that holds the key.
   */
  pseudonym (value: unknown): string
}

/** JSON with object keys sorted (recursively): one text per value, whatever the key order it came in */
export function canonicalJson (value: unknown): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value) ?? 'null'
  if (Array.isArray(value)) return '[' + value.map(canonicalJson).join(',') + ']'
  const obj = value as Record<string, unknown>
  return '{' + Object.keys(obj).sort().map((k) => JSON.stringify(k) + ':' + canonicalJson(obj[k])).join(',') + '}'
}

const PSEUDONYM_BYTES = 12

const IV_BYTES = 12
const TAG_BYTES = 16
const MAX_NESTED = 4
// binds ciphertexts to their purpose: the same key used elsewhere cannot be made to open them
const AAD = Buffer.from('aedes-jitp x-pii v1')

/**
 * The HMAC key of the pseudonyms: HKDF-SHA256 of the envelope key (salt
 * "aedes-jitp", info "x-pii pseudonym key", 32 bytes), not the envelope key
 * itself: one key, one purpose (AES-GCM here, HMAC there), so nothing computed
 * for one can ever be played against the other. docs/PRIVACY.md gives the
 * formula, for whoever must compute a token outside the broker.
 */
export function pseudonymKeyFrom (key: Buffer): Buffer {
  return Buffer.from(hkdfSync('sha256', key, Buffer.from('aedes-jitp'), Buffer.from('x-pii pseudonym key'), 32))
}

/** The 32-byte key: PII_KEY, or derived from the device CA private key. */
export function piiKeyFrom (piiKey: string | undefined, deviceCaKeyPem: string): Buffer {
  if (piiKey !== undefined) {
    const key = Buffer.from(piiKey, 'base64')
    if (key.length !== 32) throw new Error('PII_KEY must be the base64 of 32 bytes')
    return key
  }
  // the DER of the key, not its PEM text, so line endings or a re-encoding do not change it
  const der = createPrivateKey(deviceCaKeyPem).export({ format: 'der', type: 'pkcs8' })
  return Buffer.from(hkdfSync('sha256', der, Buffer.from('aedes-jitp'), Buffer.from('x-pii envelope key'), 32))
}

/** `{enc, kid}` with two strings and nothing else: the shape of every envelope, whichever key made it */
export function isEnvelope (value: unknown): value is Envelope {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return false
  const v = value as Record<string, unknown>
  return typeof v.enc === 'string' && typeof v.kid === 'string' && Object.keys(v).length === 2
}

/**
 * The `enc` of an envelope: base64 of iv|ciphertext|tag, AES-256-GCM of the
 * value's JSON under `key`, bound to `aad` (one associated data per purpose,
 * so a key used for two purposes cannot open one's envelopes as the other's).
 */
export function sealJson (key: Buffer, aad: Buffer, value: unknown): string {
  const iv = randomBytes(IV_BYTES)
  const cipher = createCipheriv('aes-256-gcm', key, iv)
  cipher.setAAD(aad)
  const ct = Buffer.concat([cipher.update(JSON.stringify(value) ?? 'null', 'utf8'), cipher.final()])
  return Buffer.concat([iv, ct, cipher.getAuthTag()]).toString('base64')
}

/** The value sealJson put in `enc`, or undefined when it does not open with this key and `aad` (or was altered). */
export function openJson (key: Buffer, aad: Buffer, enc: string): { value: unknown } | undefined {
  const raw = Buffer.from(enc, 'base64')
  if (raw.length < IV_BYTES + TAG_BYTES) return undefined
  try {
    const decipher = createDecipheriv('aes-256-gcm', key, raw.subarray(0, IV_BYTES))
    decipher.setAAD(aad)
    decipher.setAuthTag(raw.subarray(raw.length - TAG_BYTES))
    const clear = Buffer.concat([decipher.update(raw.subarray(IV_BYTES, raw.length - TAG_BYTES)), decipher.final()])
    return { value: JSON.parse(clear.toString('utf8')) as unknown }
  } catch {
    // not made with this key (or altered)
    return undefined
  }
}

export function createPiiCipher (key: Buffer): PiiCipher {
  const kid = createHash('sha256').update(key).digest('hex').slice(0, 8)
  const pseudonymKey = pseudonymKeyFrom(key)

  // not made with this key (or altered): not an envelope of ours
  function openOnce (env: Envelope): { value: unknown } | undefined {
    return env.kid === kid ? openJson(key, AAD, env.enc) : undefined
  }

  return Object.freeze({
    kid,
    seal (value: unknown): Envelope {
      return { enc: sealJson(key, AAD, value), kid }
    },
    open (value: unknown): { value: unknown } | undefined {
      if (!isEnvelope(value)) return undefined
      let opened = openOnce(value)
      if (opened === undefined) return undefined
      for (let i = 1; i < MAX_NESTED && isEnvelope(opened.value); i++) {
        const again = openOnce(opened.value)
        if (again === undefined) break
        opened = again
      }
      return opened
    },
    pseudonym (value: unknown): string {
      return 'pii_' + createHmac('sha256', pseudonymKey).update(canonicalJson(value)).digest().subarray(0, PSEUDONYM_BYTES).toString('base64url')
    }
  })
}
