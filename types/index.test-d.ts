import Fastify, { type FastifyContextConfig, type FastifyReply, type FastifyRequest } from 'fastify'
import { expectAssignable, expectError, expectNotAssignable, expectType } from 'tsd'
import cloudflareAccess, {
  fastifyCloudflareAccess,
  errorCodes,
  TokenInvalidError,
  KeysUnavailableError,
  ForbiddenError,
  isServiceToken,
  type CloudflareAccessAllow,
  type CloudflareAccessAuthorize,
  type CloudflareAccessAuthorizeContext,
  type CloudflareAccessGroup,
  type CloudflareAccessIdentity,
  type CloudflareAccessRouteConfig,
  type CloudflareAccessClaims,
  type CloudflareAccessDecorator,
  type CloudflareAccessServiceClaims,
  type CloudflareAccessUserClaims,
  type FastifyCloudflareAccessOptions
} from 'fastify-cloudflare-access'
import { createAccessEmulator, type AccessEmulator } from 'fastify-cloudflare-access/testing'

const app = Fastify()

// registration: the tutorial shape and the options
app.register(async (admin) => {
  await admin.register(cloudflareAccess, { teamDomain: 'acme', audience: 'AUD' })
  admin.get('/', async (request) => request.cfAccess?.email)
}, { prefix: '/admin' })
app.register(fastifyCloudflareAccess, { teamDomain: 'acme', audience: ['A', 'B'], hook: false, clockTolerance: 0 })
app.register(cloudflareAccess.default, {
  teamDomain: 'https://acme.cloudflareaccess.com',
  audience: 'AUD',
  hook: 'preHandler',
  fetchTimeout: 1000,
  refreshInterval: 60_000,
  unknownKidCooldown: 5000,
  maxStaleAge: 3_600_000
})
expectError(app.register(cloudflareAccess, { teamDomain: 'acme' }))
expectError(app.register(cloudflareAccess, { audience: 'AUD' }))
expectError(app.register(cloudflareAccess, { teamDomain: 'acme', audience: 'AUD', hook: 'onSend' }))
expectError(app.register(cloudflareAccess, { teamDomain: 'acme', audience: 'AUD', hook: true }))
expectError(app.register(cloudflareAccess, { teamDomain: 'acme', audience: 'AUD', clockTolerance: '30' }))
expectError(app.register(cloudflareAccess, { teamDomain: 'acme', audience: 42 }))
expectAssignable<FastifyCloudflareAccessOptions>({ teamDomain: 'acme', audience: ['a'] as const })

// request.cfAccess: the verified claims, null, or undefined outside the plugin's scopes; a union told
// apart by email / common_name
app.get('/me', async (request) => {
  expectType<CloudflareAccessClaims | null | undefined>(request.cfAccess)
  const claims = request.cfAccess
  if (claims == null) return null
  expectType<string | string[]>(claims.aud)
  expectType<string>(claims.iss)
  expectType<number>(claims.exp)
  expectType<number | undefined>(claims.nbf)
  expectType<'app' | undefined>(claims.type)
  if (claims.email !== undefined) {
    expectType<CloudflareAccessUserClaims>(claims)
    expectType<string>(claims.email)
    expectType<string | undefined>(claims.country)
  } else {
    expectType<CloudflareAccessServiceClaims>(claims)
    expectType<string>(claims.common_name)
  }
  if (claims.common_name !== undefined) expectType<string | undefined>(claims.sub)
  // @ts-expect-error no such claim
  return claims.emial
})
expectNotAssignable<CloudflareAccessClaims>({ aud: 'a', iss: 'i', exp: 1 })
expectNotAssignable<CloudflareAccessClaims>({ aud: 'a', iss: 'i', exp: '1', email: 'e' })
expectAssignable<CloudflareAccessClaims>({ aud: ['a'], iss: 'i', exp: 1, email: 'e' })
expectAssignable<CloudflareAccessClaims>({ aud: ['a'], iss: 'i', exp: 1, common_name: 'x.access', sub: '' })

// fastify.cfAccess: the route-level hook and verifyToken, on the scopes where the plugin is registered
expectType<CloudflareAccessDecorator>(app.cfAccess)
const access = app.cfAccess
expectType<(request: FastifyRequest, reply: FastifyReply) => Promise<void>>(access.verify)
expectType<Promise<CloudflareAccessClaims>>(access.verifyToken('token'))
app.get('/ws', async (request) => {
  expectType<Promise<CloudflareAccessClaims>>(access.verifyToken('token', request))
})
expectError(access.verifyToken('token', 'not a request'))
app.get('/route', { preHandler: access.verify }, async () => 'ok')
app.get('/route2', { onRequest: [access.verify] }, async () => 'ok')

// reply.cfAccessLogout: a redirect to the fixed, relative logout path; it takes no destination
app.get('/logout', { config: { cfAccess: false } }, async (request, reply) => {
  expectType<() => FastifyReply>(reply.cfAccessLogout)
  expectError(reply.cfAccessLogout('https://evil.example'))
  return reply.cfAccessLogout()
})
app.get('/bye', (request, reply) => { reply.cfAccessLogout().header('x-bye', '1') })

// errors: constructors with code and statusCode
expectType<'FST_CF_ACCESS_TOKEN_INVALID'>(new TokenInvalidError('reason').code)
expectType<401>(new TokenInvalidError('reason').statusCode)
expectType<503>(new KeysUnavailableError('reason').statusCode)
expectType<'FST_CF_ACCESS_KEYS_UNAVAILABLE'>(errorCodes.KEYS_UNAVAILABLE)
expectError(new TokenInvalidError())

