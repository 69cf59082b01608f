/**
 * Who may open a TCP connection (CONTRACT §11), decided at accept, before any
 * TLS work: at most MAX_CONNECTIONS in all, at most
 * MAX_PENDING_CONNECTIONS_PER_ADDRESS not yet authenticated per remote address,
 * and CONNECT_RATE_PER_ADDRESS connects per minute per address (a token bucket).
 * Every map is bounded: pending counts live only while a connection does, and
 * the buckets are capped and swept. Then when its handshake may run: at most
 * MAX_CONCURRENT_HANDSHAKES at once (`HandshakeGate`, below).
 */
import type { Socket } from 'node:net'
import type { Server as TlsServer } from 'node:tls'
import { budgetKeyOf } from '../address-budget.js'
import type { ErrorCode } from '../errors.js'

/** addresses whose connect rate is tracked at once; the oldest bucket goes first */
export const MAX_RATE_BUCKETS = 100_000
/** how often refilled buckets are dropped: on the first admit after this long, so every user of an Admission gets it without a timer of its own */
const SWEEP_MS = 60_000

export interface AdmissionLimits {
  readonly maxConnections: number
  readonly maxPendingPerAddress: number
  /** connects per minute per address */
  readonly connectRatePerAddress: number
}

interface Bucket { tokens: number, at: number }

export class Admission {
  /** live connections, authenticated or not */
  open = 0
  private readonly pending = new Map<string, number>()
  private readonly buckets = new Map<string, Bucket>()
  private readonly perMs: number
  private sweptAt: number

  constructor (private readonly limits: AdmissionLimits, private readonly now: () => number = Date.now, private readonly maxBuckets = MAX_RATE_BUCKETS) {
    this.perMs = limits.connectRatePerAddress / 60_000
    this.sweptAt = now()
  }

  /** null when admitted (and counted as open and pending), else why not */
  admit (remoteAddress: string): ErrorCode | null {
    if (this.open >= this.limits.maxConnections) return 'TooManyConnections'
    // per address means per budget: an IPv6 /64 is one (broker/address-budget.ts)
    const address = budgetKeyOf(remoteAddress)
    const pending = this.pending.get(address) ?? 0
    if (pending >= this.limits.maxPendingPerAddress) return 'TooManyPendingConnections'
    if (!this.takeToken(address)) return 'ConnectRateExceeded'
    this.open++
    this.pending.set(address, pending + 1)
    return null
  }

  /** the connection authenticated, or closed before it did */
  settle (remoteAddress: string): void {
    const address = budgetKeyOf(remoteAddress)
    const pending = (this.pending.get(address) ?? 0) - 1
    if (pending > 0) this.pending.set(address, pending)
    else this.pending.delete(address)
  }

  closed (): void {
    this.open--
  }

  pendingCount (): number {
    let n = 0
    for (const v of this.pending.values()) n += v
    return n
  }

  /** drops buckets that have refilled: they hold nothing a new bucket would not */
  sweep (): void {
    const t = this.now()
    this.sweptAt = t
    const capacity = this.limits.connectRatePerAddress
    for (const [address, b] of this.buckets) {
      if (b.tokens + (t - b.at) * this.perMs >= capacity) this.buckets.delete(address)
    }
  }

  private takeToken (address: string): boolean {
    const t = this.now()
    if (t - this.sweptAt >= SWEEP_MS) this.sweep()
    const capacity = this.limits.connectRatePerAddress
    let b = this.buckets.get(address)
    if (b === undefined) {
      if (this.buckets.size >= this.maxBuckets) {
        const oldest = this.buckets.keys().next().value
        if (oldest !== undefined) this.buckets.delete(oldest)
      }
      b = { tokens: capacity, at: t }
      this.buckets.set(address, b)
    } else {
      b.tokens = Math.min(capacity, b.tokens + (t - b.at) * this.perMs)
      b.at = t
    }
    if (b.tokens < 1) return false
    b.tokens--
    return true
  }
}

/** sockets that may wait for a handshake slot, per slot (at least HANDSHAKE_QUEUE_MIN); beyond, new connections are refused fast */
export const HANDSHAKE_QUEUE_PER_SLOT = 16
export const HANDSHAKE_QUEUE_MIN = 1024
/**
 * A handshake keeps its slot at most this long. The slots bound the server's TLS
 * work in flight, but a handshake also waits on its client (round trips, a slow
 * device's signature): a client that stalls (slowloris, a dying device) must not
 * keep a slot from the devices queued behind it. Past this the handshake goes on
 * outside the count, still under TLS_HANDSHAKE_TIMEOUT_MS; so the slots also
 * bound how many handshakes start per SLOT_MAX when every client is slow.
 */
export const HANDSHAKE_SLOT_MAX_MS = 250

export type GateVerdict = 'started' | 'waiting' | 'refused'

