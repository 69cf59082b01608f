#!/usr/bin/env node
// Guards the contract that no audit line of the whole test run holds key material:
// every test broker appends its audit lines to one file; this counts the bad ones.
import { existsSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

const file = process.env.JITP_TEST_AUDIT_FILE ?? join(tmpdir(), 'aedes-jitp-test-audit.log')
if (process.argv.includes('--reset')) {
  rmSync(file, { force: true })
  process.exit(0)
}
if (!existsSync(file)) {
  console.error(`audit-check: ${file} missing: the test run wrote no audit lines`)
  process.exit(1)
}
const lines = readFileSync(file, 'utf8').split('\n').filter(Boolean)
// a JWT (header and payload are base64url JSON objects: `eyJ`), a SAS enrollment password (CONTRACT §10, §3.6)
const JWT = /eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\./
const bad = lines.filter((l) => /PRIVATE KEY|certificateOwnershipToken|BEGIN CERTIFICATE|SharedAccessSignature/.test(l) || JWT.test(l))
console.log(`audit-check: ${lines.length} audit lines from the test run, ${bad.length} with key material, tokens, SAS or certificate bodies`)
process.exit(bad.length === 0 && lines.length > 0 ? 0 : 1)
