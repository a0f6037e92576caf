import createError from '@fastify/error'
import { types } from 'node:util'

/**
 * Every error the plugin raises. Each is a `@fastify/error` constructor: instances carry `code` and
 * `statusCode`, and Fastify's error handler answers `{ statusCode, code, error, message }`.
 *
 * Messages name what failed and never contain the token or any text decoded from it. Rejections are
 * expected traffic, so they skip stack capture: cheaper, and log lines stay short.
 */

/** No token in the `Cf-Access-Jwt-Assertion` header nor in the `CF_Authorization` cookie. 401. */
export const TokenMissingError = createError(
  'FST_CF_ACCESS_TOKEN_MISSING',
  'Missing Cloudflare Access token: expected the Cf-Access-Jwt-Assertion header or the CF_Authorization cookie',
  401,
  Error,
  false
)

/** Malformed, oversized, wrong algorithm, missing or unknown key id, bad signature. 401. */
export const TokenInvalidError = createError<'FST_CF_ACCESS_TOKEN_INVALID', 401, [reason: string]>(
  'FST_CF_ACCESS_TOKEN_INVALID',
  'Invalid Cloudflare Access token: %s',
  401,
  Error,
  false
)

/** Expired, not yet valid, or issued in the future (beyond `clockTolerance`). 401. */
export const TokenExpiredError = createError<'FST_CF_ACCESS_TOKEN_EXPIRED', 401, [reason: string]>(
  'FST_CF_ACCESS_TOKEN_EXPIRED',
  'Cloudflare Access token is not valid now: %s',
  401,
  Error,
  false
)

/** Signed by the team but not for this application: wrong `aud`, `iss` or `type`, or a claim of the wrong type. 401. */
export const ClaimInvalidError = createError<'FST_CF_ACCESS_CLAIM_INVALID', 401, [reason: string]>(
  'FST_CF_ACCESS_CLAIM_INVALID',
  'Cloudflare Access token rejected: %s',
  401,
  Error,
  false
)

/** The team's signing keys cannot be obtained (cold outage, hanging or garbage endpoint, keys too stale). 503. */
export const KeysUnavailableError = createError<'FST_CF_ACCESS_KEYS_UNAVAILABLE', 503, [reason: string]>(
  'FST_CF_ACCESS_KEYS_UNAVAILABLE',
  'Cloudflare Access signing keys are unavailable: %s',
  503,
  Error,
  false
)

/**
 * A valid token that the policy does not admit (`allow`, `authorize`, or the route's `config.cfAccess`). 403.
 * Instances carry `route` and `subject` (email or service token id) for the log line; neither is in the message.
 */
export const ForbiddenError = createError<'FST_CF_ACCESS_FORBIDDEN', 403, []>(
  'FST_CF_ACCESS_FORBIDDEN',
  'This Cloudflare Access identity is not allowed here',
  403,
  Error,
  false
)

/** `request.cfAccessIdentity()` for a service token: only users have an identity. 403. */
export const NoIdentityError = createError<'FST_CF_ACCESS_NO_IDENTITY', 403, []>(
  'FST_CF_ACCESS_NO_IDENTITY',
  'Service tokens have no Cloudflare Access user identity',
  403,
  Error,
  false
)

/** The identity endpoint cannot be reached, times out, or answers garbage. 503. */
export const IdentityUnavailableError = createError<'FST_CF_ACCESS_IDENTITY_UNAVAILABLE', 503, [reason: string]>(
  'FST_CF_ACCESS_IDENTITY_UNAVAILABLE',
  'Cloudflare Access identity is unavailable: %s',
  503,
  Error,
  false
)

/**
 * `authorize` failed as code: it threw or rejected with something that is not an Error (`throw false`,
 * `null`, a string…), or `verifyToken` was asked to apply an `authorize` without the request it needs.
 * An application error, like any handler that throws: 500. Never an admission.
 */
export const AuthorizeFailedError = createError<'FST_CF_ACCESS_AUTHORIZE_FAILED', 500, [reason: string]>(
  'FST_CF_ACCESS_AUTHORIZE_FAILED',
  'Cloudflare Access authorize failed: %s',
  500,
  Error,
  false
)

