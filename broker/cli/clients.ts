/**
 * `aedes-jitp clients create --name N --scopes a,b | list | show <id> | delete <id>` (CONTRACT §7, §10):
 * the OAuth2 clients of the broker's token endpoint, through the admin API. The
 * secret is printed once, by create: the broker keeps only a salted hash of it.
 */
import { parseArgs } from 'node:util'
import { ADMIN_OPTIONS, adminCall, adminTarget, allPages, iso, table } from './admin-client.js'
import { escapeControl } from './audit.js'

const SCOPES = ['telemetry:read', 'state:read', 'config:read', 'commands:write', 'pii']
const USAGE = `usage: aedes-jitp clients create --name NAME --scopes ${SCOPES.join(',')} | list | show <id> | delete <id> [--json] [--admin-url URL] [--cert F --key F --ca F]`

interface ClientItem { clientId: string, name: string, scopes: string[], createdAt: number }
interface Created { clientId: string, clientSecret: string, scopes: string[], name: string }

function scopesArg (raw: string | undefined): string[] {
  const scopes = (raw ?? '').split(/[,\s]+/).filter((s) => s !== '')
  if (scopes.length === 0) throw new Error(`--scopes: give at least one of ${SCOPES.join(', ')}`)
  const bad = scopes.find((s) => !SCOPES.includes(s))
  if (bad !== undefined) throw new Error(`--scopes: unknown scope '${bad}' (one of ${SCOPES.join(', ')})`)
  return [...new Set(scopes)]
}

export async function clientsCommand (args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { ...ADMIN_OPTIONS, name: { type: 'string' }, scopes: { type: 'string' } }
  })
  const [action, id, ...extra] = positionals
  if (extra.length > 0) throw new Error(USAGE)
  const out = (text: string): void => { process.stdout.write(text) }
  switch (action) {
    case 'create': {
      if (id !== undefined || !values.name) throw new Error(USAGE)
      const c = await adminCall<Created>(adminTarget(values), 'POST', '/v1/clients', { name: values.name, scopes: scopesArg(values.scopes) })
      if (values.json) {
        out(JSON.stringify(c) + '\n')
        return 0
      }
      out(table(['FIELD', 'VALUE'], [['client id', c.clientId], ['client secret', c.clientSecret], ['name', escapeControl(c.name)], ['scopes', c.scopes.join(' ')]]))
      process.stderr.write('aedes-jitp: the client secret is shown only now; store it where the service reads it\n')
      return 0
    }
    case 'list': {
      if (id !== undefined) throw new Error(USAGE)
      const clients = await allPages<ClientItem>(adminTarget(values), '/v1/clients', {})
      if (values.json) {
        out(JSON.stringify(clients) + '\n')
        return 0
      }
      out(table(['CLIENT', 'NAME', 'SCOPES', 'CREATED'], clients.map((c) => [c.clientId, escapeControl(c.name), c.scopes.join(' '), iso(c.createdAt)])))
      return 0
    }
    case 'show': {
      if (!id) throw new Error(USAGE)
      const c = await adminCall<ClientItem>(adminTarget(values), 'GET', `/v1/clients/${encodeURIComponent(id)}`)
      out(values.json
        ? JSON.stringify(c) + '\n'
        : table(['FIELD', 'VALUE'], [['client id', c.clientId], ['name', escapeControl(c.name)], ['scopes', c.scopes.join(' ')], ['created', iso(c.createdAt)]]))
      return 0
    }
    case 'delete': {
      if (!id) throw new Error(USAGE)
      const r = await adminCall<{ clientId: string, deleted: boolean }>(adminTarget(values), 'DELETE', `/v1/clients/${encodeURIComponent(id)}`)
      out(values.json ? JSON.stringify(r) + '\n' : `${r.clientId}: deleted\n`)
      return 0
    }
    default:
      throw new Error(USAGE)
  }
}
