/** Which provisioning request a topic is, for the `$provision/...` and (optionally) `$aws/...` families. */

export type RequestKind = 'create' | 'createFromCsr' | 'register'

export interface ProvisioningRequest {
  readonly kind: RequestKind
  readonly topic: string
  readonly template: string | null
  /** request arrived on an `$aws/...` topic: the reply carries `thingName` too */
  readonly aws: boolean
}

/** the two families differ only in their root and the name of the templates level */
const FAMILIES = [
  { root: '$provision', templates: 'templates', aws: false },
  { root: '$aws', templates: 'provisioning-templates', aws: true }
] as const

const CERTIFICATE_KINDS: Readonly<Record<string, RequestKind>> = { create: 'create', 'create-from-csr': 'createFromCsr' }

export function parseRequestTopic (topic: string, awsTopics: boolean): ProvisioningRequest | null {
  const l = topic.split('/')
  const family = FAMILIES.find((f) => f.root === l[0] && (awsTopics || !f.aws))
  if (!family || l[l.length - 1] !== 'json') return null
  if (l.length === 4 && l[1] === 'certificates') {
    const kind = CERTIFICATE_KINDS[l[2] ?? '']
    return kind ? { kind, topic, template: null, aws: family.aws } : null
  }
  if (l.length === 5 && l[1] === family.templates && l[3] === 'provision') {
    return { kind: 'register', topic, template: l[2] ?? '', aws: family.aws }
  }
  return null
}
