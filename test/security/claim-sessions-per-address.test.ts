/**
 * Attack: the holder of the public claim certificate opens claim sessions from
 * one address and keeps them (CONNACK 0, then silence: a claim session lives up
 * to CLAIM_SESSION_MAX_SECONDS). An authenticated connection left the
 * per-address pending budget, so one address could hold sessions up to
 * MAX_CONNECTIONS, and every device was then refused at accept.
 * Defence: a claim session names nobody, so it keeps its place in its address's
 * MAX_PENDING_CONNECTIONS_PER_ADDRESS until it closes (broker/listener.ts). The
 * attacker uses 127.0.0.1, the device 127.0.0.2 (all of 127/8 is loopback).
 */
import t from 'tap'
import type { IClientOptions, MqttClient } from 'mqtt'
import { connect, credentials, endClient, publish, registerDevice, startBroker, waitFor } from '../helpers/broker.js'

const PER_ADDRESS = 8
const MAX_CONNECTIONS = 24

t.test('one address holds at most MAX_PENDING_CONNECTIONS_PER_ADDRESS claim sessions', async (t) => {
  const tb = await startBroker({
    store: 'memory',
    overrides: { MAX_PENDING_CONNECTIONS_PER_ADDRESS: PER_ADDRESS, MAX_CONNECTIONS, CONNECT_RATE_PER_ADDRESS: 100_000, AUDIT_AGGREGATE_SECONDS: 1 }
  })
  t.teardown(() => tb.close())
  const claim = credentials(tb.pki, 'claim')
  const held: MqttClient[] = []
  t.teardown(() => { for (const c of held) c.end(true) })
  let refused = 0
  // more than MAX_CONNECTIONS attempts, one at a time: each either gets its session or is refused
  for (let i = 0; i < MAX_CONNECTIONS + 6; i++) {
    try {
      held.push(await connect(tb, claim, { clientId: `hold-${i}`, connectTimeout: 3000 }))
    } catch {
      refused++
    }
  }
  t.equal(held.length, PER_ADDRESS, `${held.length} claim sessions held from one address (MAX_PENDING_CONNECTIONS_PER_ADDRESS ${PER_ADDRESS})`)
  t.equal(refused, MAX_CONNECTIONS + 6 - PER_ADDRESS, 'the rest refused')
  await waitFor(() => tb.events('connect.refused').some((l) => l.errorCode === 'TooManyPendingConnections' && l.remoteAddress === '127.0.0.1'), 5000, 'the refusal audited')

  // a device from another address connects and publishes
  const creds = await registerDevice(tb, 'held-out-dev')
  const device = await connect(tb, creds, { clientId: 'held-out-dev', localAddress: '127.0.0.2' } as IClientOptions)
  await publish(device, 'devices/held-out-dev/telemetry', JSON.stringify({ ts: 1, seq: 1, values: { t: 1 } }))
  t.pass('a device from another address connects and publishes')
  await endClient(device)

  // a claim session that ends gives its place back (once the broker has seen its socket close: a few tries at most)
  const ended = held.pop()!
  await endClient(ended)
  await waitFor(() => tb.events('disconnect').some((l) => l.clientId === ended.options.clientId), 5000, 'its disconnect')
  let again: MqttClient | null = null
  for (let i = 0; i < 20 && again === null; i++) again = await connect(tb, claim, { clientId: 'hold-again' }).catch(() => null)
  t.ok(again?.connected, 'a claim session that ended gave its place back')
  if (again) held.push(again)
})
