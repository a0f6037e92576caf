import type { FastifyReply, FastifyRequest, RegisterOptions } from 'fastify'
import type { CloudflareAccessCustomClaims } from '../index'
import type { CloudflareAccessStatus } from './status'

/**
 * Identity-provider claims under `custom`: `CloudflareAccessCustomClaims` as you declared it (see the
 * README's TypeScript section), or `Record<string, unknown>` while it is empty.
 */
export type CloudflareAccessCustom = keyof CloudflareAccessCustomClaims extends never
  ? Record<string, unknown>
  : CloudflareAccessCustomClaims

/**
 * Who is admitted: a token passes when any one grant matches. User tokens match only `emails`,
 * `emailDomains`, `groups` and `groupIds`; service tokens match only `serviceTokens`.
 */
export interface CloudflareAccessAllow {
  /** Exact email addresses; only ASCII letters compare case-insensitively (`A`–`Z`), anything else exactly. */
  emails?: readonly string[]
  /**
   * Exact domains after the `@`, ASCII case-insensitive: `'acme.com'` matches neither `evilacme.com`,
   * `eng.acme.com` nor a look-alike with non-ASCII characters.
   */
  emailDomains?: readonly string[]
  /**
   * Access group **names**, exact (case-sensitive), from the identity endpoint (fetched only when a route
   * needs it). Names can often be chosen by users of the identity provider: prefer `groupIds`.
   */
  groups?: readonly string[]
  /** Access group **ids**, exact, from the identity endpoint: the grant to prefer, since an id cannot be renamed. */
  groupIds?: readonly string[]
  /** Service token Client IDs (`common_name`, ending in `.access`), or `true` for every service token. */
  serviceTokens?: readonly string[] | true
}

/** What `authorize` gets besides the claims and the request. */
export interface CloudflareAccessAuthorizeContext {
  /**
   * The full identity of the token being verified, from the identity endpoint: looked up at most once per
   * token (the same cache as `allow.groups`, `allow.groupIds` and `request.cfAccessIdentity()`). Rejects as
   * the group grants do: the endpoint refusing the token → 401, unreachable → 503 with `Retry-After`, a
   * service token → 403 `FST_CF_ACCESS_NO_IDENTITY`. A lookup that failed refuses the request with that
   * error whatever `authorize` returns — catching it cannot admit anyone.
   */
  identity: () => Promise<CloudflareAccessIdentity>
}

/**
 * An extra rule that must also hold. Return `true` to admit; anything else answers 403. A thrown Error
 * goes to Fastify's error handler unchanged; any other thrown value becomes a 500
 * `FST_CF_ACCESS_AUTHORIZE_FAILED`; a promise that does not settle within `authorizeTimeout` a 503
 * `FST_CF_ACCESS_AUTHORIZE_TIMEOUT`. Never an admission. Read the claims from the argument:
 * `request.cfAccess` is set only once every policy admitted the request. The third argument gives the
 * identity (groups, device posture…): `authorize: async (claims, request, { identity }) => …`.
 */
export type CloudflareAccessAuthorize = (claims: CloudflareAccessClaims, request: FastifyRequest, context: CloudflareAccessAuthorizeContext) => boolean | Promise<boolean>

/** A policy: both parts, when present, must admit the token. */
export interface CloudflareAccessPolicy {
  allow?: CloudflareAccessAllow
  authorize?: CloudflareAccessAuthorize
}

/**
 * A route's `config.cfAccess`: `false` skips verification on that route; a policy narrows the plugin's;
 * `required: false` makes the token optional there (with the plugin's own hook: no token → the request
 * goes on with `request.cfAccess === null`; a bad token is still a 401), and `required: true` requires it
 * where the plugin has `required: false`. A policy cannot be optional.
 */
export type CloudflareAccessRouteConfig =
  | false
  | (CloudflareAccessPolicy & { required?: true })
  | { required: false, allow?: undefined, authorize?: undefined }

/** Which request hook runs verification: `'onRequest'` (default), `'preHandler'`, or `false` for none. */
export type CloudflareAccessHook = 'onRequest' | 'preHandler' | false

