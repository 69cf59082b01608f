/**
 * Attack: a device that failed its health check (CONTRACT §3.7, status
 * `quarantined`) keeps feeding telemetry into the fleet's pipelines, or keeps
 * taking commands, through its live subscriptions or what its persistent session
 * queued before.
 * Defence: it may still connect; its rules are the policy's cut down to the
 * quarantine fence (plugins/policy.ts): it publishes `state` and `config/ack`
 * only, and receives `config` and `errors` only, checked on publish, subscribe
 * and every delivery (live and queued).
 */
import t from 'tap'
import { publishDeviceConfig } from '../../broker/config-store.js'
import {
  connect, connectCollecting, credentials, endClient, publish, registerDevice, sleep, startBroker, subscribe, waitFor, type TestBroker
} from '../helpers/broker.js'

async function quarantine (tb: TestBroker, deviceId: string): Promise<void> {
  const record = await tb.handle.registry.getDevice(deviceId)
  if (!record) throw new Error(`${deviceId} is not registered`)
  await tb.handle.registry.putDevice({ ...record, status: 'quarantined', updatedAt: Date.now() })
}

async function quarantineDenials (tb: TestBroker): Promise<number> {
  const { values } = await tb.handle.metrics.denials.get()
  return values.find((v) => v.labels.action === 'forward' && v.labels.rule === 'quarantine')?.value ?? 0
}

/** the counter moves when the delivery is refused: the event to wait for when nothing arrives */
async function untilQuarantineDenials (tb: TestBroker, atLeast: number): Promise<void> {
  const start = Date.now()
  while (await quarantineDenials(tb) < atLeast) {
    if (Date.now() - start > 10_000) throw new Error('timed out waiting for a refused delivery')
    await sleep(10)
  }
}

t.test('a quarantined device connects, reports state, takes config; its telemetry and commands go nowhere', async (t) => {
  const tb = await startBroker({ store: 'memory' })
  t.teardown(() => tb.close())
  const id = 'q-dev'
  const creds = await registerDevice(tb, id)

  // while active, a persistent session takes its commands
  let device = await connect(tb, creds, { clientId: id, clean: false })
  t.same(await subscribe(device, `devices/${id}/commands/+`), [1], 'commands granted while active')
  await endClient(device)
  await quarantine(tb, id)

  const { client: service, got: seen } = await connectCollecting(tb, credentials(tb.pki, 'service'), { clientId: 'q-service' })
  t.same(await subscribe(service, ['devices/+/telemetry', 'devices/+/state']), [1, 1])
  // queued for the offline session, under the filter it was granted while active
  await publish(service, `devices/${id}/commands/reboot`, '{"name":"reboot"}')

  const refusedBefore = await quarantineDenials(tb)
  const back = await connectCollecting(tb, creds, { clientId: id, clean: false })
  device = back.client
  const got = back.got
  // written at clientReady, after the CONNACK
  await waitFor(() => tb.events('connect.accepted').some((l) => l.clientId === id), 5000, 'the connect.accepted line')
  t.ok(tb.events('connect.accepted').some((l) => l.clientId === id), 'the quarantined device connects')
  await untilQuarantineDenials(tb, refusedBefore + 1)
  t.same(got, [], 'the command queued before the quarantine is not delivered')

  t.same(await subscribe(device, [`devices/${id}/#`, `devices/${id}/commands/+`, `devices/${id}/config`]), [1, 128, 1], 'its namespace and config granted; commands refused')
  t.ok(tb.events('subscribe.denied').some((l) => l.clientId === id && l.topic === `devices/${id}/commands/+` && l.reason === 'quarantine'), 'the refusal names the quarantine')

  // telemetry is dropped (its error report comes back to the device), state is routed
  await publish(device, `devices/${id}/telemetry`, JSON.stringify({ ts: 1, seq: 1, values: {} }))
  await publish(device, `devices/${id}/state`, JSON.stringify({ ts: 1, status: 'degraded' }))
  await waitFor(() => seen.some((m) => m.topic === `devices/${id}/state`), 10_000, 'the state')
  t.same(seen.map((m) => m.topic), [`devices/${id}/state`], 'the service got the state, not the telemetry')
  t.ok(tb.events('publish.denied').some((l) => l.deviceId === id && l.topic === `devices/${id}/telemetry` && l.reason === 'quarantine'), 'telemetry refused, audited')
  await waitFor(() => got.some((m) => m.topic === `devices/${id}/errors`), 10_000, 'the error report')
  t.equal(JSON.parse(got.find((m) => m.topic === `devices/${id}/errors`)!.payload).errorCode, 'PublishDenied', 'errors reach it')
  t.ok(device.connected, 'still connected')

  // live: a command is refused at delivery, the config is delivered
  const beforeLive = await quarantineDenials(tb)
  await publish(service, `devices/${id}/commands/blink`, '{"name":"blink"}')
  await untilQuarantineDenials(tb, beforeLive + 1)
  await publishDeviceConfig(tb.handle.broker, tb.handle.audit, id, 2, { interval: 60 })
  await waitFor(() => got.some((m) => m.topic === `devices/${id}/config`), 10_000, 'the config')
  t.same(got.map((m) => m.topic), [`devices/${id}/errors`, `devices/${id}/config`], 'errors and config only: no command')
  await Promise.all([endClient(device), endClient(service)])
})

t.test('revoked stays refused; reinstated (active) gets its full rules back on its next connect', async (t) => {
  const tb = await startBroker({ store: 'memory' })
  t.teardown(() => tb.close())
  const creds = await registerDevice(tb, 'q-back')
  await quarantine(tb, 'q-back')
  const record = await tb.handle.registry.getDevice('q-back')
  await tb.handle.registry.putDevice({ ...record!, status: 'active', updatedAt: Date.now() })
  const { client: service, got: seen } = await connectCollecting(tb, credentials(tb.pki, 'service'), { clientId: 'qb-service' })
  t.same(await subscribe(service, 'devices/+/telemetry'), [1])
  const device = await connect(tb, creds, { clientId: 'q-back' })
  await publish(device, 'devices/q-back/telemetry', JSON.stringify({ ts: 1, seq: 1, values: {} }))
  await waitFor(() => seen.length === 1, 10_000, 'the telemetry')
  await endClient(device)

  await tb.handle.registry.revokeDevice('q-back')
  await t.rejects(connect(tb, creds, { clientId: 'q-back' }), 'a revoked device is refused')
  t.equal(tb.events('connect.refused').find((l) => l.clientId === 'q-back')?.errorCode, 'DeviceRevoked')
  await endClient(service)
})
