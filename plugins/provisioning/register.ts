/**
 * Registration against a template, shared by the claim flow (§3.3) and the
 * manufacturer-certificate first connect (JITP): parameters → schema → pre-check
 * → device id → reprovision policy → registry → retained initial config.
 */
import { setTimeout as delay } from 'node:timers/promises'
import type { Aedes } from 'aedes'
import type { Audit } from '../../broker/audit.js'
import { publishDeviceConfig } from '../../broker/config-store.js'
import { JitpError } from '../../broker/errors.js'
import type { Registry } from '../../broker/store/registry.js'
import { formDeviceId, type PreProvisioningAnswer, type PreProvisioningRequest, type Template } from './templates.js'

export const PRE_CHECK_TIMEOUT_MS = 5000

export interface RegistrationDeps {
  readonly registry: Registry
  readonly broker: Aedes
  readonly audit: Audit
  readonly now: () => number
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
}

/** Applies the reprovision policy and writes the device, its certificates and its initial config. */
export async function commitRegistration (deps: RegistrationDeps, d: NewDevice): Promise<void> {
  const { registry } = deps
  const now = deps.now()
  const record = { deviceId: d.deviceId, status: 'active' as const, template: d.template.name, createdAt: now, updatedAt: now, attributes: d.parameters }
  const created = await registry.createDeviceIfAbsent(record)
  if (!created) {
    if (d.template.reprovision !== 'replace') throw new JitpError('DeviceExists', `device '${d.deviceId}' is already registered`)
    // the old identity stops working everywhere before the new one starts
    for (const cert of await registry.certificatesOfDevice(d.deviceId)) {
      if (cert.status !== 'revoked') await registry.revokeCertificate(cert.certificateId)
    }
    await registry.putDevice(record)
  }
  for (const c of d.certificates) {
    await registry.putCertificate({ certificateId: c.certificateId, deviceId: d.deviceId, status: 'active', serialNumber: c.serialNumber, notAfter: c.notAfter, createdAt: now, updatedAt: now })
  }
  await publishDeviceConfig(deps.broker, deps.audit, d.deviceId, 1, d.template.configuration)
}
