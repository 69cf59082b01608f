/**
 * Topics beginning with `$` belong to the broker (CONTRACT §4): `$SYS`, the
 * internal quarantine topic, the provisioning requests. `broker/chain.ts` checks
 * them here once, before any plugin, for publish, subscribe and delivery alike
 * (as Mosquitto's `acl__check_dollar` at the top of its ACL check), so no policy
 * rule (a `#` one included) ever opens them. Only the provisioning topics of
 * CONTRACT §3 stay open, to the roles of §3, and the policy must allow them too.
 */
import type { Role } from './session.js'

/** what a connection does with a topic */
export type ReservedAccess = 'publish' | 'subscribe' | 'receive'

/** CONTRACT §3.1-3.3: what a claim connection may request */
export const PROVISIONING_REQUESTS: readonly string[] = [
  '$provision/certificates/create/json',
  '$provision/certificates/create-from-csr/json',
  '$provision/templates/+/provision/json'
]
/** CONTRACT §3.5, with PROVISIONING_AWS_TOPICS=1 */
export const AWS_PROVISIONING_REQUESTS: readonly string[] = [
  '$aws/certificates/create/json',
  '$aws/certificates/create-from-csr/json',
  '$aws/provisioning-templates/+/provision/json'
]
/** CONTRACT §3.4: certificate rotation, asked by the device itself */
export const ROTATION_REQUESTS: readonly string[] = ['$provision/certificates/rotate/json']

export function isReserved (topic: string): boolean {
  return topic.charCodeAt(0) === 36 // '$'
}

export interface ReservedTopics {
  /** true when `role` may `access` this `$` topic (the policy decides next); false for every other `$` topic */
  open (role: Role, access: ReservedAccess, topic: string): boolean
}

interface Patterns { readonly requests: readonly string[][], readonly replies: readonly string[][] }

const split = (filter: string): string[] => filter.split('/')

// the patterns hold `+` only, never `#`: a level-for-level comparison is all it takes
function matchesLevels (pattern: readonly string[], levels: readonly string[]): boolean {
  if (pattern.length !== levels.length) return false
  for (let i = 0; i < pattern.length; i++) {
    const p = pattern[i]
    const l = levels[i]
    // a subscription's own `#` or `+` must sit under a `+` of the pattern to stay inside it
    if (l === '#') return false
    if (p !== '+' && p !== l) return false
  }
  return true
}

export function reservedTopics (opts: { awsTopics: boolean }): ReservedTopics {
  const claimRequests = opts.awsTopics ? [...PROVISIONING_REQUESTS, ...AWS_PROVISIONING_REQUESTS] : PROVISIONING_REQUESTS
  // `refusedTo`: requests this role may not make but is answered for (403), so it may receive those replies
  const patternsOf = (requests: readonly string[], refusedTo: readonly string[] = []): Patterns => ({
    requests: requests.map(split),
    // replies are `<request>/accepted` and `<request>/rejected`; a `<request>/+` filter asks for both
    replies: [...requests, ...refusedTo].map((r) => split(`${r}/+`))
  })
  const byRole: Readonly<Record<Role, Patterns>> = {
    claim: patternsOf(claimRequests, ROTATION_REQUESTS),
    device: patternsOf(ROTATION_REQUESTS),
    service: patternsOf([], ROTATION_REQUESTS)
  }
  return {
    open (role, access, topic) {
      const patterns = byRole[role]
      const levels = split(topic)
      return (access === 'publish' ? patterns.requests : patterns.replies).some((p) => matchesLevels(p, levels))
    }
  }
}
