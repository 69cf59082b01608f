/**
 * `aedes-jitp start [--config FILE]`: runs the broker until SIGTERM/SIGINT; SIGHUP reloads CERTS_DIR.
 * With WORKERS > 1 this process becomes the primary of a cluster (broker/cluster.ts) and every
 * worker runs this same command again, as one broker of the cluster.
 */
import { parseArgs } from 'node:util'
import { buildBroker, type BrokerHandle, type BuildOptions } from '../build.js'
import { clusterMetricsText, forwardSignal, isClusterWorker, serveWorker, startPrimary, workerOverrides, workerSlot } from '../cluster.js'
import { loadConfig } from '../config.js'

/** a hung close must not keep a container from stopping */
const FORCE_EXIT_MS = 10_000

export async function startCommand (args: string[]): Promise<null> {
  const { values } = parseArgs({ args, options: { config: { type: 'string' } }, strict: true })
  if (isClusterWorker()) return startWorker(values.config)
  const config = loadConfig({ file: values.config })
  if (config.workers > 1) return startCluster(config)
  const handle = await buildBroker(config)
  serveUntilSignalled(handle, (code) => { process.exitCode = code })
  return null
}

/** one broker of a cluster: the same as a single one, but its /metrics is the cluster's and it leaves the event loop itself (IPC keeps it alive) */
async function startWorker (file: string | undefined): Promise<null> {
  const slot = workerSlot()
  try {
    const config = loadConfig({ file, overrides: workerOverrides(loadConfig({ file }), slot) })
    const opts: BuildOptions = { metricsText: clusterMetricsText }
    const handle = await buildBroker(config, opts)
    serveUntilSignalled(handle, (code) => process.exit(code))
    serveWorker(handle)
  } catch (err) {
    // the primary sees the exit and reports it; this is the reason, on stderr like a single broker's
    process.stderr.write(`aedes-jitp: worker ${slot}: ${(err as Error).message.split('\n')[0]}\n`)
    process.exit(1)
  }
  return null
}

async function startCluster (config: ReturnType<typeof loadConfig>): Promise<null> {
  const primary = await startPrimary(config)
  let stopping = false
  const stop = (signal: string): void => {
    if (stopping) return
    stopping = true
    process.stderr.write(`aedes-jitp: ${signal}: stopping ${config.workers} workers\n`)
    // every worker is gone and the primary's audit flushed: nothing left worth waiting for
    primary.stop().then(() => process.exit(0), () => process.exit(1))
  }
  primary.done.catch((err: unknown) => {
    process.stderr.write(`aedes-jitp: ${(err as Error).message}\n`)
    process.exit(1)
  })
  process.on('SIGHUP', () => forwardSignal('SIGHUP'))
  process.on('SIGTERM', () => stop('SIGTERM'))
  process.on('SIGINT', () => stop('SIGINT'))
  return null
}

function serveUntilSignalled (handle: BrokerHandle, exit: (code: number) => void): void {
  let stopping = false
  const stop = (signal: string): void => {
    if (stopping) return
    stopping = true
    handle.ctx.log.info({ signal }, 'shutting down')
    const force = setTimeout(() => process.exit(1), FORCE_EXIT_MS)
    force.unref()
    handle.close().then(() => exit(0), (err: unknown) => {
      process.stderr.write(`aedes-jitp: shutdown failed: ${(err as Error).message}\n`)
      exit(1)
    })
  }
  // a stray rejected store call (e.g. Redis going away mid-command) must not take
  // every device's connection down with it: log it, keep serving
  process.on('unhandledRejection', (reason) => {
    handle.ctx.log.error({ err: reason instanceof Error ? reason.message : String(reason) }, 'unhandled rejection')
  })
  // the usual daemon signal: the watcher finds changes by itself, SIGHUP is for file systems it cannot watch
  // and for operators who want it now; a file that does not parse is audited and changes nothing
  process.on('SIGHUP', function reloadCertificates () {
    if (stopping) return
    handle.ctx.log.info({ signal: 'SIGHUP' }, 'reloading CERTS_DIR')
    handle.reloadCerts()
    // and reopens the audit file if logrotate moved it (noticed within a second anyway)
    void handle.audit.checkRotation()
    // and the token-signing keys (docs/AUTH.md, key rotation): a key dropped in signs from now on
    handle.tokenKeys.reload().catch((err: unknown) => handle.ctx.log.warn({ err: (err as Error).message }, 'token keys: reload failed; the keys in use stay'))
  })
  // `on`, not `once`: a worker may get the signal twice (from the primary and from a process-group kill, as
  // `timeout` or a terminal's Ctrl-C send), and the second must not kill it mid-close (FORCE_EXIT_MS bounds it)
  process.on('SIGTERM', () => stop('SIGTERM'))
  process.on('SIGINT', () => stop('SIGINT'))
}
