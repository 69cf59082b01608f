/**
 * Configuration: a JSON file (`--config`) and the environment, validated once
 * against one JSON Schema, then frozen and passed down. Unknown or bad keys stop
 * the start with a one-line message naming the key.
 */
import { readFileSync } from 'node:fs'
import { availableParallelism } from 'node:os'
import { join, resolve } from 'node:path'
import { Ajv } from 'ajv'
import { JitpError } from './errors.js'

const configSchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    MQTTS_PORT: { type: 'integer', minimum: 0, maximum: 65535, default: 8883 },
    HOST: { type: 'string', minLength: 1, default: '0.0.0.0' },
    HTTP_PORT: { type: 'integer', minimum: 0, maximum: 65535, default: 9100 },
    // the admin API (CONTRACT §8, broker/admin/): HTTPS, client certificate from the admin CA
    ADMIN_PORT: { type: 'integer', minimum: 0, maximum: 65535, default: 9443 },
    REDIS_URL: { type: 'string', pattern: '^rediss?://' },
    CERTS_DIR: { type: 'string', minLength: 1, default: 'certs-dev' },
    TLS_SESSION_TICKETS: { type: 'boolean', default: false },
    GENERATE_DEV_CERTS: { type: 'boolean', default: true },
    SCHEMAS_DIR: { type: 'string', minLength: 1, default: 'schemas' },
    TEMPLATES_DIR: { type: 'string', minLength: 1, default: 'templates' },
    POLICY_FILE: { type: 'string', minLength: 1 },
    AUDIT_LOG: { type: 'string', minLength: 1, default: 'stdout' },
    LOG_LEVEL: { enum: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], default: 'info' },
    MAX_PAYLOAD_BYTES: { type: 'integer', minimum: 1, maximum: 268435455, default: 65536 },
    BAD_PAYLOADS_PER_MINUTE: { type: 'integer', minimum: 1, default: 30 },
    QUEUE_LIMIT: { type: 'integer', minimum: 1, default: 1000 },
    // flow control (broker/flow-control.ts)
    SESSION_QUEUE_LIMIT: { type: 'integer', minimum: 1, default: 1000 },
    DRAIN_TIMEOUT_MS: { type: 'integer', minimum: 0, default: 30000 },
    MAX_CLIENT_BUFFER_BYTES: { type: 'integer', minimum: 65536, default: 8388608 },
    // lifetime of a message queued for an offline persistent session (Redis store); 0: kept until delivered
    PACKET_TTL_SECONDS: { type: 'integer', minimum: 0, default: 604800 },
    CERT_VALIDITY_DAYS: { type: 'integer', minimum: 1, maximum: 3650, default: 90 },
    TOKEN_TTL_SECONDS: { type: 'integer', minimum: 1, default: 3600 },
    CLAIM_SESSION_MAX_SECONDS: { type: 'integer', minimum: 1, default: 300 },
    PROVISION_RATE_PER_CLAIM_CERT: { type: 'integer', minimum: 1, default: 6000 },
    PROVISION_RATE_PER_ADDRESS: { type: 'integer', minimum: 1, default: 6000 },
    PROVISIONING_AWS_TOPICS: { type: 'boolean', default: false },
    PROVISION_REPLY_COMPANION: { type: 'boolean', default: false },
    // limits (CONTRACT §11, broker/listener.ts)
    TLS_HANDSHAKE_TIMEOUT_MS: { type: 'integer', minimum: 100, default: 10000 },
    CONNECT_TIMEOUT_MS: { type: 'integer', minimum: 100, default: 5000 },
    MAX_PENDING_CONNECTIONS_PER_ADDRESS: { type: 'integer', minimum: 1, default: 64 },
    MAX_CONNECTIONS: { type: 'integer', minimum: 1, default: 100000 },
    // HTTP_PORT takes connections without a certificate: bounded apart, so a flood there cannot take the descriptors MQTT needs
    HTTP_MAX_CONNECTIONS: { type: 'integer', minimum: 1, default: 1024 },
    MAX_PACKET_BYTES: { type: 'integer', minimum: 1024, maximum: 268435455 },
    MAX_KEEPALIVE_SECONDS: { type: 'integer', minimum: 1, maximum: 65535, default: 1200 },
    CONNECT_RATE_PER_ADDRESS: { type: 'integer', minimum: 1, default: 6000 },
    AUDIT_AGGREGATE_SECONDS: { type: 'integer', minimum: 1, default: 10 },
    SESSION_REVALIDATE_SECONDS: { type: 'integer', minimum: 1, default: 60 },
    // configuration lifecycle (CONTRACT §9): a version not acknowledged this long after delivery is rolled back
    CONFIG_ACK_TIMEOUT_SECONDS: { type: 'integer', minimum: 1, default: 300 },
    // credential lifecycle (CONTRACT §3.4): the old certificate of a rotation stays valid this long unless the new one is used first
    ROTATION_GRACE_SECONDS: { type: 'integer', minimum: 1, default: 604800 },
    // a device connecting with a certificate that expires within this many days is told to rotate
    ROTATE_BEFORE_DAYS: { type: 'integer', minimum: 1, maximum: 3650, default: 30 },
    // device activity (first/last seen, counters) is written at most this often per device
    ACTIVITY_FLUSH_MS: { type: 'integer', minimum: 100, default: 5000 },
    // the audit stream shared by every process (Redis store), capped at about this many entries (CONTRACT: 1,000,000)
    AUDIT_STREAM_MAXLEN: { type: 'integer', minimum: 100, default: 1000000 },
    // the in-process audit ring the admin API queries when AUDIT_LOG is not a file (memory store)
    AUDIT_MEMORY_LINES: { type: 'integer', minimum: 100, default: 10000 },
    // personal data in the session store (CONTRACT §5): base64 of 32 bytes
    PII_KEY: { type: 'string', pattern: '^[A-Za-z0-9+/]{43}=$' },
    // keys by id for the "encrypt" treatment of x-pii fields (CONTRACT §5): the newest encrypts, all decrypt
    PII_KEYS_DIR: { type: 'string', minLength: 1 },
    // the token listener (CONTRACT §10): off when unset
    MQTTS_TOKEN_PORT: { type: 'integer', minimum: 0, maximum: 65535 },
    // HTTPS only (CONTRACT §10): whoever can rewrite the key set in transit mints any token
    OAUTH_JWKS_URL: { type: 'string', pattern: '^https://' },
    OAUTH_JWKS_FILE: { type: 'string', minLength: 1 },
    OAUTH_JWKS_CA: { type: 'string', minLength: 1 },
    OAUTH_ISSUER: { type: 'string', minLength: 1 },
    OAUTH_AUDIENCE: { type: 'string', minLength: 1 },
    // lifetime of the access tokens the broker issues at POST /oauth/token
    TOKEN_LIFETIME_SECONDS: { type: 'integer', minimum: 10, maximum: 86400, default: 600 },
    // POST /oauth/token limits per minute: requests naming one client id, and failed attempts from one address
    TOKEN_RATE_PER_CLIENT: { type: 'integer', minimum: 1, default: 60 },
    TOKEN_FAILURES_PER_ADDRESS: { type: 'integer', minimum: 1, default: 20 },
    // the broker's own ES256 token-signing keys (one PEM per key id); default CERTS_DIR/token-keys
    TOKEN_KEYS_DIR: { type: 'string', minLength: 1 },
    // symmetric-key enrollment groups (CONTRACT §3.6), one JSON file per group
    ENROLLMENT_DIR: { type: 'string', minLength: 1 },
    ENROLLMENT_TOKEN_MAX_SECONDS: { type: 'integer', minimum: 10, default: 3600 },
    // several broker processes per host (CONTRACT §1): a number, or auto (one per core)
    WORKERS: { anyOf: [{ type: 'integer', minimum: 1, maximum: 256 }, { const: 'auto' }], default: 1 },
    // connect admission (CONTRACT §11): TLS handshakes in progress at once; beyond, new connections wait in the backlog
    MAX_CONCURRENT_HANDSHAKES: { type: 'integer', minimum: 1, default: 256 },
    // and how long of each event-loop turn may go to starting them (0: no budget, the slots only)
    HANDSHAKE_TURN_BUDGET_MS: { type: 'number', minimum: 0, maximum: 1000, default: 4 }
  }
} as const

