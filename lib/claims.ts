import type { FastifyRequest } from 'fastify'
import { ForbiddenError, TokenMissingError } from './errors'
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
 * The request's verified claims, user or service token. Throws `401 FST_CF_ACCESS_TOKEN_MISSING` where
 * no verification admitted the request (`request.cfAccess` is `null`, or `undefined` outside the plugin's
 * scopes): a handler that needs a caller never runs without one.
 */
export function requireClaims (request: FastifyRequest): CloudflareAccessClaims {
  const claims = request.cfAccess
  if (claims === null || claims === undefined) throw new TokenMissingError()
  return claims
}

/** A 403 that names the route and the subject for the log line (neither is in the answer). */
function wrongKind (request: FastifyRequest, claims: CloudflareAccessClaims): Error {
  return Object.assign(new ForbiddenError(), { route: request.routeOptions.url, subject: subjectOf(claims) })
}

/**
 * The verified user's claims (`email` is a `string`). Throws `401 FST_CF_ACCESS_TOKEN_MISSING` without
 * verified claims, and `403 FST_CF_ACCESS_FORBIDDEN` for a service token.
 */
export function requireUser (request: FastifyRequest): CloudflareAccessUserClaims {
  const claims = requireClaims(request)
  if (!isUserToken(claims)) throw wrongKind(request, claims)
  return claims
}

/**
 * The verified service token's claims (`common_name` is a `string`). Throws `401
 * FST_CF_ACCESS_TOKEN_MISSING` without verified claims, and `403 FST_CF_ACCESS_FORBIDDEN` for a user.
 */
export function requireServiceToken (request: FastifyRequest): CloudflareAccessServiceClaims {
  const claims = requireClaims(request)
  if (!isServiceToken(claims)) throw wrongKind(request, claims)
  return claims
}
