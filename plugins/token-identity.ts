/**
 * Identity on the token listener (CONTRACT §10): a connection without a client
 * certificate is who its MQTT password proves it is.
 * - username `enroll/<group>`: a device enrolling with a symmetric key (§3.6);
 *   the password is a SAS for its registration id (= client id), checked against
 *   the group key in constant time. Role `claim`, bound to that registration id
 *   and the group's template (plugins/provisioning/enrollment.ts).
 * - anything else: an OAuth2 access token (JWT) from the external authorization
 *   server or from the broker's own endpoint (plugins/token/jwt.ts). Role
 *   `service`, named by `sub` (or `client_id`); the token's scopes choose the
 *   policy rules that apply (plugins/policy.ts, tokenGrant), and a token whose
 *   scopes allow nothing is refused.
 * Each refusal is CONNACK 5 (3 when the key set cannot be fetched) and audited
 * `token.refused` with its code and a fixed reason; a token, SAS or key is never
 * written anywhere. The connection is closed when its token expires: one timer
 * per connection, cleared when the connection closes. A broker-issued token is
 * also re-validated: every SESSION_REVALIDATE_SECONDS (CONTRACT §11) the live
 * sessions of broker tokens are checked against the OAuth2 clients store, and
 * those whose client was deleted are closed (SessionRevalidated, no will), on
 * every process, without waiting for `exp`. Enrollment groups are read once at
 * start and cannot change under a live session; an external issuer's token has
 * nothing to look up (its lifetime is bounded instead, plugins/token/jwt.ts).
 * Sessions belong to identities as on the mutual-TLS listener
 * (plugins/session-owners.ts), a token identity in its own namespace.
 *
 * After `identity` in the chain: a certificate connection is answered there and
 * never reaches this plugin, so the mutual-TLS path pays nothing for it.
 */
import type { Client } from 'aedes'
import { JitpError, refusalFields, type ErrorCode } from '../broker/errors.js'
import { DEFER, deny, type AuthenticateAnswer, type AuthenticateEvent, type Deny, type Plugin, type PluginHooks } from '../broker/plugin.js'
import { liveClients, stateOf, type AuthMethod, type ConnectionState, type Identity } from '../broker/session.js'
import type { OAuthClients } from '../broker/store/oauth-clients.js'
import type { TokenKeys } from '../broker/token-keys.js'
import { permissionsFor, tokenGrant, type Policy } from './policy.js'
import { formDeviceId, type Template } from './provisioning/templates.js'
import { holdSession } from './session-owners.js'
import { admitsRegistrationId, type EnrollmentGroup } from './token/enrollment-groups.js'
import { createTokenVerifier, type TokenVerifier } from './token/jwt.js'
import { parseSas, verifySas } from './token/sas.js'

export const ENROLL_PREFIX = 'enroll/'
/** setTimeout's ceiling (~24.8 days): a longer-lived token re-arms when it fires */
const MAX_TIMER_MS = 2 ** 31 - 1
/** OAuth2 clients looked up per round of a re-validation (the lookups of a round go out together) */
const REVALIDATE_BATCH = 200

export interface TokenIdentityOptions {
  readonly policy: Policy
  readonly templates: ReadonlyMap<string, Template>
  /** the enrollment groups of ENROLLMENT_DIR (CONTRACT §3.6), loaded once with the templates (broker/build.ts) */
  readonly enrollmentGroups: ReadonlyMap<string, EnrollmentGroup>
  /** the broker's own token keys and OAuth2 clients (POST /oauth/token); null when it issues none */
  readonly brokerTokens: { readonly keys: TokenKeys, readonly clients: OAuthClients } | null
}

interface Refusal {
  readonly method: AuthMethod
  readonly code: ErrorCode
  readonly reason: string
  readonly group?: string | undefined
  readonly oauthClientId?: string | undefined
}

