/** Dispatches `aedes-jitp <command>`; each command lives in its own file. */
import { auditCommand } from './audit.js'
import { certificatesCommand } from './certificates.js'
import { certsCommand } from './certs.js'
import { devicesCommand } from './devices.js'
import { startCommand } from './start.js'

const USAGE = 'usage: aedes-jitp [start [--config FILE]] | certs dev [--rsa] [--out DIR] | devices list|show <id>|revoke <id> | certificates revoke <id>|--issuer <fp> --serial <hex>|--ca <fp> | certificates list [--json] | audit [--follow] [--event GLOB] [--device ID] [FILE]'

export async function runCommand (argv: string[]): Promise<number | null> {
  const [command = 'start', ...rest] = argv
  switch (command) {
    case 'start': return startCommand(rest)
    case 'certs': return certsCommand(rest)
    case 'devices': return devicesCommand(rest)
    case 'certificates': return certificatesCommand(rest)
    case 'audit': return auditCommand(rest)
    case '--help':
    case 'help':
      process.stdout.write(USAGE + '\n')
      return 0
    default:
      if (command.startsWith('--')) return startCommand(argv)
      throw new Error(`unknown command '${command}'; ${USAGE}`)
  }
}
