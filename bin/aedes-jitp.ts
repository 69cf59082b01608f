#!/usr/bin/env node
/**
 * aedes-jitp command line. Exit 0 on success; otherwise a one-line reason on
 * stderr and a non-zero exit code.
 */
import { runCommand } from '../broker/cli/commands.js'

runCommand(process.argv.slice(2)).then((code) => {
  // null: a long-running command (start) that sets its own exit code on shutdown
  if (code !== null) process.exitCode = code
}, (err: unknown) => {
  const message = err instanceof Error ? err.message : String(err)
  process.stderr.write(`aedes-jitp: ${message.split('\n')[0]}\n`)
  process.exitCode = 1
})