// the test kit
export async function kit (): Promise<void> {
  const access = await createAccessEmulator({ audience: ['a', 'b'], latency: 0 })
  expectType<AccessEmulator>(access)
  expectType<string>(access.signToken({ email: 'x@y.z' }, { expiresIn: 60, kid: null }))
  expectType<string>(access.signServiceToken())
  expectType<Promise<string>>(access.rotateKeys())
  access.setOutage('reset')
  access.setOutage(false)
  expectError(access.setOutage('sometimes'))
  expectType<number>(access.requestCount)
  await access.close()
  // served by a server of yours through handle(), at that origin
  const served = await createAccessEmulator({ teamDomain: 'http://127.0.0.1:8787' })
  expectType<AccessEmulator>(served)
  expectError(createAccessEmulator({ teamDomain: 8787 }))
}

// authorization: allow, authorize, route config
app.register(cloudflareAccess, {
  teamDomain: 'acme',
  audience: 'AUD',
  allow: { emails: ['a@acme.com'], emailDomains: ['acme.com'], groups: ['admins'], groupIds: ['g-1'], serviceTokens: true },
  authorizeTimeout: 2000,
  authorize: async (claims, request) => {
    expectType<CloudflareAccessClaims>(claims)
    expectType<FastifyRequest>(request)
    return claims.email !== undefined
  },
  identityTimeout: 1000,
  identityCacheTtl: 60_000,
  identityCacheSize: 100
})
app.register(cloudflareAccess, { teamDomain: 'acme', audience: 'AUD', allow: { serviceTokens: ['ci.access'] } })
expectError(app.register(cloudflareAccess, { teamDomain: 'acme', audience: 'AUD', allow: { serviceTokens: false } }))
expectError(app.register(cloudflareAccess, { teamDomain: 'acme', audience: 'AUD', allow: { emails: 'a@acme.com' } }))
expectError(app.register(cloudflareAccess, { teamDomain: 'acme', audience: 'AUD', authorize: true }))
app.get('/health', { config: { cfAccess: false } }, async () => 'ok')
app.post('/billing', { config: { cfAccess: { allow: { groups: ['finance'] } } } }, async () => 'ok')
app.post('/eu', { config: { cfAccess: { authorize: (claims) => claims.exp > 0 } } }, async () => 'ok')
// authorize's third argument: the identity of the token being verified
app.register(cloudflareAccess, {
  teamDomain: 'acme',
  audience: 'AUD',
  authorize: async (claims, request, context) => {
    expectType<CloudflareAccessAuthorizeContext>(context)
    expectType<Promise<CloudflareAccessIdentity>>(context.identity())
    const { groups } = await context.identity()
    return ['finance', 'admins'].every((name) => groups.some((group) => group.name === name))
  }
})
app.post('/finance', { config: { cfAccess: { authorize: async (_claims, _request, { identity }) => (await identity()).groups.length > 0 } } }, async () => 'ok')
expectAssignable<CloudflareAccessAuthorize>(() => true)
expectNotAssignable<CloudflareAccessAuthorize>((_claims: CloudflareAccessClaims, _request: FastifyRequest, context: { identity: () => string }) => context.identity() === '')
// Fastify infers a route's config type from the literal, so a wrong value there is caught at boot (a
// test covers it); the augmented FastifyContextConfig itself is precise:
expectType<CloudflareAccessRouteConfig | undefined>(({} as FastifyContextConfig).cfAccess)
app.get('/cfg', async (request) => {
  expectType<CloudflareAccessRouteConfig | undefined>(request.routeOptions.config.cfAccess)
  return 'ok'
})
expectAssignable<CloudflareAccessRouteConfig>(false)
expectNotAssignable<CloudflareAccessRouteConfig>(true)
expectAssignable<CloudflareAccessAllow>({ emailDomains: ['acme.com'] as const })

// type guards and identity
app.get('/identity', async (request) => {
  const claims = request.cfAccess
  if (claims != null && isServiceToken(claims)) expectType<CloudflareAccessServiceClaims>(claims)
  if (claims != null && cloudflareAccess.isUserToken(claims)) expectType<CloudflareAccessUserClaims>(claims)
  const identity = await request.cfAccessIdentity()
  expectType<CloudflareAccessIdentity>(identity)
  expectType<string>(identity.email)
  expectType<CloudflareAccessGroup[]>(identity.groups)
  expectType<string>(identity.groups[0]!.name)
  return identity
})
expectType<403>(new ForbiddenError().statusCode)
expectType<'FST_CF_ACCESS_NO_IDENTITY'>(new cloudflareAccess.NoIdentityError().code)
expectType<503>(new cloudflareAccess.IdentityUnavailableError('x').statusCode)
expectType<500>(new cloudflareAccess.AuthorizeFailedError('x').statusCode)
expectType<'FST_CF_ACCESS_AUTHORIZE_FAILED'>(new cloudflareAccess.AuthorizeFailedError('x').code)
expectType<503>(new cloudflareAccess.AuthorizeTimeoutError(5).statusCode)
expectType<'FST_CF_ACCESS_AUTHORIZE_TIMEOUT'>(cloudflareAccess.errorCodes.AUTHORIZE_TIMEOUT)
expectError(app.register(cloudflareAccess, { teamDomain: 'acme', audience: 'AUD', allow: { groupIds: 'g-1' } }))
expectError(app.register(cloudflareAccess, { teamDomain: 'acme', audience: 'AUD', authorizeTimeout: '10s' }))
