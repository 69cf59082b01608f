/**
 * The registry shared by every broker process (and the CLI) through Redis.
 * Devices and certificates are hashes so the revocation scripts can flip one
 * field without JSON handling in Lua; tokens are stored under their SHA-256 so
 * a Redis dump never yields a usable token. An outage must make calls fail
 * fast and ping() report false, never crash or hang the broker.
 */
import { createHash, randomUUID } from 'node:crypto'
import type { ChainableCommander, Redis } from 'ioredis'
import { connectRedis, quitGracefully, within } from './redis.js'
import type {
  CertificateRecord, CertificateStatus, DeviceRecord, DeviceStatus, OwnershipTokenRecord, Registration, RegistrationOutcome, Registry, RevocationEntry, RevocationListener,
  RevocationQuery, RevocationTarget
} from './registry.js'
import { entryOf, listField, normalizeTarget, noticeOf } from './registry.js'

export interface RedisRegistryOptions {
  url: string
  /** default 'jitp:' */
  keyPrefix?: string
  now?: () => number
  onError?: (err: Error) => void
}

type RevocationEvent = Parameters<RevocationListener>[0]

/** how long a call waits for a (re)connecting Redis before it rejects */
const COMMAND_WAIT_MS = 1000
const PING_BUDGET_MS = 500

// KEYS: device, device-certs; ARGV: deviceId, fields...
const CREATE_DEVICE_IF_ABSENT = `
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('SADD', KEYS[2], ARGV[1])
return 1`

// KEYS: device, device-certs; ARGV: deviceId, updatedAt, cert key prefix, channel, message.
// The set may still list a certificate since bound to another device, hence the deviceId check.
const REVOKE_DEVICE = `
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'status', 'revoked', 'updatedAt', ARGV[2])
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local key = ARGV[3] .. id
  if redis.call('HGET', key, 'deviceId') == ARGV[1] then
    redis.call('HSET', key, 'status', 'revoked', 'updatedAt', ARGV[2])
  end
end
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1`

// KEYS: certificate, revocation list; ARGV: updatedAt, channel, message, list field
const REVOKE_CERTIFICATE = `
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'status', 'revoked', 'updatedAt', ARGV[1])
redis.call('HSETNX', KEYS[2], ARGV[4], ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1`

// KEYS: revocation list [, certificate]; ARGV: list field, revokedAt, channel, message.
// The durable record and the notice in one step: a process that misses the notice
// still finds the record on its next connect check or re-validation.
const REVOKE = `
local added = redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
if KEYS[2] and redis.call('EXISTS', KEYS[2]) == 1 and redis.call('HGET', KEYS[2], 'status') ~= 'revoked' then
  redis.call('HSET', KEYS[2], 'status', 'revoked', 'updatedAt', ARGV[2])
end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return added`

// KEYS: owner record; ARGV: owner, ttl in ms ('' = kept). One winner when identities race;
// a kept record is never shortened, an expiring one only extended (PTTL -2 absent, -1 kept)
const CLAIM_SESSION_OWNER = `
local current = redis.call('GET', KEYS[1])
-- a claim's record (anonymous, clean) yields to an owner that names someone
local yields = current and string.sub(current, 1, 6) == 'claim:' and string.sub(ARGV[1], 1, 6) ~= 'claim:'
if current and current ~= ARGV[1] and not yields then return 0 end
if yields then redis.call('DEL', KEYS[1]) end
if ARGV[2] == '' then
  redis.call('SET', KEYS[1], ARGV[1])
else
  local left = redis.call('PTTL', KEYS[1])
  if left == -2 or (left >= 0 and left < tonumber(ARGV[2])) then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  end
end
return 1`

// --- registration ---
// KEYS: token, device, devices set, device-certs; ARGV: the plan as JSON (see registerDevice).
// All checks before the first write, and the shebang makes Redis refuse the whole script
// up front when it cannot write (out of memory, read-only replica): all or nothing. The
// token is deleted only in the step that registers; DEL + HSET of a certificate drops the
// expiry its pending record had.
const REGISTER_DEVICE = `#!lua
local plan = cjson.decode(ARGV[1])
if plan.token and redis.call('EXISTS', KEYS[1]) == 0 then return {'token-used'} end
local exists = redis.call('EXISTS', KEYS[2]) == 1
if exists and not plan.replace then return {'device-exists'} end
local reply = {'registered'}
if exists then
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[4])) do
    local key = plan.certPrefix .. id
    local owner = redis.call('HMGET', key, 'deviceId', 'status')
    if owner[1] == plan.deviceId and owner[2] ~= 'revoked' then
      redis.call('HSET', key, 'status', 'revoked', 'updatedAt', plan.now)
      table.insert(reply, id)
    end
  end
  redis.call('DEL', KEYS[2])
end
if plan.token then redis.call('DEL', KEYS[1]) end
redis.call('HSET', KEYS[2], unpack(plan.device))
redis.call('SADD', KEYS[3], plan.deviceId)
for _, c in ipairs(plan.certs) do
  local key = plan.certPrefix .. c.id
  redis.call('DEL', key)
  redis.call('HSET', key, unpack(c.fields))
  redis.call('SADD', KEYS[4], c.id)
end
return reply`
// --- end registration ---

