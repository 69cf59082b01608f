/**
 * OAuth2 client secrets (CONTRACT §10: "secrets stored only as salted hashes"):
 * 32 random bytes in base64url, shown once at creation, stored as a scrypt hash
 * with a salt of its own. scrypt runs on libuv's thread pool (the async form),
 * so a burst of wrong secrets costs pool time, not event-loop time; the token
 * endpoint's throttle bounds how many bursts there are.
 *
 * Stored form: `scrypt$<N>$<r>$<p>$<salt b64url>$<hash b64url>`, so the cost
 * can be raised later and old hashes still verify.
 */
import { randomBytes, scrypt, timingSafeEqual, type ScryptOptions } from 'node:crypto'

/** N = 2^14, r = 8: about 50 ms and 16 MiB per hash on a 2-core test machine */
const COST = Object.freeze({ N: 16384, r: 8, p: 1 })
const SALT_BYTES = 16
const HASH_BYTES = 32
const SECRET_BYTES = 32
/** above the 128·N·r a hash needs, with room for a raised N in stored hashes */
const MAX_MEM = 256 * 1024 * 1024
/** a stored N above this is refused instead of run: a tampered record must not pin the pool */
const MAX_N = 1 << 20

/**
 * At most this many hashes at once, and this many verifications waiting: libuv's
 * pool has 4 threads, shared with file and DNS work, and the machine few cores.
 * A burst of wrong secrets from many addresses (each under its own throttle)
 * waits its turn or is turned away (HashingBusy), and never holds the pool.
 */
const MAX_HASHING = 2
const MAX_WAITING = 16

/** too many secrets are being checked right now: try again in a moment */
export class HashingBusy extends Error {
  constructor () {
    super('too many client secrets being checked at once')
  }
}

let hashing = 0
const waiting: Array<() => void> = []

async function inTurn<T> (work: () => Promise<T>, mayRefuse: boolean): Promise<T> {
  if (hashing < MAX_HASHING) {
    hashing++
  } else {
    if (mayRefuse && waiting.length >= MAX_WAITING) throw new HashingBusy()
    // the slot is handed over by the one finishing (hashing stays as it is)
    await new Promise<void>((resolve) => waiting.push(resolve))
  }
  try {
    return await work()
  } finally {
    const next = waiting.shift()
    if (next) next()
    else hashing--
  }
}

function derive (secret: string, salt: Buffer, opts: ScryptOptions, mayRefuse: boolean): Promise<Buffer> {
  return inTurn(() => new Promise<Buffer>((resolve, reject) => {
    scrypt(secret, salt, HASH_BYTES, { ...opts, maxmem: MAX_MEM }, (err, key) => err ? reject(err) : resolve(key))
  }), mayRefuse)
}

export function newClientSecret (): string {
  return randomBytes(SECRET_BYTES).toString('base64url')
}

export async function hashClientSecret (secret: string): Promise<string> {
  const salt = randomBytes(SALT_BYTES)
  // an operator creating a client waits its turn, never refused
  const hash = await derive(secret, salt, COST, false)
  return ['scrypt', COST.N, COST.r, COST.p, salt.toString('base64url'), hash.toString('base64url')].join('$')
}

/**
 * Whether `secret` hashes to `stored`; compared in constant time. A malformed
 * stored hash matches nothing. Throws HashingBusy when too many wait already.
 */
export async function clientSecretMatches (secret: string, stored: string): Promise<boolean> {
  const [scheme, n, r, p, salt, hash] = stored.split('$')
  const N = Number(n)
  if (scheme !== 'scrypt' || !Number.isInteger(N) || N < 2 || N > MAX_N || salt === undefined || hash === undefined) return false
  const expected = Buffer.from(hash, 'base64url')
  if (expected.length !== HASH_BYTES) return false
  const actual = await derive(secret, Buffer.from(salt, 'base64url'), { N, r: Number(r), p: Number(p) }, true)
  return timingSafeEqual(actual, expected)
}

/**
 * Verifying a secret for a client id that does not exist costs the same as for
 * one that does, so the answer's timing does not tell which client ids exist.
 */
let dummy: Promise<string> | undefined
export async function spendVerifyTime (secret: string): Promise<void> {
  dummy ??= hashClientSecret(newClientSecret())
  await clientSecretMatches(secret, await dummy)
}
