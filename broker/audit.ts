/**
 * The audit log: one pino JSON line per decision, on its own destination.
 * Only allow-listed fields are ever written; secrets cannot reach it because
 * nothing that is not on the list is copied (redaction is the second fence).
 */
import { mkdirSync } from 'node:fs'
import { dirname } from 'node:path'
import pino from 'pino'

export type AuditEvent =
  | 'connect.accepted' | 'connect.refused' | 'disconnect' | 'connection.closed'
  | 'subscribe.denied' | 'publish.denied' | 'payload.rejected' | 'client.disconnected.offender'
  | 'provision.certificate.issued' | 'provision.accepted' | 'provision.rejected'
  | 'device.registered' | 'device.revoked' | 'certificate.revoked' | 'ca.revoked' | 'crl.loaded' | 'crl.rejected'
  | 'config.published' | 'config.acknowledged' | 'config.rolledback'
  | 'queue.dropped' | 'claim.session.expired' | 'session.takeover'
  | 'broker.started' | 'broker.stopped'

export interface AuditFields {
  clientId?: string | undefined
  deviceId?: string | undefined
  role?: string | undefined
  certificateId?: string | undefined
  remoteAddress?: string | undefined
  topic?: string | undefined
  reason?: string | undefined
  errorCode?: string | undefined
  statusCode?: number | undefined
  template?: string | undefined
  version?: number | undefined
  count?: number | undefined
  qos?: number | undefined
  brokerId?: string | undefined
  /** the operator (CN of the admin certificate, or the CLI user) behind an admin action */
  actor?: string | undefined
  issuer?: string | undefined
  serialNumber?: string | undefined
}

const ALLOWED: ReadonlyArray<keyof AuditFields> = [
  'clientId', 'deviceId', 'role', 'certificateId', 'remoteAddress', 'topic', 'reason',
  'errorCode', 'statusCode', 'template', 'version', 'count', 'qos', 'brokerId', 'actor', 'issuer', 'serialNumber'
]

/** Caps attacker-chosen strings (client ids, topics) so one line stays one line of sane size. */
const MAX_FIELD = 256

function clean (value: string): string {
  const s = value.length > MAX_FIELD ? value.slice(0, MAX_FIELD) + '…' : value
  // a client-chosen string must never smuggle key material into the log
  return s.includes('PRIVATE KEY') ? '[redacted]' : s
}

export interface Audit {
  write (event: AuditEvent, fields?: AuditFields, level?: 'info' | 'warn' | 'error'): void
  flush (): Promise<void>
  close (): Promise<void>
}

export function createAudit (destination: string | NodeJS.WritableStream): Audit {
  let stream: pino.DestinationStream
  let sonic: ReturnType<typeof pino.destination> | undefined
  if (typeof destination === 'string') {
    if (destination !== 'stdout') mkdirSync(dirname(destination), { recursive: true })
    sonic = pino.destination({ dest: destination === 'stdout' ? 1 : destination, sync: false, minLength: 0 })
    stream = sonic
  } else {
    stream = destination
  }
  const logger = pino({
    base: null,
    messageKey: 'message',
    timestamp: pino.stdTimeFunctions.epochTime,
    formatters: { level: (label) => ({ level: label }) },
    redact: {
      paths: ['privateKey', 'certificateOwnershipToken', 'password', 'certificateSigningRequest', 'certificatePem', '*.privateKey', '*.password'],
      remove: true
    }
  }, stream)

  return {
    write (event, fields = {}, level = 'info') {
      const line: Record<string, unknown> = { event }
      for (const key of ALLOWED) {
        const v = fields[key]
        if (v === undefined) continue
        line[key] = typeof v === 'string' ? clean(v) : v
      }
      logger[level](line)
    },
    flush () {
      return new Promise((resolve) => {
        if (!sonic) return resolve()
        sonic.flush(() => resolve())
      })
    },
    async close () {
      if (!sonic) return
      const s = sonic
      sonic = undefined
      await new Promise<void>((resolve) => {
        s.flush(() => {
          if ((s as unknown as { fd: number }).fd === 1) return resolve()
          s.once('close', () => resolve())
          s.end()
        })
      })
    }
  }
}
