/**
 * The configuration store shared by every broker process through Redis. Each
 * change of a device's state is one Lua script (one round trip, atomic), so
 * a commit, an ack or a timeout has exactly one winner across processes. Keys
 * (prefix `cfg:` by default); a device id or a name is always the LAST part of
 * its key and no two kinds share their leading part, so ids holding `:` (as
 * DEVICE_ID allows) cannot collide with another key:
 *   dev:<id>       hash: version, template, status, current (the version's JSON), overrides (JSON), lastKnownGood, deliveredAt
 *   hist:<id>      sorted set: the version's JSON (with the overrides in force from it on), scored by its number; the HISTORY_KEEP newest kept
 *   tpl:<name>     string: {config, author, at}
 *   pending        sorted set: ids of devices delivered and not yet acknowledged, scored by deliveredAt
 *   status         hash: current|pending|failed → number of devices, changed by the same scripts as the states
 *   rollouts       hash: rollout id → JSON record
 *   lease:<name>   string: the owner, expiring after the lease's TTL
 * Calls fail fast while Redis is away (the registry's connection options), never hang.
 */
import { createHash } from 'node:crypto'
import type { Redis } from 'ioredis'
import type {
  AckOutcome, CommitInput, ConfigStatus, ConfigStatusCounts, ConfigVersion, DeviceConfigState, DeviceConfigStore, JsonObject, PendingAck
} from './device-configs.js'
import { configHash, HISTORY_KEEP } from './device-configs.js'
import { connectRedis, quitGracefully, waitReady } from './redis.js'

export interface RedisDeviceConfigStoreOptions {
  url: string
  /** default 'cfg:' */
  keyPrefix?: string | undefined
  onError?: ((err: Error) => void) | undefined
}

/** how long a call waits for a (re)connecting Redis before it rejects */
const COMMAND_WAIT_MS = 1000

/**
 * A script: `#!lua` so Redis refuses the whole script up front when it cannot
 * write (out of memory, read-only replica) instead of failing halfway; run by
 * its SHA-1 (the text goes over the wire only the first time a server sees it).
 */
interface Script { readonly text: string, readonly sha: string }
function script (body: string, flags = ''): Script {
  const text = `#!lua${flags ? ' flags=' + flags : ''}\n${body}`
  return { text, sha: createHash('sha1').update(text).digest('hex') }
}

// KEYS: dev, hist, pending, status; ARGV: expected ('' unconditional, 0 none), template, overrides ('' keep), body, deviceId, keep.
// `body` is the version's JSON without its number and overrides ({"deviceId":...}); both are spliced in here,
// the overrides being the given ones or, kept, the device's (only the script knows those without another round trip).
// Replies the version's JSON, or nil when the compare-and-set failed.
const COMMIT = script(`
local h = redis.call('HMGET', KEYS[1], 'version', 'status', 'overrides')
local cur = tonumber(h[1] or '0')
if ARGV[1] ~= '' and tonumber(ARGV[1]) ~= cur then return false end
local old = h[2]
local overrides = ARGV[3]
if overrides == '' then overrides = h[3] or '{}' end
local v = cur + 1
local record = '{"version":' .. v .. ',' .. string.sub(ARGV[4], 2, -2) .. ',"overrides":' .. overrides .. '}'
redis.call('HSET', KEYS[1], 'version', v, 'template', ARGV[2], 'status', 'pending', 'current', record, 'overrides', overrides)
redis.call('HDEL', KEYS[1], 'deliveredAt')
redis.call('ZADD', KEYS[2], v, record)
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -1 - tonumber(ARGV[6]))
redis.call('ZREM', KEYS[3], ARGV[5])
if old then redis.call('HINCRBY', KEYS[4], old, -1) end
redis.call('HINCRBY', KEYS[4], 'pending', 1)
return record`)

// KEYS: dev, pending; ARGV: version, at, deviceId. Replies 1 when the ack timer started.
const MARK_DELIVERED = script(`
local h = redis.call('HMGET', KEYS[1], 'version', 'status', 'deliveredAt')
if h[1] ~= ARGV[1] or h[2] ~= 'pending' or h[3] then return 0 end
redis.call('HSET', KEYS[1], 'deliveredAt', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
return 1`)

// KEYS: dev, pending, status; ARGV: version, 'applied'|'failed', deviceId.
// Replies {'stale', current?}, {'duplicate'} or {'recorded', the state's fields and values...}.
const RECORD_ACK = script(`
local h = redis.call('HMGET', KEYS[1], 'version', 'status')
if not h[1] then return { 'stale' } end
if h[1] ~= ARGV[1] then return { 'stale', h[1] } end
if h[2] ~= 'pending' then return { 'duplicate' } end
local s = 'failed'
if ARGV[2] == 'applied' then
  s = 'current'
  redis.call('HSET', KEYS[1], 'lastKnownGood', ARGV[1])
end
redis.call('HSET', KEYS[1], 'status', s)
redis.call('ZREM', KEYS[2], ARGV[3])
redis.call('HINCRBY', KEYS[3], 'pending', -1)
redis.call('HINCRBY', KEYS[3], s, 1)
return { 'recorded', unpack(redis.call('HGETALL', KEYS[1])) }`)