export interface Config {
  readonly mqttsPort: number
  readonly host: string
  readonly httpPort: number
  readonly adminPort: number
  readonly redisUrl: string | undefined
  readonly certsDir: string
  readonly tlsSessionTickets: boolean
  readonly generateDevCerts: boolean
  readonly schemasDir: string
  readonly templatesDir: string
  readonly policyFile: string | undefined
  readonly auditLog: string
  readonly logLevel: string
  readonly maxPayloadBytes: number
  readonly badPayloadsPerMinute: number
  readonly queueLimit: number
  // flow control (broker/flow-control.ts)
  readonly sessionQueueLimit: number
  readonly drainTimeoutMs: number
  readonly maxClientBufferBytes: number
  /** Redis store: seconds a queued message is kept for an offline session (aedes-persistence-redis packetTTL); 0: no expiry */
  readonly packetTtlSeconds: number
  readonly certValidityDays: number
  readonly tokenTtlSeconds: number
  readonly claimSessionMaxSeconds: number
  readonly provisionRatePerClaimCert: number
  readonly provisionRatePerAddress: number
  readonly provisioningAwsTopics: boolean
  readonly provisionReplyCompanion: boolean
  // limits (CONTRACT §11)
  readonly tlsHandshakeTimeoutMs: number
  readonly connectTimeoutMs: number
  readonly maxPendingConnectionsPerAddress: number
  readonly maxConnections: number
  /** open connections on HTTP_PORT (operations endpoints, token endpoint) */
  readonly httpMaxConnections: number
  /** default MAX_PAYLOAD_BYTES + 4 KiB */
  readonly maxPacketBytes: number
  readonly maxKeepaliveSeconds: number
  /** connects per minute per remote address */
  readonly connectRatePerAddress: number
  readonly auditAggregateSeconds: number
  readonly sessionRevalidateSeconds: number
  /** 32-byte key for personal data kept in the session store; derived from the device CA key when unset */
  readonly piiKey: string | undefined
  readonly configAckTimeoutSeconds: number
  readonly rotationGraceSeconds: number
  readonly rotateBeforeDays: number
  readonly activityFlushMs: number
  readonly auditStreamMaxLen: number
  readonly auditMemoryLines: number
  readonly piiKeysDir: string | undefined
  /** the token listener (CONTRACT §10); undefined: off */
  readonly mqttsTokenPort: number | undefined
  readonly oauthJwksUrl: string | undefined
  readonly oauthJwksFile: string | undefined
  readonly oauthJwksCa: string | undefined
  readonly oauthIssuer: string | undefined
  readonly oauthAudience: string | undefined
  readonly tokenLifetimeSeconds: number
  readonly tokenRatePerClient: number
  readonly tokenFailuresPerAddress: number
  readonly tokenKeysDir: string
  readonly enrollmentDir: string | undefined
  readonly enrollmentTokenMaxSeconds: number
  /** resolved: 'auto' becomes the number of cores */
  readonly workers: number
  readonly maxConcurrentHandshakes: number
  readonly handshakeTurnBudgetMs: number
}

