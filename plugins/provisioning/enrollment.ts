/**
 * What a claim connection is bound to when it provisions (CONTRACT §3.1, §3.3, §3.6).
 * A claim certificate binds nothing but itself; a device enrolling with a
 * symmetric key (plugins/token-identity.ts) is bound to its registration id and
 * to its enrollment group's template: it registers with that template only, and
 * `registrationId` is the parameter the SAS proved, whatever the request says.
 */
import { JitpError } from '../../broker/errors.js'
import type { Identity } from '../../broker/session.js'

/**
 * The credential an ownership token and the per-credential throttle are bound to:
 * the claim certificate's id, or the enrollment's group and registration id.
 * Never written to the audit as a certificate id.
 */
export function claimCredentialOf (identity: Identity): string {
  if (identity.auth?.method === 'sas') return `sas:${identity.auth.group}/${identity.auth.registrationId}`
  return identity.certificateId ?? ''
}

/**
 * The throttle's fleet-wide key: the claim certificate every device of a fleet
 * shares, or the enrollment group (whose key derives every device key).
 */
export function claimThrottleKeyOf (identity: Identity): string {
  if (identity.auth?.method === 'sas') return `sas:${identity.auth.group}`
  return identity.certificateId ?? ''
}

/**
 * The templates that register symmetric-key enrollments and nothing else: every
 * one an enrollment group names. Such a template forms the device id from
 * `registrationId` alone, and for an enrollment that parameter is what the SAS
 * proved; from anyone else it would be a free choice, so the public claim
 * certificate could register (or, under `replace`, take over) any id of the group.
 */
export function enrollmentOnlyTemplates (groups: ReadonlyMap<string, { readonly template: string }> | undefined): ReadonlySet<string> {
  return new Set([...(groups?.values() ?? [])].map((g) => g.template))
}

/**
 * The parameters a registration goes on with; throws when an enrollment asks for
 * another template or registration id, or when anything but an enrollment asks
 * for a template kept for enrollments (`enrollmentOnly`).
 */
export function boundParameters (identity: Identity, templateName: string, parameters: Record<string, string>, enrollmentOnly: ReadonlySet<string>): Record<string, string> {
  const auth = identity.auth
  if (auth?.method !== 'sas') {
    if (enrollmentOnly.has(templateName)) {
      throw new JitpError('ProvisioningDenied', `template '${templateName}' registers symmetric-key enrollments only`)
    }
    return parameters
  }
  // the template first, whatever the parameters look like: a template whose parameter
  // schema takes a non-object must not become reachable by sending one
  if (templateName !== auth.template) {
    throw new JitpError('ProvisioningDenied', `enrollment group '${auth.group}' registers with template '${auth.template}' only`)
  }
  // the registration id goes into them: they must be an object
  if (typeof parameters !== 'object' || parameters === null || Array.isArray(parameters)) {
    throw new JitpError('InvalidParameters', 'parameters must be an object')
  }
  const asked = parameters.registrationId
  if (asked !== undefined && asked !== auth.registrationId) {
    throw new JitpError('InvalidParameters', "parameter 'registrationId' must be the registration id the SAS was signed for")
  }
  return { ...parameters, registrationId: auth.registrationId }
}
