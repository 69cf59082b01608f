/** `aedes-jitp start [--config FILE]`: runs the broker until SIGTERM/SIGINT; SIGHUP reloads CERTS_DIR. */
import { parseArgs } from 'node:util'
import { buildBroker } from '../build.js'
import { loadConfig } from '../config.js'

export async function startCommand (args: string[]): Promise<null> {
  const { values } = parseArgs({ args, options: { config: { type: 'string' } }, strict: true })
  const config = loadConfig({ file: values.config })
  const handle = await buildBroker(config)
  let stopping = false
  const stop = (signal: string): void => {
    if (stopping) return
    stopping = true
    handle.ctx.log.info({ signal }, 'shutting down')
    // a hung close must not keep a container from stopping
    const force = setTimeout(() => process.exit(1), 10_000)
    force.unref()
    handle.close().then(() => {
      process.exitCode = 0
    }, (err: unknown) => {
      process.stderr.write(`aedes-jitp: shutdown failed: ${(err as Error).message}\n`)
      process.exitCode = 1
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
  })
  process.once('SIGTERM', () => stop('SIGTERM'))
  process.once('SIGINT', () => stop('SIGINT'))
  return null
}
