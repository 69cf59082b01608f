/**
 * Watches a directory for changes to some of its files: `fs.watch` events,
 * debounced (one write makes bursts of events), plus a poll as the backstop for
 * file systems and editors whose events go missing. Used by the CRL index
 * (broker/crl.ts) and the certificate reload (broker/cert-reload.ts); each
 * decides itself, by file stamps, whether anything it reads changed.
 */
import { watch, type FSWatcher } from 'node:fs'
import type { AppLogger } from './logger.js'

export interface DirWatchOptions {
  readonly dir: string
  /** which file names are of interest (a null name, from some platforms, always is) */
  readonly wants: (name: string) => boolean
  readonly onChange: () => void
  readonly debounceMs: number
  readonly pollMs: number
  readonly log: Pick<AppLogger, 'warn'>
  /** what is watched, for the warnings: e.g. 'CRLs' */
  readonly what: string
}

export function watchDir (opts: DirWatchOptions): { close (): void } {
  let closed = false
  let debounce: NodeJS.Timeout | undefined
  function soon (): void {
    if (closed) return
    clearTimeout(debounce)
    debounce = setTimeout(opts.onChange, opts.debounceMs)
    debounce.unref()
  }
  let watcher: FSWatcher | undefined
  try {
    watcher = watch(opts.dir, { persistent: false }, function onDirChange (_event, name) {
      if (name === null || opts.wants(name)) soon()
    })
    watcher.on('error', (err) => opts.log.warn({ err: err.message }, `watching ${opts.dir} failed; ${opts.what} are still polled`))
  } catch (err) {
    opts.log.warn({ err: (err as Error).message }, `cannot watch ${opts.dir}; ${opts.what} are polled`)
  }
  const poll = setInterval(opts.onChange, opts.pollMs)
  poll.unref()
  return {
    close () {
      closed = true
      clearTimeout(debounce)
      clearInterval(poll)
      watcher?.close()
    }
  }
}
