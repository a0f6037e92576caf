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
