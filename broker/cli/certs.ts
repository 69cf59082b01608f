/**
 * `aedes-jitp certs dev [--rsa] [--out DIR] [--add-device-ca]`: writes a development
 * PKI, or adds a new signing device CA to one (a rollover to try: docs/PKI.md).
 */
import { parseArgs } from 'node:util'
import { addDeviceCa, generateDevPki } from '../../certs-dev/generate.js'

const USAGE = 'usage: aedes-jitp certs dev [--rsa] [--out DIR] [--add-device-ca]'

export async function certsCommand (args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      rsa: { type: 'boolean', default: false },
      out: { type: 'string', default: process.env.CERTS_DIR ?? 'certs-dev' },
      'add-device-ca': { type: 'boolean', default: false }
    }
  })
  if (positionals[0] !== 'dev') throw new Error(USAGE)
  const alg = values.rsa ? 'RSA-2048' : 'EC P-256'
  if (values['add-device-ca']) {
    const added = await addDeviceCa({ outDir: values.out, rsa: values.rsa })
    process.stdout.write(`new device CA (${alg}) added first to device-ca.pem in ${values.out}: it signs new device certificates, ` +
      `the previous CAs stay trusted; the previous key is kept as ${added.oldKeyFile}\n`)
    return 0
  }
  const result = await generateDevPki({ outDir: values.out, rsa: values.rsa })
  process.stdout.write(`development PKI (${alg}) written to ${result.outDir}: ${result.files.length} files\n`)
  return 0
}
