import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import { cloudflareAccess } from './lib/plugin'
import * as errors from './lib/errors'
import * as claims from './lib/claims'
import * as channels from './lib/channels'
import type * as channelTypes from './lib/channels'
import * as status from './lib/status'
import type * as statusTypes from './lib/status'
import * as openapi from './lib/openapi'
import type * as types from './lib/types'
import './lib/types'

/** Verifies Cloudflare Access tokens on every request of the scope it is registered in. */
function fastifyCloudflareAccess (fastify: FastifyInstance, options: types.FastifyCloudflareAccessOptions): Promise<void> {
  return cloudflareAccess(fastify, options)
}
fp(fastifyCloudflareAccess, { fastify: '5.x', name: 'fastify-cloudflare-access' })

// The fastify-org export triple: require() returns the plugin, which also carries `default`, the named
// export and the error constructors.
const {
  errorCodes, TokenMissingError, TokenInvalidError, TokenExpiredError, ClaimInvalidError, KeysUnavailableError,
  ForbiddenError, NoIdentityError, IdentityUnavailableError, AuthorizeFailedError, AuthorizeTimeoutError, RouteUnguardedError, NotVerifiedError
} = errors
const { isServiceToken, isUserToken, requireClaims, requireUser, requireServiceToken } = claims
// Destructured like the rest: Node's CommonJS-to-ESM bridge (below) sees `name,` but stops at `name: x.name`.
const { cloudflareAccessStatus } = status
const { channelNames } = channels
const { cloudflareAccessSecuritySchemes, cloudflareAccessSecurity, cloudflareAccessTransform } = openapi
fastifyCloudflareAccess.default = fastifyCloudflareAccess
fastifyCloudflareAccess.fastifyCloudflareAccess = fastifyCloudflareAccess
fastifyCloudflareAccess.errorCodes = errorCodes
fastifyCloudflareAccess.TokenMissingError = TokenMissingError
fastifyCloudflareAccess.TokenInvalidError = TokenInvalidError
fastifyCloudflareAccess.TokenExpiredError = TokenExpiredError
fastifyCloudflareAccess.ClaimInvalidError = ClaimInvalidError
fastifyCloudflareAccess.KeysUnavailableError = KeysUnavailableError
fastifyCloudflareAccess.ForbiddenError = ForbiddenError
fastifyCloudflareAccess.NoIdentityError = NoIdentityError
fastifyCloudflareAccess.IdentityUnavailableError = IdentityUnavailableError
fastifyCloudflareAccess.AuthorizeFailedError = AuthorizeFailedError
fastifyCloudflareAccess.AuthorizeTimeoutError = AuthorizeTimeoutError
fastifyCloudflareAccess.RouteUnguardedError = RouteUnguardedError
fastifyCloudflareAccess.NotVerifiedError = NotVerifiedError
fastifyCloudflareAccess.isServiceToken = isServiceToken
fastifyCloudflareAccess.isUserToken = isUserToken
fastifyCloudflareAccess.cloudflareAccessStatus = cloudflareAccessStatus
fastifyCloudflareAccess.channelNames = channelNames
fastifyCloudflareAccess.requireClaims = requireClaims
fastifyCloudflareAccess.requireUser = requireUser
fastifyCloudflareAccess.requireServiceToken = requireServiceToken
fastifyCloudflareAccess.cloudflareAccessSecuritySchemes = cloudflareAccessSecuritySchemes
fastifyCloudflareAccess.cloudflareAccessSecurity = cloudflareAccessSecurity
fastifyCloudflareAccess.cloudflareAccessTransform = cloudflareAccessTransform

// Node's CommonJS-to-ESM bridge finds named exports by reading the source for this shape. It never runs
// (`0 &&`); it only makes `import { fastifyCloudflareAccess } from 'fastify-cloudflare-access'` work.
/* c8 ignore start */
0 && (module.exports = {
  default: fastifyCloudflareAccess,
  fastifyCloudflareAccess,
  errorCodes,
  TokenMissingError,
  TokenInvalidError,
  TokenExpiredError,
  ClaimInvalidError,
  KeysUnavailableError,
  ForbiddenError,
  NoIdentityError,
  IdentityUnavailableError,
  AuthorizeFailedError,
  AuthorizeTimeoutError,
  RouteUnguardedError,
  NotVerifiedError,
  isServiceToken,
  isUserToken,
  cloudflareAccessStatus,
  channelNames,
  requireClaims,
  requireUser,
  requireServiceToken,
  cloudflareAccessSecuritySchemes,
  cloudflareAccessSecurity,
  cloudflareAccessTransform
})
/* c8 ignore stop */

declare namespace fastifyCloudflareAccess {
  /**
   * Your identity provider's claims under `custom`: declare them by merging, and `request.cfAccess.custom`
   * is typed in your app.
   *
   * ```ts
   * declare module 'fastify-cloudflare-access' {
   *   interface CloudflareAccessCustomClaims { department: string }
   * }
   * ```
   */
  export interface CloudflareAccessCustomClaims {}
  export type FastifyCloudflareAccessOptions = types.FastifyCloudflareAccessOptions
  export type CloudflareAccessClaims = types.CloudflareAccessClaims
  export type CloudflareAccessUserClaims = types.CloudflareAccessUserClaims
  export type CloudflareAccessServiceClaims = types.CloudflareAccessServiceClaims
  export type CloudflareAccessBaseClaims = types.CloudflareAccessBaseClaims
  export type CloudflareAccessDecorator = types.CloudflareAccessDecorator
  export type CloudflareAccessHook = types.CloudflareAccessHook
  export type CloudflareAccessCustom = types.CloudflareAccessCustom
  export type CloudflareAccessAllow = types.CloudflareAccessAllow
  export type CloudflareAccessAuthorize = types.CloudflareAccessAuthorize
  export type CloudflareAccessAuthorizeContext = types.CloudflareAccessAuthorizeContext
  export type CloudflareAccessPolicy = types.CloudflareAccessPolicy
  export type CloudflareAccessRouteConfig = types.CloudflareAccessRouteConfig
  export type CloudflareAccessIdentity = types.CloudflareAccessIdentity
  export type CloudflareAccessGroup = types.CloudflareAccessGroup
  export type CloudflareAccessError = errors.CloudflareAccessError
  export type CloudflareAccessErrorCode = errors.CloudflareAccessErrorCode
  export type CloudflareAccessStatus = statusTypes.CloudflareAccessStatus
  export type CloudflareAccessAppStatus = statusTypes.CloudflareAccessAppStatus
  export type AcceptedMessage = channelTypes.AcceptedMessage
  export type RejectedMessage = channelTypes.RejectedMessage
  export type DeniedMessage = channelTypes.DeniedMessage
  export type KeyFetchStartMessage = channelTypes.KeyFetchStartMessage
  export type KeyFetchEndMessage = channelTypes.KeyFetchEndMessage
  export type KeyRotationMessage = channelTypes.KeyRotationMessage
  export type KeyStaleMessage = channelTypes.KeyStaleMessage
  export type KeyDroppedMessage = channelTypes.KeyDroppedMessage
  export type IdentityMessage = channelTypes.IdentityMessage
  export type CloudflareAccessTransformInput = openapi.CloudflareAccessTransformInput
}

export = fastifyCloudflareAccess
