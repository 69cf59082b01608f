/** Claim-side helpers: request/reply on `$provision/...` over one real MQTT.js connection. */
import type { MqttClient } from 'mqtt'
import { createCsr, generateKeyPair, privateKeyToPem, type KeyAlgorithm } from '../../pki/keys.js'
import { connect, credentials, subscribe, type ClientCredentials, type TestBroker } from './broker.js'

export interface Reply { outcome: 'accepted' | 'rejected', body: Record<string, unknown> }

/** Subscribes to both reply topics and resolves with the first reply to this request. */
export async function request (client: MqttClient, topic: string, payload: unknown, timeoutMs = 10_000): Promise<Reply> {
  await subscribe(client, [`${topic}/accepted`, `${topic}/rejected`])
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      client.removeListener('message', onMessage)
      reject(new Error(`no reply on ${topic}`))
    }, timeoutMs)
    function onMessage (t: string, p: Buffer): void {
      if (t !== `${topic}/accepted` && t !== `${topic}/rejected`) return
      clearTimeout(timer)
      client.removeListener('message', onMessage)
      resolve({ outcome: t.endsWith('/accepted') ? 'accepted' : 'rejected', body: JSON.parse(p.toString()) as Record<string, unknown> })
    }
    client.on('message', onMessage)
    client.publish(topic, typeof payload === 'string' ? payload : JSON.stringify(payload), { qos: 1 })
  })
}

export function claimConnect (tb: TestBroker, clientId?: string): Promise<MqttClient> {
  return connect(tb, credentials(tb.pki, 'claim'), clientId ? { clientId } : {})
}

export function newCsr (alg: KeyAlgorithm): { csr: string, keyPem: string } {
  const keys = generateKeyPair(alg)
  return { csr: createCsr({ commonName: 'ignored-by-broker', ...keys }), keyPem: privateKeyToPem(keys.privateKey) }
}

export interface Provisioned { deviceId: string, creds: ClientCredentials, createCertificatePem: string, register: Record<string, unknown> }

/** The whole claim flow; `mode` picks CSR (EC or RSA) or broker-generated keys; `template` defaults to `sensor`. */
export async function provision (tb: TestBroker, serial: string, mode: 'ec' | 'rsa' | 'generated', opts: { prefix?: '$provision' | '$aws', clientId?: string, template?: string } = {}): Promise<Provisioned> {
  const prefix = opts.prefix ?? '$provision'
  const claim = await claimConnect(tb, opts.clientId)
  try {
    let keyPem: string
    let created: Reply
    if (mode === 'generated') {
      created = await request(claim, `${prefix}/certificates/create/json`, '')
      keyPem = String(created.body.privateKey)
    } else {
      const { csr, keyPem: k } = newCsr(mode)
      keyPem = k
      created = await request(claim, `${prefix}/certificates/create-from-csr/json`, { certificateSigningRequest: csr })
    }
    if (created.outcome !== 'accepted') throw new Error(`create rejected: ${JSON.stringify(created.body)}`)
    const template = opts.template ?? 'sensor'
    const registerTopic = prefix === '$aws' ? `$aws/provisioning-templates/${template}/provision/json` : `$provision/templates/${template}/provision/json`
    const reg = await request(claim, registerTopic, { certificateOwnershipToken: created.body.certificateOwnershipToken, parameters: { serialNumber: serial } })
    if (reg.outcome !== 'accepted') throw new Error(`register rejected: ${JSON.stringify(reg.body)}`)
    const deviceCa = tb.pki.read('device-ca.pem')
    return {
      deviceId: String(reg.body.deviceId),
      // the leaf alone, as returned: what fleet-provisioning firmware presents
      creds: { cert: String(reg.body.certificatePem), key: keyPem },
      createCertificatePem: String(created.body.certificatePem) + deviceCa,
      register: reg.body
    }
  } finally {
    claim.end(true)
  }
}
