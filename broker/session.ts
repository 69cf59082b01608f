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
}

/** how a connection authenticated (CONTRACT §10): its certificate, or a token on the token listener */
export type AuthMethod = 'certificate' | 'oauth2' | 'broker-token' | 'sas'

/**
 * What the token of a token-listener connection said, once verified (plugins/token-identity.ts).
 * Certificate connections have none: the certificate (ConnectionState.peer) is their credential.
 */
export type TokenAuth =
  | {
    readonly method: 'oauth2' | 'broker-token'
    /** the token's `exp`, in ms: the connection is closed then */
    readonly expiresAt: number
    readonly issuer: string
    /** the OAuth2 client the token was issued to (`client_id`), when it says */
    readonly oauthClientId: string | undefined
    /** the granted scopes that name a policy rule or permission */
    readonly scopes: ReadonlySet<string>
  }
  | {
    readonly method: 'sas'
    /** the SAS token's `se`, in ms */
    readonly expiresAt: number
    /** the enrollment group (CONTRACT §3.6), the registration id it signed for, and the group's template */
    readonly group: string
    readonly registrationId: string
    readonly template: string
  }

export interface Identity {
  readonly role: Role
  readonly clientId: string
  /** the client certificate's id; null for a token identity (see `auth`) */
  readonly certificateId: string | null
  /** device id for `device`, service name (CN, or the token's `sub` / `client_id`) for `service`, null for `claim` */
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
  /** the verified token of a token-listener connection; absent: the certificate authenticated */
  readonly auth?: TokenAuth
}

export function authMethodOf (identity: Identity | null | undefined): AuthMethod {
  return identity?.auth?.method ?? 'certificate'
}

export interface ConnectionState {
  /** the verified client certificate; null on the token listener, where the identity's `auth` says who */
  readonly peer: PeerCertificate | null
  readonly remoteAddress: string
  readonly connectedAt: number
  identity: Identity | null
  /** filled by authorization at connect: the rules compiled for this identity */
  rules: unknown
  /** rejected payloads in the current one-minute window, and when it began (two fields, not an object per connection) */
  offences: number
  offenceWindowStart: number
  /** why the broker closed this session (e.g. CertificateRevoked), for the `disconnect` audit line */
  closeReason?: { readonly errorCode: string, readonly reason: string }
}

const states = new WeakMap<Client, ConnectionState>()
/** sockets the token listener accepted: no client certificate, the MQTT password authenticates (CONTRACT §10) */
const tokenSockets = new WeakSet<object>()

export function markTokenSocket (socket: object): void {
  tokenSockets.add(socket)
}

export function isTokenSocket (socket: object): boolean {
  return tokenSockets.has(socket)
}

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