export interface HandshakeGateOptions {
  /** MAX_CONCURRENT_HANDSHAKES */
  readonly maxConcurrent: number
  /** default: HANDSHAKE_QUEUE_PER_SLOT per slot, at least HANDSHAKE_QUEUE_MIN */
  readonly maxWaiting?: number
  readonly slotMaxMs?: number
  /**
   * HANDSHAKE_TURN_BUDGET_MS: handshakes start during at most this long of each
   * turn of the event loop; 0: no budget, the slots only. Why a time and not only
   * the slots: starting a handshake (reading the ClientHello, the key exchange
   * and the server's signature) costs ~0.5–1 ms of this thread, and its client
   * answers fast on a LAN, so the slots alone let one turn start a few hundred of
   * them (and run their second flights the next turn) before the PUBLISHes of
   * the devices already connected are read. With a budget the rest wait for the
   * next turn, after its I/O: the storm takes the CPU it took before, in slices,
   * and a delivery waits for one slice, not for the whole burst.
   */
  readonly turnBudgetMs: number
  readonly onChange?: (inProgress: number, queued: number) => void
  /** a connection refused when its first bytes came (admit() already returned): close it and say why */
  readonly onRefused: (raw: Socket) => void
}

type ConnectionListener = (raw: Socket) => void

/**
 * MAX_CONCURRENT_HANDSHAKES (CONTRACT §11): at most that many TLS handshakes in
 * progress at once in this process; the others wait, first come first served,
 * with their TCP connection open and their ClientHello unread in its buffer.
 *
 * Why: Node runs every handshake step (key exchange, signature, the client's
 * chain and signature checks) on the one thread that also routes messages. When
 * thousands of devices come back at once, one turn of the event loop would run
 * a handshake step for each of them before the next PUBLISH is read, and
 * delivery for everyone already connected stalls for seconds. With the slots,
 * one turn runs at most that many steps, and the storm is spread over time.
 *
 * How: Node's tls.Server wraps each TCP connection in a TLSSocket (and starts
 * the handshake) from its own `connection` listener, `tlsConnectionListener`
 * (lib/_tls_wrap.js). The gate takes that listener off the event and calls it
 * when a slot is free: the same as `server.emit('connection', socket)`, which
 * the tls docs name as the way to hand a server a connection, minus our own
 * listeners running twice. A connection queues for a slot only once its first
 * bytes (or its end) arrived, so idle connections, which the handshake deadline
 * closes (and MAX_PENDING_CONNECTIONS_PER_ADDRESS bounds), neither hold a slot
 * nor fill the queue. A connection waits while fewer than `maxWaiting` do;
 * beyond, it is refused fast, before any TLS work: one that waits that long
 * would mostly reach its handshake deadline anyway.
 */
export class HandshakeGate {
  readonly maxConcurrent: number
  readonly maxWaiting: number
  private readonly slotMaxMs: number
  private readonly turnBudgetMs: number
  /** when the first handshake of this turn started (performance.now()), or null: none yet this turn */
  private turnStartedAt: number | null = null
  /** the end of this turn (setImmediate: after its I/O), when handshakes were started or deferred in it */
  private turnEnd: NodeJS.Immediate | null = null
  /** a handshake started in this tick: its first step (Node's initRead) has not run yet */
  private tickBusy = false
  /** told the counts after every change (the listener's gauges) */
  private readonly onChange: (inProgress: number, queued: number) => void
  /** a connection whose first bytes came when the queue was full: the listener closes it and says why */
  private readonly onRefused: (raw: Socket) => void
  /** handshakes holding a slot: the slot's release timer */
  private readonly running = new Map<Socket, NodeJS.Timeout>()
  /** connections waiting for a slot, in arrival order (a Set keeps insertion order and deletes in O(1)) */
  private readonly waiting = new Set<Socket>()
  /** admitted connections whose first bytes have not arrived yet: the listener that waits for them */
  private readonly silent = new Map<Socket, () => void>()
  private readonly tlsConnectionListener: ConnectionListener

  constructor (private readonly server: TlsServer, opts: HandshakeGateOptions) {
    this.maxConcurrent = opts.maxConcurrent
    this.maxWaiting = opts.maxWaiting ?? Math.max(HANDSHAKE_QUEUE_MIN, HANDSHAKE_QUEUE_PER_SLOT * opts.maxConcurrent)
    this.slotMaxMs = opts.slotMaxMs ?? HANDSHAKE_SLOT_MAX_MS
    this.turnBudgetMs = opts.turnBudgetMs
    this.onChange = opts.onChange ?? (() => {})
    this.onRefused = opts.onRefused
    const own = server.listeners('connection')
    // a fresh tls.Server has exactly Node's own; anything else and the gate would start TLS twice or never
    if (own.length !== 1) throw new Error(`handshake gate: expected Node's one TLS connection listener, found ${own.length}`)
    this.tlsConnectionListener = own[0] as ConnectionListener
    server.removeListener('connection', this.tlsConnectionListener)
  }

  /** handshakes holding a slot */
  get inProgress (): number { return this.running.size }
  /** connections with their first bytes in, waiting for a slot */
  get queued (): number { return this.waiting.size }

