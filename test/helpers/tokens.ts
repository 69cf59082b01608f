/**
 * Token-listener test harness (CONTRACT §10, §3.6): an external authorization
 * server's JWKS over real HTTPS on loopback (its own CA, trusted by the broker
 * through OAUTH_JWKS_CA), keys and tokens made with jose, enrollment groups on
 * disk, and MQTT.js connects to MQTTS_TOKEN_PORT with the token as password.
 */
import { cpSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { createServer, type Server } from 'node:https'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { exportJWK, generateKeyPair, SignJWT, type CryptoKey, type JWK } from 'jose'
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt'
import { issueCertificate, loadIssuer } from '../../pki/certificate.js'
import { generateKeyPair as generatePkiKeys, privateKeyToPem } from '../../pki/keys.js'
import type { Pki } from './broker.js'

export const ISSUER = 'https://auth.test.example/'
export const AUDIENCE = 'aedes-jitp-test'

export interface IssuerKey { readonly kid: string, readonly alg: 'ES256' | 'RS256' | 'EdDSA', readonly privateKey: CryptoKey, readonly publicJwk: JWK }

export async function issuerKey (kid: string, alg: IssuerKey['alg'] = 'ES256'): Promise<IssuerKey> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true })
  const publicJwk = { ...await exportJWK(publicKey), kid, alg, use: 'sig' }
  return { kid, alg, privateKey, publicJwk }
}

export interface TokenOptions {
  sub?: string | undefined
  scope?: string | undefined
  iss?: string
  aud?: string | string[]
  /** seconds from now (may be negative) */
  exp?: number
  nbf?: number
  /** override the header's kid */
  kid?: string
  extra?: Record<string, unknown>
}

/** an access token as an OAuth2 server issues it (client credentials grant) */
export async function accessToken (key: IssuerKey, opts: TokenOptions = {}): Promise<string> {
  const now = Math.floor(Date.now() / 1000)
  const claims: Record<string, unknown> = { ...opts.extra }
  if (opts.scope !== undefined) claims.scope = opts.scope
  const jwt = new SignJWT(claims)
    .setProtectedHeader({ alg: key.alg, kid: opts.kid ?? key.kid, typ: 'at+jwt' })
    .setIssuer(opts.iss ?? ISSUER)
    .setAudience(opts.aud ?? AUDIENCE)
    .setIssuedAt(now - 1)
    .setExpirationTime(now + (opts.exp ?? 300))
  if (opts.sub !== undefined) jwt.setSubject(opts.sub)
  if (opts.nbf !== undefined) jwt.setNotBefore(now + opts.nbf)
  return jwt.sign(key.privateKey)
}

export interface JwksServer {
  readonly url: string
  readonly caFile: string
  readonly port: number
  /** requests served so far */
  readonly hits: number
  setKeys (keys: readonly JWK[]): void
  /** (re)starts on the same port */
  start (): Promise<void>
  stop (): Promise<void>
}

/**
 * A JWKS endpoint over HTTPS with a CA of its own (not the broker's dev PKI).
 * `listening: false` reserves a port and stays down: the "issuer down at start" case.
 */
export async function jwksServer (opts: { listening?: boolean } = {}): Promise<JwksServer> {
  const dir = mkdtempSync(join(tmpdir(), 'jitp-jwks-'))
  process.once('exit', () => rmSync(dir, { recursive: true, force: true }))
  const caKeys = generatePkiKeys('ec')
  const ca = issueCertificate({ commonName: 'JWKS test CA', publicKey: caKeys.publicKey, signingKey: caKeys.privateKey, issuer: 'self', validityDays: 2, isCa: true })
  const issuer = loadIssuer(ca.pem, privateKeyToPem(caKeys.privateKey))
  const serverKeys = generatePkiKeys('ec')
  const server = issueCertificate({ commonName: '127.0.0.1', publicKey: serverKeys.publicKey, issuer, validityDays: 2, extKeyUsage: ['serverAuth'], ipAddresses: ['127.0.0.1'] })
  const caFile = join(dir, 'jwks-ca.pem')
  writeFileSync(caFile, ca.pem)
  let body = JSON.stringify({ keys: [] })
  let hits = 0
  let http: Server | null = null
  let port = 0

  async function start (): Promise<void> {
    http = createServer({ key: privateKeyToPem(serverKeys.privateKey), cert: server.pem }, (req, res) => {
      hits++
      if (req.url !== '/jwks.json') {
        res.writeHead(404).end()
        return
      }
      res.writeHead(200, { 'content-type': 'application/jwk-set+json' }).end(body)
    })
    await new Promise<void>((resolve, reject) => {
      http!.once('error', reject)
      http!.listen(port, '127.0.0.1', () => {
        port = (http!.address() as AddressInfo).port
        resolve()
      })
    })
  }
  async function stop (): Promise<void> {
    const h = http
    http = null
    if (!h) return
    h.closeAllConnections()
    await new Promise<void>((resolve) => h.close(() => resolve()))
  }
  await start()
  if (opts.listening === false) await stop()
  return {
    get url () { return `https://127.0.0.1:${port}/jwks.json` },
    caFile,
    get port () { return port },
    get hits () { return hits },
    setKeys (keys) { body = JSON.stringify({ keys }) },
    start,
    stop
  }
}

