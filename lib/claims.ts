import type { FastifyRequest } from 'fastify'
import { ForbiddenError, NotVerifiedError, TokenMissingError } from './errors'
import type { CloudflareAccessClaims, CloudflareAccessServiceClaims, CloudflareAccessUserClaims } from './types'

/** Whether the claims are a service token's (`common_name`, no `email`). */
export function isServiceToken (claims: CloudflareAccessClaims): claims is CloudflareAccessServiceClaims {
  return typeof claims.common_name === 'string'
}

/** Whether the claims are a user's (`email`). */
export function isUserToken (claims: CloudflareAccessClaims): claims is CloudflareAccessUserClaims {
  return typeof claims.email === 'string'
}

/** Who the token is for, for log lines: the email, or the service token's Client ID. */
export function subjectOf (claims: CloudflareAccessClaims): string {
  return isServiceToken(claims) ? claims.common_name : claims.email
}

/**
 * Set on a request once the plugin looked for its token (by its own hook or `verify`), whatever came of it.
 * Shared by every copy of the package in the process (a request one copy verified, read by another's
 * `requireUser`).
 */
export const kLookedAt = Symbol.for('fastify-cloudflare-access.looked-at')

/** The verified claims, or the error for a request without them (`caller` names the function for the 500's message). */
function claimsOf (request: FastifyRequest, caller: string): CloudflareAccessClaims {
  const claims = request.cfAccess
  if (claims !== null && claims !== undefined) return claims
  // The plugin looked and found no admitted token (none, on an optional route; or a refusal a wrapper swallowed).
  if ((request as { [kLookedAt]?: boolean })[kLookedAt] === true) throw new TokenMissingError()
  const { url } = request.routeOptions
  throw new NotVerifiedError(
    `fastify-cloudflare-access: ${caller}(request) in ${url === undefined ? 'a not-found handler' : `route ${request.method} ${url}`}, which the plugin never verified: ` +
    'the route is outside every registration of the plugin, has config.cfAccess: false, belongs to a hook: false registration without ' +
    'fastify.cfAccess.verify in its hooks, a wrapper such as @fastify/auth let the request through by another strategy before verify ran, ' +
    'or the call runs in a hook before the plugin\'s. Register the plugin in the route\'s scope, add fastify.cfAccess.verify to the route, ' +
    'or call it from the handler; behind a wrapper, read request.cfAccess'
  )
}

/**
 * The request's verified claims, user or service token. Throws `401 FST_CF_ACCESS_TOKEN_MISSING` where the
 * plugin verified the request and no token was admitted (an optional route without one), and `500
 * FST_CF_ACCESS_NOT_VERIFIED` where the plugin never verified it (a wiring mistake, whatever the request
 * carries): a handler that needs a caller never runs without one.
 */
export function requireClaims (request: FastifyRequest): CloudflareAccessClaims {
  return claimsOf(request, 'requireClaims')
}

/** A 403 that names the route and the subject for the log line (neither is in the answer). */
function wrongKind (request: FastifyRequest, claims: CloudflareAccessClaims): Error {
  return Object.assign(new ForbiddenError(), { route: request.routeOptions.url, subject: subjectOf(claims) })
}

/**
 * The verified user's claims (`email` is a `string`). Throws as `requireClaims` without verified claims,
 * and `403 FST_CF_ACCESS_FORBIDDEN` for a service token.
 */
export function requireUser (request: FastifyRequest): CloudflareAccessUserClaims {
  const claims = claimsOf(request, 'requireUser')
  if (!isUserToken(claims)) throw wrongKind(request, claims)
  return claims
}

/**
 * The verified service token's claims (`common_name` is a `string`). Throws as `requireClaims` without
 * verified claims, and `403 FST_CF_ACCESS_FORBIDDEN` for a user.
 */
export function requireServiceToken (request: FastifyRequest): CloudflareAccessServiceClaims {
  const claims = claimsOf(request, 'requireServiceToken')
  if (!isServiceToken(claims)) throw wrongKind(request, claims)
  return claims
}