export const CONFIG_KEYS = Object.freeze(Object.keys(configSchema.properties))
// the environment only has strings: these take 1/0, true/false, yes/no, on/off
const BOOLEAN_KEYS = CONFIG_KEYS.filter((key) => (configSchema.properties as Record<string, { type?: string }>)[key]?.type === 'boolean')

const ajv = new Ajv({ coerceTypes: true, useDefaults: true, allErrors: false, strict: true })
const validateConfig = ajv.compile(configSchema)

function configError (key: string, problem: string): JitpError {
  return new JitpError('InvalidConfig', `${key}: ${problem}`)
}

/** Reads the environment's known keys; other variables are none of ours. */
function fromEnv (env: NodeJS.ProcessEnv): Record<string, string> {
  const out: Record<string, string> = {}
  for (const key of CONFIG_KEYS) {
    const value = env[key]
    if (value !== undefined && value !== '') out[key] = value
  }
  return out
}

function fromFile (file: string): Record<string, unknown> {
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (err) {
    throw configError('--config', `cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? 'error'})`)
  }
  let parsed: unknown
  try {
    parsed = JSON.parse(text)
  } catch {
    throw configError('--config', `${file} is not valid JSON`)
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw configError('--config', `${file} must hold a JSON object`)
  }
  return parsed as Record<string, unknown>
}

function toBool (v: unknown): unknown {
  if (typeof v !== 'string') return v
  if (/^(1|true|yes|on)$/i.test(v)) return true
  if (/^(0|false|no|off)$/i.test(v)) return false
  return v
}

export interface LoadConfigOptions {
  file?: string
  env?: NodeJS.ProcessEnv
  /** overrides applied last, for embedding and tests */
  overrides?: Record<string, unknown>
}

