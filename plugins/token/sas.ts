/**
 * Symmetric-key enrollment tokens (CONTRACT §3.6), as Azure DPS's symmetric-key
 * attestation makes them:
 *   device key = HMAC-SHA256(base64decode(groupKey), registrationId)            (the factory, once)
 *   signature  = HMAC-SHA256(device key bytes, registrationId + "\n" + expiry)  (the device, per connect)
 *   password   = "SharedAccessSignature sr=<registrationId>&sig=<base64 signature>&se=<expiry seconds>"
 * The broker holds only the group key: it derives the device key of the
 * registration id the token names and recomputes the signature. The compare is
 * constant-time and every refusal reason is a fixed text: nothing of the token,
 * the keys or the signature ever reaches a log.
 */
import { createHmac, timingSafeEqual } from 'node:crypto'

export const SAS_PREFIX = 'SharedAccessSignature '
/** a signature is one SHA-256 HMAC */
const SIG_BYTES = 32
/** what a CONNECT's password may hold before the parser looks at it (the packet guard caps CONNECT at 16 KiB anyway) */
const MAX_SAS_LENGTH = 2048
const EXPIRY = /^[0-9]{1,12}$/
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/

/** the device key of a registration id (its base64 is what `aedes-jitp keys derive` prints for a factory line) */
export function deriveDeviceKey (groupKey: Buffer, registrationId: string): Buffer {
  return createHmac('sha256', groupKey).update(registrationId, 'utf8').digest()
}

/** the SAS a device with `deviceKey` sends to enroll until `expirySeconds` (firmware does the same; tests and docs use this) */
export function signSas (deviceKey: Buffer, registrationId: string, expirySeconds: number): string {
  const sig = createHmac('sha256', deviceKey).update(`${registrationId}\n${expirySeconds}`, 'utf8').digest('base64')
  return `${SAS_PREFIX}sr=${encodeURIComponent(registrationId)}&sig=${encodeURIComponent(sig)}&se=${expirySeconds}`
}

export interface ParsedSas {
  readonly registrationId: string
  readonly signature: Buffer
  /** as sent: the signed text holds these exact digits */
  readonly expiry: string
}

/** why a SAS is refused: fixed texts, the audit's `reason` */
export type SasProblem =
  | 'malformed'
  | 'for another registration id'
  | 'expired'
  | 'expiry too far in the future'
  | 'signature does not verify'

function decodeField (value: string): string | null {
  try {
    return decodeURIComponent(value)
  } catch {
    return null
  }
}

/**
 * `sr`, `sig` and `se` in any order, URL-encoded as Azure's SDKs send them; `skn`
 * (a policy name, unused for enrollment) is tolerated; anything else is malformed.
 */
export function parseSas (password: string): ParsedSas | null {
  if (password.length > MAX_SAS_LENGTH || !password.startsWith(SAS_PREFIX)) return null
  const fields = new Map<string, string>()
  for (const part of password.slice(SAS_PREFIX.length).split('&')) {
    const eq = part.indexOf('=')
    if (eq <= 0) return null
    const name = part.slice(0, eq)
    const value = decodeField(part.slice(eq + 1))
    if (value === null || fields.has(name) || (name !== 'sr' && name !== 'sig' && name !== 'se' && name !== 'skn')) return null
    fields.set(name, value)
  }
  const registrationId = fields.get('sr')
  const sig = fields.get('sig')
  const expiry = fields.get('se')
  if (registrationId === undefined || sig === undefined || expiry === undefined || !EXPIRY.test(expiry) || !BASE64.test(sig)) return null
  const signature = Buffer.from(sig, 'base64')
  if (signature.length !== SIG_BYTES) return null
  return { registrationId, signature, expiry }
}

export interface SasCheck {
  /** the connection's client id: a SAS is for the registration id it names, and that is the client id */
  readonly clientId: string
  readonly groupKey: Buffer
  readonly nowMs: number
  readonly maxSeconds: number
}

/** null when the SAS holds, else why not. The signature is checked last, and always in constant time. */
export function verifySas (sas: ParsedSas, check: SasCheck): SasProblem | null {
  if (sas.registrationId !== check.clientId) return 'for another registration id'
  const expirySeconds = Number(sas.expiry)
  const nowSeconds = check.nowMs / 1000
  if (expirySeconds <= nowSeconds) return 'expired'
  if (expirySeconds - nowSeconds > check.maxSeconds) return 'expiry too far in the future'
  const deviceKey = deriveDeviceKey(check.groupKey, sas.registrationId)
  const expected = createHmac('sha256', deviceKey).update(`${sas.registrationId}\n${sas.expiry}`, 'utf8').digest()
  return timingSafeEqual(expected, sas.signature) ? null : 'signature does not verify'
}
