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
const bad = lines.filter((l) => /PRIVATE KEY|certificateOwnershipToken|BEGIN CERTIFICATE/.test(l))
console.log(`audit-check: ${lines.length} audit lines from the test run, ${bad.length} with key material, tokens or certificate bodies`)
process.exit(bad.length === 0 && lines.length > 0 ? 0 : 1)
