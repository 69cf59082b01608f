import t from 'tap'
import type { AedesPublishPacket, Client, PublishPacket, Subscription } from 'aedes'
import type { PluginContext, PluginHooks } from '../../broker/plugin.js'
import type { ConnectionState, Identity } from '../../broker/session.js'
import { authorizationPlugin } from '../../plugins/authorization.js'
import { compileRules, defaultPolicy, permissionsFor } from '../../plugins/policy.js'

const policy = defaultPolicy({ awsTopics: false })

async function connection (identity: Identity) {
  // the plugin reads neither the context nor the client: only the connection state
  const hooks = await authorizationPlugin.setup({} as PluginContext, { policy })
  const state: ConnectionState = {
    peer: { issuerRole: identity.role === 'service' ? 'service' : 'device', issuerFingerprint: 'ca', certificateId: identity.certificateId ?? '', commonName: identity.name, serialNumber: '01', notAfter: 0 },
    remoteAddress: '127.0.0.1',
    connectedAt: 0,
    identity,
    rules: null,
    offences: 0, offenceWindowStart: 0
  }
  const client = {} as Client
  hooks.connected!(client, state)
  return {
    state,
    publish: (topic: string, retain = false) => hooks.authorizePublish!({ client, identity, state, packet: { topic, retain } as PublishPacket, isWill: false }).verdict,
    subscribe: (topic: string) => hooks.authorizeSubscribe!({ client, identity, state, subscription: { topic, qos: 1 } as Subscription }).verdict,
    receive: (topic: string) => hooks.authorizeForward!({ client, identity, state, packet: { topic } as AedesPublishPacket }).verdict
  }
}

const device = (id: string): Identity => ({ role: 'device', clientId: id, certificateId: `cert-${id}`, name: id, permissions: permissionsFor(policy, 'device') })

t.test('remembered answers stay per topic and per retain flag', async (t) => {
  const d = await connection(device('d1'))
  for (let round = 0; round < 3; round++) {
    t.equal(d.publish('devices/d1/telemetry'), 'allow')
    t.equal(d.publish('devices/d2/telemetry'), 'deny', 'another device\'s topic, asked again')
    t.equal(d.publish('devices/d1/state', true), 'allow', 'retain allowed on state')
    t.equal(d.publish('devices/d1/telemetry', true), 'deny', 'retain refused on telemetry, though telemetry itself was allowed')
    t.equal(d.receive('devices/d1/config'), 'allow')
    t.equal(d.receive('devices/d2/config'), 'deny')
  }
})

t.test('past the memo\'s bound every topic still gets its own answer', async (t) => {
  const d = await connection(device('d1'))
  const service = await connection({ role: 'service', clientId: 'svc', certificateId: 'cert-svc', name: 'svc', permissions: permissionsFor(policy, 'service') })
  for (let i = 0; i < 10_000; i++) {
    const own = i % 2 === 0
    const topic = own ? `devices/d1/telemetry/s${i}` : `devices/other${i}/telemetry/s${i}`
    if (d.publish(topic) !== (own ? 'allow' : 'deny')) return t.fail(`wrong answer for ${topic}`)
    if (service.receive(`devices/d${i}/telemetry`) !== 'allow' || service.receive(`devices/d${i}/commands/x`) !== 'deny') return t.fail(`wrong delivery answer for device d${i}`)
  }
  t.pass('10,000 distinct topics answered by the rules')
})

t.test('a literal `r:` topic and a retained publish have separate memos', async (t) => {
  // the memo once keyed retained publishes as `r:${topic}`: the literal topic `r:devices/d1/state` shared that key
  const first = await connection(device('d1'))
  t.equal(first.publish('devices/d1/state', true), 'allow', 'retained state allowed')
  t.equal(first.publish('r:devices/d1/state'), 'deny', 'the literal topic is not the retained state\'s answer')
  const second = await connection(device('d1'))
  t.equal(second.publish('r:devices/d1/state'), 'deny', 'the literal topic, asked first')
  t.equal(second.publish('devices/d1/state', true), 'allow', 'the retained state is not the literal topic\'s answer')
})