// KEYS: dev, pending, status; ARGV: version, deviceId. Replies 1 to the one caller that timed it out.
const CLAIM_TIMEOUT = script(`
local h = redis.call('HMGET', KEYS[1], 'version', 'status')
if h[1] ~= ARGV[1] or h[2] ~= 'pending' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'failed')
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('HINCRBY', KEYS[3], 'pending', -1)
redis.call('HINCRBY', KEYS[3], 'failed', 1)
return 1`)

// KEYS: pending; ARGV: prefix, deliveredBefore, limit. Replies {id, version, deliveredAt, ...}, oldest first.
// The device keys are derived from the index, so this reads undeclared keys (as the registry's scripts do).
const PENDING_ACKS = script(`
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for i = 1, #due, 2 do
  local v = redis.call('HGET', ARGV[1] .. 'dev:' .. due[i], 'version')
  if v then
    out[#out + 1] = due[i]
    out[#out + 1] = v
    out[#out + 1] = due[i + 1]
  end
end
return out`, 'no-writes')

// KEYS: lease; ARGV: owner, ttl ms. Replies 1 when the owner holds the lease now.
const ACQUIRE_LEASE = script(`
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0`)

// KEYS: lease; ARGV: owner
const RELEASE_LEASE = script(`
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0`)

export class RedisDeviceConfigStore implements DeviceConfigStore {
  readonly #prefix: string
  readonly #onError: (err: Error) => void
  readonly #cmd: Redis
  #closed = false

  constructor (opts: RedisDeviceConfigStoreOptions) {
    this.#prefix = opts.keyPrefix ?? 'cfg:'
    this.#onError = opts.onError ?? (() => {})
    // no offline queue: a call made while Redis is away waits at most COMMAND_WAIT_MS
    // for the connection (#ready) and then rejects, instead of running whenever Redis returns
    this.#cmd = connectRedis(opts.url, 'registry', (err) => this.#onError(err))
  }

