/**
 * The application log (operational messages for developers), kept apart from the
 * audit log so `AUDIT_LOG=stdout` stays pure JSON lines of decisions: it goes to stderr.
 */
import pino from 'pino'

export type AppLogger = pino.Logger

export function createAppLogger (level: string): AppLogger {
  return pino({ level, base: null, redact: { paths: ['*.privateKey', '*.password', 'privateKey', 'password'], remove: true } }, pino.destination(2))
}