t.test('the hooks answer from the rules compiled at connect: subscribe by reach, delivery by rule', async (t) => {
  const d = await connection(device('d1'))
  t.equal(d.subscribe('devices/d1/commands/#'), 'allow', 'its commands with `#`')
  t.equal(d.subscribe('devices/d1/#'), 'allow', 'its whole namespace')
  t.equal(d.subscribe('devices/d2/#'), 'deny', 'another device\'s namespace')
  t.equal(d.subscribe('#'), 'deny')
  t.equal(d.receive('devices/d1/commands/reboot'), 'allow')
  t.equal(d.receive('devices/d1/telemetry'), 'deny', 'its own telemetry is not for it to receive')
})

t.test('rules compiled anew (a status change) never meet the answers given under the old ones', async (t) => {
  const d = await connection(device('d1'))
  t.equal(d.publish('devices/d1/telemetry'), 'allow')
  t.equal(d.receive('devices/d1/commands/reboot'), 'allow')
  d.state.rules = compileRules(policy, { ...device('d1'), quarantined: true })
  t.equal(d.publish('devices/d1/telemetry'), 'deny', 'the remembered publish answer is not reused')
  t.equal(d.receive('devices/d1/commands/reboot'), 'deny', 'nor the remembered delivery answer')
  t.equal(d.receive('devices/d1/config'), 'allow')
})

/** a new connection's state after the plugin's connected hook: what it compiled (or kept) is in `rules` */
function connectedState (hooks: PluginHooks, identity: Identity): ConnectionState {
  const state: ConnectionState = { peer: null, remoteAddress: '127.0.0.1', connectedAt: 0, identity, rules: null, offences: 0, offenceWindowStart: 0 }
  hooks.connected!({} as Client, state)
  return state
}

t.test('compiled rules are kept per identity between connections, never shared across identities', async (t) => {
  const hooks = await authorizationPlugin.setup({} as PluginContext, { policy })
  const connect = (identity: Identity): ConnectionState => connectedState(hooks, identity)
  const first = connect(device('d1'))
  const again = connect(device('d1'))
  t.equal(again.rules, first.rules, 'the same device reconnecting gets its compiled rules back')
  const other = connect(device('d2'))
  t.not(other.rules, first.rules, 'another device never gets them')
  const d2 = { client: {} as Client, identity: other.identity!, state: other }
  t.equal(hooks.authorizePublish!({ ...d2, packet: { topic: 'devices/d2/telemetry', retain: false } as PublishPacket, isWill: false }).verdict, 'allow')
  t.equal(hooks.authorizePublish!({ ...d2, packet: { topic: 'devices/d1/telemetry', retain: false } as PublishPacket, isWill: false }).verdict, 'deny', 'd2 may not publish as d1 after d1 connected')
  const quarantined = connect({ ...device('d1'), quarantined: true })
  t.not(quarantined.rules, first.rules, 'a quarantined connection of the same device gets the fenced rules')
  const q = { client: {} as Client, identity: quarantined.identity!, state: quarantined }
  t.equal(hooks.authorizePublish!({ ...q, packet: { topic: 'devices/d1/telemetry', retain: false } as PublishPacket, isWill: false }).verdict, 'deny', 'fenced: telemetry refused')
  const sameId = connect({ ...device('d1'), clientId: 'other-client' })
  t.not(sameId.rules, first.rules, 'a different client id is a different key (${clientId} rules)')
})

t.test('claim connections are compiled each time, never kept: their client ids are theirs to choose', async (t) => {
  const hooks = await authorizationPlugin.setup({} as PluginContext, { policy })
  const claim = (id: string): Identity => ({ role: 'claim', clientId: id, certificateId: 'claim-cert', name: null, permissions: permissionsFor(policy, 'claim') })
  const connect = (identity: Identity): ConnectionState => connectedState(hooks, identity)
  const a = connect(claim('c1'))
  const b = connect(claim('c1'))
  t.not(a.rules, b.rules, 'the same claim client id twice: compiled twice, nothing kept')
  t.same(a.rules, b.rules, 'to the same rules')
})