export class RedisRegistry implements Registry {
  readonly #prefix: string
  readonly #channel: string
  readonly #now: () => number
  readonly #onError: (err: Error) => void
  /** marks our own published events: the revoking call already fired the local listeners, so the echo is dropped */
  readonly #origin = randomUUID()
  readonly #cmd: Redis
  readonly #sub: Redis
  readonly #subscribed: Promise<boolean>
  readonly #listeners: RevocationListener[] = []
  readonly #gapListeners: Array<() => void> = []
  #closed = false

  constructor (opts: RedisRegistryOptions) {
    this.#prefix = opts.keyPrefix ?? 'jitp:'
    this.#channel = `${this.#prefix}revocations`
    this.#now = opts.now ?? Date.now
    this.#onError = opts.onError ?? (() => {})
    // no offline queue: a call made while Redis is away waits at most COMMAND_WAIT_MS
    // for the connection (#ready) and then rejects, instead of running whenever Redis returns
    const onError = (err: Error): void => this.#onError(err)
    this.#cmd = connectRedis(opts.url, 'registry', onError)
    this.#sub = connectRedis(opts.url, 'subscriber', onError)
    this.#sub.on('message', (channel: string, message: string) => this.#receive(channel, message))
    this.#subscribed = this.#sub.subscribe(this.#channel).then(() => true, (err: Error) => {
      if (!this.#closed) this.#onError(err)
      return false
    })
    // pub/sub is at most once: after a drop, notices published meanwhile are gone
    let seenReady = false
    this.#sub.on('ready', () => {
      if (!seenReady) {
        seenReady = true
        return
      }
      this.#resynced().catch((err: unknown) => this.#onError(err as Error))
    })
  }

  async getDevice (deviceId: string): Promise<DeviceRecord | null> {
    const conn = await this.#ready()
    return parseDevice(await conn.hgetall(this.#key('device', deviceId)))
  }

  async listDevices (): Promise<DeviceRecord[]> {
    const conn = await this.#ready()
    const ids = await conn.smembers(`${this.#prefix}devices`)
    const hashes = await hgetallMany(conn, ids.map((id) => this.#key('device', id)))
    return hashes.map(parseDevice).filter((d): d is DeviceRecord => d !== null)
  }

  async putDevice (device: DeviceRecord): Promise<void> {
    const conn = await this.#ready()
    const key = this.#key('device', device.deviceId)
    await exec(conn.multi().del(key).hset(key, deviceFields(device)).sadd(`${this.#prefix}devices`, device.deviceId))
  }

  async createDeviceIfAbsent (device: DeviceRecord): Promise<boolean> {
    const conn = await this.#ready()
    const fields = Object.entries(deviceFields(device)).flat()
    const created = await conn.eval(CREATE_DEVICE_IF_ABSENT, 2,
      this.#key('device', device.deviceId), `${this.#prefix}devices`, device.deviceId, ...fields)
    return created === 1
  }

  async getCertificate (certificateId: string): Promise<CertificateRecord | null> {
    const conn = await this.#ready()
    const hash = await conn.hgetall(this.#key('cert', certificateId))
    // a pending certificate expires with its token: PEXPIRE, and expiresAt for an injected clock
    if (hash.expiresAt !== undefined && Number(hash.expiresAt) <= this.#now()) return null
    return parseCertificate(hash)
  }

  async putCertificate (cert: CertificateRecord): Promise<void> {
    const conn = await this.#ready()
    const key = this.#key('cert', cert.certificateId)
    const tx = conn.multi().del(key).hset(key, certificateFields(cert))
    if (cert.deviceId !== null) tx.sadd(this.#key('device-certs', cert.deviceId), cert.certificateId)
    await exec(tx)
  }

  async certificatesOfDevice (deviceId: string): Promise<CertificateRecord[]> {
    const conn = await this.#ready()
    const ids = await conn.smembers(this.#key('device-certs', deviceId))
    const hashes = await hgetallMany(conn, ids.map((id) => this.#key('cert', id)))
    return hashes.map(parseCertificate).filter((c): c is CertificateRecord => c !== null && c.deviceId === deviceId)
  }

  async putToken (token: string, record: OwnershipTokenRecord, ttlMs: number): Promise<void> {
    const conn = await this.#ready()
    // expiresAt as well as PX: an injected clock (tests, replay) must be able to expire a token
    const value = JSON.stringify({ record, expiresAt: this.#now() + ttlMs })
    await conn.set(this.#tokenKey(token), value, 'PX', Math.max(1, Math.ceil(ttlMs)))
  }

  /** a stored token's record, unless its expiresAt has passed (an injected clock may expire it before PX does) */
  #liveToken (value: string | null): OwnershipTokenRecord | null {
    if (value === null) return null
    const stored = JSON.parse(value) as { record: OwnershipTokenRecord, expiresAt: number }
    return this.#now() < stored.expiresAt ? stored.record : null
  }

  async takeToken (token: string): Promise<OwnershipTokenRecord | null> {
    const conn = await this.#ready()
    const value = await conn.getdel(this.#tokenKey(token))
    return this.#liveToken(value)
  }

  async revokeDevice (deviceId: string): Promise<boolean> {
    const conn = await this.#ready()
    const event: RevocationEvent = { deviceId, certificateId: null }
    const found = await conn.eval(REVOKE_DEVICE, 2,
      this.#key('device', deviceId), this.#key('device-certs', deviceId),
      deviceId, String(this.#now()), this.#key('cert', ''), this.#channel, this.#message(event))
    if (found !== 1) return false
    this.#emit(event)
    return true
  }

  async revokeCertificate (certificateId: string): Promise<boolean> {
    const conn = await this.#ready()
    // deviceId stays null: listeners read a non-null deviceId as "the whole device is revoked"
    const event: RevocationEvent = { deviceId: null, certificateId }
    const found = await conn.eval(REVOKE_CERTIFICATE, 2,
      this.#key('cert', certificateId), this.#listKey(), String(this.#now()), this.#channel, this.#message(event), `cert:${certificateId}`)
    if (found !== 1) return false
    this.#emit(event)
    return true
  }

  onRevocation (listener: RevocationListener): void {
    this.#listeners.push(listener)
  }

  // --- revocation list: one hash `<prefix>revocation-list`, fields `cert:<id>`, `serial:<issuer>:<serial>`, `ca:<fp>` → revokedAt ---
  async revoke (target: RevocationTarget): Promise<boolean> {
    const conn = await this.#ready()
    const t = normalizeTarget(target)
    const keys = [this.#listKey()]
    if ('certificateId' in t) keys.push(this.#key('cert', t.certificateId))
    const added = await conn.eval(REVOKE, keys.length, ...keys,
      listField(t), String(this.#now()), this.#channel, this.#message(noticeOf(t)))
    this.#emit(noticeOf(t))
    return added === 1
  }

  async isRevoked (q: RevocationQuery): Promise<boolean> {
    const conn = await this.#ready()
    const listed = await conn.hmget(this.#listKey(), ...listFields(q))
    return listed.some((v) => v !== null)
  }

  async areRevoked (queries: readonly RevocationQuery[]): Promise<boolean[]> {
    if (queries.length === 0) return []
    const conn = await this.#ready()
    // one pipeline, one round trip: per query the three list fields and the record's status
    const pipeline = conn.pipeline()
    for (const q of queries) {
      pipeline.hmget(this.#listKey(), ...listFields(q))
      pipeline.hget(this.#key('cert', q.certificateId), 'status')
    }
    const replies = await exec(pipeline)
    return queries.map((_, i) => {
      const listed = replies[2 * i] as Array<string | null>
      return listed.some((v) => v !== null) || replies[2 * i + 1] === 'revoked'
    })
  }

  async listRevocations (): Promise<RevocationEntry[]> {
    const conn = await this.#ready()
    const all = await conn.hgetall(this.#listKey())
    return Object.entries(all).map(([field, at]) => entryOf(field, Number(at))).filter((e): e is RevocationEntry => e !== null)
  }

  onRevocationGap (listener: () => void): void {
    this.#gapListeners.push(listener)
  }

  /** the subscriber is back: once the channel is subscribed again, whatever was missed is looked up */
  async #resynced (): Promise<void> {
    if (this.#closed) return
    await this.#sub.subscribe(this.#channel)
    for (const listener of this.#gapListeners) {
      try {
        listener()
      } catch (err) {
        this.#onError(err as Error)
      }
    }
  }

  #listKey (): string {
    return `${this.#prefix}revocation-list`
  }
  // --- end revocation list ---

  // --- session owners ---
  async sessionOwner (clientId: string): Promise<string | null> {
    const conn = await this.#ready()
    return await conn.get(this.#ownerKey(clientId))
  }

  async claimSessionOwner (clientId: string, owner: string, ttlMs?: number): Promise<boolean> {
    const conn = await this.#ready()
    const ttl = ttlMs === undefined ? '' : String(Math.max(1, Math.ceil(ttlMs)))
    return (await conn.eval(CLAIM_SESSION_OWNER, 1, this.#ownerKey(clientId), owner, ttl)) === 1
  }

  #ownerKey (clientId: string): string {
    return `${this.#prefix}session-owner:${clientId}`
  }
  // --- end session owners ---

  // --- registration ---
  async peekToken (token: string): Promise<OwnershipTokenRecord | null> {
    const conn = await this.#ready()
    const value = await conn.get(this.#tokenKey(token))
    return this.#liveToken(value)
  }

  async putPendingCertificate (cert: CertificateRecord, token: string, record: OwnershipTokenRecord, ttlMs: number): Promise<void> {
    const conn = await this.#ready()
    const ttl = Math.max(1, Math.ceil(ttlMs))
    const expiresAt = this.#now() + ttlMs
    const key = this.#key('cert', cert.certificateId)
    // one transaction: the certificate and its token live and expire together
    await exec(conn.multi()
      .del(key)
      .hset(key, { ...certificateFields(cert), expiresAt: String(expiresAt) })
      .pexpire(key, ttl)
      .set(this.#tokenKey(token), JSON.stringify({ record, expiresAt }), 'PX', ttl))
  }

  async registerDevice (reg: Registration): Promise<RegistrationOutcome> {
    const conn = await this.#ready()
    const deviceId = reg.device.deviceId
    const plan = JSON.stringify({
      deviceId,
      token: reg.token !== null,
      replace: reg.replace,
      now: String(this.#now()),
      certPrefix: this.#key('cert', ''),
      device: Object.entries(deviceFields(reg.device)).flat(),
      certs: reg.certificates.map((c) => ({ id: c.certificateId, fields: Object.entries(certificateFields(c)).flat() }))
    })
    const reply = await conn.eval(REGISTER_DEVICE, 4,
      this.#tokenKey(reg.token ?? ''), this.#key('device', deviceId), `${this.#prefix}devices`, this.#key('device-certs', deviceId), plan) as string[]
    if (reply[0] === 'token-used') return { result: 'token-used' }
    if (reply[0] === 'device-exists') return { result: 'device-exists' }
    if (reply[0] !== 'registered') throw new Error('registry: unexpected reply from the registration script')
    return { result: 'registered', revoked: reply.slice(1) }
  }
  // --- end registration ---

  /** Also false while the subscriber is down: this process would miss revocations. */
  async ping (): Promise<boolean> {
    if (this.#closed) return false
    const deadline = Date.now() + PING_BUDGET_MS
    const left = (): number => deadline - Date.now()
    if (!(await waitReady(this.#cmd, left())) || !(await waitReady(this.#sub, left()))) return false
    if ((await within(this.#subscribed, left())) !== true) return false
    return (await within(this.#cmd.ping().catch(() => 'error'), left())) === 'PONG'
  }

  async close (): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    this.#listeners.length = 0
    this.#gapListeners.length = 0
    await Promise.all([quitGracefully(this.#cmd), quitGracefully(this.#sub)])
  }

  async #ready (): Promise<Redis> {
    if (this.#closed) throw new Error('registry: closed')
    if (await waitReady(this.#cmd, COMMAND_WAIT_MS)) return this.#cmd
    throw new Error(`registry: Redis is unavailable (connection ${this.#cmd.status})`)
  }

  #key (kind: 'device' | 'cert' | 'device-certs', id: string): string {
    return `${this.#prefix}${kind}:${id}`
  }

  #tokenKey (token: string): string {
    return `${this.#prefix}token:${createHash('sha256').update(token).digest('hex')}`
  }

  #message (event: RevocationEvent): string {
    return JSON.stringify({ ...event, origin: this.#origin })
  }

  #receive (channel: string, message: string): void {
    if (channel !== this.#channel) return
    const event = parseEvent(message)
    if (event === null) {
      this.#onError(new Error(`registry: ignored malformed revocation event on ${channel}`))
      return
    }
    if (event.origin === this.#origin) return
    const { origin: _origin, ...notice } = event
    this.#emit(notice)
  }

  #emit (event: RevocationEvent): void {
    // one microtask per listener: no listener code runs inside ioredis' parser or the revoking
    // caller, and one throwing listener does not starve the others
    for (const listener of this.#listeners) {
      queueMicrotask(() => {
        // a throwing listener must not take the process down
        try {
          listener({ ...event })
        } catch (err) {
          this.#onError(err as Error)
        }
      })
    }
  }
}

/** the three revocation-list fields one certificate is checked by */
function listFields (q: RevocationQuery): [string, string, string] {
  return [`cert:${q.certificateId}`, `serial:${q.issuerFingerprint}:${q.serialNumber}`, `ca:${q.issuerFingerprint}`]
}

function deviceFields (d: DeviceRecord): Record<string, string> {
  return {
    deviceId: d.deviceId,
    status: d.status,
    template: d.template,
    createdAt: String(d.createdAt),
    updatedAt: String(d.updatedAt),
    attributes: JSON.stringify(d.attributes)
  }
}

function parseDevice (h: Record<string, string>): DeviceRecord | null {
  const { deviceId, status, template, createdAt, updatedAt, attributes } = h
  if (deviceId === undefined || status === undefined || template === undefined ||
    createdAt === undefined || updatedAt === undefined || attributes === undefined) return null
  return {
    deviceId,
    status: status as DeviceStatus,
    template,
    createdAt: Number(createdAt),
    updatedAt: Number(updatedAt),
    attributes: JSON.parse(attributes) as Record<string, string>
  }
}

/** a null deviceId is an absent field, so no device id value is reserved to mean "unbound" */
function certificateFields (c: CertificateRecord): Record<string, string> {
  return {
    certificateId: c.certificateId,
    ...(c.deviceId === null ? {} : { deviceId: c.deviceId }),
    status: c.status,
    serialNumber: c.serialNumber,
    notAfter: String(c.notAfter),
    createdAt: String(c.createdAt),
    updatedAt: String(c.updatedAt)
  }
}

function parseCertificate (h: Record<string, string>): CertificateRecord | null {
  const { certificateId, deviceId, status, serialNumber, notAfter, createdAt, updatedAt } = h
  if (certificateId === undefined || status === undefined || serialNumber === undefined ||
    notAfter === undefined || createdAt === undefined || updatedAt === undefined) return null
  return {
    certificateId,
    deviceId: deviceId ?? null,
    status: status as CertificateStatus,
    serialNumber,
    notAfter: Number(notAfter),
    createdAt: Number(createdAt),
    updatedAt: Number(updatedAt)
  }
}

function parseEvent (message: string): (RevocationEvent & { origin: unknown }) | null {
  try {
    const e = JSON.parse(message) as Record<string, unknown>
    const idOrNull = (v: unknown): v is string | null => v === null || typeof v === 'string'
    if (!idOrNull(e.deviceId) || !idOrNull(e.certificateId)) return null
    const event: RevocationEvent & { origin: unknown } = { deviceId: e.deviceId, certificateId: e.certificateId, origin: e.origin }
    for (const key of ['issuerFingerprint', 'serialNumber', 'caFingerprint'] as const) {
      const v = e[key]
      if (v === undefined) continue
      if (typeof v !== 'string') return null
      event[key] = v
    }
    return event
  } catch {
    return null
  }
}

async function hgetallMany (conn: Redis, keys: string[]): Promise<Record<string, string>[]> {
  if (keys.length === 0) return []
  const pipeline = conn.pipeline()
  for (const key of keys) pipeline.hgetall(key)
  return await exec(pipeline) as Record<string, string>[]
}

/** MULTI/pipeline replies carry per-command errors; surface the first one */
async function exec (tx: ChainableCommander): Promise<unknown[]> {
  const replies = await tx.exec()
  if (replies === null) throw new Error('registry: transaction aborted')
  return replies.map(([err, reply]) => {
    if (err) throw err
    return reply
  })
}

function waitReady (conn: Redis, ms: number): Promise<boolean> {
  if (conn.status === 'ready') return Promise.resolve(true)
  if (conn.status === 'end' || ms <= 0) return Promise.resolve(false)
  return new Promise((resolve) => {
    const done = (ok: boolean): void => {
      clearTimeout(timer)
      conn.off('ready', onReady)
      conn.off('end', onEnd)
      resolve(ok)
    }
    const onReady = (): void => done(true)
    const onEnd = (): void => done(false)
    const timer = setTimeout(done, ms, false)
    conn.once('ready', onReady)
    conn.once('end', onEnd)
  })
}

