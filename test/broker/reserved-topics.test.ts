import t from 'tap'
import { isReserved, reservedTopics } from '../../broker/reserved-topics.js'

t.test('only the provisioning topics of §3 are open, to the roles of §3', async (t) => {
  const r = reservedTopics({ awsTopics: false })
  t.ok(isReserved('$SYS/x') && isReserved('$provision/x') && !isReserved('devices/$x'))
  t.ok(r.open('claim', 'publish', '$provision/certificates/create/json'))
  t.ok(r.open('claim', 'publish', '$provision/templates/fleet/provision/json'))
  t.ok(r.open('claim', 'subscribe', '$provision/certificates/create/json/accepted'))
  t.ok(r.open('claim', 'subscribe', '$provision/certificates/create/json/+'))
  t.ok(r.open('claim', 'receive', '$provision/templates/fleet/provision/json/rejected'))
  t.notOk(r.open('claim', 'subscribe', '$provision/#'), 'no wider filter')
  t.notOk(r.open('claim', 'subscribe', '$provision/certificates/+/json/accepted'), 'a wildcard where the pattern has a name')
  t.notOk(r.open('claim', 'subscribe', '$provision/certificates/create/json/#'))
  t.notOk(r.open('claim', 'publish', '$provision/certificates/create/json/accepted'), 'replies are the broker\'s to publish')
  t.notOk(r.open('claim', 'subscribe', '$SYS/#'))
  t.notOk(r.open('claim', 'publish', '$aws/certificates/create/json'), '$aws only with PROVISIONING_AWS_TOPICS')
  t.ok(reservedTopics({ awsTopics: true }).open('claim', 'publish', '$aws/certificates/create/json'))
  t.ok(r.open('device', 'publish', '$provision/certificates/rotate/json'), 'rotation (§3.4) for devices')
  t.notOk(r.open('device', 'publish', '$provision/certificates/create/json'))
  for (const access of ['publish', 'subscribe', 'receive'] as const) {
    t.notOk(r.open('service', access, '$SYS/broker/new/clients'), `service ${access} $SYS`)
    t.notOk(r.open('service', access, '$provision/certificates/create/json/accepted'), `service ${access} $provision`)
  }
})
