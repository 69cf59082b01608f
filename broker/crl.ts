/**
 * CRL files next to the role CAs (`<role>-ca.crl.pem` in CERTS_DIR, PEM, several
 * CRLs per file), verified against that role's CAs, loaded at start and reloaded
 * when they change, without a restart (CONTRACT §2). `fs.watch` on the directory
 * gives the change at once; a cheap periodic stat catches what it misses (network
 * file systems, editors that replace the directory entry). Each CRL of a file
 * counts on its own: one that does not parse or verify is ignored and audited,
 * the others load (at start too: one bad block appended to a good file must not
 * let the good one's revocations go at the next restart). A file with a bad CRL
 * also keeps the entries last loaded from it, so a corrupted or half-written file
 * never un-revokes anything; a clean file replaces them.
 */
import { X509Certificate } from 'node:crypto'
import { existsSync, readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { crlDerOf, crlPemBlocks, parseCrl, verifyCrl } from '../pki/crl.js'
import type { Audit } from './audit.js'
import { watchDir } from './dir-watch.js'
import type { AppLogger } from './logger.js'
import { fingerprintHex, splitPem } from './trust.js'

export const CRL_ROLES = ['device', 'claim', 'service', 'manufacturer', 'admin'] as const
export type CrlRole = typeof CRL_ROLES[number]

export const crlFileOf = (role: CrlRole): string => `${role}-ca.crl.pem`

export interface CrlIndex {
  /** true when a loaded CRL of `issuerFingerprint`'s CA lists `serialNumber` */
  has (issuerFingerprint: string, serialNumber: string): boolean
  /** serials currently revoked by CRLs, over every file */
  readonly size: number
  /** looks at the files again now (tests, SIGHUP) */
  reload (): void
  close (): void
}

export interface CrlOptions {
  certsDir: string
  audit: Audit
  log: AppLogger
  /** after a reload changed the index: re-check live sessions */
  onChange: () => void
  /** backstop poll interval, default 2000 ms */
  pollMs?: number
  /** coalesces the bursts of events one write produces, default 100 ms */
  debounceMs?: number
}

interface FileState {
  /** mtime, size and inode of what was last looked at: unchanged files are not re-read */
  stamp: string
  /** `issuer:serial` keys last loaded from this file */
  keys: ReadonlySet<string>
}

function stampOf (path: string): string | null {
  try {
    const s = statSync(path)
    return `${s.mtimeMs}:${s.size}:${s.ino}`
  } catch {
    return null
  }
}

function roleCas (dir: string, role: CrlRole): X509Certificate[] {
  const path = join(dir, `${role}-ca.pem`)
  if (!existsSync(path)) return []
  return splitPem(readFileSync(path, 'utf8')).map((pem) => new X509Certificate(pem))
}

interface CrlFile {
  /** the `issuer:serial` keys of the CRLs that verify */
  readonly keys: Set<string>
  /** how many CRLs verified */
  readonly loaded: number
  /** what is wrong with the others (none when the file is clean) */
  readonly problems: readonly string[]
}

/** every `X509 CRL` block of the file on its own: the keys of those that parse and verify, and why the others did not */
function readCrlFile (text: string, cas: readonly X509Certificate[]): CrlFile {
  const blocks = crlPemBlocks(text)
  if (blocks.length === 0) return { keys: new Set(), loaded: 0, problems: ['no X509 CRL block'] }
  const keys = new Set<string>()
  const problems: string[] = []
  let loaded = 0
  blocks.forEach((block, i) => {
    const where = blocks.length > 1 ? `CRL ${i + 1} of ${blocks.length}: ` : ''
    try {
      const crl = parseCrl(crlDerOf(block))
      // several CAs may share a role file: the one whose key verifies the signature issued the CRL
      const issuer = cas.find((ca) => verifyCrl(crl, ca.publicKey))
      if (issuer === undefined) throw new Error('signature does not verify against any CA of the role')
      const fp = fingerprintHex(issuer)
      for (const entry of crl.entries) keys.add(`${fp}:${entry.serialNumber}`)
      loaded++
    } catch (err) {
      problems.push(where + (err as Error).message)
    }
  })
  return { keys, loaded, problems }
}

export function watchCrls (opts: CrlOptions): CrlIndex {
  const { certsDir, audit, log } = opts
  const cas = new Map(CRL_ROLES.map((role) => [role, roleCas(certsDir, role)]))
  const files = new Map<CrlRole, FileState>()
  let revoked = new Set<string>()
  let closed = false

  function loadRole (role: CrlRole): boolean {
    const file = crlFileOf(role)
    const path = join(certsDir, file)
    const crlStamp = stampOf(path)
    // the role's CA file is part of the stamp: a CA added by a rollover (docs/PKI.md) makes its CRL verifiable
    const stamp = crlStamp === null ? null : `${crlStamp}|${stampOf(join(certsDir, `${role}-ca.pem`)) ?? ''}`
    const previous = files.get(role)
    if ((previous?.stamp ?? null) === stamp) return false
    if (stamp === null) {
      // the operator removed the file: its revocations no longer apply
      files.delete(role)
      audit.write('crl.loaded', { role, count: 0, reason: `${file} removed` })
      return true
    }
    try {
      cas.set(role, roleCas(certsDir, role))
    } catch {
      // a CA file being replaced: verify against the CAs read before
    }
    let read: CrlFile
    try {
      read = readCrlFile(readFileSync(path, 'utf8'), cas.get(role) ?? [])
    } catch (err) {
      read = { keys: new Set(), loaded: 0, problems: [(err as Error).message] }
    }
    if (read.problems.length === 0) {
      files.set(role, { stamp, keys: read.keys })
      audit.write('crl.loaded', { role, count: read.keys.size, reason: file })
      return true
    }
    // part of the file (or all of it) is bad: what verifies counts, and what was revoked stays revoked
    const keys = new Set(read.keys)
    for (const key of previous?.keys ?? []) keys.add(key)
    files.set(role, { stamp, keys })
    const reason = `${file}: ${read.problems.join('; ')}`
    log.warn({ file, problems: read.problems }, 'CRL ignored')
    audit.write('crl.rejected', { role, errorCode: 'CrlInvalid', reason }, 'warn')
    if (read.loaded > 0) audit.write('crl.loaded', { role, count: keys.size, reason: `${file} (the CRLs that verify)` })
    return read.loaded > 0
  }

  /** true when the index changed */
  function load (): boolean {
    let changed = false
    for (const role of CRL_ROLES) changed = loadRole(role) || changed
    if (!changed) return false
    const next = new Set<string>()
    for (const state of files.values()) for (const key of state.keys) next.add(key)
    revoked = next
    return true
  }

  function reload (): void {
    if (closed || !load()) return
    try {
      opts.onChange()
    } catch (err) {
      log.error({ err }, 'CRL change handler failed')
    }
  }

  // at start nobody is connected yet: nothing to tell
  load()

  // the role CA files too: a CA added by a rollover makes its CRL verifiable
  const watcher = watchDir({
    dir: certsDir,
    wants: (name) => name.endsWith('.crl.pem') || name.endsWith('-ca.pem'),
    onChange: reload,
    debounceMs: opts.debounceMs ?? 100,
    pollMs: opts.pollMs ?? 2000,
    log,
    what: 'CRLs'
  })

  return {
    has: (issuerFingerprint, serialNumber) => revoked.has(`${issuerFingerprint}:${serialNumber}`),
    get size () { return revoked.size },
    reload,
    close () {
      closed = true
      watcher.close()
    }
  }
}
