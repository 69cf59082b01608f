/**
 * The parent's side of a load-generator task (bench/load-worker.ts), whether it
 * runs in a worker thread (bench/scenarios.ts) or a niced child process
 * (bench/niced-worker.ts): its messages, awaited by type. An `error` message,
 * or the worker failing, rejects every wait, present and future.
 */
export type FromWorker = { type: string, [k: string]: unknown }

export class WorkerMailbox {
  private readonly inbox: FromWorker[] = []
  private readonly waiting: Array<{ type: string, resolve: (m: FromWorker) => void, reject: (e: Error) => void }> = []
  private failure: Error | null = null

  /** @param name what a timeout's message calls the worker */
  constructor (private readonly name: string) {}

  deliver (msg: FromWorker): void {
    if (msg.type === 'error') return this.fail(new Error(String(msg.message)))
    const i = this.waiting.findIndex((w) => w.type === msg.type)
    if (i >= 0) this.waiting.splice(i, 1)[0]!.resolve(msg)
    else this.inbox.push(msg)
  }

  fail (err: Error): void {
    this.failure ??= err
    for (const w of this.waiting.splice(0)) w.reject(err)
  }

  next<T = FromWorker> (type: string, timeoutMs: number): Promise<T> {
    const i = this.inbox.findIndex((m) => m.type === type)
    if (i >= 0) return Promise.resolve(this.inbox.splice(i, 1)[0] as T)
    if (this.failure) return Promise.reject(this.failure)
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${this.name}: no '${type}' within ${timeoutMs} ms`)), timeoutMs)
      this.waiting.push({
        type,
        resolve: (m) => { clearTimeout(timer); resolve(m as T) },
        reject: (e) => { clearTimeout(timer); reject(e) }
      })
    })
  }
}
