/**
 * Fault: clients that give up in the middle of their CONNECT. 1,000 sockets send
 * a CONNECT and are destroyed at once, while the broker is still working on it
 * (with Redis, every write of every Redis client is held with CLIENT PAUSE WRITE,
 * so the claim's session-owner record and the device's session clean-up are
 * deterministically in flight when the socket goes). Half use the claim
 * certificate (each arms a CLAIM_SESSION_MAX_SECONDS timer once identified: before
 * the fix, 1,000 aborted connects left ~500 armed timers holding their clients,
 * +5 MB of heap for 300 s), half a registered device (registry lookups per connect).
 * Afterwards nothing of them may be left: no entry in Aedes' clients map, no
 * armed claim timer, no heap.
 */
import t from 'tap'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import { connect as tlsConnect, createSecureContext, type SecureContext } from 'node:tls'
import { Redis } from 'ioredis'
import { connectPacket } from '../../bench/mqtt-wire.js'
import { liveClients } from '../../broker/session.js'
import { claimTimersArmed } from '../../plugins/provisioning.js'
import {
  STORES, connect, credentials, endClient, registerDevice, sleep, startBroker, waitFor, type ClientCredentials, type TestBroker
} from '../helpers/broker.js'

const ABORTS = 1000
const BATCH = 50
const IN_FLIGHT = 25
/** shorter than the registry's command timeout (2 s): the held lookups succeed, and the connects go on into Aedes */
const PAUSE_MS = 1500
const DEVICES = 10
/** what 1,000 leftover clients would weigh is several MB (~10 KB each) */
const HEAP_SLACK = 3 * 1024 * 1024

setFlagsFromString('--expose-gc')
const gc = runInNewContext('gc') as () => void

function heapAfterGc (): number {
  for (let i = 0; i < 3; i++) gc()
  return process.memoryUsage().heapUsed
}

/** TLS handshake, CONNECT written, socket destroyed as soon as the write is flushed */
function abortedConnect (port: number, context: SecureContext, clientId: string): Promise<void> {
  return new Promise((resolve) => {
    const socket = tlsConnect({ host: '127.0.0.1', port, secureContext: context })
    const timer = setTimeout(() => socket.destroy(), 10_000)
    socket.on('error', () => {})
    socket.once('close', () => {
      clearTimeout(timer)
      resolve()
    })
    socket.once('secureConnect', () => {
      socket.write(connectPacket(clientId, { clean: true, keepalive: 30 }), () => socket.destroy())
    })
  })
}

async function inLanes (count: number, lanes: number, one: (i: number) => Promise<void>): Promise<void> {
  let next = 0
  await Promise.all(Array.from({ length: lanes }, async () => {
    while (next < count) await one(next++)
  }))
}

function counts (tb: TestBroker): { clients: number, connected: number, timers: number } {
  return {
    clients: Object.keys(liveClients(tb.handle.broker)).length,
    connected: (tb.handle.broker as unknown as { connectedClients: number }).connectedClients,
    timers: claimTimersArmed()
  }
}

for (const store of STORES) {
  t.test(`connects aborted while the broker works on them leave nothing behind (${store})`, async (t) => {
    // the broker's in-process audit ring (kept for queries when the audit is not a file) holds
    // up to AUDIT_MEMORY_LINES lines by design: kept at its minimum, and full before the baseline
    // (the warm-up below), so what it holds does not read as a leak of the aborted connects
    const tb = await startBroker({ store, overrides: { AUDIT_MEMORY_LINES: 100 } })
    t.teardown(() => tb.close())
    const ca = tb.pki.read('root-ca.pem')
    const claimCtx = createSecureContext({ ca, ...credentials(tb.pki, 'claim') })
    const devices: Array<{ id: string, ctx: SecureContext, creds: ClientCredentials }> = []
    for (let i = 0; i < DEVICES; i++) {
      const creds = await registerDevice(tb, `aborted-${i}`)
      devices.push({ id: `aborted-${i}`, ctx: createSecureContext({ ca, cert: creds.cert, key: creds.key }), creds })
    }
    const pauser = store === 'redis' ? new Redis(tb.redis!.url, { maxRetriesPerRequest: 1 }) : null
    t.teardown(() => pauser?.disconnect())

    // warm-up: every code path (claim, device, both refused and accepted) has run once
    for (let i = 0; i < 20; i++) {
      await abortedConnect(tb.port, i % 2 === 0 ? claimCtx : devices[i % DEVICES]!.ctx, i % 2 === 0 ? `warm-claim-${i}` : devices[i % DEVICES]!.id)
    }
    await waitFor(() => counts(tb).clients === 0 && counts(tb).timers === 0, 10_000, 'warm-up settled')
    // the audit capture keeps every line in this process: not the broker's memory
    const forgetAudit = (): void => { tb.audit.lines.length = 0; tb.audit.raw.length = 0 }
    forgetAudit()
    const baseline = heapAfterGc()

    const started = Date.now()
    for (let b = 0; b < ABORTS / BATCH; b++) {
      // CLIENT PAUSE WRITE holds every write of every Redis client (registry and session
      // store) for PAUSE_MS: the CONNECTs below are still in flight when their sockets go
      if (pauser) await pauser.call('CLIENT', 'PAUSE', String(PAUSE_MS), 'WRITE')
      await inLanes(BATCH, IN_FLIGHT, async (i) => {
        const n = b * BATCH + i
        if (n % 2 === 0) await abortedConnect(tb.port, claimCtx, `aborted-claim-${n}`)
        else {
          const d = devices[n % DEVICES]!
          await abortedConnect(tb.port, d.ctx, d.id)
        }
      })
      if (pauser) await pauser.call('CLIENT', 'UNPAUSE')
    }
    t.comment(`${ABORTS} aborted connects in ${Date.now() - started} ms`)
    // every certificate here is valid: a socket that died mid-connect is never an unknown issuer
    t.notOk(tb.audit.lines.some((l) => l.errorCode === 'UnknownIssuer'), 'no valid certificate audited as UnknownIssuer')

    await waitFor(() => counts(tb).clients === 0, 20_000, 'the clients map to empty').catch(() => {})
    t.same(counts(tb), { clients: 0, connected: 0, timers: 0 }, 'no client left in Aedes\' clients map, none counted, no claim timer armed')
    // the registry and session reads that were held by the pause have all come back by now
    await sleep(500)
    forgetAudit()
    const after = heapAfterGc()
    t.comment(`heap after GC: baseline ${(baseline / 1048576).toFixed(1)} MB, after ${(after / 1048576).toFixed(1)} MB`)
    t.ok(after - baseline < HEAP_SLACK, `the heap is back near its baseline (+${((after - baseline) / 1048576).toFixed(2)} MB)`)

    // and the broker still works for the same identities
    const device = await connect(tb, devices[0]!.creds, { clientId: devices[0]!.id })
    t.ok(device.connected, 'a device connects afterwards')
    const claim = await connect(tb, credentials(tb.pki, 'claim'), { clientId: 'after-claim' })
    t.equal(claimTimersArmed(), 1, 'a live claim connection has its one timer')
    await endClient(claim)
    await endClient(device)
    await waitFor(() => claimTimersArmed() === 0, 5000, 'the claim timer cleared at disconnect')
    t.pass('the claim timer is cleared when the claim connection ends')
  })
}
