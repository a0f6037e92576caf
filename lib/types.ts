import type { FastifyReply, FastifyRequest } from 'fastify'

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
  /** Identity-provider claims, best effort. */
  custom?: Record<string, unknown>
  common_name?: undefined
}

/** An application token issued to a service token (a machine client). */
export interface CloudflareAccessServiceClaims extends CloudflareAccessBaseClaims {
  /** The service token's Client ID, ending in `.access`. */
  common_name: string
  /** Empty for service tokens. */
  sub?: string
  email?: undefined
}

/** The verified claims of a Cloudflare Access token: tell them apart by `email` or `common_name`. */
export type CloudflareAccessClaims = CloudflareAccessUserClaims | CloudflareAccessServiceClaims

/** `fastify.cfAccess`: verification for route-level hooks and for tokens from elsewhere. */
export interface CloudflareAccessDecorator {
  /**
   * A hook for `onRequest` or `preHandler`: verifies the request's token and sets `request.cfAccess`,
   * or rejects with one of the plugin's errors.
   */
  verify: (request: FastifyRequest, reply: FastifyReply) => Promise<void>
  /** Verifies one token; resolves its claims or rejects with an error carrying `statusCode` and `code`. */
  verifyToken: (token: string) => Promise<CloudflareAccessClaims>
}

declare module 'fastify' {
  interface FastifyRequest {
    /** The verified Cloudflare Access claims, or `null` where no verification ran. */
    cfAccess: CloudflareAccessClaims | null
  }
  interface FastifyInstance {
    /** Set by fastify-cloudflare-access. */
    cfAccess: CloudflareAccessDecorator
  }
}
