/**
 * Attack: a leaked certificate connects at the very moment it is revoked. The
 * broker's revocation check answers "not revoked", the revocation lands while the
 * connect is still in flight (the reply of the connect's read of the store is held
 * by a wrapper around the real registry until the revocation is in and its notice
 * was heard), then the connect completes. The broker must not keep that session: it is closed, audited,
 * and the next connect is refused with CONNACK 5. Both stores; with Redis the
 * revocation comes from another registry instance, as from another process.
 * And a persistent session reconnecting at that moment gets none of its stored
 * messages: Aedes hands the queue out right after CONNACK, before `clientReady`,
 * so the re-check runs first (broker/store/queue-gate.ts).
 */
import t from 'tap'
import { RedisRegistry } from '../../broker/store/redis-registry.js'
import type { CertificateRecords, Registry, RevocationQuery } from '../../broker/store/registry.js'
import { connect, connectCollecting, endClient, publish, registerDevice, startBroker, STORES, subscribe, waitFor, type TestBroker } from '../helpers/broker.js'
import { connackOf, counterValue, issueClient } from '../helpers/revocation.js'

/**
 * Holds the broker's revocation check for `certificateId`: the connect's one read of
 * the store (registry.certificateRecords: revocation list, certificate, device) gets
 * its answer (not revoked yet), and that answer waits until `release`.
 */
function holdRecords (registry: Registry, certificateId: string): { inFlight: Promise<void>, release: () => void, restore: () => void } {
  let release!: () => void
  const gate = new Promise<void>((resolve) => { release = resolve })
  let entered!: () => void
  const inFlight = new Promise<void>((resolve) => { entered = resolve })
  const realRecords = registry.certificateRecords.bind(registry)
  registry.certificateRecords = async function heldRecords (q: RevocationQuery): Promise<CertificateRecords> {
    const answer = await realRecords(q)
    if (q.certificateId === certificateId) {
      entered()
      await gate
    }
    return answer
  }
  return { inFlight, release, restore: () => { registry.certificateRecords = realRecords } }
}

/** revokes through `revoker`, and waits until the broker heard the notice (pub/sub from the other instance, or in-process) */
async function revokeAndHear (tb: TestBroker, revoker: Registry, certificateId: string): Promise<boolean> {
  const heard = await counterValue(tb.handle.metrics.revocations)
  const revoked = await revoker.revoke({ certificateId })
  const start = Date.now()
  while (await counterValue(tb.handle.metrics.revocations) === heard) {
    if (Date.now() - start > 5000) throw new Error('the broker never heard the revocation notice')
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
  return revoked
}

for (const store of STORES) {
  t.test(`${store}: a revocation that lands during a connect is honoured`, async (t) => {
    const tb = await startBroker({ store })
    t.teardown(() => tb.close())
    const leaked = issueClient(tb.pki, 'service', 'race-svc')
    const registry = tb.handle.registry
    // another process's registry on the same Redis (memory: the broker's own, the only one there is)
    const revoker = store === 'redis' ? new RedisRegistry({ url: tb.redis!.url, keyPrefix: 'jitp:' }) : registry
    if (revoker !== registry) t.teardown(() => revoker.close())

    const held = holdRecords(registry, leaked.certificateId)
    const closed = { at: 0 }
    const connecting = connect(tb, leaked, { clientId: 'race-svc-1' }).then((client) => {
      client.once('close', () => { closed.at = Date.now() })
      return client
    }, (err: Error & { code?: number }) => err)
    await held.inFlight
    t.equal(await revokeAndHear(tb, revoker, leaked.certificateId), true, 'revoked (and heard) while the connect waits on its check')
    held.release()

    const outcome = await connecting
    if (outcome instanceof Error) {
      t.equal(outcome.code, 5, 'refused outright (CONNACK 5)')
    } else {
      await waitFor(() => closed.at > 0, 5000, 'the raced session to be closed')
      t.pass('the session that raced the revocation was closed')
      outcome.end(true)
    }
    await waitFor(() => tb.events('disconnect').some((l) => l.clientId === 'race-svc-1') || tb.events('connect.refused').some((l) => l.clientId === 'race-svc-1'), 5000, 'audit line')
    const line = [...tb.events('disconnect'), ...tb.events('connect.refused')].find((l) => l.clientId === 'race-svc-1')
    t.match(line, { errorCode: 'CertificateRevoked', certificateId: leaked.certificateId, role: 'service' }, 'audited with the reason')
    if (outcome instanceof Error) t.pass('nothing to close')
    else t.match(line, { event: 'disconnect', reason: 'revoked while connecting' })

    held.restore()
    t.equal(await connackOf(tb, leaked, 'race-svc-2'), 5, 'the next connect: CONNACK 5')
    t.equal(tb.events('certificate.revoked').length, 0, 'the broker does not write the revocation line (the actor does)')
  })
}

for (const store of STORES) {
  t.test(`${store}: a persistent session reconnecting as it is revoked gets none of its queue`, async (t) => {
    const tb = await startBroker({ store })
    t.teardown(() => tb.close())
    const leaked = issueClient(tb.pki, 'service', 'race-queue-svc')
    const registry = tb.handle.registry
    const revoker = store === 'redis' ? new RedisRegistry({ url: tb.redis!.url, keyPrefix: 'jitp:' }) : registry
    if (revoker !== registry) t.teardown(() => revoker.close())

    // its session, and five messages stored for it while it is away
    const away = await connect(tb, leaked, { clientId: 'race-queue-1', clean: false })
    t.same(await subscribe(away, 'devices/+/telemetry', 1), [1])
    await endClient(away)
    const device = await connect(tb, await registerDevice(tb, 'race-queue-dev'), { clientId: 'race-queue-dev' })
    for (let seq = 1; seq <= 5; seq++) await publish(device, 'devices/race-queue-dev/telemetry', JSON.stringify({ ts: Date.now(), seq, values: { n: seq } }))
    await endClient(device)

    // the reconnect's read of the store answers "not revoked", and waits until the revocation is in and heard
    const held = holdRecords(registry, leaked.certificateId)
    t.teardown(held.restore)

    const reconnecting = connectCollecting(tb, leaked, { clientId: 'race-queue-1', clean: false }).then((c) => c, (err: Error & { code?: number }) => err)
    await held.inFlight
    t.equal(await revokeAndHear(tb, revoker, leaked.certificateId), true, 'revoked (and heard) while the reconnect waits on its check')
    held.release()

    const outcome = await reconnecting
    if (outcome instanceof Error) {
      t.equal(outcome.code, 5, 'refused outright (CONNACK 5): nothing delivered')
    } else {
      const { client, got } = outcome
      await waitFor(() => !client.connected, 5000, 'the raced session to be closed')
      t.same(got.map((m) => m.topic), [], 'none of the five stored messages reached the revoked certificate')
      client.end(true)
      await waitFor(() => tb.events('disconnect').some((l) => l.clientId === 'race-queue-1' && l.errorCode === 'CertificateRevoked'), 5000, 'audit line')
      t.match(tb.events('disconnect').find((l) => l.clientId === 'race-queue-1' && l.errorCode === 'CertificateRevoked'), { reason: 'revoked while connecting', role: 'service' })
    }
  })
}
