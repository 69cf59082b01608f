/**
 * Keep-alive without a timer refresh per packet (broker/chain/keepalive.ts): a
 * client that keeps talking is never cut, a silent one is cut after 1 to 1.25
 * times Aedes' interval (1.5 × keep-alive + 1 ms) and audited KeepaliveTimeout,
 * and nothing of the ticker outlives its connection.
 */
import t from 'tap'
import { connect, credentials, endClient, registerDevice, startBroker, waitFor } from '../helpers/broker.js'

const timers = (): number => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length

t.test('keep-alive: talking clients stay, a silent one goes, no ticker left behind', async (t) => {
  const tb = await startBroker({ store: 'memory', overrides: { MAX_KEEPALIVE_SECONDS: 1 } })
  t.teardown(() => tb.close())

  // keep-alive 1: MQTT.js pings every second; four answers in a row span more than
  // twice the interval (1.5 s) after which a silent client is cut
  const pinging = await connect(tb, credentials(tb.pki, 'service'), { clientId: 'ka-pinging', keepalive: 1 })
  let pingResponses = 0
  let pingingClosed = false
  pinging.on('packetreceive', (packet) => { if (packet.cmd === 'pingresp') pingResponses++ })
  pinging.on('close', () => { pingingClosed = true })

  // keep-alive 0, clamped to 1 by the broker: MQTT.js never pings, so it is silent
  const silentCreds = await registerDevice(tb, 'ka-silent')
  // the broker's interval starts when it reads the CONNECT: after this instant, and
  // before the CONNACK arrives (authentication between the two takes longer on a
  // loaded machine), so the lower bound counts from here, the upper one from the CONNACK
  const connectStartedAt = Date.now()
  const silent = await connect(tb, silentCreds, { clientId: 'ka-silent', keepalive: 0 })
  const connectedAt = Date.now()
  let silentClosedAt = 0
  silent.on('close', () => { silentClosedAt ||= Date.now() })

  await waitFor(() => silentClosedAt > 0, 10_000, 'the silent client to be cut')
  const silence = silentClosedAt - connectedAt
  // Aedes' interval is 1,501 ms: never before it, at most a quarter of it (one tick) late, plus scheduling
  t.ok(silentClosedAt - connectStartedAt >= 1500, `cut ${silentClosedAt - connectStartedAt} ms after the connect began (${silence} ms after its CONNACK), not before 1.5 × keep-alive`)
  t.ok(silence < 1501 * 1.25 + 1000, `cut within 1.25 × the interval (and a loaded machine's second): ${silence} ms`)
  await waitFor(() => tb.events('disconnect').some((l) => l.clientId === 'ka-silent'), 5000, 'the disconnect line')
  t.equal(tb.events('disconnect').find((l) => l.clientId === 'ka-silent')?.errorCode, 'KeepaliveTimeout', 'audited as KeepaliveTimeout')

  await waitFor(() => pingResponses >= 4 || pingingClosed, 15_000, 'four ping responses')
  t.notOk(pingingClosed, `the pinging client is still connected after ${pingResponses} pings`)
  t.notOk(tb.events('disconnect').some((l) => l.clientId === 'ka-pinging'), 'and was never cut')
  await endClient(pinging)

  // every connection's ticker is a Node timer that Aedes clears when the client closes
  await waitFor(() => Object.keys((tb.handle.broker as unknown as { clients: object }).clients).length === 0, 5000, 'no client left')
  const before = timers()
  const creds = credentials(tb.pki, 'service')
  for (let i = 0; i < 20; i++) await endClient(await connect(tb, creds, { clientId: `ka-cycle-${i}`, keepalive: 30 }))
  await waitFor(() => Object.keys((tb.handle.broker as unknown as { clients: object }).clients).length === 0, 5000, 'the cycles closed')
  // a leaked ticker is one timer per connection (+20); a lazily started broker-wide timer
  // (an audit aggregation window, the activity flush) is one, whichever connection starts it
  t.ok(timers() - before < 5, `no timer left per connection by 20 connections (${before} before, ${timers()} after)`)
})
