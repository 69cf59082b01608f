/**
 * Hot reload of CERTS_DIR (CONTRACT §2): the server certificate and key, the role
 * CAs (device-ca.pem may gain a new first CA: a rollover) and device-ca.key are
 * read again when they change, or on demand (SIGHUP), and serve NEW connections:
 *   change ─▶ debounce ─▶ trust.reload() (everything parses, a TLS context builds)
 *          ─▶ onReload (listeners' setSecureContext) ─▶ audit config.reloaded
 * Connections already up keep their TLS session and their classification: nothing
 * is dropped. A file that does not parse keeps the old material in use and is
 * audited config.reload.failed with the file and the reason; never a crash.
 * CRL files are broker/crl.ts's and are ignored here.
 *
 * `fs.watch` gives the change at once; a cheap periodic stat of the few files
 * catches what it misses (network file systems, a directory replaced by a
 * Kubernetes secret update), as broker/crl.ts does.
 */
import { statSync } from 'node:fs'
import { join } from 'node:path'
import type { Audit } from './audit.js'
import { watchDir } from './dir-watch.js'
import type { AppLogger } from './logger.js'
import { TRUST_FILES, type Trust, type TrustHolder } from './trust.js'

const WATCHED: ReadonlySet<string> = new Set(Object.values(TRUST_FILES))

export interface CertsReloadOptions {
  readonly dir: string
  readonly trust: TrustHolder
  readonly audit: Audit
  readonly log: AppLogger
  /** after the holder took the new material: serve it on the TLS servers (listener.reloadTls, admin setSecureContext) */
  readonly onReload: (trust: Trust) => void
  /** coalesces the events one replacement produces (key then certificate), default 250 ms */
  readonly debounceMs?: number
  /** backstop stat interval, default 5000 ms */
  readonly pollMs?: number
}

export interface CertsWatcher {
  /**
   * Reads CERTS_DIR now (SIGHUP, tests). Without `force`, only when a watched file
   * changed since the last attempt. True when new material is in use.
   */
  reload (opts?: { force?: boolean }): boolean
  close (): void
}

function stampsOf (dir: string): string {
  const parts: string[] = []
  for (const file of WATCHED) {
    try {
      const s = statSync(join(dir, file))
      parts.push(`${file}:${s.mtimeMs}:${s.size}:${s.ino}`)
    } catch {
      parts.push(`${file}:-`)
    }
  }
  return parts.join('|')
}

export function watchCertsDir (opts: CertsReloadOptions): CertsWatcher {
  const { dir, trust, audit, log } = opts
  // the material in use was read at start: that is what the stamps describe
  let stamps = stampsOf(dir)
  let closed = false

  function reload ({ force = false }: { force?: boolean } = {}): boolean {
    if (closed) return false
    const now = stampsOf(dir)
    if (!force && now === stamps) return false
    // remembered before reading: a file that failed is not re-read (nor re-audited) until it changes again
    stamps = now
    let next: Trust
    try {
      next = trust.reload()
    } catch (err) {
      const reason = (err as Error).message
      log.warn({ dir, err: reason }, 'CERTS_DIR reload failed: the previous certificates stay in use')
      audit.write('config.reload.failed', { errorCode: 'InvalidConfig', reason }, 'warn')
      return false
    }
    try {
      opts.onReload(next)
    } catch (err) {
      // the holder already classifies with the new CAs; a TLS server that refused its context keeps the old one
      const reason = `CERTS_DIR: ${(err as Error).message}`
      log.error({ dir, err: reason }, 'CERTS_DIR reload: a TLS server kept its previous context')
      audit.write('config.reload.failed', { errorCode: 'InvalidConfig', reason }, 'warn')
      return false
    }
    audit.write('config.reloaded', { reason: `CERTS_DIR ${dir}: server certificate, CAs and device CA key`, count: next.caPems.length })
    log.info({ dir }, 'CERTS_DIR reloaded')
    return true
  }

  const watcher = watchDir({
    dir,
    // a rename into place names the final file; temporary files and CRLs are not ours
    wants: (name) => WATCHED.has(name),
    onChange: function reloadChanged () { reload() },
    debounceMs: opts.debounceMs ?? 250,
    pollMs: opts.pollMs ?? 5000,
    log,
    what: 'certificates'
  })

  return {
    reload,
    close () {
      closed = true
      watcher.close()
    }
  }
}