/** Options of `fastify.register(cloudflareAccess, options)`. Validated once, at registration. */
export interface FastifyCloudflareAccessOptions {
  /**
   * The team domain that issues the tokens: `'acme'`, `'acme.cloudflareaccess.com'`,
   * `'https://acme.cloudflareaccess.com'` or the FedRAMP form `acme.fed.cloudflareaccess.com`.
   * Normalised to the origin `https://<team>.cloudflareaccess.com`, which is both the required `iss`
   * and where the keys are fetched from. `http://` is accepted only for loopback hosts (tests, emulator).
   */
  teamDomain: string
  /** The Application Audience (AUD) tag, or several (one per Access application in front of this origin). */
  audience: string | readonly string[]
  /** The hook that verifies every request of the scope. Default `'onRequest'`; `false` adds none. */
  hook?: CloudflareAccessHook
  /** Allowed clock skew for `exp`, `nbf` and `iat`, in **seconds**. Default 30. */
  clockTolerance?: number
  /** Time limit of one key fetch, in milliseconds. Default 5000. */
  fetchTimeout?: number
  /** How often the key set is refreshed, in milliseconds. Default 600000 (10 minutes). */
  refreshInterval?: number
  /** Minimum time between two fetches caused by unknown key ids, in milliseconds. Default 5000. */
  unknownKidCooldown?: number
  /** How long the last good key set keeps serving while the endpoint fails, in milliseconds. Default 21600000 (6 hours). */
  maxStaleAge?: number
  /** Who is admitted. Absent: every valid token of the configured audiences. */
  allow?: CloudflareAccessAllow
  /** An extra rule every admitted token must also pass. */
  authorize?: CloudflareAccessAuthorize
  /** Longest a promise returned by `authorize` may take, in milliseconds; then 503. Default 10000. */
  authorizeTimeout?: number
  /**
   * Milliseconds `app.ready()` waits for the first key set, rejecting when none came: for platforms that
   * would rather fail a deploy than start cold. Default 0: `ready()` does not wait (requests get 503 until
   * the keys arrive).
   */
  waitForKeys?: number
  /** Time limit of one identity lookup, in milliseconds. Default 5000. */
  identityTimeout?: number
  /** How long an identity is cached, in milliseconds (never beyond the token's `exp`). Default 300000. */
  identityCacheTtl?: number
  /** How many identities are cached at most (least recently used go first). Default 1000. */
  identityCacheSize?: number
  /**
   * How many verified tokens are cached (least recently used go first), so that a session's repeated
   * token skips the RSA verify. An entry never outlives the token's `exp` nor the key that verified it.
   * Default 1000; `0` turns the cache off.
   */
  cacheSize?: number
  /**
   * Let CORS preflights (`OPTIONS` with `Origin` and `Access-Control-Request-Method`, which browsers send
   * without credentials) through the plugin's own hook unverified, for a CORS plugin in the scope to answer.
   * A request let through that no CORS plugin answered is refused with 401 before any handler runs.
   * Default `false`. Not with `hook: false`.
   */
  corsPreflight?: boolean
  /**
   * `false`: the plugin's own hook lets a request **without a token** through with `request.cfAccess`
   * left `null` (for pages that show more to a logged-in user); a token that fails verification is still
   * answered 401, never ignored. Per route with `config.cfAccess: { required }`. Default `true`. Not with
   * `hook: false` (`fastify.cfAccess.verify` always requires a token) nor with `allow`/`authorize`.
   */
  required?: boolean
  /**
   * Fastify's register option: the level of the plugin's own log lines (key rotations, key endpoint
   * trouble). Rejections are logged by Fastify's error handler at the route's level.
   */
  logLevel?: RegisterOptions['logLevel']
  /** Fastify's register option: pino serializers for the plugin's own log lines. */
  logSerializers?: RegisterOptions['logSerializers']
}

/** Claims every verified Cloudflare Access application token has. */
export interface CloudflareAccessBaseClaims {
  /** The Application Audience tags the token is for (older tokens carry a single string). */
  aud: string | string[]
  /** The team domain origin, `https://<team>.cloudflareaccess.com`. */
  iss: string
  /** Expiry, seconds since the epoch. */
  exp: number
  /** Issue time, seconds since the epoch. */
  iat?: number
  /** Not-before time, seconds since the epoch (service tokens may lack it). */
  nbf?: number
  /** Always `'app'` when present: tokens of type `'org'` are rejected. */
  type?: 'app'
}

/** An application token issued to a person who logged in. */
export interface CloudflareAccessUserClaims extends CloudflareAccessBaseClaims {
  /** The user's email address. */
  email: string
  /** The user's id. */
  sub?: string
  identity_nonce?: string
  /** Two-letter country code of the login. */
  country?: string
  /** Identity-provider claims, best effort (see `CloudflareAccessCustomClaims`). */
  custom?: CloudflareAccessCustom
  common_name?: undefined
}

/** An application token issued to a service token (a machine client). */
export interface CloudflareAccessServiceClaims extends CloudflareAccessBaseClaims {
  /** The service token's Client ID, ending in `.access`. */
  common_name: string
  /** Empty for service tokens. */
  sub?: string
  email?: undefined
  identity_nonce?: undefined
  country?: undefined
  custom?: undefined
}

/** The verified claims of a Cloudflare Access token: tell them apart by `email` or `common_name`. */
export type CloudflareAccessClaims = CloudflareAccessUserClaims | CloudflareAccessServiceClaims

