/** Which provisioning request a topic is, for the `$provision/...` and (optionally) `$aws/...` families. */

export type RequestKind = 'create' | 'createFromCsr' | 'register'

export interface ProvisioningRequest {
  readonly kind: RequestKind
  readonly topic: string
  readonly template: string | null
  /** request arrived on an `$aws/...` topic: the reply carries `thingName` too */
  readonly aws: boolean
}

export function parseRequestTopic (topic: string, awsTopics: boolean): ProvisioningRequest | null {
  const l = topic.split('/')
  if (l[0] === '$provision') {
    if (l.length === 4 && l[1] === 'certificates' && l[3] === 'json') {
      if (l[2] === 'create') return { kind: 'create', topic, template: null, aws: false }
      if (l[2] === 'create-from-csr') return { kind: 'createFromCsr', topic, template: null, aws: false }
    }
    if (l.length === 5 && l[1] === 'templates' && l[3] === 'provision' && l[4] === 'json') {
      return { kind: 'register', topic, template: l[2] ?? '', aws: false }
    }
    return null
  }
  if (awsTopics && l[0] === '$aws') {
    if (l.length === 4 && l[1] === 'certificates' && l[3] === 'json') {
      if (l[2] === 'create') return { kind: 'create', topic, template: null, aws: true }
      if (l[2] === 'create-from-csr') return { kind: 'createFromCsr', topic, template: null, aws: true }
    }
    if (l.length === 5 && l[1] === 'provisioning-templates' && l[3] === 'provision' && l[4] === 'json') {
      return { kind: 'register', topic, template: l[2] ?? '', aws: true }
    }
  }
  return null
}
