import Fastify, { type FastifyReply, type FastifyRequest } from 'fastify'
import { expectAssignable, expectError, expectNotAssignable, expectType } from 'tsd'
import cloudflareAccess, {
  fastifyCloudflareAccess,
  errorCodes,
  TokenInvalidError,
  KeysUnavailableError,
  type CloudflareAccessClaims,
  type CloudflareAccessDecorator,
  type CloudflareAccessServiceClaims,
  type CloudflareAccessUserClaims,
  type FastifyCloudflareAccessOptions
} from '..'
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

// request.cfAccess: the verified claims or null, a union told apart by email / common_name
app.get('/me', async (request) => {
  expectType<CloudflareAccessClaims | null>(request.cfAccess)
  const claims = request.cfAccess
  if (claims === null) return null
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

// fastify.cfAccess: the route-level hook and verifyToken
expectType<CloudflareAccessDecorator>(app.cfAccess)
expectType<(request: FastifyRequest, reply: FastifyReply) => Promise<void>>(app.cfAccess.verify)
expectType<Promise<CloudflareAccessClaims>>(app.cfAccess.verifyToken('token'))
app.get('/route', { preHandler: app.cfAccess.verify }, async () => 'ok')
app.get('/route2', { onRequest: [app.cfAccess.verify] }, async () => 'ok')

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
}