  async getTemplateConfig (template: string): Promise<{ readonly config: JsonObject, readonly author: string, readonly at: number } | null> {
    const conn = await this.#ready()
    const text = await conn.get(this.#key('tpl', template))
    return text === null ? null : JSON.parse(text) as { config: JsonObject, author: string, at: number }
  }

  async setTemplateConfig (template: string, config: JsonObject, author: string, at: number): Promise<void> {
    const conn = await this.#ready()
    await conn.set(this.#key('tpl', template), JSON.stringify({ config, author, at }))
  }

  async getState (deviceId: string): Promise<DeviceConfigState | null> {
    const conn = await this.#ready()
    return parseState(deviceId, await conn.hgetall(this.#key('dev', deviceId)))
  }

  async commit (deviceId: string, input: CommitInput): Promise<ConfigVersion | null> {
    const conn = await this.#ready()
    const expected = input.expectedVersion === undefined ? '' : String(input.expectedVersion ?? 0)
    // the version's JSON without its number and overrides (the script adds them), in the order the fields are read back
    const config = JSON.parse(JSON.stringify(input.config)) as JsonObject
    const body = JSON.stringify({
      deviceId,
      config,
      author: input.author,
      at: input.at,
      hash: configHash(config),
      ...(input.reason !== undefined ? { reason: input.reason } : {})
    })
    const overrides = input.overrides === undefined ? '' : JSON.stringify(input.overrides)
    const record = await this.#run(conn, COMMIT, [this.#key('dev', deviceId), this.#key('hist', deviceId), this.#key('pending'), this.#key('status')],
      [expected, input.template, overrides, body, deviceId, String(HISTORY_KEEP)]) as string | null
    return record === null ? null : JSON.parse(record) as ConfigVersion
  }

  async history (deviceId: string, limit: number): Promise<ConfigVersion[]> {
    const n = Math.max(0, Math.floor(limit))
    if (n === 0) return []
    const conn = await this.#ready()
    const records = await conn.zrevrange(this.#key('hist', deviceId), 0, n - 1)
    return records.map((text) => JSON.parse(text) as ConfigVersion)
  }

  async getVersion (deviceId: string, version: number): Promise<ConfigVersion | null> {
    if (!Number.isSafeInteger(version)) return null
    const conn = await this.#ready()
    const [text] = await conn.zrangebyscore(this.#key('hist', deviceId), version, version)
    return text === undefined ? null : JSON.parse(text) as ConfigVersion
  }

  async markDelivered (deviceId: string, version: number, at: number): Promise<boolean> {
    const conn = await this.#ready()
    return await this.#run(conn, MARK_DELIVERED, [this.#key('dev', deviceId), this.#key('pending')], [String(version), String(at), deviceId]) === 1
  }

  async recordAck (deviceId: string, version: number, status: 'applied' | 'failed', _at: number): Promise<AckOutcome> {
    const conn = await this.#ready()
    const [result, ...rest] = await this.#run(conn, RECORD_ACK, [this.#key('dev', deviceId), this.#key('pending'), this.#key('status')],
      [String(version), status, deviceId]) as [string, ...string[]]
    if (result === 'stale') return { result, current: rest[0] === undefined ? null : Number(rest[0]) }
    if (result === 'duplicate') return { result }
    return { result: 'recorded', state: parseState(deviceId, fieldsOf(rest))! }
  }

  async pendingAcks (deliveredBefore: number, limit: number): Promise<PendingAck[]> {
    const n = Math.max(0, Math.floor(limit))
    if (n === 0) return []
    const conn = await this.#ready()
    const flat = await this.#run(conn, PENDING_ACKS, [this.#key('pending')], [this.#prefix, String(deliveredBefore), String(n)]) as string[]
    const due: PendingAck[] = []
    for (let i = 0; i + 2 < flat.length; i += 3) due.push({ deviceId: flat[i]!, version: Number(flat[i + 1]), deliveredAt: Number(flat[i + 2]) })
    return due
  }

  async claimTimeout (deviceId: string, version: number, _at: number): Promise<boolean> {
    const conn = await this.#ready()
    return await this.#run(conn, CLAIM_TIMEOUT, [this.#key('dev', deviceId), this.#key('pending'), this.#key('status')], [String(version), deviceId]) === 1
  }

  async countByStatus (): Promise<ConfigStatusCounts> {
    const conn = await this.#ready()
    const [current, pending, failed] = await conn.hmget(this.#key('status'), 'current', 'pending', 'failed')
    return { current: Number(current ?? 0), pending: Number(pending ?? 0), failed: Number(failed ?? 0) }
  }

  async putRollout (id: string, record: JsonObject): Promise<void> {
    const conn = await this.#ready()
    await conn.hset(this.#key('rollouts'), id, JSON.stringify(record))
  }

  async getRollout (id: string): Promise<JsonObject | null> {
    const conn = await this.#ready()
    const text = await conn.hget(this.#key('rollouts'), id)
    return text === null ? null : JSON.parse(text) as JsonObject
  }

  async listRollouts (): Promise<JsonObject[]> {
    const conn = await this.#ready()
    const all = await conn.hgetall(this.#key('rollouts'))
    return Object.keys(all).sort().map((id) => JSON.parse(all[id]!) as JsonObject)
  }

  async acquireLease (name: string, owner: string, ttlMs: number): Promise<boolean> {
    const conn = await this.#ready()
    const ttl = String(Math.max(1, Math.ceil(ttlMs)))
    return await this.#run(conn, ACQUIRE_LEASE, [this.#key('lease', name)], [owner, ttl]) === 1
  }

  async releaseLease (name: string, owner: string): Promise<void> {
    const conn = await this.#ready()
    await this.#run(conn, RELEASE_LEASE, [this.#key('lease', name)], [owner])
  }

  async close (): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    await quitGracefully(this.#cmd)
  }

  async #ready (): Promise<Redis> {
    if (this.#closed) throw new Error('config store: closed')
    if (await waitReady(this.#cmd, COMMAND_WAIT_MS)) return this.#cmd
    throw new Error(`config store: Redis is unavailable (connection ${this.#cmd.status})`)
  }

  /** EVALSHA: one round trip; the script's text only after a NOSCRIPT (a server that has not seen it yet, or was restarted) */
  async #run (conn: Redis, s: Script, keys: string[], args: string[]): Promise<unknown> {
    try {
      return await conn.evalsha(s.sha, keys.length, ...keys, ...args)
    } catch (err) {
      if (!(err instanceof Error) || !err.message.startsWith('NOSCRIPT')) throw err
      return await conn.eval(s.text, keys.length, ...keys, ...args)
    }
  }

  #key (kind: 'dev' | 'hist' | 'tpl' | 'lease', id: string): string
  #key (kind: 'pending' | 'status' | 'rollouts'): string
  #key (kind: string, id?: string): string {
    return id === undefined ? this.#prefix + kind : `${this.#prefix}${kind}:${id}`
  }
}

function fieldsOf (flat: string[]): Record<string, string> {
  const fields: Record<string, string> = {}
  for (let i = 0; i + 1 < flat.length; i += 2) fields[flat[i]!] = flat[i + 1]!
  return fields
}

const STATUSES: ReadonlySet<string> = new Set<ConfigStatus>(['current', 'pending', 'failed'])

function parseState (deviceId: string, h: Record<string, string>): DeviceConfigState | null {
  if (h.version === undefined || h.current === undefined || h.template === undefined) return null
  return {
    deviceId,
    template: h.template,
    current: JSON.parse(h.current) as ConfigVersion,
    lastKnownGood: h.lastKnownGood === undefined ? null : Number(h.lastKnownGood),
    status: STATUSES.has(h.status ?? '') ? h.status as ConfigStatus : 'pending',
    overrides: h.overrides === undefined ? {} : JSON.parse(h.overrides) as JsonObject,
    deliveredAt: h.deliveredAt === undefined ? null : Number(h.deliveredAt)
  }
}