export function loadConfig (opts: LoadConfigOptions = {}): Config {
  const merged: Record<string, unknown> = {
    ...(opts.file ? fromFile(opts.file) : {}),
    ...fromEnv(opts.env ?? process.env),
    ...(opts.overrides ?? {})
  }
  for (const key of BOOLEAN_KEYS) {
    if (key in merged) merged[key] = toBool(merged[key])
  }
  if (!validateConfig(merged)) {
    const e = validateConfig.errors?.[0]
    if (e?.keyword === 'additionalProperties') {
      throw configError(String(e.params.additionalProperty), 'unknown configuration key')
    }
    const key = e?.instancePath.replace(/^\//, '') || '(config)'
    throw configError(key, e?.message ?? 'invalid')
  }
  const c = merged as Record<string, any> // eslint-disable-line @typescript-eslint/no-explicit-any -- shape guaranteed by the schema above
  return Object.freeze({
    mqttsPort: c.MQTTS_PORT,
    host: c.HOST,
    httpPort: c.HTTP_PORT,
    adminPort: c.ADMIN_PORT,
    redisUrl: c.REDIS_URL,
    certsDir: resolve(c.CERTS_DIR),
    tlsSessionTickets: c.TLS_SESSION_TICKETS,
    generateDevCerts: c.GENERATE_DEV_CERTS,
    schemasDir: resolve(c.SCHEMAS_DIR),
    templatesDir: resolve(c.TEMPLATES_DIR),
    policyFile: c.POLICY_FILE === undefined ? undefined : resolve(c.POLICY_FILE),
    auditLog: c.AUDIT_LOG,
    logLevel: c.LOG_LEVEL,
    maxPayloadBytes: c.MAX_PAYLOAD_BYTES,
    badPayloadsPerMinute: c.BAD_PAYLOADS_PER_MINUTE,
    queueLimit: c.QUEUE_LIMIT,
    // flow control (broker/flow-control.ts)
    sessionQueueLimit: c.SESSION_QUEUE_LIMIT,
    drainTimeoutMs: c.DRAIN_TIMEOUT_MS,
    maxClientBufferBytes: c.MAX_CLIENT_BUFFER_BYTES,
    packetTtlSeconds: c.PACKET_TTL_SECONDS,
    certValidityDays: c.CERT_VALIDITY_DAYS,
    tokenTtlSeconds: c.TOKEN_TTL_SECONDS,
    claimSessionMaxSeconds: c.CLAIM_SESSION_MAX_SECONDS,
    provisionRatePerClaimCert: c.PROVISION_RATE_PER_CLAIM_CERT,
    provisionRatePerAddress: c.PROVISION_RATE_PER_ADDRESS,
    provisioningAwsTopics: c.PROVISIONING_AWS_TOPICS,
    provisionReplyCompanion: c.PROVISION_REPLY_COMPANION,
    tlsHandshakeTimeoutMs: c.TLS_HANDSHAKE_TIMEOUT_MS,
    connectTimeoutMs: c.CONNECT_TIMEOUT_MS,
    maxPendingConnectionsPerAddress: c.MAX_PENDING_CONNECTIONS_PER_ADDRESS,
    maxConnections: c.MAX_CONNECTIONS,
    httpMaxConnections: c.HTTP_MAX_CONNECTIONS,
    maxPacketBytes: c.MAX_PACKET_BYTES ?? c.MAX_PAYLOAD_BYTES + 4096,
    maxKeepaliveSeconds: c.MAX_KEEPALIVE_SECONDS,
    connectRatePerAddress: c.CONNECT_RATE_PER_ADDRESS,
    auditAggregateSeconds: c.AUDIT_AGGREGATE_SECONDS,
    sessionRevalidateSeconds: c.SESSION_REVALIDATE_SECONDS,
    piiKey: c.PII_KEY,
    configAckTimeoutSeconds: c.CONFIG_ACK_TIMEOUT_SECONDS,
    rotationGraceSeconds: c.ROTATION_GRACE_SECONDS,
    rotateBeforeDays: c.ROTATE_BEFORE_DAYS,
    activityFlushMs: c.ACTIVITY_FLUSH_MS,
    auditStreamMaxLen: c.AUDIT_STREAM_MAXLEN,
    auditMemoryLines: c.AUDIT_MEMORY_LINES,
    piiKeysDir: c.PII_KEYS_DIR === undefined ? undefined : resolve(c.PII_KEYS_DIR),
    mqttsTokenPort: c.MQTTS_TOKEN_PORT,
    oauthJwksUrl: c.OAUTH_JWKS_URL,
    oauthJwksFile: c.OAUTH_JWKS_FILE === undefined ? undefined : resolve(c.OAUTH_JWKS_FILE),
    oauthJwksCa: c.OAUTH_JWKS_CA === undefined ? undefined : resolve(c.OAUTH_JWKS_CA),
    oauthIssuer: c.OAUTH_ISSUER,
    oauthAudience: c.OAUTH_AUDIENCE,
    tokenLifetimeSeconds: c.TOKEN_LIFETIME_SECONDS,
    tokenRatePerClient: c.TOKEN_RATE_PER_CLIENT,
    tokenFailuresPerAddress: c.TOKEN_FAILURES_PER_ADDRESS,
    tokenKeysDir: resolve(c.TOKEN_KEYS_DIR ?? join(c.CERTS_DIR, 'token-keys')),
    enrollmentDir: c.ENROLLMENT_DIR === undefined ? undefined : resolve(c.ENROLLMENT_DIR),
    enrollmentTokenMaxSeconds: c.ENROLLMENT_TOKEN_MAX_SECONDS,
    workers: c.WORKERS === 'auto' ? Math.max(1, availableParallelism()) : c.WORKERS,
    maxConcurrentHandshakes: c.MAX_CONCURRENT_HANDSHAKES,
    handshakeTurnBudgetMs: c.HANDSHAKE_TURN_BUDGET_MS
  })
}
