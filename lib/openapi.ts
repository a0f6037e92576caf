/** OpenAPI descriptions for @fastify/swagger: the two token carriers as security schemes, and a transform that marks protected routes. */
import type { FastifySchema, RouteOptions } from 'fastify'
import { isOptional } from './optional'
import { NO_RULE, type RouteConsumer } from './route-config'
import type { CloudflareAccessHook } from './types'

/**
 * The two places a Cloudflare Access token travels, as OpenAPI 3 security schemes: put them into
 * `openapi.components.securitySchemes` of @fastify/swagger's options. (Swagger 2 has no cookie scheme.)
 */
export const cloudflareAccessSecuritySchemes = Object.freeze({
  cloudflareAccessHeader: Object.freeze({
    type: 'apiKey' as const,
    in: 'header' as const,
    name: 'Cf-Access-Jwt-Assertion',
    description: 'The Cloudflare Access application token, added by Access to every request it lets through (and sent by machine clients with a service token).'
  }),
  cloudflareAccessCookie: Object.freeze({
    type: 'apiKey' as const,
    in: 'cookie' as const,
    name: 'CF_Authorization',
    description: 'The Cloudflare Access application token, in the cookie Access sets for browsers.'
  })
})

/**
 * The security requirement of a protected route: the header **or** the cookie. For a route protected in
 * a way the plugin cannot see (a wrapper such as @fastify/auth, a scope hook you added), put it into the
 * route's `schema.security` yourself; the transform then adds the error answers.
 */
// Typed as @fastify/swagger types `schema.security`; frozen, so that no route can change it for the others.
export const cloudflareAccessSecurity = Object.freeze([
  Object.freeze({ cloudflareAccessHeader: Object.freeze([]) }),
  Object.freeze({ cloudflareAccessCookie: Object.freeze([]) })
]) as unknown as Array<{ [scheme: string]: string[] }>

/** What @fastify/swagger passes to a `transform` (only the parts read here). */
export interface CloudflareAccessTransformInput {
  schema?: FastifySchema
  url: string
  route: RouteOptions
  openapiObject?: { security?: ReadonlyArray<Record<string, readonly string[]>>, components?: { securitySchemes?: object } }
}

/** How a route is protected, as the plugin saw it when the route was added. */
type Protection = 'required' | 'optional' | 'open'

const kProtection = Symbol('fastify-cloudflare-access.openapi')
const SCHEME_NAMES = Object.keys(cloudflareAccessSecuritySchemes)
const ROUTE_HOOKS = ['onRequest', 'preParsing', 'preValidation', 'preHandler'] as const

/** Fastify's error answer, `{ statusCode, code, error, message }`, for one status. */
function errorAnswer (statusCode: number, description: string, codes: string): Record<string, unknown> {
  return {
    description,
    type: 'object',
    required: ['statusCode', 'code', 'error', 'message'],
    properties: {
      statusCode: { type: 'integer', enum: [statusCode] },
      code: { type: 'string', description: codes },
      error: { type: 'string' },
      message: { type: 'string' }
    }
  }
}

/** The three answers, built afresh for each route: swagger's builder may change what it is given. */
function errorAnswers (): Record<string, Record<string, unknown>> {
  return {
    401: errorAnswer(401, 'Cloudflare Access: no valid token (missing, invalid, expired, or for another application)',
      'FST_CF_ACCESS_TOKEN_MISSING, FST_CF_ACCESS_TOKEN_INVALID, FST_CF_ACCESS_TOKEN_EXPIRED or FST_CF_ACCESS_CLAIM_INVALID'),
    403: errorAnswer(403, 'Cloudflare Access: a valid token that this route does not admit',
      'FST_CF_ACCESS_FORBIDDEN or FST_CF_ACCESS_NO_IDENTITY'),
    503: {
      ...errorAnswer(503, 'Cloudflare Access: the signing keys or the identity endpoint cannot be reached; retry later',
        'FST_CF_ACCESS_KEYS_UNAVAILABLE or FST_CF_ACCESS_IDENTITY_UNAVAILABLE'),
      headers: { 'Retry-After': { type: 'integer', description: 'Seconds to wait before retrying' } }
    }
  }
}

/** A route's hooks (a function or an array of them) contain `fn`. */
function runs (route: RouteOptions, fn: unknown): boolean {
  return ROUTE_HOOKS.some((name) => {
    const hooks: unknown = route[name]
    return hooks === fn || (Array.isArray(hooks) && hooks.includes(fn))
  })
}

