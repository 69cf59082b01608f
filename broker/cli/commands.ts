/**
 * Dispatches `aedes-jitp <command>`; each command lives in its own file, loaded
 * only when asked for: an operator's `certificates revoke` does not load the
 * broker (Aedes, the plugins), which roughly halves its start-up.
 */

const USAGE = [
  'usage: aedes-jitp [start [--config FILE]]',
  '  certs dev [--rsa] [--out DIR]',
  '  devices list [--status S] [--template T] | show <id> | revoke <id> | quarantine <id> | reinstate <id> | rotate <id>',
  '  certificates list [--device ID] [--status S] [--expiring-within-days N] | expiring --days N | revoke <id> | revoke --issuer <fp> --serial <hex> | revoke --ca <fp>',
  '  audit [--follow] [--event GLOB] [--device ID] [--since T] [FILE] | audit verify [--merged] [--partial] FILE...',
  '  config get|set|history|rollback <deviceId> | config get|set --template NAME',
  '  rollout start|status [--watch]|list|pause|resume|abort',
  '  pii decrypt --key-dir DIR   (opens the x-pii envelopes of a JSON document on stdin; offline)',
  '  clients create --name N --scopes a,b | list | show <id> | delete <id>   (OAuth2 clients of POST /oauth/token)',
  '  keys derive --group-key <base64 | -> --registration-id <id>   (a device key for symmetric-key enrollment; offline)',
  '  simulate --devices N [--concurrency C] [--template T] [--faults kind=rate,...] [--mqtt-url mqtts://host:port] [--json]   (virtual devices; simulate --help)',
  'fleet commands (devices, certificates, config, rollout, clients, audit without FILE) talk to the admin API: --admin-url URL (default https://127.0.0.1:$ADMIN_PORT),',
  '  --cert/--key/--ca (default: the dev admin certificate in $CERTS_DIR), --json for scripts'
].join('\n')

export async function runCommand (argv: string[]): Promise<number | null> {
  const [command = 'start', ...rest] = argv
  switch (command) {
    case 'start': return (await import('./start.js')).startCommand(rest)
    case 'certs': return (await import('./certs.js')).certsCommand(rest)
    case 'devices': return (await import('./devices.js')).devicesCommand(rest)
    case 'certificates': return (await import('./certificates.js')).certificatesCommand(rest)
    case 'audit': return (await import('./audit.js')).auditCommand(rest)
    case 'config': return (await import('./config.js')).configCommand(rest)
    case 'rollout': return (await import('./rollout.js')).rolloutCommand(rest)
    case 'pii': return (await import('./pii.js')).piiCommand(rest)
    case 'clients': return (await import('./clients.js')).clientsCommand(rest)
    case 'keys': return (await import('./keys.js')).keysCommand(rest)
    case 'simulate': return (await import('./simulate.js')).simulateCommand(rest)
    case '--help':
    case 'help':
      process.stdout.write(USAGE + '\n')
      return 0
    default:
      if (command.startsWith('--')) return (await import('./start.js')).startCommand(argv)
      throw new Error(`unknown command '${command}' (aedes-jitp help lists them)`)
  }
}
