/**
 * What the broker knows about one connection, kept off Aedes' client object:
 * a WeakMap keyed by the client, so it disappears with the client.
 */
import type { Aedes, Client } from 'aedes'

export type IssuerRole = 'device' | 'claim' | 'service' | 'manufacturer'
/** what a connection acts as once authenticated; manufacturer devices act as devices */
export type Role = 'device' | 'claim' | 'service'

export interface PeerCertificate {
  /** role of the CA that issued the client certificate, by fingerprint and signature */
  readonly issuerRole: IssuerRole
  readonly issuerFingerprint: string
  /** hex SHA-256 of the client certificate DER */
  readonly certificateId: string
  readonly commonName: string | null
  readonly serialNumber: string
  readonly notAfter: number
  /** PEM of the client certificate, for flows that must register it (never logged) */
  readonly pem: string
}

export interface Identity {
  readonly role: Role
  readonly clientId: string
  readonly certificateId: string
  /** device id for `device`, service name for `service`, null for `claim` */
  readonly name: string | null
  /** permissions from the policy, e.g. `pii` */
  readonly permissions: ReadonlySet<string>
  /** CONTRACT §3.7: a quarantined device may connect, report state and receive its configuration, nothing else */
  readonly quarantined?: boolean
  /** CONTRACT §3.7: in its health window (full device rights; plugins/health.ts records its checks); absent once active */
  readonly provisioned?: boolean
  /** CONTRACT §3.4: the certificate came from a rotation not settled yet (its first use revokes the one it replaces) */
  readonly rotationPending?: boolean
  /** true when the device was registered by its manufacturer certificate on this connect */
  readonly registeredOnConnect?: boolean
}

export interface ConnectionState {
  readonly peer: PeerCertificate
  readonly remoteAddress: string
  readonly connectedAt: number
  identity: Identity | null
  /** filled by authorization at connect: the rules compiled for this identity */
  rules: unknown
  /** rejected payloads in the current one-minute window */
  offences: { windowStart: number, count: number }
  /** why the broker closed this session (e.g. CertificateRevoked), for the `disconnect` audit line */
  closeReason?: { readonly errorCode: string, readonly reason: string }
}

const states = new WeakMap<Client, ConnectionState>()

export function setState (client: Client, state: ConnectionState): void {
  states.set(client, state)
}

export function stateOf (client: Client | null | undefined): ConnectionState | undefined {
  return client ? states.get(client) : undefined
}

/** Aedes' live clients by client id (a map its typings do not expose). */
export function liveClients (broker: Aedes): Readonly<Record<string, Client | undefined>> {
  return (broker as unknown as { clients: Record<string, Client | undefined> }).clients
}

export function identityOf (client: Client | null | undefined): Identity | null {
  return (client && states.get(client)?.identity) ?? null
}
