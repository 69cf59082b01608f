/**
 * `aedes-jitp keys derive --group-key <base64> --registration-id <id>` (CONTRACT §3.6):
 * the symmetric key a factory line writes into one device, derived from its
 * enrollment group's key as the broker derives it when the device enrolls:
 *   deviceKey = HMAC-SHA256(base64decode(groupKey), registrationId)   printed in base64
 * Offline: no broker, no network. The group key is read from the argument or,
 * with `--group-key -`, from the first line of stdin (so it stays out of the
 * shell history and the process list).
 */
import { parseArgs } from 'node:util'
import { DEVICE_ID } from '../../plugins/provisioning/templates.js'
import { deriveDeviceKey } from '../../plugins/token/sas.js'

const USAGE = 'usage: aedes-jitp keys derive --group-key <base64 | -> --registration-id <id> [--json]'
/** the broker refuses enrollment groups with shorter keys (plugins/token/enrollment-groups.ts) */
const MIN_GROUP_KEY_BYTES = 32
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/

async function firstLineOfStdin (): Promise<string> {
  let text = ''
  for await (const chunk of process.stdin) {
    text += String(chunk)
    if (text.includes('\n') || text.length > 4096) break
  }
  return text.split(/\r?\n/)[0]!.trim()
}

/** the group key's bytes; refuses what is not canonical base64 rather than deriving a key nobody else derives */
export function decodeGroupKey (raw: string): Buffer {
  const key = Buffer.from(raw, 'base64')
  if (!BASE64.test(raw) || key.toString('base64') !== raw) throw new Error('--group-key: not base64 (A-Z a-z 0-9 + /, = padding), as the enrollment group file holds it')
  if (key.length < MIN_GROUP_KEY_BYTES) throw new Error(`--group-key: ${key.length} bytes; enrollment group keys are at least ${MIN_GROUP_KEY_BYTES} bytes`)
  return key
}

export async function keysCommand (args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { 'group-key': { type: 'string' }, 'registration-id': { type: 'string' }, json: { type: 'boolean', default: false } }
  })
  if (positionals.length !== 1 || positionals[0] !== 'derive') throw new Error(USAGE)
  const registrationId = values['registration-id']
  if (values['group-key'] === undefined || registrationId === undefined) throw new Error(USAGE)
  if (!DEVICE_ID.test(registrationId)) throw new Error('--registration-id: 1 to 128 of A-Z a-z 0-9 _ . : - (starting with a letter or digit), as the token listener admits')
  const groupKey = decodeGroupKey(values['group-key'] === '-' ? await firstLineOfStdin() : values['group-key'])
  const deviceKey = deriveDeviceKey(groupKey, registrationId).toString('base64')
  process.stdout.write(values.json ? JSON.stringify({ registrationId, deviceKey }) + '\n' : deviceKey + '\n')
  return 0
}
