/**
 * A load-generator task (bench/load-worker.ts) in a child process of its own at
 * the lowest CPU priority (`nice -n 19`), steered like a worker thread.
 *
 * Why: the storm scenario's 2,000 client handshakes cost the generator as much
 * CPU as they cost the broker. In threads of the bench process on a 2-core
 * machine they would starve the steady publishers and their subscriber, and the
 * latency measured would be the generator's, not the broker's. In production
 * the devices' handshakes do not run on the broker's host; niced, they take only
 * the CPU the broker and the measuring clients leave.
 *
 * Run as a script, it is the relay in the child: the task comes as the first
 * IPC message, the thread's messages go to the parent and the parent's commands to it.
 */
import { fork, type ChildProcess } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { Worker } from 'node:worker_threads'
import type { WorkerTask } from './load-worker.js'
import { procUsage, type ProcUsage } from './proc.js'
import { WorkerMailbox, type FromWorker } from './worker-mailbox.js'

export class NicedLoadWorker {
  private readonly child: ChildProcess
  private readonly mailbox = new WorkerMailbox('niced load worker')

  constructor (task: WorkerTask) {
    // nice(1) runs node itself, so the child's pid is node's and IPC works through it
    this.child = fork(fileURLToPath(import.meta.url), [], {
      execPath: 'nice',
      execArgv: ['-n', '19', process.execPath],
      env: { ...process.env, NODE_OPTIONS: '' },
      stdio: ['ignore', 'ignore', 'inherit', 'ipc']
    })
    this.child.on('message', (msg: FromWorker) => this.mailbox.deliver(msg))
    this.child.on('error', (err) => this.mailbox.fail(err))
    this.child.on('exit', () => this.mailbox.fail(new Error('niced load worker exited')))
    // over IPC: a thousand identities are too long for a command line
    this.child.send({ task })
  }

  usage (): ProcUsage | null {
    return this.child.pid === undefined ? null : procUsage(this.child.pid)
  }

  send (cmd: string): void {
    if (this.child.connected) this.child.send({ cmd })
  }

  next<T = FromWorker> (type: string, timeoutMs = 60_000): Promise<T> {
    return this.mailbox.next<T>(type, timeoutMs)
  }

  async stop (): Promise<void> {
    this.child.removeAllListeners('exit')
    if (this.child.exitCode !== null || this.child.signalCode !== null) return
    const gone = new Promise<void>((resolve) => this.child.once('exit', () => resolve()))
    this.child.kill('SIGKILL')
    await gone
  }
}

// the relay, in the niced child
if (process.argv[1] === fileURLToPath(import.meta.url) && process.send) {
  let worker: Worker | null = null
  process.on('message', (msg: { task?: WorkerTask }) => {
    if (worker === null && msg.task) {
      worker = new Worker(new URL('./load-worker.js', import.meta.url), { workerData: msg.task })
      worker.on('message', (m: FromWorker) => process.send?.(m))
      worker.on('error', (err) => process.send?.({ type: 'error', message: err.message }))
      worker.on('exit', () => process.exit(0))
    } else {
      worker?.postMessage(msg)
    }
  })
  process.on('disconnect', () => process.exit(0))
}