/**
 * Records, for {@link cloudflareAccessTransform}, whether the plugin protects each route added to this scope
 * (or its children), as lib/route-config.ts's pass reads it. Routes added before the plugin in the same
 * scope are not seen (register the plugin first, as the README says).
 */
export function describeRoutes (options: { hook: CloudflareAccessHook, required: boolean }, verify: unknown): RouteConsumer {
  const { hook, required } = options
  return (route, rule) => {
    let protection: Protection | undefined
    if (rule.skip) protection = 'open'
    else if (hook !== false && isOptional(rule, required)) protection = 'optional'
    // A route policy is never served open (the plugin refuses or enforces it), so it is protected too.
    else if (hook !== false || rule !== NO_RULE || runs(route, verify)) protection = 'required'
    // Otherwise (hook: false, no verify of its own) the route may still be protected by a scope hook or a
    // wrapper the plugin cannot see: it is left undescribed, and its own schema.security decides.
    if (protection !== undefined) (route as RouteOptions & { [kProtection]?: Protection })[kProtection] = protection
  }
}

function namesScheme (security: unknown): boolean {
  return Array.isArray(security) && security.some((requirement) =>
    requirement !== null && typeof requirement === 'object' && SCHEME_NAMES.some((name) => name in requirement))
}

/**
 * A @fastify/swagger `transform` (OpenAPI 3). On every route the plugin protects — its scope hook, a
 * route-level `fastify.cfAccess.verify`, a route policy — and on every route whose own `schema.security`
 * names one of {@link cloudflareAccessSecuritySchemes}, the operation gets the security requirement
 * {@link cloudflareAccessSecurity} (unless the route declares its own) and the 401, 403 and 503 answers in
 * Fastify's error shape (unless the route declares those codes). Routes with `config.cfAccess: false`
 * get an empty requirement where the document declares a global one; other routes are left as they are.
 *
 * It describes and never mutates: the route's schema — which Fastify also uses to validate and serialize,
 * and which may be shared between routes — is copied, never changed. To combine it with a transform of
 * your own, call both: `transform: (input) => cloudflareAccessTransform({ ...input, ...yours(input) })`.
 */
export function cloudflareAccessTransform (input: CloudflareAccessTransformInput): { schema: FastifySchema, url: string } {
  const { schema, url, route, openapiObject } = input
  const protection = (route as RouteOptions & { [kProtection]?: Protection })[kProtection]
  const declared = (schema as { security?: unknown } | undefined)?.security
  if (protection === 'open') {
    if (declared !== undefined || openapiObject?.security === undefined || openapiObject.security.length === 0) return { schema: schema as FastifySchema, url }
    return { schema: { ...schema, security: [] } as FastifySchema, url }
  }
  if (protection === undefined && !namesScheme(declared)) return { schema: schema as FastifySchema, url }

  if (openapiObject === undefined) {
    throw new Error('fastify-cloudflare-access: cloudflareAccessTransform describes OpenAPI 3 documents: give @fastify/swagger the openapi option (Swagger 2 has no cookie security scheme)')
  }
  const schemes = openapiObject.components?.securitySchemes as Record<string, unknown> | undefined
  if (SCHEME_NAMES.some((name) => schemes?.[name] === undefined)) {
    throw new Error('fastify-cloudflare-access: add cloudflareAccessSecuritySchemes to the openapi.components.securitySchemes option of @fastify/swagger')
  }
  const response = (schema as { response?: Record<string, unknown> } | undefined)?.response
  return {
    schema: {
      ...schema,
      // Optional: an empty requirement says "or no token at all".
      security: declared ?? [...cloudflareAccessSecurity.map((requirement) => ({ ...requirement })), ...(protection === 'optional' ? [{}] : [])],
      // Without a response schema swagger would describe a default 200: keep it.
      response: { ...(response ?? { 200: { description: 'Default Response', type: 'null' } }), ...missing(response) }
    } as FastifySchema,
    url
  }
}

/** The error answers a route does not declare itself. */
function missing (response: Record<string, unknown> | undefined): Record<string, unknown> {
  const answers = errorAnswers()
  for (const status of Object.keys(answers)) {
    if (response?.[status] !== undefined) delete answers[status]
  }
  return answers
}