/** `authorize` did not settle within `authorizeTimeout`: the request is refused, and may be retried. 503. */
export const AuthorizeTimeoutError = createError<'FST_CF_ACCESS_AUTHORIZE_TIMEOUT', 503, [timeout: number]>(
  'FST_CF_ACCESS_AUTHORIZE_TIMEOUT',
  'Cloudflare Access authorize did not settle within %d ms',
  503,
  Error,
  false
)

/**
 * A route states protection (`config.cfAccess`) that no registration of the plugin gives: the
 * application's wiring mistake, refused at boot (`ready()` rejects with it) or, where the boot could not see
 * every route, at request time. 500. Never an admission.
 */
export const RouteUnguardedError = createError<'FST_CF_ACCESS_ROUTE_UNGUARDED', 500, [message: string]>(
  'FST_CF_ACCESS_ROUTE_UNGUARDED',
  '%s',
  500,
  Error,
  false
)

/**
 * `requireUser`, `requireServiceToken` or `requireClaims` on a request the plugin never verified (outside
 * its scopes, `config.cfAccess: false`, `hook: false` without `verify`, or called in a hook before the
 * plugin's): the application's wiring mistake, even when the request carries a valid token. 500.
 */
export const NotVerifiedError = createError<'FST_CF_ACCESS_NOT_VERIFIED', 500, [message: string]>(
  'FST_CF_ACCESS_NOT_VERIFIED',
  '%s',
  500,
  Error,
  false
)

/** Seconds a client should wait before retrying a 503. */
export const RETRY_AFTER_SECONDS = 5

// Every 503 tells the client when to come back, wherever it surfaces (a hook, or a handler awaiting
// request.cfAccessIdentity()): here, the one place it is said. Fastify's default error handler sends an
// error's `headers`; in the plugin's scopes an `onError` hook (lib/plugin.ts) puts them on the reply, for an
// error handler of the application's.
for (const Unavailable of [KeysUnavailableError, IdentityUnavailableError, AuthorizeTimeoutError]) {
  Object.defineProperty(Unavailable.prototype, 'headers', {
    value: Object.freeze({ 'retry-after': String(RETRY_AFTER_SECONDS) }),
    enumerable: false
  })
}

/** Any thrown value as an Error: an Error goes on unchanged, anything else is wrapped (never "no error"). */
export function toError (value: unknown): Error {
  if (value instanceof Error || types.isNativeError(value)) return value
  let kind: string = typeof value
  if (value === null) kind = 'null'
  else if (Array.isArray(value)) kind = 'an array'
  return new AuthorizeFailedError(`authorize threw a non-Error value (${kind})`)
}

/** The stable error codes, for matching in error handlers and tests. */
export const errorCodes = {
  TOKEN_MISSING: 'FST_CF_ACCESS_TOKEN_MISSING',
  TOKEN_INVALID: 'FST_CF_ACCESS_TOKEN_INVALID',
  TOKEN_EXPIRED: 'FST_CF_ACCESS_TOKEN_EXPIRED',
  CLAIM_INVALID: 'FST_CF_ACCESS_CLAIM_INVALID',
  KEYS_UNAVAILABLE: 'FST_CF_ACCESS_KEYS_UNAVAILABLE',
  FORBIDDEN: 'FST_CF_ACCESS_FORBIDDEN',
  NO_IDENTITY: 'FST_CF_ACCESS_NO_IDENTITY',
  IDENTITY_UNAVAILABLE: 'FST_CF_ACCESS_IDENTITY_UNAVAILABLE',
  AUTHORIZE_FAILED: 'FST_CF_ACCESS_AUTHORIZE_FAILED',
  AUTHORIZE_TIMEOUT: 'FST_CF_ACCESS_AUTHORIZE_TIMEOUT',
  ROUTE_UNGUARDED: 'FST_CF_ACCESS_ROUTE_UNGUARDED',
  NOT_VERIFIED: 'FST_CF_ACCESS_NOT_VERIFIED'
} as const

/** One of the codes in {@link errorCodes}. */
export type CloudflareAccessErrorCode = typeof errorCodes[keyof typeof errorCodes]

/** What every rejection carries: a stable `code`, an HTTP `statusCode` and a token-free `message`. */
export interface CloudflareAccessError extends Error {
  code: CloudflareAccessErrorCode
  statusCode: 401 | 403 | 500 | 503
}