export const tokenIdentityPlugin: Plugin<TokenIdentityOptions> = {
  name: 'token-identity',
  setup (ctx, options): PluginHooks {
    const { config, audit, metrics, registry, log } = ctx
    const { policy, templates } = options
    const groups = options.enrollmentGroups
    const externalConfigured = config.oauthJwksUrl !== undefined || config.oauthJwksFile !== undefined
    if (externalConfigured && (config.oauthIssuer === undefined || config.oauthAudience === undefined)) {
      throw new JitpError('InvalidConfig', 'OAUTH_ISSUER and OAUTH_AUDIENCE are required with OAUTH_JWKS_URL or OAUTH_JWKS_FILE')
    }
    // keys are fetched only when the listener is on: a broker without it never calls an issuer
    const verifier: TokenVerifier | null = config.mqttsTokenPort === undefined
      ? null
      : createTokenVerifier({
        external: externalConfigured
          ? { jwksUrl: config.oauthJwksUrl, jwksFile: config.oauthJwksFile, jwksCa: config.oauthJwksCa, issuer: config.oauthIssuer!, audience: config.oauthAudience! }
          : null,
        broker: options.brokerTokens,
        now: ctx.now,
        log
      })
    const claimPermissions = permissionsFor(policy, 'claim')
    const expiryTimers = new WeakMap<Client, NodeJS.Timeout>()

    function refuse (ev: AuthenticateEvent, r: Refusal): Deny {
      metrics.authentications.inc({ method: r.method, outcome: r.code })
      audit.refusal('token.refused', {
        clientId: ev.clientId,
        remoteAddress: ev.remoteAddress,
        authMethod: r.method,
        group: r.group,
        oauthClientId: r.oauthClientId,
        errorCode: r.code,
        reason: r.reason
      }, 'warn')
      return deny(r.code, undefined, r.reason)
    }

    /** a valid SAS the enrollment still refuses (policy, not credentials): its own event */
    function refuseEnrollment (ev: AuthenticateEvent, group: EnrollmentGroup, code: ErrorCode, reason: string): Deny {
      metrics.authentications.inc({ method: 'sas', outcome: code })
      audit.write('enrollment.refused', { clientId: ev.clientId, remoteAddress: ev.remoteAddress, authMethod: 'sas', group: group.name, template: group.template, errorCode: code, reason }, 'warn')
      return deny(code, undefined, reason)
    }

    async function enroll (ev: AuthenticateEvent, groupName: string, password: string): Promise<AuthenticateAnswer> {
      const group = groups.get(groupName)
      if (group === undefined) return refuse(ev, { method: 'sas', code: 'EnrollmentGroupNotFound', reason: 'no such enrollment group', group: groupName })
      const sas = parseSas(password)
      if (sas === null) return refuse(ev, { method: 'sas', code: 'BadSas', reason: 'malformed', group: group.name })
      const problem = verifySas(sas, { clientId: ev.clientId, groupKey: group.groupKey, nowMs: ctx.now(), maxSeconds: config.enrollmentTokenMaxSeconds })
      if (problem !== null) return refuse(ev, { method: 'sas', code: 'BadSas', reason: problem, group: group.name })
      const registrationId = sas.registrationId
      if (!admitsRegistrationId(group, registrationId)) return refuseEnrollment(ev, group, 'ProvisioningDenied', 'registration id not admitted by the group')
      if (!ev.clean) return refuseEnrollment(ev, group, 'ClaimSessionNotClean', 'enrollment sessions must be clean sessions')
      const template = templates.get(group.template)!
      const deviceId = formDeviceId(template.deviceIdPattern, { registrationId })
      if (deviceId === null) return refuseEnrollment(ev, group, 'InvalidParameters', 'the registration id forms no valid device id')
      // a registration id enrolls once, unless its template replaces (the registration checks again, atomically)
      if (template.reprovision !== 'replace' && await registry.getDevice(deviceId) !== null) {
        return refuseEnrollment(ev, group, 'DeviceExists', 'this registration id is already enrolled')
      }
      const identity: Identity = {
        role: 'claim',
        clientId: ev.clientId,
        certificateId: null,
        name: null,
        permissions: claimPermissions,
        auth: { method: 'sas', expiresAt: Number(sas.expiry) * 1000, group: group.name, registrationId, template: group.template }
      }
      const held = await holdSession(ctx, identity, ev)
      if (held !== null) return refuseEnrollment(ev, group, held.code, held.detail ?? 'client id in use')
      audit.write('enrollment.accepted', { clientId: ev.clientId, remoteAddress: ev.remoteAddress, authMethod: 'sas', group: group.name, template: group.template })
      return { verdict: 'allow', identity }
    }

    async function authenticateService (ev: AuthenticateEvent, password: string): Promise<AuthenticateAnswer> {
      const verdict = await verifier!.verify(password)
      if (!verdict.ok) return refuse(ev, verdict)
      const { token } = verdict
      const grant = tokenGrant(policy, token.scopes)
      if (!grant.allowsSomething) return refuse(ev, { method: token.method, code: 'TokenNoScope', reason: 'no granted scope names a policy rule', oauthClientId: token.oauthClientId })
      const identity: Identity = {
        role: 'service',
        clientId: ev.clientId,
        certificateId: null,
        name: token.subject,
        permissions: grant.permissions,
        auth: { method: token.method, expiresAt: token.expiresAt, issuer: token.issuer, oauthClientId: token.oauthClientId, scopes: grant.scopes }
      }
      const held = await holdSession(ctx, identity, ev)
      if (held !== null) {
        metrics.authentications.inc({ method: token.method, outcome: held.code })
        return held
      }
      return { verdict: 'allow', identity }
    }

    function disarm (client: Client): void {
      const timer = expiryTimers.get(client)
      if (timer === undefined) return
      clearTimeout(timer)
      expiryTimers.delete(client)
    }

    /** closes the connection when its token expires; the chain's `disconnect` line says why */
    function arm (client: Client, state: ConnectionState, expiresAt: number): void {
      const timer = setTimeout(function tokenExpired () {
        expiryTimers.delete(client)
        if (ctx.now() < expiresAt) return arm(client, state, expiresAt)
        if (state.closeReason || client.closed) return
        state.closeReason = refusalFields('TokenExpired', 'the token expired while connected')
        client.close()
      }, Math.min(MAX_TIMER_MS, Math.max(0, expiresAt - ctx.now())))
      expiryTimers.set(client, timer)
    }

    let closing = false
    let revalidating = false
    /**
     * Deleting an OAuth2 client must end what its tokens opened, not only refuse
     * their next connect: a live session of a deleted client is closed at the next
     * round. SessionRevalidated, as a revoked certificate's, so its will is not
     * published (broker/chain/publish.ts). A store that does not answer closes
     * nothing: the next round looks again.
     */
    async function revalidateBrokerTokens (): Promise<void> {
      const clients = options.brokerTokens!.clients
      const byClient = new Map<string, Array<[Client, ConnectionState]>>()
      for (const client of Object.values(liveClients(ctx.broker))) {
        const state = stateOf(client)
        const auth = state?.identity?.auth
        if (!client || !state || state.closeReason || auth?.method !== 'broker-token' || auth.oauthClientId === undefined) continue
        const sessions = byClient.get(auth.oauthClientId)
        if (sessions) sessions.push([client, state])
        else byClient.set(auth.oauthClientId, [[client, state]])
      }
      const ids = [...byClient.keys()]
      for (let i = 0; i < ids.length && !closing; i += REVALIDATE_BATCH) {
        const batch = ids.slice(i, i + REVALIDATE_BATCH)
        const records = await Promise.all(batch.map((id) => clients.get(id)))
        records.forEach((record, j) => {
          if (record !== null) return
          for (const [client, state] of byClient.get(batch[j]!)!) {
            if (state.closeReason || client.closed) continue
            state.closeReason = refusalFields('SessionRevalidated', 'the OAuth2 client of its token was deleted')
            client.close()
          }
        })
      }
    }

    const revalidateTimer = verifier === null || options.brokerTokens === null
      ? null
      : setInterval(function periodicTokenRevalidation () {
        if (revalidating || closing) return
        revalidating = true
        revalidateBrokerTokens().catch((err: unknown) => {
          log.warn({ err: (err as Error).message }, 'token session re-validation failed; sessions stay until the next round')
        }).finally(() => { revalidating = false })
      }, config.sessionRevalidateSeconds * 1000)
    revalidateTimer?.unref()

    return {
      name: 'token-identity',
      async authenticate (ev) {
        if (ev.peer !== null || ev.credentials === null) return DEFER
        const { username, password } = ev.credentials
        const secret = password === undefined ? '' : password.toString('utf8')
        if (username?.startsWith(ENROLL_PREFIX) === true) return enroll(ev, username.slice(ENROLL_PREFIX.length), secret)
        if (secret === '') return refuse(ev, { method: 'oauth2', code: 'TokenRequired', reason: 'no token in the password' })
        if (verifier === null) return refuse(ev, { method: 'oauth2', code: 'TokenKeysUnavailable', reason: 'the token listener is off' })
        return authenticateService(ev, secret)
      },
      connected (client, state) {
        const auth = state.identity?.auth
        if (auth === undefined) return
        // a socket that closed while its CONNECT was in flight is never registered: nothing to arm
        const conn = client.conn
        if (client.closed || conn.destroyed) return
        arm(client, state, auth.expiresAt)
        conn.once('close', function tokenSocketClosed () { disarm(client) })
      },
      disconnected (client) {
        disarm(client)
      },
      async close () {
        closing = true
        if (revalidateTimer) clearInterval(revalidateTimer)
        verifier?.close()
      }
    }
  }
}
