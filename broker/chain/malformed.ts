import type { Client } from 'aedes'
import { Errors, JitpError } from '../errors.js'
import type { ConnectionState } from '../session.js'
import { auditFields } from './audit-fields.js'
import type { ChainContext } from './context.js'

/** [MQTT-1.5.3-1], [MQTT-1.5.3-2]: an error from the hook makes Aedes close the connection, unanswered */
export function closeMalformed (chain: ChainContext, client: Client, state: ConnectionState | undefined, topic: string, done: (err: Error) => void): void {
  chain.ctx.metrics.denials.inc({ action: 'malformed', rule: 'MalformedUtf8' })
  chain.ctx.audit.write('connection.closed', { ...auditFields(client, state), topic, errorCode: 'MalformedUtf8', reason: Errors.MalformedUtf8.message }, 'warn')
  done(new JitpError('MalformedUtf8'))
}
