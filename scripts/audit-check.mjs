#!/usr/bin/env node
// Guards two contracts over every audit line of the whole test run (CONTRACT §6): none holds key
// material, and the hash chains are intact. Every test broker appends its audit lines to one
// file; lines of many processes interleave there (test files run in parallel), so the real
// `aedes-jitp audit verify --merged` checks it: one chain per brokerId, each from its first line.
import { spawnSync } from 'node:child_process'
import { existsSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath, URL } from 'node:url'

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

const cli = fileURLToPath(new URL('../dist/bin/aedes-jitp.js', import.meta.url))
const verify = spawnSync(process.execPath, [cli, 'audit', 'verify', '--merged', file], { encoding: 'utf8', timeout: 120_000 })
console.log(`audit-check: ${(verify.stdout + verify.stderr).trim() || `audit verify exited ${verify.status ?? verify.signal}`}`)
process.exit(bad.length === 0 && lines.length > 0 && verify.status === 0 ? 0 : 1)