/** the broker's settings for an external issuer behind `jwks` */
export function oauthOverrides (jwks: JwksServer): Record<string, unknown> {
  return { MQTTS_TOKEN_PORT: 0, OAUTH_JWKS_URL: jwks.url, OAUTH_JWKS_CA: jwks.caFile, OAUTH_ISSUER: ISSUER, OAUTH_AUDIENCE: AUDIENCE }
}

/** the CONNACK return code a refused connect got, or 0 */
export function tokenConnect (tb: { handle: { mqttsTokenPort: number | null }, pki: Pki }, password: string | null, opts: IClientOptions = {}): Promise<{ client: MqttClient | null, returnCode: number }> {
  return new Promise((resolve, reject) => {
    const client = mqtt.connect({
      protocol: 'mqtts',
      host: '127.0.0.1',
      port: tb.handle.mqttsTokenPort!,
      ca: tb.pki.read('root-ca.pem'),
      reconnectPeriod: 0,
      connectTimeout: 5000,
      protocolVersion: 4,
      ...(password !== null ? { username: 'service', password } : {}),
      ...opts
    })
    client.once('connect', () => {
      client.removeAllListeners('error')
      client.on('error', () => {})
      resolve({ client, returnCode: 0 })
    })
    client.once('error', (err: Error & { code?: unknown }) => {
      client.end(true)
      if (typeof err.code === 'number') resolve({ client: null, returnCode: err.code })
      else reject(err)
    })
  })
}

/** an enrollment group file for ENROLLMENT_DIR */
export function writeGroup (dir: string, group: { name: string, groupKey: string, template: string, registrationIdPattern?: string }): void {
  writeFileSync(join(dir, `${group.name}.json`), JSON.stringify(group))
}

/**
 * The enrollment fixtures two tests share: TEMPLATES_DIR with the shipped templates
 * plus `sas-sensor` (deny) and `sas-refurb` (replace), both forming the device id from
 * `registrationId`; ENROLLMENT_DIR with group `line-7` (pattern `^line7-[0-9]{4}$`, template
 * sas-sensor) and group `refurb` (template sas-refurb).
 */
export function enrollmentFixtures (prefix: string): { templatesDir: string, enrollmentDir: string, lineKey: Buffer, refurbKey: Buffer } {
  const templatesDir = mkdtempSync(join(tmpdir(), `${prefix}-templates-`))
  cpSync(resolve('templates'), templatesDir, { recursive: true })
  const enrollParameters = { type: 'object', required: ['registrationId'], properties: { registrationId: { type: 'string' } } }
  writeFileSync(join(templatesDir, 'sas-sensor.json'), JSON.stringify({ parameters: enrollParameters, deviceId: 'sas-${registrationId}', configuration: { interval: 5 }, reprovision: 'deny' }))
  writeFileSync(join(templatesDir, 'sas-refurb.json'), JSON.stringify({ parameters: enrollParameters, deviceId: 'refurb-${registrationId}', configuration: { interval: 5 }, reprovision: 'replace' }))
  const enrollmentDir = mkdtempSync(join(tmpdir(), `${prefix}-enrollment-`))
  const lineKey = Buffer.alloc(64, 7)
  const refurbKey = Buffer.alloc(48, 9)
  writeGroup(enrollmentDir, { name: 'line-7', groupKey: lineKey.toString('base64'), template: 'sas-sensor', registrationIdPattern: '^line7-[0-9]{4}$' })
  writeGroup(enrollmentDir, { name: 'refurb', groupKey: refurbKey.toString('base64'), template: 'sas-refurb' })
  return { templatesDir, enrollmentDir, lineKey, refurbKey }
}
