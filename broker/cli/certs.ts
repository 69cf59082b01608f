/** `aedes-jitp certs dev [--rsa] [--out DIR]`: writes a development PKI. */
import { parseArgs } from 'node:util'
import { generateDevPki } from '../../certs-dev/generate.js'

export async function certsCommand (args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { rsa: { type: 'boolean', default: false }, out: { type: 'string', default: process.env.CERTS_DIR ?? 'certs-dev' } }
  })
  if (positionals[0] !== 'dev') throw new Error('usage: aedes-jitp certs dev [--rsa] [--out DIR]')
  const result = await generateDevPki({ outDir: values.out, rsa: values.rsa })
  process.stdout.write(`development PKI (${values.rsa ? 'RSA-2048' : 'EC P-256'}) written to ${result.outDir}: ${result.files.length} files\n`)
  return 0
}
