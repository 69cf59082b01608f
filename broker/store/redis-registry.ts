/**
 * The registry shared by every broker process (and the CLI) through Redis.
 * Devices and certificates are hashes so the revocation scripts can flip one
 * field without JSON handling in Lua; tokens are stored under their SHA-256 so
 * a Redis dump never yields a usable token. An outage must make calls fail
 * fast and ping() report false, never crash or hang the broker.
 *
 * Listing pages (the admin API) reads sorted-set indexes, never the keyspace:
 * every member has score 0, so ZRANGEBYLEX pages them in byte order from the
 * cursor on. Every write of a device or certificate hash goes through a script
 * that takes the record out of its indexes as it was and puts it back as it is
 * (INDEX_LIB), so no write path can leave an index behind:
 *   idx:dev, idx:dev:status:<s>, idx:dev:template:<t>, idx:dev:st:<s>:<t>   deviceId
 *   idx:cert, idx:cert:status:<s>                                          certificateId (bound ones)
 *   idx:cert:exp, idx:cert:exp:<s>                                         <notAfter, 16 digits>:<certificateId>
 * Data written before the indexes existed is indexed once, on the first page
 * asked for (#indexed).
 */
import { createHash, randomUUID } from 'node:crypto'
import type { ChainableCommander, Redis } from 'ioredis'
import { connectRedis, quitGracefully, redisScript, runScript, waitReady, within } from './redis.js'
import type {
  ActivityDelta, CertificateQuery, CertificateRecord, CertificateRecords, CertificateStatus, DeviceActivity, DeviceQuery, DeviceRecord, DeviceStatus, HealthCheckOutcome, HealthProgress, HealthWindow,
  OwnershipTokenRecord, Page, Registration, RegistrationOutcome, Registry, RevocationEntry, RevocationListener, RevocationQuery, RevocationTarget, RotatedCertificate, RotationOutcome
} from './registry.js'
import {
  certificateMatches, certificatePlan, decodeCursor, deviceMatches, encodeCursor, entryOf, listField, normalizeTarget, noticeOf, padExpiry, pageLimit, pageOf, RevocationListeners
} from './registry.js'

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
/** devices indexed per script while indexing data written before the indexes: each script blocks Redis briefly */
const BACKFILL_BATCH = 500
/** activity deltas per script in one flush (all of a flush's scripts still go in one pipeline) */
const ACTIVITY_BATCH = 500
/** the marker of a key space whose indexes are complete; bump it when an index is added */
const INDEX_VERSION = '1'

// --- indexes ---
// Every script that writes a device or certificate hash starts with these. Each
// index entry is derived from the hash alone: unindex* before a write removes what
// the record was listed under, index* after it lists what the record is now.
// A certificate is listed only while it is bound to a device (deviceId present).
const INDEX_LIB = `
local function padExpiry (n)
  if #n >= 16 then return n end
  return string.rep('0', 16 - #n) .. n
end
local function deviceEntries (P, id)
  local h = redis.call('HMGET', P .. 'device:' .. id, 'status', 'template')
  if not h[1] or not h[2] then return {} end
  return { P .. 'idx:dev', P .. 'idx:dev:status:' .. h[1], P .. 'idx:dev:template:' .. h[2], P .. 'idx:dev:st:' .. h[1] .. ':' .. h[2] }
end
local function unindexDevice (P, id)
  for _, key in ipairs(deviceEntries(P, id)) do redis.call('ZREM', key, id) end
end
local function indexDevice (P, id)
  for _, key in ipairs(deviceEntries(P, id)) do redis.call('ZADD', key, 0, id) end
end
local function certEntries (P, id)
  local h = redis.call('HMGET', P .. 'cert:' .. id, 'deviceId', 'status', 'notAfter')
  if not h[1] or not h[2] or not h[3] then return {} end
  local e = padExpiry(h[3]) .. ':' .. id
  return { { P .. 'idx:cert', id }, { P .. 'idx:cert:status:' .. h[2], id }, { P .. 'idx:cert:exp', e }, { P .. 'idx:cert:exp:' .. h[2], e } }
end
local function unindexCert (P, id)
  for _, entry in ipairs(certEntries(P, id)) do redis.call('ZREM', entry[1], entry[2]) end
end
local function indexCert (P, id)
  for _, entry in ipairs(certEntries(P, id)) do redis.call('ZADD', entry[1], 0, entry[2]) end
end
`

/**
 * The script with INDEX_LIB in front, as a `#!lua` script: Redis then refuses the
 * whole script up front when it cannot write (out of memory, read-only replica).
 * Without the shebang it would run the ZREMs and DELs (never refused for memory)
 * and fail at the first HSET, leaving a record out of its indexes, or gone.
 */
