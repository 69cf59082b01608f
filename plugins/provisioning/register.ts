/**
 * Registration against a template (CONTRACT §3.3), shared by the claim flow and
 * the manufacturer-certificate first connect (JITP). Flows are data, as in
 * Aedes' connect handler: named steps run in series over one request object.
 *
 * Everything that can refuse runs first, and `commit` is the one step that uses
 * the ownership token up, in the same atomic registry call that creates the
 * device and binds its certificates: a refused request keeps its token, and a
 * failed one leaves no device record and no bound certificate behind.
 */
import { setTimeout as delay } from 'node:timers/promises'
import type { Aedes } from 'aedes'
import type { Audit } from '../../broker/audit.js'
import { configTopic, publishInitialConfig, type InitialConfigPublisher } from '../../broker/config-store.js'
import { JitpError } from '../../broker/errors.js'
import type { CertificateRecord, OwnershipTokenRecord, Registry } from '../../broker/store/registry.js'
import { ownerBlocksDevice } from '../../broker/store/registry.js'
import type { IssuedCertificate } from '../../pki/certificate.js'
import type { Trust } from '../../broker/trust.js'
import { issueFor, storedPublicKey } from './issuance.js'
import { formDeviceId, healthWindow, type PreProvisioningAnswer, type PreProvisioningRequest, type Template } from './templates.js'

export const PRE_CHECK_TIMEOUT_MS = 5000

export interface RegistrationDeps {
  readonly registry: Registry
  readonly broker: Aedes
  readonly audit: Audit
  readonly now: () => number
  /** the configuration service: version 1 at registration */
  readonly configs: InitialConfigPublisher
}

export interface ClaimDeps extends RegistrationDeps {
  readonly templates: ReadonlyMap<string, Template>
  readonly certValidityDays: number
  /** signs each final certificate, and is told of it: the device's first connect with it is then a cache hit */
  readonly trust: Pick<Trust, 'deviceIssuer' | 'noteIssued'>
}

