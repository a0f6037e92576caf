import swagger, { type SwaggerTransform } from '@fastify/swagger'
import Fastify, { type FastifyInstance, type FastifySchema } from 'fastify'
import { expectAssignable, expectError, expectNotAssignable, expectType } from 'tsd'
import cloudflareAccess, {
  cloudflareAccessSecurity,
  cloudflareAccessSecuritySchemes,
  cloudflareAccessTransform,
  requireClaims,
  requireServiceToken,
  requireUser,
  type CloudflareAccessClaims,
  type CloudflareAccessDecorator,
  type CloudflareAccessRouteConfig,
  type CloudflareAccessServiceClaims,
  type CloudflareAccessUserClaims
} from 'fastify-cloudflare-access'

const app = Fastify()

// fastify.cfAccess is typed as present, as Fastify's own decorators are (fastify.jwt, fastify.auth): the
// route-level hook compiles under strict mode without `!` or `?.`. In a scope without the plugin it is
// undefined at run time, and reading `.verify` from it throws when the route is declared: loud, at boot.
expectType<CloudflareAccessDecorator>(app.cfAccess)
export const verify = app.cfAccess.verify
app.get('/report', { preHandler: app.cfAccess.verify }, async () => 'ok')
export function scoped (admin: FastifyInstance): void {
  const { verify } = admin.cfAccess
  admin.get('/x', { onRequest: verify }, async () => 'ok')
}
// request.cfAccess stays honest: null until verification admitted the request, undefined outside the scopes.
app.get('/', async (request) => {
  expectType<CloudflareAccessClaims | null | undefined>(request.cfAccess)
  // @ts-expect-error possibly null or undefined
  return request.cfAccess.email
})

// The caller in one line: no `!`, no `?.`, no guard.
app.register(async (admin) => {
  await admin.register(cloudflareAccess, { teamDomain: 'acme', audience: 'AUD' })
  admin.get('/me', async (request) => {
    expectType<string>(requireUser(request).email)
    expectType<CloudflareAccessUserClaims>(requireUser(request))
    expectType<string>(requireServiceToken(request).common_name)
    expectType<CloudflareAccessServiceClaims>(requireServiceToken(request))
    expectType<CloudflareAccessClaims>(requireClaims(request))
    expectType<string | string[]>(requireClaims(request).aud)
    // @ts-expect-error a service token has no email
    return requireServiceToken(request).email.toLowerCase()
  })
}, { prefix: '/admin' })
expectError(requireUser())
expectError(requireUser({}))

// OpenAPI: the schemes fit @fastify/swagger's options, the transform is a swagger transform, and the
// requirement fits a route's schema.security.
app.register(swagger, {
  openapi: { components: { securitySchemes: { ...cloudflareAccessSecuritySchemes } } },
  transform: cloudflareAccessTransform
})
expectAssignable<SwaggerTransform>(cloudflareAccessTransform)
app.register(swagger, {
  openapi: {},
  transform: (input) => cloudflareAccessTransform({ ...input, url: input.url.toLowerCase() })
})
expectType<'header'>(cloudflareAccessSecuritySchemes.cloudflareAccessHeader.in)
expectType<'cookie'>(cloudflareAccessSecuritySchemes.cloudflareAccessCookie.in)
app.get('/wrapped', { schema: { security: cloudflareAccessSecurity } }, async () => 'ok')
expectType<{ schema: FastifySchema, url: string }>(cloudflareAccessTransform({ url: '/', route: { method: 'GET', url: '/', handler: async () => 'ok' } }))

// Options of this issue: corsPreflight, required, and Fastify's own logLevel / logSerializers.
app.register(cloudflareAccess, { teamDomain: 'acme', audience: 'AUD', corsPreflight: true, required: false, logLevel: 'warn', logSerializers: { certsUrl: () => 'x' } })
expectError(app.register(cloudflareAccess, { teamDomain: 'acme', audience: 'AUD', corsPreflight: 'yes' }))
expectError(app.register(cloudflareAccess, { teamDomain: 'acme', audience: 'AUD', required: 'no' }))
expectError(app.register(cloudflareAccess, { teamDomain: 'acme', audience: 'AUD', logLevel: 'loud' }))

// Route config: optional, required, a policy — and never a policy on an optional route.
expectAssignable<CloudflareAccessRouteConfig>({ required: false })
expectAssignable<CloudflareAccessRouteConfig>({ required: true })
expectAssignable<CloudflareAccessRouteConfig>({ required: true, allow: { emails: ['a@acme.com'] } })
expectAssignable<CloudflareAccessRouteConfig>({ allow: { emails: ['a@acme.com'] } })
expectNotAssignable<CloudflareAccessRouteConfig>({ required: false, allow: { emails: ['a@acme.com'] } })
expectNotAssignable<CloudflareAccessRouteConfig>({ required: false, authorize: () => true })
expectNotAssignable<CloudflareAccessRouteConfig>({ required: 'no' })
app.get('/maybe', { config: { cfAccess: { required: false } } }, async (request) => request.cfAccess?.email ?? 'guest')
