/**
 * The openssl binary is an independent judge of what pki/ produces. Tests that
 * need it fail loudly when it is missing: a skipped interop check proves nothing.
 */
import { spawnSync } from 'node:child_process'

export interface OpensslResult { ok: boolean, output: string }

export function openssl (args: string[], input?: string): OpensslResult {
  const r = spawnSync('openssl', args, { input, encoding: 'utf8' })
  if (r.error !== undefined) {
    throw new Error(`the openssl binary is required by this test and could not be run (${r.error.message}); install it (apt-get install openssl)`)
  }
  return { ok: r.status === 0, output: `${r.stdout}${r.stderr}` }
}