/** Validates the parameters and runs the pre-provisioning check; returns the final parameters and device id. */
export async function decideDeviceId (template: Template, parameters: Record<string, string>, request: Omit<PreProvisioningRequest, 'parameters' | 'templateName'>): Promise<{ deviceId: string, parameters: Record<string, string> }> {
  if (!template.validateParameters(parameters)) {
    const e = template.validateParameters.errors?.[0]
    const name = e?.keyword === 'required' ? String(e.params.missingProperty) : e?.keyword === 'additionalProperties' ? String(e.params.additionalProperty) : (e?.instancePath.replace(/^\//, '') ?? '')
    throw new JitpError('InvalidParameters', `parameter '${name}' ${e?.message ?? 'is invalid'}`)
  }
  let final = parameters
  if (template.allowList) {
    for (const [name, allowed] of Object.entries(template.allowList)) {
      const v = parameters[name]
      if (v === undefined || !allowed.includes(v)) throw new JitpError('ProvisioningDenied', `parameter '${name}' is not on the allow-list`)
    }
  }
  if (template.hook) {
    const answer = await runHook(template, { ...request, templateName: template.name, parameters: Object.freeze({ ...parameters }) })
    if (!answer.allow) throw new JitpError('ProvisioningDenied', answer.reason ? String(answer.reason).slice(0, 200) : 'refused by the pre-provisioning check')
    if (answer.parameterOverrides) final = { ...parameters, ...answer.parameterOverrides }
  }
  const deviceId = formDeviceId(template.deviceIdPattern, final)
  if (deviceId === null) throw new JitpError('InvalidParameters', 'parameters do not form a valid device id')
  return { deviceId, parameters: final }
}

/** Runs a template's hook with a hard 5 s limit: a hung hook must not hold a claim request forever. */
async function runHook (template: Template, request: PreProvisioningRequest): Promise<PreProvisioningAnswer> {
  const ac = new AbortController()
  try {
    const answer = await Promise.race([
      Promise.resolve().then(() => template.hook!(request)),
      delay(PRE_CHECK_TIMEOUT_MS, undefined, { signal: ac.signal }).then(() => {
        throw new JitpError('ProvisioningDenied', `pre-provisioning check did not answer within ${PRE_CHECK_TIMEOUT_MS / 1000} s`)
      })
    ])
    if (answer === null || typeof answer !== 'object' || typeof (answer as PreProvisioningAnswer).allow !== 'boolean') {
      throw new JitpError('ProvisioningDenied', 'pre-provisioning check gave no answer')
    }
    return answer as PreProvisioningAnswer
  } catch (err) {
    if (err instanceof JitpError) throw err
    throw new JitpError('ProvisioningDenied', 'pre-provisioning check failed')
  } finally {
    ac.abort()
  }
}

export interface NewDevice {
  readonly deviceId: string
  readonly template: Template
  readonly parameters: Record<string, string>
  /** certificates to bind active to the device (final and, for the claim flow, provisional) */
  readonly certificates: ReadonlyArray<{ certificateId: string, serialNumber: string, notAfter: number }>
  /** the ownership token that pays for it (claim flow), null for a manufacturer certificate */
  readonly token: string | null
}

/** A device on its way into the registry (see commitActions). */
interface Commit {
  readonly device: NewDevice
  configPublished: boolean
  /** a `replace` template over a device that exists: its config must not change before the commit */
  replacing: boolean
  committed: boolean
  /** certificates of a replaced device, revoked by the commit */
  revoked: readonly string[]
}

type CommitStep = (deps: RegistrationDeps, c: Commit) => Promise<void>

/**
 * Reprovision policy, read before anything is written. The commit checks again
 * atomically; this early answer keeps a refused request from publishing a config
 * over an existing device's.
 */
async function checkReprovision (deps: RegistrationDeps, c: Commit): Promise<void> {
  if (ownerBlocksDevice(await deps.registry.sessionOwner(c.device.deviceId), c.device.deviceId)) throw clientIdInUse(c.device.deviceId)
  const existing = await deps.registry.getDevice(c.device.deviceId)
  if (existing === null) return
  // `replace` re-provisions a device of its own template only: a template (or an enrollment group) whose
  // device-id space overlaps another's must not take over, and revoke, that other fleet's devices
  if (c.device.template.reprovision !== 'replace' || existing.template !== c.device.template.name) throw deviceExists(c.device.deviceId)
  c.replacing = true
}

/**
 * The retained initial configuration goes out before the device exists: it is the
 * step that may fail after the checks (the store refusing a write), and the
 * commit after it is one atomic call, so a failure anywhere leaves no device
 * behind. A device that is never registered has its config withdrawn (registerDevice).
 */
async function publishConfig (deps: RegistrationDeps, c: Commit): Promise<void> {
  if (c.replacing) return
  await publishInitialConfig(deps, c.device.deviceId, c.device.template)
  c.configPublished = true
}

/**
 * A replaced device already has a retained config, and a registration that fails at
 * the commit (a racing request took the token, the store) must leave it as it was:
 * the new config goes out only once the replacement is committed.
 */
async function publishReplacedConfig (deps: RegistrationDeps, c: Commit): Promise<void> {
  if (!c.replacing) return
  await publishInitialConfig(deps, c.device.deviceId, c.device.template)
}

/** The one step that writes the registry: token, device, certificates and health window, all or nothing. */
async function commit (deps: RegistrationDeps, c: Commit): Promise<void> {
  const now = deps.now()
  const d = c.device
  const certificates: CertificateRecord[] = d.certificates.map((cert) => ({
    certificateId: cert.certificateId, deviceId: d.deviceId, status: 'active', serialNumber: cert.serialNumber, notAfter: cert.notAfter, createdAt: now, updatedAt: now
  }))
  // CONTRACT §3.7: provisioned, with full device rights, until it passes its health check (plugins/health.ts)
  const outcome = await deps.registry.registerDevice({
    token: d.token,
    device: { deviceId: d.deviceId, status: 'provisioned', template: d.template.name, createdAt: now, updatedAt: now, attributes: d.parameters },
    replace: d.template.reprovision === 'replace',
    certificates,
    health: healthWindow(d.template.healthCheck, now)
  })
  if (outcome.result === 'token-used') throw new JitpError('InvalidCertificateOwnershipToken', 'token already used')
  if (outcome.result === 'device-exists') throw deviceExists(d.deviceId)
  if (outcome.result === 'client-id-in-use') throw clientIdInUse(d.deviceId)
  c.committed = true
  c.revoked = outcome.revoked
}

/** The old identity of a replaced device stops working on every broker (its records were revoked by the commit). */
async function revokeReplaced (deps: RegistrationDeps, c: Commit): Promise<void> {
  for (const certificateId of c.revoked) await deps.registry.revokeCertificate(certificateId)
}

export const commitActions: readonly CommitStep[] = [checkReprovision, publishConfig, commit, publishReplacedConfig, revokeReplaced]

function deviceExists (deviceId: string): JitpError {
  return new JitpError('DeviceExists', `device '${deviceId}' is already registered`)
}

function clientIdInUse (deviceId: string): JitpError {
  return new JitpError('ClientIdInUse', `'${deviceId}' is the client id of another identity's session`)
}

/**
 * The registrations in flight on this process, by ownership token and by device id.
 * The initial config is committed before the registry's atomic step (publishConfig
 * says why), so requests racing one token (or one device id) each committed a
 * version, and the losers' stayed in the config store for a device that did not
 * exist: a claim connection sending one token with many serials at once seeded
 * config records for ids of devices still to come. A token is held from before it
 * is read (registerClaimed) to the end, a device id from when it is known; a token
 * is bound to one connection, which lives on one process: here is where its
 * requests race.
 */
const inFlight = new WeakMap<Registry, Set<string>>()

/** Holds `key` for one registration on this process; throws `refusal` when another holds it. Returns the release. */
function hold (registry: Registry, key: string, refusal: () => JitpError): () => void {
  let busy = inFlight.get(registry)
  if (busy === undefined) inFlight.set(registry, busy = new Set())
  if (busy.has(key)) throw refusal()
  busy.add(key)
  const held = busy
  return () => { held.delete(key) }
}

/** Applies the reprovision policy and registers the device, its certificates and its initial config. */
export async function commitRegistration (deps: RegistrationDeps, device: NewDevice): Promise<void> {
  const release = hold(deps.registry, `device:${device.deviceId}`, () => new JitpError('DeviceExists', `a registration of '${device.deviceId}' is in progress`))
  const c: Commit = { device, configPublished: false, replacing: false, committed: false, revoked: [] }
  try {
    for (const step of commitActions) await step(deps, c)
  } catch (err) {
    if (c.configPublished && !c.committed) await withdrawConfig(deps, device.deviceId)
    throw err
  } finally {
    release()
  }
}

/**
 * Best effort: the config published for a device whose registration then failed is
 * removed (an empty retained message), unless the device exists by now (a
 * concurrent registration of the same id won, and the config is its config).
 */
async function withdrawConfig (deps: RegistrationDeps, deviceId: string): Promise<void> {
  try {
    if (await deps.registry.getDevice(deviceId) !== null) return
    await new Promise<void>((resolve, reject) => {
      deps.broker.publish({ cmd: 'publish', topic: configTopic(deviceId), payload: Buffer.alloc(0), qos: 1, retain: true, dup: false },
        function configWithdrawn (err?: Error) { if (err) reject(err); else resolve() })
    })
  } catch {
    // the store is failing too: what is left is a retained config nobody may read (no such device)
  }
}

/** One claim-flow registration request (`$provision/templates/<name>/provision/json`). */
export interface ClaimRegistration {
  readonly templateName: string
  /**
   * `templateName` from the payload, as AWS IoT Device SDK's older identity client
   * (v1 API) sends it; when present it must name the topic's template (CONTRACT §3.3)
   */
  readonly payloadTemplateName?: string | undefined
  /** the ownership token as presented (never logged) */
  readonly tokenValue: string
  readonly parameters: Record<string, string>
  readonly clientId: string
  /** certificate id of the claim certificate of the requesting connection */
  readonly claimFingerprint: string
  readonly remoteAddress: string
  template?: Template
  token?: OwnershipTokenRecord
  deviceId?: string
  finalParameters?: Record<string, string>
  final?: IssuedCertificate
}

type ClaimStep = (deps: ClaimDeps, r: ClaimRegistration) => void | Promise<void>

/**
 * The topic names the template; a payload naming another one is a malformed request
 * whatever templates exist, refused before anything is read, so its token is untouched.
 */
function checkTemplateName (_deps: ClaimDeps, r: ClaimRegistration): void {
  if (r.payloadTemplateName === undefined || r.payloadTemplateName === r.templateName) return
  throw new JitpError('InvalidRequest', `templateName '${r.payloadTemplateName}' does not match the topic's template '${r.templateName}'`)
}

function findTemplate (deps: ClaimDeps, r: ClaimRegistration): void {
  const template = deps.templates.get(r.templateName)
  if (!template || template.manufacturerCas !== null) throw new JitpError('TemplateNotFound', `no template '${r.templateName}'`)
  r.template = template
}

/** read, not taken: only `commit` uses a token up */
async function readToken (deps: ClaimDeps, r: ClaimRegistration): Promise<void> {
  const token = r.tokenValue === '' ? null : await deps.registry.peekToken(r.tokenValue)
  if (token === null || token.expiresAt <= deps.now() || !token.publicKeyPem) throw new JitpError('InvalidCertificateOwnershipToken')
  r.token = token
}

/** a token works only for the connection it was issued to: another one presenting it does not burn it either */
function checkOwner (_deps: ClaimDeps, r: ClaimRegistration): void {
  if (r.token!.clientId !== r.clientId || r.token!.claimFingerprint !== r.claimFingerprint) {
    throw new JitpError('InvalidCertificateOwnershipToken', 'token belongs to another connection')
  }
}

async function decideDevice (_deps: ClaimDeps, r: ClaimRegistration): Promise<void> {
  const decided = await decideDeviceId(r.template!, r.parameters, { clientId: r.clientId, certificateId: r.token!.certificateId, remoteAddress: r.remoteAddress })
  r.deviceId = decided.deviceId
  r.finalParameters = decided.parameters
}

/** the certificate the device keeps must name it: issued now that the id is known (CPU only, nothing stored) */
function issueFinal (deps: ClaimDeps, r: ClaimRegistration): void {
  r.final = issueFor(deps.trust.deviceIssuer, storedPublicKey(r.token!.publicKeyPem!), r.deviceId!, deps.certValidityDays)
}

async function register (deps: ClaimDeps, r: ClaimRegistration): Promise<void> {
  const final = r.final!
  const certificates = [{ certificateId: final.certificateId, serialNumber: final.serialNumber, notAfter: final.notAfter.getTime() }]
  // firmware written for AWS keeps the certificate from the create step: it works too
  const provisional = await deps.registry.getCertificate(r.token!.certificateId)
  if (provisional) certificates.push({ certificateId: provisional.certificateId, serialNumber: provisional.serialNumber, notAfter: provisional.notAfter })
  await commitRegistration(deps, { deviceId: r.deviceId!, template: r.template!, parameters: r.finalParameters!, certificates, token: r.tokenValue })
  // registered: the device reconnects with this certificate next
  deps.trust.noteIssued(final)
}

export const registerActions: readonly ClaimStep[] = [checkTemplateName, findTemplate, readToken, checkOwner, decideDevice, issueFinal, register]

/** Runs the claim flow; throws the JitpError of the first step that refuses. */
export async function registerClaimed (deps: ClaimDeps, r: ClaimRegistration): Promise<Required<ClaimRegistration>> {
  // from before the token is read: a second request with it waits for nothing and writes nothing
  const release = r.tokenValue === '' ? null : hold(deps.registry, `token:${r.tokenValue}`, () => new JitpError('InvalidCertificateOwnershipToken', 'token in use by another request'))
  try {
    for (const step of registerActions) await step(deps, r)
    return r as Required<ClaimRegistration>
  } finally {
    release?.()
  }
}