  /**
   * An admitted TCP connection: its TLS handshake starts now, or when its first
   * bytes are in and a slot is free ('waiting'), or never ('refused': the caller
   * closes it and says why; or later through `onRefused`, when its first bytes
   * find the queue full).
   */
  admit (raw: Socket): GateVerdict {
    if (raw.readableLength > 0 || raw.readableEnded) {
      if (!this.enqueue(raw)) return 'refused'
    } else {
      // 'readable' also fires at the end of the stream: a client that gives up still gets its handshake error
      const arrived = (): void => {
        this.silent.delete(raw)
        if (this.enqueue(raw)) this.onChange(this.running.size, this.queued)
        else this.onRefused(raw)
      }
      this.silent.set(raw, arrived)
      raw.once('readable', arrived)
    }
    this.onChange(this.running.size, this.queued)
    return this.running.has(raw) ? 'started' : 'waiting'
  }

  /** the handshake of `raw` finished, failed, or its connection closed; idempotent */
  done (raw: Socket): void {
    const arrived = this.silent.get(raw)
    if (arrived !== undefined) {
      raw.off('readable', arrived)
      this.silent.delete(raw)
    } else if (!this.waiting.delete(raw)) {
      if (!this.running.has(raw)) return
      this.release(raw)
    }
    this.onChange(this.running.size, this.queued)
  }

  /** forgets every waiting connection (the listener closes them) */
  close (): void {
    for (const [raw, arrived] of this.silent) raw.off('readable', arrived)
    this.silent.clear()
    this.waiting.clear()
    for (const timer of this.running.values()) clearTimeout(timer)
    this.running.clear()
    if (this.turnEnd !== null) clearImmediate(this.turnEnd)
    this.turnEnd = null
    this.turnStartedAt = null
    this.tickBusy = false
    this.onChange(0, 0)
  }

  /** false: the queue is full */
  private enqueue (raw: Socket): boolean {
    // first come first served: nobody starts ahead of a connection already waiting
    if (this.waiting.size === 0 && !this.tickBusy && this.running.size < this.maxConcurrent && this.mayStartThisTurn()) this.start(raw)
    // whatever held it back drains the queue again: a start on this tick (afterStart), the
    // budget (the turn's end), the slots (a release)
    else if (this.waiting.size < this.maxWaiting) this.waiting.add(raw)
    else return false
    return true
  }

  /**
   * Whether this turn's budget has room for one more handshake to start. The first
   * start of a turn opens it and arranges its end (setImmediate runs after the
   * turn's I/O), where the queue is drained again in a fresh turn: an open turn
   * (turnStartedAt set) always has its end scheduled, so a refusal here needs
   * nothing more.
   */
  private mayStartThisTurn (): boolean {
    if (this.turnBudgetMs <= 0) return true
    const now = performance.now()
    if (this.turnStartedAt === null) {
      this.turnStartedAt = now
      this.turnEnd ??= setImmediate(() => { this.endTurn() })
      return true
    }
    return now - this.turnStartedAt < this.turnBudgetMs
  }

  private endTurn (): void {
    this.turnEnd = null
    this.turnStartedAt = null
    // what next() leaves waiting: a release drains it (slots full), afterStart (a start on
    // this tick) or the end of the turn it just opened (budget spent)
    this.next()
    this.onChange(this.running.size, this.queued)
  }

  private release (raw: Socket): void {
    const timer = this.running.get(raw)
    if (timer === undefined) return
    clearTimeout(timer)
    this.running.delete(raw)
    this.next()
  }

  /**
   * Starts waiting connections while a slot is free and this turn has budget
   * left. With a budget, one per tick: Node reads a new TLSSocket's ClientHello
   * (the first, costly handshake step) on a tick of its own, so the next start
   * waits for it (afterStart) and the budget counts it.
   */
  private next (): void {
    for (const raw of this.waiting) {
      if (this.running.size >= this.maxConcurrent || this.tickBusy || !this.mayStartThisTurn()) return
      this.waiting.delete(raw)
      if (!raw.destroyed) this.start(raw)
    }
  }

  private afterStart (): void {
    this.tickBusy = false
    if (this.waiting.size === 0) return
    this.next()
    this.onChange(this.running.size, this.queued)
  }

  private start (raw: Socket): void {
    const timer = setTimeout(() => {
      this.release(raw)
      this.onChange(this.running.size, this.queued)
    }, this.slotMaxMs)
    timer.unref()
    this.running.set(raw, timer)
    if (this.turnBudgetMs > 0) this.tickBusy = true
    try {
      this.tlsConnectionListener.call(this.server, raw)
    } catch {
      // a connection Node cannot wrap (gone meanwhile) frees its slot; the listener sees it close
      this.release(raw)
      raw.destroy()
    }
    // queued after the tick on which the TLSSocket's constructor reads the ClientHello
    // (Node's initRead: the key exchange and the signature), so the budget counts that step
    if (this.turnBudgetMs > 0) process.nextTick(() => { this.afterStart() })
  }
}