function indexed (body: string): string {
  return '#!lua\n' + INDEX_LIB + body.replace(/^#!lua[^\n]*\n/, '')
}

// KEYS: device; ARGV: prefix, deviceId, fields...
const PUT_DEVICE = indexed(`
local P, id = ARGV[1], ARGV[2]
unindexDevice(P, id)
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('SADD', P .. 'devices', id)
indexDevice(P, id)
return 1`)

// KEYS: device; ARGV: prefix, deviceId, fields...
const CREATE_DEVICE_IF_ABSENT = indexed(`
local P, id = ARGV[1], ARGV[2]
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('SADD', P .. 'devices', id)
indexDevice(P, id)
return 1`)

// --- health verification (CONTRACT §3.7) ---
// <prefix>health:<id>, a hash: deadline, checks (comma separated), met:<check> → when;
// <prefix>health-due, a sorted set of device ids scored by deadline. The device's
// status alone says whether a window is open: a window of a device no longer
// provisioned is never acted on, and leaves health-due at the next sweep.
const HEALTH_LIB = `
local function setHealthWindow (P, id, status, deadline, checks)
  redis.call('ZREM', P .. 'health-due', id)
  if status == 'provisioned' then
    redis.call('DEL', P .. 'health:' .. id)
    redis.call('HSET', P .. 'health:' .. id, 'deadline', deadline, 'checks', checks)
    redis.call('ZADD', P .. 'health-due', deadline, id)
  elseif status == 'active' then
    redis.call('DEL', P .. 'health:' .. id)
  end
end
`

// KEYS: device, health; ARGV: prefix, deviceId, check, at. Replies recorded, activated or ignored.
const RECORD_HEALTH_CHECK = indexed(`
local P, id, check, at = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('HGET', KEYS[1], 'status') ~= 'provisioned' then return 'ignored' end
local w = redis.call('HMGET', KEYS[2], 'deadline', 'checks')
if not w[1] or not w[2] or tonumber(at) > tonumber(w[1]) then return 'ignored' end
local checks, wanted = {}, false
for c in string.gmatch(w[2], '[^,]+') do
  table.insert(checks, c)
  if c == check then wanted = true end
end
if not wanted or redis.call('HSETNX', KEYS[2], 'met:' .. check, at) == 0 then return 'ignored' end
for _, c in ipairs(checks) do
  if redis.call('HEXISTS', KEYS[2], 'met:' .. c) == 0 then return 'recorded' end
end
unindexDevice(P, id)
redis.call('HSET', KEYS[1], 'status', 'active', 'updatedAt', at)
indexDevice(P, id)
redis.call('DEL', KEYS[2])
redis.call('ZREM', P .. 'health-due', id)
return 'activated'`)

// KEYS: device, health; ARGV: prefix, deviceId, at, channel, message. Replies nil, or the checks missed.
const EXPIRE_HEALTH = indexed(`
local P, id, at = ARGV[1], ARGV[2], ARGV[3]
local w = redis.call('HMGET', KEYS[2], 'deadline', 'checks')
if redis.call('HGET', KEYS[1], 'status') ~= 'provisioned' or not w[1] or not w[2] then
  redis.call('ZREM', P .. 'health-due', id)
  return nil
end
if tonumber(w[1]) > tonumber(at) then return nil end
local missed = { 'quarantined' }
for c in string.gmatch(w[2], '[^,]+') do
  if redis.call('HEXISTS', KEYS[2], 'met:' .. c) == 0 then table.insert(missed, c) end
end
unindexDevice(P, id)
redis.call('HSET', KEYS[1], 'status', 'quarantined', 'updatedAt', at)
indexDevice(P, id)
redis.call('ZREM', P .. 'health-due', id)
redis.call('PUBLISH', ARGV[4], ARGV[5])
return missed`)
// --- end health verification ---

// KEYS: device; ARGV: prefix, deviceId, status, updatedAt, channel, message, deadline, checks ('' unless provisioned).
// Replies nil (no device), or {changed (0/1), the record's fields and values...}.
const SET_DEVICE_STATUS = indexed(HEALTH_LIB + `
local P, id = ARGV[1], ARGV[2]
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return nil end
if current == 'revoked' or current == ARGV[3] then return { 0, unpack(redis.call('HGETALL', KEYS[1])) } end
unindexDevice(P, id)
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'updatedAt', ARGV[4])
indexDevice(P, id)
setHealthWindow(P, id, ARGV[3], ARGV[7], ARGV[8])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return { 1, unpack(redis.call('HGETALL', KEYS[1])) }`)

// KEYS: certificate; ARGV: prefix, certificateId, deviceId ('' unbound), fields...
const PUT_CERTIFICATE = indexed(`
local P, id = ARGV[1], ARGV[2]
unindexCert(P, id)
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
if ARGV[3] ~= '' then redis.call('SADD', P .. 'device-certs:' .. ARGV[3], id) end
indexCert(P, id)
return 1`)

// KEYS: certificate, token; ARGV: prefix, certificateId, ttl ms, token value, fields...
// A pending certificate expires (PEXPIRE): it is taken out of the indexes (a bound
// record it replaces) and never listed, so nothing it leaves behind is indexed.
const PUT_PENDING_CERTIFICATE = indexed(`
local P, id = ARGV[1], ARGV[2]
unindexCert(P, id)
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[3])
return 1`)

// KEYS: device, device-certs; ARGV: deviceId, updatedAt, prefix, channel, message.
// The set may still list a certificate since bound to another device, hence the deviceId check.
const REVOKE_DEVICE = indexed(`
local P = ARGV[3]
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
unindexDevice(P, ARGV[1])
redis.call('HSET', KEYS[1], 'status', 'revoked', 'updatedAt', ARGV[2])
indexDevice(P, ARGV[1])
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local key = P .. 'cert:' .. id
  if redis.call('HGET', key, 'deviceId') == ARGV[1] then
    unindexCert(P, id)
    redis.call('HSET', key, 'status', 'revoked', 'updatedAt', ARGV[2])
    indexCert(P, id)
  end
end
-- CONTRACT §3.7: a revoked device has no health window any more (nothing would ever read or remove it)
redis.call('DEL', P .. 'health:' .. ARGV[1])
redis.call('ZREM', P .. 'health-due', ARGV[1])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1`)

// KEYS: certificate, revocation list; ARGV: updatedAt, channel, message, list field, prefix, certificateId
const REVOKE_CERTIFICATE = indexed(`
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
unindexCert(ARGV[5], ARGV[6])
redis.call('HSET', KEYS[1], 'status', 'revoked', 'updatedAt', ARGV[1])
indexCert(ARGV[5], ARGV[6])
redis.call('HSETNX', KEYS[2], ARGV[4], ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1`)

// KEYS: revocation list [, certificate]; ARGV: list field, revokedAt, channel, message, prefix, certificateId ('' without).
// The durable record and the notice in one step: a process that misses the notice
// still finds the record on its next connect check or re-validation.
const REVOKE = indexed(`
local added = redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
if KEYS[2] and redis.call('EXISTS', KEYS[2]) == 1 and redis.call('HGET', KEYS[2], 'status') ~= 'revoked' then
  unindexCert(ARGV[5], ARGV[6])
  redis.call('HSET', KEYS[2], 'status', 'revoked', 'updatedAt', ARGV[2])
  indexCert(ARGV[5], ARGV[6])
end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return added`)

// ARGV: prefix, deviceIds... Indexes records written before the indexes existed (and
// their bound certificates) from their hashes: idempotent, and as consistent as any write
// path, since each script reads the hashes as they are when it runs.
const BACKFILL_INDEXES = indexed(`
local P = ARGV[1]
for i = 2, #ARGV do
  local id = ARGV[i]
  indexDevice(P, id)
  for _, cid in ipairs(redis.call('SMEMBERS', P .. 'device-certs:' .. id)) do
    if redis.call('HGET', P .. 'cert:' .. cid, 'deviceId') == id then indexCert(P, cid) end
  end
end
return 1`)
// --- end indexes ---

// --- rotation: <prefix>rotations, a sorted set of unsettled new certificate ids scored by graceUntil ---
// Revoking a rotated certificate: as REVOKE_CERTIFICATE, out of the rotations index too, with the
// notice built here (certificate ids are hex): the script decides which ids, so JS cannot build it first.
const ROTATION_LIB = `
local function revokeRotated (P, id, now, channel, origin)
  local key = P .. 'cert:' .. id
  unindexCert(P, id)
  redis.call('HSET', key, 'status', 'revoked', 'updatedAt', now)
  redis.call('HDEL', key, 'replaces', 'graceUntil')
  indexCert(P, id)
  redis.call('ZREM', P .. 'rotations', id)
  redis.call('HSETNX', P .. 'revocation-list', 'cert:' .. id, now)
  redis.call('PUBLISH', channel, cjson.encode({ deviceId = cjson.null, certificateId = id, origin = origin }))
end
`

// KEYS: new cert, old cert, device-certs, revocation list; ARGV: prefix, newId, oldId, deviceId, graceUntil, now, channel, origin,
// the presented certificate's three list fields (listFields), fields...
// The presented certificate is checked against the revocation list in the same step: a revocation by
// issuer and serial or by CA leaves its record 'active', and one whose notice this process missed
// must not buy a fresh certificate
const ROTATE_CERTIFICATE = indexed(ROTATION_LIB + `
local P, newId, oldId, deviceId = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local old = redis.call('HMGET', KEYS[2], 'deviceId', 'status')
if old[1] ~= deviceId or old[2] ~= 'active' then return {'refused'} end
for _, v in ipairs(redis.call('HMGET', KEYS[4], ARGV[9], ARGV[10], ARGV[11])) do
  if v then return {'refused'} end
end
local reply = {'rotated'}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  if id ~= oldId and id ~= newId then
    local c = redis.call('HMGET', P .. 'cert:' .. id, 'deviceId', 'status', 'replaces')
    if c[1] == deviceId and c[2] == 'active' and c[3] then
      revokeRotated(P, id, ARGV[6], ARGV[7], ARGV[8])
      table.insert(reply, id)
    end
  end
end
redis.call('HSET', KEYS[2], 'retiresAt', ARGV[5])
unindexCert(P, newId)
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 12))
redis.call('SADD', KEYS[3], newId)
indexCert(P, newId)
redis.call('ZADD', P .. 'rotations', ARGV[5], newId)
return reply`)

// KEYS: new cert; ARGV: prefix, newId, now, channel, origin. Replies the ids it revoked: the replaced
// certificate first, then every other certificate of the device still active and issued BEFORE the new
// one (the provisional one of the claim flow carries the old key too; one issued after it, by a later
// rotation, is the device's newest and stays); empty when there was nothing to settle, and when the new
// certificate is no longer active itself (revoked meanwhile: its settling revokes nothing).
const SETTLE_ROTATION = indexed(ROTATION_LIB + `
local P, newId = ARGV[1], ARGV[2]
local new = redis.call('HMGET', KEYS[1], 'replaces', 'deviceId', 'status', 'createdAt')
local oldId, deviceId = new[1], new[2]
if not oldId then return {} end
redis.call('HDEL', KEYS[1], 'replaces', 'graceUntil')
redis.call('ZREM', P .. 'rotations', newId)
if new[3] ~= 'active' then return {} end
local reply = {}
if redis.call('HGET', P .. 'cert:' .. oldId, 'status') == 'active' then
  revokeRotated(P, oldId, ARGV[3], ARGV[4], ARGV[5])
  table.insert(reply, oldId)
end
local issuedAt = tonumber(new[4])
if deviceId and issuedAt then
  for _, id in ipairs(redis.call('SMEMBERS', P .. 'device-certs:' .. deviceId)) do
    if id ~= newId and id ~= oldId then
      local c = redis.call('HMGET', P .. 'cert:' .. id, 'deviceId', 'status', 'createdAt')
      local created = tonumber(c[3])
      if c[1] == deviceId and c[2] == 'active' and created and created < issuedAt then
        revokeRotated(P, id, ARGV[3], ARGV[4], ARGV[5])
        table.insert(reply, id)
      end
    end
  end
end
return reply`)
// --- end rotation ---

// --- device activity ---
// KEYS: activity hashes; ARGV: per key 7 values: seenAt, connects, messagesIn, rejected,
// lastErrorCode, remoteAddress, certificateNotAfter ('' = not in this delta).
// firstSeen is set once, lastSeen only moves forward (two processes may flush out of order).
const RECORD_ACTIVITY = `#!lua
for i, key in ipairs(KEYS) do
  local o = (i - 1) * 7
  local seen = ARGV[o + 1]
  local last = redis.call('HGET', key, 'lastSeen')
  local fields = {}
  if not last then
    table.insert(fields, 'firstSeen'); table.insert(fields, seen)
  end
  if not last or tonumber(last) < tonumber(seen) then
    table.insert(fields, 'lastSeen'); table.insert(fields, seen)
  end
  local names = { 'lastErrorCode', 'remoteAddress', 'certificateNotAfter' }
  for j, name in ipairs(names) do
    local v = ARGV[o + 4 + j]
    if v ~= '' then table.insert(fields, name); table.insert(fields, v) end
  end
  if #fields > 0 then redis.call('HSET', key, unpack(fields)) end
  if ARGV[o + 2] ~= '0' then redis.call('HINCRBY', key, 'connects', ARGV[o + 2]) end
  if ARGV[o + 3] ~= '0' then redis.call('HINCRBY', key, 'messagesIn', ARGV[o + 3]) end
  if ARGV[o + 4] ~= '0' then redis.call('HINCRBY', key, 'rejected', ARGV[o + 4]) end
end
return #KEYS`
// --- end device activity ---

// A certificate's connect (certificateRecords): the revocation list, the certificate's hash and
// the hash of the device it is bound to, in one round trip.
// KEYS: the revocation list, the certificate's hash; ARGV: the three list fields (listFields), the key prefix.
// Returns {1 when listed else 0, the certificate's fields (flat), the device's fields (flat)}.
// Flagged no-writes: a read-only script, so like the plain reads it replaces it is served while
// writes are held (CLIENT PAUSE WRITE, a failover) and may run on a replica.
const CERTIFICATE_RECORDS = redisScript(`#!lua flags=no-writes
local listed = redis.call('HMGET', KEYS[1], ARGV[1], ARGV[2], ARGV[3])
local revoked = 0
for i = 1, 3 do
  if listed[i] then revoked = 1 end
end
local cert = redis.call('HGETALL', KEYS[2])
local device = {}
for i = 1, #cert, 2 do
  if cert[i] == 'deviceId' then
    device = redis.call('HGETALL', ARGV[4] .. 'device:' .. cert[i + 1])
    break
  end
end
return {revoked, cert, device}`)

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
// KEYS: token, device, devices set, device-certs, the device id's session-owner record; ARGV: the plan as JSON (see registerDevice).
// All checks before the first write, and the shebang makes Redis refuse the whole script
// up front when it cannot write (out of memory, read-only replica): all or nothing. The
// token is deleted only in the step that registers; DEL + HSET of a certificate drops the
// expiry its pending record had. Every hash written is re-indexed (INDEX_LIB) in the same step.
const REGISTER_DEVICE = indexed(`#!lua
local plan = cjson.decode(ARGV[1])
local P = plan.prefix
if plan.token and redis.call('EXISTS', KEYS[1]) == 0 then return {'token-used'} end
-- ownerBlocksDevice (registry.ts): the client id of another identity's session is no device id to give out
local owner = redis.call('GET', KEYS[5])
if owner and string.sub(owner, 1, 6) ~= 'claim:' and owner ~= 'device:' .. plan.deviceId then return {'client-id-in-use'} end
local exists = redis.call('EXISTS', KEYS[2]) == 1
-- replace stays within the device's own template (plugins/provisioning/register.ts says why)
if exists and (not plan.replace or redis.call('HGET', KEYS[2], 'template') ~= plan.template) then return {'device-exists'} end
local reply = {'registered'}
if exists then
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[4])) do
    local key = P .. 'cert:' .. id
    local owner = redis.call('HMGET', key, 'deviceId', 'status')
    if owner[1] == plan.deviceId and owner[2] ~= 'revoked' then
      unindexCert(P, id)
      redis.call('HSET', key, 'status', 'revoked', 'updatedAt', plan.now)
      indexCert(P, id)
      table.insert(reply, id)
    end
  end
  unindexDevice(P, plan.deviceId)
  redis.call('DEL', KEYS[2])
end
if plan.token then redis.call('DEL', KEYS[1]) end
redis.call('HSET', KEYS[2], unpack(plan.device))
redis.call('SADD', KEYS[3], plan.deviceId)
indexDevice(P, plan.deviceId)
redis.call('DEL', P .. 'health:' .. plan.deviceId)
redis.call('ZREM', P .. 'health-due', plan.deviceId)
if plan.health then
  redis.call('HSET', P .. 'health:' .. plan.deviceId, 'deadline', plan.health.deadline, 'checks', plan.health.checks)
  redis.call('ZADD', P .. 'health-due', plan.health.deadline, plan.deviceId)
end
for _, c in ipairs(plan.certs) do
  local key = P .. 'cert:' .. c.id
  unindexCert(P, c.id)
  redis.call('DEL', key)
  redis.call('HSET', key, unpack(c.fields))
  redis.call('SADD', KEYS[4], c.id)
  indexCert(P, c.id)
end
return reply`)
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
  readonly #listeners: RevocationListeners
  readonly #gapListeners: Array<() => void> = []
  #closed = false

  constructor (opts: RedisRegistryOptions) {
    this.#prefix = opts.keyPrefix ?? 'jitp:'
    this.#channel = `${this.#prefix}revocations`
    this.#now = opts.now ?? Date.now
    this.#onError = opts.onError ?? (() => {})
    this.#listeners = new RevocationListeners((err) => this.#onError(err))
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

  async listDevicesPage (q: DeviceQuery): Promise<Page<DeviceRecord>> {
    const after = decodeCursor('d', q.cursor)
    const limit = pageLimit(q.limit)
    const conn = await this.#indexed()
    const index = q.status !== undefined && q.template !== undefined
      ? `idx:dev:st:${q.status}:${q.template}`
      : q.status !== undefined ? `idx:dev:status:${q.status}` : q.template !== undefined ? `idx:dev:template:${q.template}` : 'idx:dev'
    const ids = await conn.zrangebylex(this.#prefix + index, after === null ? '-' : `(${after}`, '+', 'LIMIT', 0, limit + 1)
    const hashes = await hgetallMany(conn, ids.slice(0, limit).map((id) => this.#key('device', id)))
    // the index and the record change in one script; the check only guards against a record changed by hand
    const items = hashes.map(parseDevice).filter((d): d is DeviceRecord => d !== null && deviceMatches(d, q))
    return { items, nextCursor: ids.length > limit ? encodeCursor('d', ids[limit - 1]!) : null }
  }

  async listCertificatesPage (q: CertificateQuery): Promise<Page<CertificateRecord>> {
    const { kind, after, limit, keyOf } = certificatePlan(q)
    // one device holds a handful of certificates: its own set, sorted here, is the index
    if (q.deviceId !== undefined) return pageOf((await this.certificatesOfDevice(q.deviceId)).filter((c) => certificateMatches(c, q)), keyOf, kind, after, limit)
    const conn = await this.#indexed()
    const from = after === null ? '-' : `(${after}`
    let members: string[]
    if (kind === 'e') {
      // integral notAfter < expiringBefore ⇔ notAfter < ceil(expiringBefore); `(` makes the bound exclusive
      const before = Math.ceil(q.expiringBefore!)
      if (before <= 0) return { items: [], nextCursor: null }
      const index = q.status === undefined ? 'idx:cert:exp' : `idx:cert:exp:${q.status}`
      members = await conn.zrangebylex(this.#prefix + index, from, before >= 1e16 ? '+' : `(${padExpiry(before)}`, 'LIMIT', 0, limit + 1)
    } else {
      const index = q.status === undefined ? 'idx:cert' : `idx:cert:status:${q.status}`
      members = await conn.zrangebylex(this.#prefix + index, from, '+', 'LIMIT', 0, limit + 1)
    }
    const ids = members.slice(0, limit).map((m) => kind === 'e' ? m.slice(m.indexOf(':') + 1) : m)
    const hashes = await hgetallMany(conn, ids.map((id) => this.#key('cert', id)))
    const items = hashes.map(parseCertificate).filter((c): c is CertificateRecord => c !== null && certificateMatches(c, q))
    return { items, nextCursor: members.length > limit ? encodeCursor(kind, members[limit - 1]!) : null }
  }

  async setDeviceStatus (deviceId: string, status: 'active' | 'quarantined'): Promise<DeviceRecord | null>
  async setDeviceStatus (deviceId: string, status: 'provisioned', health: HealthWindow): Promise<DeviceRecord | null>
  async setDeviceStatus (deviceId: string, status: 'active' | 'quarantined' | 'provisioned', health?: HealthWindow): Promise<DeviceRecord | null> {
    if (status === 'provisioned' && health === undefined) throw new RangeError('a provisioned device needs a health window')
    const conn = await this.#ready()
    const event: RevocationEvent = { deviceId, certificateId: null, statusChanged: true }
    const reply = await conn.eval(SET_DEVICE_STATUS, 1, this.#key('device', deviceId),
      this.#prefix, deviceId, status, String(this.#now()), this.#channel, this.#message(event),
      health === undefined ? '' : String(health.deadline), health === undefined ? '' : health.checks.join(',')) as [number, ...string[]] | null
    if (reply === null) return null
    const [changed, ...flat] = reply
    const fields: Record<string, string> = {}
    for (let i = 0; i + 1 < flat.length; i += 2) fields[flat[i]!] = flat[i + 1]!
    if (changed === 1) this.#listeners.emit(event)
    return parseDevice(fields)
  }

  async putDevice (device: DeviceRecord): Promise<void> {
    const conn = await this.#ready()
    await conn.eval(PUT_DEVICE, 1, this.#key('device', device.deviceId), this.#prefix, device.deviceId, ...Object.entries(deviceFields(device)).flat())
  }

  async createDeviceIfAbsent (device: DeviceRecord): Promise<boolean> {
    const conn = await this.#ready()
    const fields = Object.entries(deviceFields(device)).flat()
    const created = await conn.eval(CREATE_DEVICE_IF_ABSENT, 1, this.#key('device', device.deviceId), this.#prefix, device.deviceId, ...fields)
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
    await conn.eval(PUT_CERTIFICATE, 1, this.#key('cert', cert.certificateId),
      this.#prefix, cert.certificateId, cert.deviceId ?? '', ...Object.entries(certificateFields(cert)).flat())
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
      deviceId, String(this.#now()), this.#prefix, this.#channel, this.#message(event))
    if (found !== 1) return false
    this.#listeners.emit(event)
    return true
  }

  async revokeCertificate (certificateId: string): Promise<boolean> {
    const conn = await this.#ready()
    // deviceId stays null: listeners read a non-null deviceId as "the whole device is revoked"
    const event: RevocationEvent = { deviceId: null, certificateId }
    const found = await conn.eval(REVOKE_CERTIFICATE, 2,
      this.#key('cert', certificateId), this.#listKey(), String(this.#now()), this.#channel, this.#message(event), `cert:${certificateId}`,
      this.#prefix, certificateId)
    if (found !== 1) return false
    this.#listeners.emit(event)
    return true
  }

  onRevocation (listener: RevocationListener): void {
    this.#listeners.add(listener)
  }

  // --- rotation ---
  async rotateCertificate (cert: RotatedCertificate, presented: RevocationQuery): Promise<RotationOutcome> {
    const conn = await this.#ready()
    const reply = await conn.eval(ROTATE_CERTIFICATE, 4,
      this.#key('cert', cert.certificateId), this.#key('cert', cert.replaces), this.#key('device-certs', cert.deviceId), this.#listKey(),
      this.#prefix, cert.certificateId, cert.replaces, cert.deviceId, String(cert.graceUntil), String(this.#now()), this.#channel, this.#origin,
      ...listFields(presented), ...Object.entries(certificateFields(cert)).flat()) as string[]
    if (reply[0] === 'refused') return { result: 'refused' }
    if (reply[0] !== 'rotated') throw new Error('registry: unexpected reply from the rotation script')
    const superseded = reply.slice(1)
    for (const certificateId of superseded) this.#listeners.emit({ deviceId: null, certificateId })
    return { result: 'rotated', superseded }
  }

  async settleRotation (certificateId: string): Promise<string[]> {
    const conn = await this.#ready()
    const revoked = await conn.eval(SETTLE_ROTATION, 1, this.#key('cert', certificateId),
      this.#prefix, certificateId, String(this.#now()), this.#channel, this.#origin) as string[]
    for (const id of revoked) this.#listeners.emit({ deviceId: null, certificateId: id })
    return revoked
  }

  async rotationsDue (before: number, limit: number): Promise<string[]> {
    const conn = await this.#ready()
    return await conn.zrangebyscore(`${this.#prefix}rotations`, '-inf', `(${before}`, 'LIMIT', 0, limit)
  }
  // --- end rotation ---

  // --- revocation list: one hash `<prefix>revocation-list`, fields `cert:<id>`, `serial:<issuer>:<serial>`, `ca:<fp>` → revokedAt ---
  async revoke (target: RevocationTarget): Promise<boolean> {
    const conn = await this.#ready()
    const t = normalizeTarget(target)
    const keys = [this.#listKey()]
    if ('certificateId' in t) keys.push(this.#key('cert', t.certificateId))
    const added = await conn.eval(REVOKE, keys.length, ...keys,
      listField(t), String(this.#now()), this.#channel, this.#message(noticeOf(t)), this.#prefix, 'certificateId' in t ? t.certificateId : '')
    this.#listeners.emit(noticeOf(t))
    return added === 1
  }

  async isRevoked (q: RevocationQuery): Promise<boolean> {
    const conn = await this.#ready()
    const listed = await conn.hmget(this.#listKey(), ...listFields(q))
    return listed.some((v) => v !== null)
  }

  async certificateRecords (q: RevocationQuery): Promise<CertificateRecords> {
    const conn = await this.#ready()
    const [listed, certFlat, deviceFlat] = await runScript(conn, CERTIFICATE_RECORDS, [this.#listKey(), this.#key('cert', q.certificateId)], [...listFields(q), this.#prefix]) as [number, string[], string[]]
    const hash = flatToFields(certFlat)
    // as getCertificate: a pending certificate expires with its token
    const certificate = hash.expiresAt !== undefined && Number(hash.expiresAt) <= this.#now() ? null : parseCertificate(hash)
    return { revoked: listed === 1, certificate, device: certificate?.deviceId ? parseDevice(flatToFields(deviceFlat)) : null }
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
    // one script: the certificate and its token live and expire together
    await conn.eval(PUT_PENDING_CERTIFICATE, 2, this.#key('cert', cert.certificateId), this.#tokenKey(token),
      this.#prefix, cert.certificateId, String(ttl), JSON.stringify({ record, expiresAt }),
      ...Object.entries({ ...certificateFields(cert), expiresAt: String(expiresAt) }).flat())
  }

  async registerDevice (reg: Registration): Promise<RegistrationOutcome> {
    const conn = await this.#ready()
    const deviceId = reg.device.deviceId
    const plan = JSON.stringify({
      deviceId,
      token: reg.token !== null,
      replace: reg.replace,
      template: reg.device.template,
      now: String(this.#now()),
      prefix: this.#prefix,
      device: Object.entries(deviceFields(reg.device)).flat(),
      ...(reg.health === undefined ? {} : { health: { deadline: String(reg.health.deadline), checks: reg.health.checks.join(',') } }),
      certs: reg.certificates.map((c) => ({ id: c.certificateId, fields: Object.entries(certificateFields(c)).flat() }))
    })
    const reply = await conn.eval(REGISTER_DEVICE, 5,
      this.#tokenKey(reg.token ?? ''), this.#key('device', deviceId), `${this.#prefix}devices`, this.#key('device-certs', deviceId), this.#ownerKey(deviceId), plan) as string[]
    if (reply[0] === 'token-used') return { result: 'token-used' }
    if (reply[0] === 'client-id-in-use') return { result: 'client-id-in-use' }
    if (reply[0] === 'device-exists') return { result: 'device-exists' }
    if (reply[0] !== 'registered') throw new Error('registry: unexpected reply from the registration script')
    return { result: 'registered', revoked: reply.slice(1) }
  }
  // --- end registration ---

  // --- health verification (HEALTH_LIB above: the window hash and the health-due index) ---
  async getHealth (deviceId: string): Promise<HealthProgress | null> {
    const conn = await this.#ready()
    const h = await conn.hgetall(this.#healthKey(deviceId))
    if (h.deadline === undefined || h.checks === undefined) return null
    const checks = h.checks.split(',').filter((c) => c !== '')
    return { deadline: Number(h.deadline), checks, met: checks.filter((c) => h[`met:${c}`] !== undefined) }
  }

  async recordHealthCheck (deviceId: string, check: string, at: number): Promise<HealthCheckOutcome> {
    const conn = await this.#ready()
    const reply = await conn.eval(RECORD_HEALTH_CHECK, 2, this.#key('device', deviceId), this.#healthKey(deviceId), this.#prefix, deviceId, check, String(at))
    if (reply !== 'recorded' && reply !== 'activated' && reply !== 'ignored') throw new Error('registry: unexpected reply from the health check script')
    return { result: reply }
  }

  async healthDue (before: number, limit: number): Promise<string[]> {
    const conn = await this.#ready()
    return await conn.zrangebyscore(`${this.#prefix}health-due`, '-inf', `(${before}`, 'LIMIT', 0, limit)
  }

  async expireHealth (deviceId: string, at: number): Promise<{ readonly missed: readonly string[] } | null> {
    const conn = await this.#ready()
    const event: RevocationEvent = { deviceId, certificateId: null, statusChanged: true }
    const reply = await conn.eval(EXPIRE_HEALTH, 2, this.#key('device', deviceId), this.#healthKey(deviceId),
      this.#prefix, deviceId, String(at), this.#channel, this.#message(event)) as string[] | null
    if (reply === null) return null
    this.#listeners.emit(event)
    return { missed: reply.slice(1) }
  }

  #healthKey (deviceId: string): string {
    return `${this.#prefix}health:${deviceId}`
  }
  // --- end health verification ---

  // --- device activity: `<prefix>activity:<deviceId>`, kept through revocation and replacement ---
  async recordActivity (deltas: readonly ActivityDelta[]): Promise<void> {
    if (deltas.length === 0) return
    const conn = await this.#ready()
    // one round trip for the whole flush; batches keep each script short
    const pipeline = conn.pipeline()
    for (let i = 0; i < deltas.length; i += ACTIVITY_BATCH) {
      const batch = deltas.slice(i, i + ACTIVITY_BATCH)
      const args = batch.flatMap((d) => [
        String(d.seenAt), String(d.connects), String(d.messagesIn), String(d.rejected),
        d.lastErrorCode ?? '', d.remoteAddress ?? '', d.certificateNotAfter === undefined ? '' : String(d.certificateNotAfter)
      ])
      pipeline.eval(RECORD_ACTIVITY, batch.length, ...batch.map((d) => this.#activityKey(d.deviceId)), ...args)
    }
    await exec(pipeline)
  }

  async getActivity (deviceId: string): Promise<DeviceActivity | null> {
    const conn = await this.#ready()
    return parseActivity(await conn.hgetall(this.#activityKey(deviceId)))
  }

  #activityKey (deviceId: string): string {
    return `${this.#prefix}activity:${deviceId}`
  }
  // --- end device activity ---

  /**
   * The connection, once the listing indexes cover every record: the first page
   * asked of a key space written before the indexes existed indexes it (batches of
   * idempotent scripts over the devices set), then marks it done for every process.
   */
  async #indexed (): Promise<Redis> {
    const conn = await this.#ready()
    this.#backfill ??= this.#backfillIndexes(conn).catch((err: unknown) => {
      this.#backfill = null
      throw err
    })
    await this.#backfill
    return conn
  }

  #backfill: Promise<void> | null = null

  async #backfillIndexes (conn: Redis): Promise<void> {
    const marker = `${this.#prefix}index-version`
    if (await conn.get(marker) === INDEX_VERSION) return
    const ids = await conn.smembers(`${this.#prefix}devices`)
    for (let i = 0; i < ids.length; i += BACKFILL_BATCH) {
      await conn.eval(BACKFILL_INDEXES, 0, this.#prefix, ...ids.slice(i, i + BACKFILL_BATCH))
    }
    await conn.set(marker, INDEX_VERSION)
  }

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
    this.#listeners.clear()
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
    this.#listeners.emit(notice)
  }

}

/** HGETALL's reply inside a script comes flat: field, value, field, value… */
function flatToFields (flat: readonly string[]): Record<string, string> {
  const fields: Record<string, string> = {}
  for (let i = 0; i + 1 < flat.length; i += 2) fields[flat[i]!] = flat[i + 1]!
  return fields
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
    updatedAt: String(c.updatedAt),
    ...(c.replaces === undefined ? {} : { replaces: c.replaces }),
    ...(c.graceUntil === undefined ? {} : { graceUntil: String(c.graceUntil) }),
    ...(c.retiresAt === undefined ? {} : { retiresAt: String(c.retiresAt) })
  }
}

function parseCertificate (h: Record<string, string>): CertificateRecord | null {
  const { certificateId, deviceId, status, serialNumber, notAfter, createdAt, updatedAt, replaces, graceUntil, retiresAt } = h
  if (certificateId === undefined || status === undefined || serialNumber === undefined ||
    notAfter === undefined || createdAt === undefined || updatedAt === undefined) return null
  return {
    certificateId,
    deviceId: deviceId ?? null,
    status: status as CertificateStatus,
    serialNumber,
    notAfter: Number(notAfter),
    createdAt: Number(createdAt),
    updatedAt: Number(updatedAt),
    ...(replaces === undefined ? {} : { replaces }),
    ...(graceUntil === undefined ? {} : { graceUntil: Number(graceUntil) }),
    ...(retiresAt === undefined ? {} : { retiresAt: Number(retiresAt) })
  }
}

function parseActivity (h: Record<string, string>): DeviceActivity | null {
  if (h.lastSeen === undefined) return null
  const num = (v: string | undefined): number | null => v === undefined ? null : Number(v)
  return {
    firstSeen: num(h.firstSeen),
    lastSeen: num(h.lastSeen),
    connects: Number(h.connects ?? 0),
    messagesIn: Number(h.messagesIn ?? 0),
    rejected: Number(h.rejected ?? 0),
    lastErrorCode: h.lastErrorCode ?? null,
    remoteAddress: h.remoteAddress ?? null,
    certificateNotAfter: num(h.certificateNotAfter)
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
    if (e.statusChanged === true) event.statusChanged = true
    else if (e.statusChanged !== undefined) return null
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