/** A group of the user, as the identity endpoint reports it. */
export interface CloudflareAccessGroup {
  id: string
  name: string
  email?: string
}

/** The full identity of a user, from `<team>/cdn-cgi/access/get-identity`. */
export interface CloudflareAccessIdentity {
  email: string
  name?: string
  id?: string
  user_uuid?: string
  account_id?: string
  iat?: number
  ip?: string
  idp?: { id: string, type: string }
  geo?: { country: string }
  groups: CloudflareAccessGroup[]
  devicePosture?: Record<string, unknown>
  is_warp?: boolean
  is_gateway?: boolean
  device_id?: string
  custom?: CloudflareAccessCustom
  /** Other fields Cloudflare adds. */
  [field: string]: unknown
}

/** `fastify.cfAccess`: verification for route-level hooks and for tokens from elsewhere. */
export interface CloudflareAccessDecorator {
  /**
   * A hook for `onRequest` or `preHandler`: verifies the request's token, applies the registration's
   * policy and the route's `config.cfAccess` policy, and sets `request.cfAccess` — or rejects with one of
   * the plugin's errors. It always verifies, also on a route whose `config.cfAccess` is `false` (which
   * only the plugin's own hook honours).
   */
  verify: (request: FastifyRequest, reply: FastifyReply) => Promise<void>
  /**
   * Verifies one token from elsewhere (a WebSocket message, a queue) and applies this registration's
   * policy — `allow` (groups included) and `authorize` — and, when `request` is given, its route's
   * `config.cfAccess` policy: it never admits what the same registration refuses over HTTP. Resolves the
   * claims, or rejects with an error carrying `statusCode` and `code`. With an `authorize` rule and no
   * `request`, it rejects with `FST_CF_ACCESS_AUTHORIZE_FAILED` (500): `authorize` needs a request.
   */
  verifyToken: (token: string, request?: FastifyRequest) => Promise<CloudflareAccessClaims>
  /** This registration's state (keys, caches), synchronously: see also `cloudflareAccessStatus(app)`. */
  status: () => CloudflareAccessStatus
}

// Where each decorator exists: the plugin decorates the scope it is registered in (fastify-plugin makes
// that the scope that calls `register`) and that scope's children — not the parent scopes, which
// Fastify gives a plugin no way to reach. `request.cfAccess` is typed as what it is outside them
// (absent); `fastify.cfAccess` is typed as present, the Fastify convention for decorators, so that a
// scope without it fails loudly (a TypeError when a route reads `.verify`) instead of inviting `?.`,
// which would hand Fastify an `undefined` hook: an open route.
declare module 'fastify' {
  interface FastifyRequest {
    /**
     * The verified Cloudflare Access claims. `null` in a scope of the plugin until verification admitted
     * the request (and where none ran: `config.cfAccess: false`, `hook: false` without `verify`, an
     * optional route without a token); `undefined` outside every scope of the plugin. To read the user
     * or the service token in one line, failing closed, use `requireUser(request)`,
     * `requireServiceToken(request)` or `requireClaims(request)`.
     */
    cfAccess?: CloudflareAccessClaims | null
    /**
     * The user's full identity from the identity endpoint (groups, name, device posture…), cached per
     * token. Rejects for service tokens (403), without a verified token (401), or when the endpoint is
     * down (503). Inside `authorize` it is the identity of the token being verified, as `authorize`'s
     * `identity()`; where it cannot tell which token is meant (`verifyToken` of another token on this
     * request, overlapping verifications of different tokens) it rejects with 500
     * `FST_CF_ACCESS_AUTHORIZE_FAILED` and refuses those verifications.
     */
    cfAccessIdentity: () => Promise<CloudflareAccessIdentity>
  }
  interface FastifyReply {
    /**
     * Redirects (303) to `/cdn-cgi/access/logout` on this hostname, where Cloudflare Access ends the
     * session and clears its cookie. Relative: never built from the `Host` header or a parameter. Logout is
     * not revocation: a token already issued stays valid until its `exp`.
     */
    cfAccessLogout: () => FastifyReply
  }
  interface FastifyContextConfig {
    /**
     * `false`: no verification on this route. A policy: narrows the plugin's `allow`/`authorize`.
     * `{ required: false }`: the token is optional on this route.
     */
    cfAccess?: CloudflareAccessRouteConfig
  }
  interface FastifyInstance {
    /**
     * Set by fastify-cloudflare-access on the scope it is registered in and that scope's children. Typed as
     * present, as Fastify decorators are: elsewhere (the root, when the plugin is registered inside a
     * prefix) it is `undefined` at run time, and `fastify.cfAccess.verify` throws a TypeError where the
     * route is declared. Never write `fastify.cfAccess?.verify`: where the plugin is missing, that hands
     * Fastify an `undefined` hook, and the route is served to anyone.
     */
    cfAccess: CloudflareAccessDecorator
  }
}
