import cookie from '@fastify/cookie'
import Fastify, { type FastifyInstance, type FastifyRequest } from 'fastify'
import t, { type Test } from 'tap'
import cloudflareAccess, { requireServiceToken, requireUser } from '../index'
import { compilePolicy } from '../lib/policy'
import type { AccessEmulator } from '../lib/testing'
import type { CloudflareAccessAuthorize, FastifyCloudflareAccessOptions } from '../lib/types'
import { attackerKey, captureLogs, emulator, HEADER, sleep } from './helpers'

// Authorization on top of authentication: 401 (who are you?) and 403 (you may not) stay apart.

async function app (t: Test, access: AccessEmulator, options: Partial<FastifyCloudflareAccessOptions>, routes?: (admin: FastifyInstance) => void, fastify = {}): Promise<FastifyInstance> {
  const server = Fastify(fastify)
  t.teardown(() => server.close())
  server.register(async (admin) => {
    await admin.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, ...options })
    admin.get('/', async (request) => ({ claims: request.cfAccess }))
    routes?.(admin)
  }, { prefix: '/admin' })
  await server.ready()
  return server
}

async function status (server: FastifyInstance, token?: string, url = '/admin', method: 'GET' | 'POST' = 'GET'): Promise<number> {
  return (await server.inject({ method, url, headers: token === undefined ? {} : { [HEADER]: token } })).statusCode
}

// authorize wherever it can run: the plugin's hook (onRequest or preHandler) or verify in a route hook,
// with one more hook of the same kind after ours, under a plugin-level or a route-level policy.

const FAILED = 'FST_CF_ACCESS_AUTHORIZE_FAILED'

type Position = 'plugin onRequest' | 'plugin preHandler' | 'route verify as onRequest' | 'route verify as preHandler'
const POSITIONS: Position[] = ['plugin onRequest', 'plugin preHandler', 'route verify as onRequest', 'route verify as preHandler']

/** The values a careless or hostile `authorize` may throw, by name (picked per request by a header). */
const THROWN: Record<string, unknown> = {
  false: false,
  zero: 0,
  'empty string': '',
  null: null,
  undefined,
  'a string': 'nope',
  'a plain object': { statusCode: 200, message: 'looks like an error' },
  NaN: Number.NaN,
  'an array': []
}

/**
 * An app protected at `position`, whose policy (plugin-level or route-level) runs `authorize`, with one
 * more hook of the same kind after ours (the hook that used to let a "no error" through), and
 * @fastify/cookie registered after the plugin.
 */
async function appWith (t: Test, access: AccessEmulator, position: Position, level: 'plugin' | 'route', authorize: CloudflareAccessAuthorize, extra: Partial<FastifyCloudflareAccessOptions> = {}): Promise<{ app: FastifyInstance, handled: () => number }> {
  let handled = 0
  const app = Fastify()
  t.teardown(() => app.close())
  const hook = position === 'plugin onRequest' ? 'onRequest' : position === 'plugin preHandler' ? 'preHandler' : false
  await app.register(cloudflareAccess, {
    teamDomain: access.teamDomain,
    audience: access.audience,
    hook,
    ...(level === 'plugin' ? { authorize } : {}),
    ...extra
  })
  await app.register(cookie)
  const after = async (): Promise<void> => {}
  const routeHooks = position === 'route verify as onRequest'
    ? { onRequest: [app.cfAccess.verify, after] }
    : position === 'route verify as preHandler'
      ? { preHandler: [app.cfAccess.verify, after] }
      : hook === 'onRequest' ? { onRequest: after } : { preHandler: after }
  app.get('/', {
    ...routeHooks,
    config: level === 'route' ? { cfAccess: { authorize } } : {}
  }, async (request) => {
    handled++
    return { email: request.cfAccess?.email ?? null }
  })
  await app.ready()
  return { app, handled: () => handled }
}

t.test('allow.emails: exact addresses, case-insensitive', async (t) => {
  const access = await emulator(t)
  const server = await app(t, access, { allow: { emails: ['Alice@Acme.com'] } })
  t.equal(await status(server, access.signToken({ email: 'alice@acme.com' })), 200)
  t.equal(await status(server, access.signToken({ email: 'ALICE@ACME.COM' })), 200)
  t.equal(await status(server, access.signToken({ email: 'alice@acme.co' })), 403)
  t.equal(await status(server, access.signToken({ email: 'malice@acme.com' })), 403)
  t.equal(await status(server, access.signToken({ email: 'alice@acme.com.evil.com' })), 403)
  t.equal(await status(server), 401, 'no token is still 401, not 403')
  t.equal(await status(server, access.signToken({ email: 'alice@acme.com', aud: ['0'.repeat(64)] })), 401, 'a bad token is 401 even for an allowed email')
})

t.test('allow.emailDomains: the exact domain after the @, case-insensitive', async (t) => {
  const access = await emulator(t)
  const server = await app(t, access, { allow: { emailDomains: ['Acme.com'] } })
  const cases: Array<[string, number]> = [
    ['alice@acme.com', 200],
    ['BOB@ACME.COM', 200],
    ['eve@evilacme.com', 403],
    ['eve@eng.acme.com', 403],
    ['eve@acme.com.evil.com', 403],
    ['eve@acme.co', 403],
    ['acme.com@evil.com', 403]
  ]
  for (const [email, expected] of cases) t.equal(await status(server, access.signToken({ email })), expected, email)
  t.equal(await status(server, access.signServiceToken()), 403, 'service tokens are not admitted by user grants')
})

t.test('allow.groups and allow.groupIds: a group name or a group id from the identity endpoint, fetched only when needed', async (t) => {
  const access = await emulator(t)
  access.setIdentity('alice@acme.com', { groups: [{ id: 'g-admins', name: 'admins' }] })
  access.setIdentity('bob@acme.com', { groups: [{ id: 'g-ops', name: 'ops' }, { id: 'g-x', name: 'x' }] })
  access.setIdentity('carol@acme.com', { groups: [{ id: 'g-sales', name: 'sales' }] })
  const server = await app(t, access, { allow: { emails: ['dave@acme.com'], groups: ['admins'], groupIds: ['g-ops'] } })
  t.equal(await status(server, access.signToken({ email: 'alice@acme.com' })), 200, 'by name')
  t.equal(await status(server, access.signToken({ email: 'bob@acme.com' })), 200, 'by id')
  t.equal(await status(server, access.signToken({ email: 'carol@acme.com' })), 403, 'another group')
  t.equal(await status(server, access.signToken({ email: 'nobody@acme.com' })), 403, 'no group')
  const before = access.identityRequestCount
  t.equal(await status(server, access.signToken({ email: 'dave@acme.com' })), 200, 'an email grant that matches needs no identity')
  t.equal(access.identityRequestCount, before, 'no identity lookup for it')
  t.equal(await status(server, access.signServiceToken()), 403, 'a service token never reaches the groups grant')
  t.equal(access.identityRequestCount, before, 'and causes no identity lookup')
})

t.test('allow.serviceTokens: an allowlist of Client IDs, or true', async (t) => {
  const access = await emulator(t)
  const listed = await app(t, access, { allow: { serviceTokens: ['ci.access'] } })
  t.equal(await status(listed, access.signServiceToken({ common_name: 'ci.access' })), 200)
  t.equal(await status(listed, access.signServiceToken({ common_name: 'other.access' })), 403)
  t.equal(await status(listed, access.signServiceToken({ common_name: 'CI.access' })), 403, 'Client IDs are exact')
  t.equal(await status(listed, access.signToken()), 403, 'user tokens are not admitted by serviceTokens')
  const any = await app(t, access, { allow: { serviceTokens: true } })
  t.equal(await status(any, access.signServiceToken()), 200)
  t.equal(await status(any, access.signToken()), 403)
})

t.test('without allow every valid token is admitted', async (t) => {
  const access = await emulator(t)
  const server = await app(t, access, {})
  t.equal(await status(server, access.signToken()), 200)
  t.equal(await status(server, access.signServiceToken()), 200)
})

t.test('authorize: must also hold, must return exactly true', async (t) => {
  const access = await emulator(t)
  const seen: string[] = []
  const server = await app(t, access, {
    allow: { emailDomains: ['acme.com'], serviceTokens: true },
    authorize: async (claims, request) => {
      seen.push(request.url)
      if (claims.common_name !== undefined) return claims.common_name === 'ok.access'
      if (claims.country === 'XX') return false
      if (claims.country === 'YY') return 'yes' as unknown as boolean
      if (claims.country === 'ZZ') return undefined as unknown as boolean
      return true
    }
  })
  t.equal(await status(server, access.signToken({ email: 'a@acme.com' })), 200)
  t.equal(await status(server, access.signToken({ email: 'a@acme.com', country: 'XX' })), 403, 'false')
  t.equal(await status(server, access.signToken({ email: 'a@acme.com', country: 'YY' })), 403, 'a truthy non-boolean')
  t.equal(await status(server, access.signToken({ email: 'a@acme.com', country: 'ZZ' })), 403, 'undefined (a forgotten return)')
  t.equal(await status(server, access.signToken({ email: 'a@evil.com' })), 403, 'allow is checked too')
  t.equal(await status(server, access.signServiceToken({ common_name: 'ok.access' })), 200)
  t.equal(await status(server, access.signServiceToken({ common_name: 'no.access' })), 403)
  t.ok(seen.every((url) => url === '/admin'), 'authorize gets the request')
  t.equal(seen.length, 6, 'authorize runs only for tokens that allow admitted')
})

t.test('authorize throwing: the error goes to Fastify’s error handler unchanged', async (t) => {
  const access = await emulator(t)
  const server = await app(t, access, {
    authorize: () => { throw Object.assign(new Error('database down'), { statusCode: 502, code: 'APP_DB' }) }
  })
  const res = await server.inject({ url: '/admin', headers: { [HEADER]: access.signToken() } })
  t.equal(res.statusCode, 502)
  t.same(res.json(), { statusCode: 502, code: 'APP_DB', error: 'Bad Gateway', message: 'database down' })
})

t.test('authorize that throws or rejects with a non-Error value never admits: every value, every position, sync and async, plugin and route policy', async (t) => {
  const access = await emulator(t)
  const token = access.signToken()
  for (const position of POSITIONS) {
    for (const level of ['plugin', 'route'] as const) {
      for (const mode of ['sync', 'async'] as const) {
        const authorize = ((_claims: unknown, request: FastifyRequest) => {
          const value = THROWN[request.headers['x-throw'] as string]
          if (mode === 'sync') throw value
          return Promise.reject(value)
        }) as CloudflareAccessAuthorize
        const { app, handled } = await appWith(t, access, position, level, authorize)
        for (const name of Object.keys(THROWN)) {
          const res = await app.inject({ url: '/', headers: { [HEADER]: token, 'x-throw': name } })
          t.equal(res.statusCode, 500, `${position}, ${level} policy, ${mode} ${name}: 500`)
          t.equal(res.json().code, FAILED, `${position}, ${level} policy, ${mode} ${name}: ${FAILED}`)
          t.notMatch(res.body, token.slice(-20), 'no token in the answer')
        }
        t.equal(handled(), 0, `${position}, ${level} policy, ${mode}: the handler never ran`)
      }
    }
  }
})

t.test('authorize that throws an Error: the error goes on unchanged, in every position', async (t) => {
  const access = await emulator(t)
  const authorize: CloudflareAccessAuthorize = () => { throw Object.assign(new Error('teapot'), { statusCode: 418, code: 'MY_CODE' }) }
  for (const position of POSITIONS) {
    const { app, handled } = await appWith(t, access, position, 'route', authorize)
    const res = await app.inject({ url: '/', headers: { [HEADER]: access.signToken() } })
    t.equal(res.statusCode, 418, position)
    t.equal(res.json().code, 'MY_CODE', position)
    t.equal(handled(), 0)
  }
})

t.test('authorize that never settles is bounded by authorizeTimeout: 503 with Retry-After, never a hung request', async (t) => {
  const access = await emulator(t)
  const authorize: CloudflareAccessAuthorize = () => new Promise<boolean>(() => {})
  for (const position of POSITIONS) {
    const { app, handled } = await appWith(t, access, position, 'plugin', authorize, { authorizeTimeout: 50 })
    const res = await app.inject({ url: '/', headers: { [HEADER]: access.signToken() } })
    t.equal(res.statusCode, 503, position)
    t.equal(res.json().code, 'FST_CF_ACCESS_AUTHORIZE_TIMEOUT', position)
    t.equal(res.headers['retry-after'], '5')
    t.equal(handled(), 0)
  }
  const late = await appWith(t, access, 'plugin onRequest', 'plugin', async () => { await sleep(20); return true }, { authorizeTimeout: 2000 })
  t.equal((await late.app.inject({ url: '/', headers: { [HEADER]: access.signToken() } })).statusCode, 200, 'a slow but settling authorize admits')
  t.rejects(async () => { await Fastify().register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, authorizeTimeout: 0 }) }, /"authorizeTimeout" must be a number of milliseconds/)
})

t.test('an authorize returning a truthy non-true value, or a thenable that rejects with nothing, never admits', async (t) => {
  const access = await emulator(t)
  const values: unknown[] = [1, 'true', {}, [], Promise.resolve(1), { then: (_ok: unknown, fail: (reason?: unknown) => void) => fail() }]
  for (const [index, value] of values.entries()) {
    const { app, handled } = await appWith(t, access, 'plugin onRequest', 'plugin', () => value as boolean)
    const res = await app.inject({ url: '/', headers: { [HEADER]: access.signToken() } })
    t.ok(res.statusCode === 403 || res.statusCode === 500, `value #${index}: ${res.statusCode}`)
    t.equal(handled(), 0)
  }
})

t.test('an authorize returning a falsy value (null, undefined, 0, empty, NaN, false) is a plain refusal: 403, never a 500', async (t) => {
  const access = await emulator(t)
  for (const value of [null, undefined, 0, '', Number.NaN, false]) {
    const { app, handled } = await appWith(t, access, 'plugin onRequest', 'plugin', () => value as boolean)
    const res = await app.inject({ url: '/', headers: { [HEADER]: access.signToken() } })
    t.same([res.statusCode, res.json().code], [403, 'FST_CF_ACCESS_FORBIDDEN'], String(value))
    t.equal(handled(), 0)
  }
})

t.test('403 answers name no secret, and are logged at info with the route and the subject', async (t) => {
  const access = await emulator(t)
  const logs = captureLogs()
  const server = await app(t, access, { allow: { emails: ['alice@acme.com'] } }, undefined, { logger: logs.logger })
  const token = access.signToken({ email: 'mallory@acme.com' })
  const res = await server.inject({ url: '/admin', headers: { [HEADER]: token } })
  t.same(res.json(), { statusCode: 403, code: 'FST_CF_ACCESS_FORBIDDEN', error: 'Forbidden', message: 'This Cloudflare Access identity is not allowed here' })
  const line = logs.lines.find((entry) => entry.err?.code === 'FST_CF_ACCESS_FORBIDDEN')
  t.match(line, { level: 30, err: { route: '/admin', subject: 'mallory@acme.com' } })
  t.notOk(JSON.stringify(logs.lines).includes(token.slice(-40)), 'no token in the logs')
  const service = access.signServiceToken({ common_name: 'bot.access' })
  await server.inject({ url: '/admin', headers: { [HEADER]: service } })
  t.ok(logs.lines.some((entry) => entry.err?.subject === 'bot.access'), 'a service token is logged by its Client ID')
})

t.test('route config: false opts out, a policy narrows the plugin-level one', async (t) => {
  const access = await emulator(t)
  access.setIdentity('fin@acme.com', { groups: [{ id: 'g-fin', name: 'finance' }] })
  access.setIdentity('fin@other.com', { groups: [{ id: 'g-fin', name: 'finance' }] })
  const server = await app(t, access, { allow: { emailDomains: ['acme.com'] } }, (admin) => {
    admin.get('/health', { config: { cfAccess: false } }, async (request) => ({ claims: request.cfAccess }))
    admin.post('/billing', { config: { cfAccess: { allow: { groups: ['finance'] } } } }, async (request) => ({ email: request.cfAccess?.email }))
    admin.get('/eu', { config: { cfAccess: { authorize: (claims) => claims.country === 'PT' } } }, async () => 'ok')
  })
  const health = await server.inject({ url: '/admin/health', headers: { [HEADER]: 'garbage' } })
  t.same(health.json(), { claims: null }, 'no verification at all on the opted-out route')
  t.equal(await status(server, undefined, '/admin/billing', 'POST'), 401)
  t.equal(await status(server, access.signToken({ email: 'fin@acme.com' }), '/admin/billing', 'POST'), 200, 'both policies admit')
  t.equal(await status(server, access.signToken({ email: 'dev@acme.com' }), '/admin/billing', 'POST'), 403, 'the route policy refuses')
  t.equal(await status(server, access.signToken({ email: 'fin@other.com' }), '/admin/billing', 'POST'), 403, 'the plugin policy refuses')
  t.equal(await status(server, access.signToken({ email: 'dev@acme.com' }), '/admin'), 200, 'other routes keep the plugin policy only')
  t.equal(await status(server, access.signToken({ email: 'dev@acme.com', country: 'PT' }), '/admin/eu'), 200)
  t.equal(await status(server, access.signToken({ email: 'dev@acme.com', country: 'US' }), '/admin/eu'), 403)
})

t.test('route policies work with hook: false and with preHandler', async (t) => {
  const access = await emulator(t)
  for (const hook of [false, 'preHandler'] as const) {
    const server = Fastify()
    t.teardown(() => server.close())
    await server.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, hook })
    const hooks = hook === false ? { onRequest: server.cfAccess.verify } : {}
    server.get('/ops', { ...hooks, config: { cfAccess: { allow: { emails: ['ops@acme.com'] } } } }, async () => 'ok')
    server.get('/open', { config: { cfAccess: false } }, async (request) => ({ claims: request.cfAccess }))
    await server.ready()
    t.equal(await status(server, access.signToken({ email: 'ops@acme.com' }), '/ops'), 200, `${hook}: admitted`)
    t.equal(await status(server, access.signToken({ email: 'dev@acme.com' }), '/ops'), 403, `${hook}: refused`)
    t.equal(await status(server, undefined, '/ops'), 401, `${hook}: unauthenticated`)
    t.equal(await status(server, undefined, '/open'), 200, `${hook}: opted out`)
  }
})

t.test('a route declared before the plugin in the same scope still has its policy enforced', async (t) => {
  const access = await emulator(t)
  const server = Fastify()
  t.teardown(() => server.close())
  server.get('/early', { config: { cfAccess: { allow: { emails: ['a@acme.com'] } } } }, async () => 'ok')
  await server.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience })
  await server.ready()
  t.equal(await status(server, access.signToken({ email: 'a@acme.com' }), '/early'), 200)
  t.equal(await status(server, access.signToken({ email: 'b@acme.com' }), '/early'), 403)
})

t.test('an invalid policy on a route declared before the plugin refuses the boot, naming the route', async (t) => {
  const access = await emulator(t)
  const server = Fastify()
  t.teardown(() => server.close())
  server.get('/bad', { config: { cfAccess: { allow: {} } } }, async () => 'ok')
  await server.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience })
  await t.rejects(async () => { await server.ready() }, /route GET \/bad: "allow" needs at least one/)
})

t.test('policies are validated at registration', async (t) => {
  const access = await emulator(t)
  const base = { teamDomain: access.teamDomain, audience: access.audience }
  const bad: Array<[string, unknown, RegExp]> = [
    ['allow not an object', { allow: ['a@b.c'] }, /"allow" must be an object/],
    ['allow null', { allow: null }, /"allow" must be an object/],
    ['allow empty', { allow: {} }, /needs at least one of emails/],
    ['unknown grant', { allow: { email: ['a@b.c'] } }, /unknown key "allow.email"; did you mean "emails"\? known: emails, emailDomains, groups, groupIds, serviceTokens/],
    ['a grant in the singular', { allow: { emailDomain: ['acme.com'] } }, /unknown key "allow.emailDomain"; did you mean "emailDomains"\?/],
    ['a grant in another case', { allow: { groupIDs: ['g'] } }, /unknown key "allow.groupIDs"; did you mean "groupIds"\?/],
    ['a grant half named', { allow: { domains: ['acme.com'] } }, /unknown key "allow.domains"; did you mean "emailDomains"\?/],
    ['a grant nothing like one', { allow: { admins: ['a'] } }, /unknown key "allow.admins"; known: emails/],
    ['empty list', { allow: { emails: [] } }, /"allow.emails" must be a non-empty array/],
    ['non-string', { allow: { groups: ['a', 1] } }, /"allow.groups" must be a non-empty array of group names, got 1/],
    ['blank group', { allow: { groups: [' '] } }, /allow.groups/],
    ['blank group id', { allow: { groupIds: [''] } }, /"allow.groupIds"/],
    ['undefined in a list', { allow: { groups: [undefined] } }, /allow.groups.*got undefined/],
    ['not an email', { allow: { emails: ['alice'] } }, /allow.emails/],
    ['domain with @', { allow: { emailDomains: ['@acme.com'] } }, /allow.emailDomains/],
    ['domain without a dot', { allow: { emailDomains: ['acme'] } }, /allow.emailDomains/],
    ['domain with a trailing dot', { allow: { emailDomains: ['acme.com.'] } }, /allow.emailDomains/],
    ['domain ending in a hyphen', { allow: { emailDomains: ['acme.com-'] } }, /allow.emailDomains/],
    ['domain with a path', { allow: { emailDomains: ['acme.com/x'] } }, /allow.emailDomains/],
    ['serviceTokens false', { allow: { serviceTokens: false } }, /allow.serviceTokens/],
    ['serviceTokens with a space', { allow: { serviceTokens: ['a b'] } }, /allow.serviceTokens/],
    ['authorize not a function', { authorize: true }, /"authorize" must be a function/]
  ]
  for (const [name, options, message] of bad) {
    const server = Fastify()
    t.teardown(() => server.close())
    await t.rejects(async () => { await server.register(cloudflareAccess, { ...base, ...(options as object) } as never) }, message, name)
  }
})

t.test('route configs are validated when the route is added: boot fails, not the first request', async (t) => {
  const access = await emulator(t)
  const bad: Array<[string, unknown, RegExp]> = [
    ['true', true, /route GET \/x: config.cfAccess must be false or a policy/],
    ['null', null, /must be false or a policy/],
    ['empty policy', {}, /needs "allow", "authorize" or "required"/],
    ['unknown key', { allowed: {} }, /unknown key "config.cfAccess.allowed"; did you mean "allow"\? known: allow, authorize, required/],
    ['a typo', { requred: true }, /unknown key "config.cfAccess.requred"; did you mean "required"\?/],
    ['bad grant', { allow: { emails: 'a@b.c' } }, /"allow.emails" must be a non-empty array/]
  ]
  for (const [name, cfAccess, message] of bad) {
    const server = Fastify()
    t.teardown(() => server.close())
    await server.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience })
    t.throws(() => server.get('/x', { config: { cfAccess: cfAccess as never } }, async () => 'ok'), message, name)
  }
  const server = Fastify()
  t.teardown(() => server.close())
  await server.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, hook: false })
  t.throws(() => server.get('/x', { onRequest: [server.cfAccess.verify], config: { cfAccess: false } }, async () => 'ok'),
    /config.cfAccess is false \(no verification\) but the route also runs fastify.cfAccess.verify/)
})

t.test('isUserToken and isServiceToken tell the two kinds of claims apart', async (t) => {
  const access = await emulator(t)
  const server = Fastify()
  t.teardown(() => server.close())
  await server.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience })
  server.get('/', async (request) => {
    const claims = request.cfAccess
    if (claims == null) return 'none'
    if (cloudflareAccess.isUserToken(claims)) return `user ${claims.email}`
    return cloudflareAccess.isServiceToken(claims) ? `service ${claims.common_name}` : 'neither'
  })
  t.equal((await server.inject({ url: '/', headers: { [HEADER]: access.signToken({ email: 'a@b.co' }) } })).body, 'user a@b.co')
  t.equal((await server.inject({ url: '/', headers: { [HEADER]: access.signServiceToken({ common_name: 'x.access' }) } })).body, 'service x.access')
})

t.test('requireUser and requireServiceToken: the 403 of the wrong kind of token is logged with the route and the subject', async (t) => {
  const access = await emulator(t)
  const logs = captureLogs()
  const server = Fastify({ logger: logs.logger })
  t.teardown(() => server.close())
  await server.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience })
  server.get('/people', async (request) => requireUser(request).email)
  server.get('/robots', async (request) => requireServiceToken(request).common_name)
  const robot = await server.inject({ url: '/people', headers: { [HEADER]: access.signServiceToken({ common_name: 'bot.access' }) } })
  t.equal(robot.statusCode, 403)
  const person = await server.inject({ url: '/robots', headers: { [HEADER]: access.signToken({ email: 'alice@acme.com' }) } })
  t.equal(person.statusCode, 403)
  const refusals = logs.lines.filter((entry) => entry.err?.code === 'FST_CF_ACCESS_FORBIDDEN')
  t.match(refusals, [{ level: 30, err: { route: '/people', subject: 'bot.access' } }, { level: 30, err: { route: '/robots', subject: 'alice@acme.com' } }])
})

t.test('policy lists: domains of any number of labels, an email needs something before its @, and the grants a 403 names are the given ones', async (t) => {
  t.same([...compilePolicy('options', { emailDomains: ['eu.acme.com', 'a.b.c', 'x.io'] }, undefined).emailDomains ?? []], ['eu.acme.com', 'a.b.c', 'x.io'])
  for (const bad of ['@acme.com', 'acme.com']) {
    t.throws(() => compilePolicy('options', { emails: [bad] }, undefined), /"allow.emails" must be/, bad)
  }
  t.same(compilePolicy('options', { emails: ['a@acme.com'], groups: undefined }, undefined).grantKinds, ['emails'], 'an undefined grant is no grant')
  t.same(compilePolicy('options', undefined, () => true).grantKinds, [], 'authorize alone: no grant kinds')

  const access = await emulator(t)
  const logs = captureLogs()
  const server = Fastify({ logger: logs.logger })
  t.teardown(() => server.close())
  await server.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, authorize: () => false })
  server.get('/', async () => 'ok')
  t.equal((await server.inject({ url: '/', headers: { [HEADER]: access.signToken() } })).statusCode, 403)
  t.same(logs.lines.find((entry) => entry.err?.code === 'FST_CF_ACCESS_FORBIDDEN')?.err.grants, ['authorize'], 'authorize refused: authorize is named, no list')
})

t.test('a route with a policy keeps its own preHandlers, in every form, before the policy guard', async (t) => {
  const access = await emulator(t)
  const server = Fastify()
  t.teardown(() => server.close())
  await server.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience })
  const policy = { cfAccess: { allow: { emails: ['alice@acme.com'] } } }
  const teapot = async (_request: unknown, reply: { code: (n: number) => { send: (body: string) => unknown } }) => reply.code(418).send('mine')
  server.get('/one', { config: policy, preHandler: teapot as never }, async () => 'ok')
  server.get('/list', { config: policy, preHandler: [async () => {}, teapot as never] }, async () => 'ok')
  server.get('/none', { config: policy }, async () => 'ok')
  const alice = access.signToken({ email: 'alice@acme.com' })
  for (const url of ['/one', '/list']) {
    const res = await server.inject({ url, headers: { [HEADER]: alice } })
    t.same([res.statusCode, res.body], [418, 'mine'], `${url}: the route's own preHandler ran`)
  }
  t.equal((await server.inject({ url: '/none', headers: { [HEADER]: alice } })).statusCode, 200)
  t.equal((await server.inject({ url: '/one', headers: { [HEADER]: access.signToken({ email: 'bob@acme.com' }) } })).statusCode, 403, 'and the policy still applies')
})

t.test('the plugin-level allow applies when the key is at hand (the synchronous path), and a forged token with an unknown kid is refused', async (t) => {
  const access = await emulator(t)
  const server = await app(t, access, { allow: { emails: ['a@acme.com'] } })
  t.equal(await status(server, access.signToken({ email: 'a@acme.com' })), 200, 'allowed; the key set is at hand from now on')
  t.equal(await status(server, access.signToken({ email: 'eve@acme.com' })), 403, 'the policy refuses with the key at hand')
  t.equal(await status(server, access.signToken({ email: 'a@acme.com' }, { key: attackerKey(), kid: 'attacker' })), 401, 'forged, under a kid to fetch: 401')
})

t.test('verifyToken applies the route policy of the request it is given, and no other', async (t) => {
  const access = await emulator(t)
  const server = Fastify()
  t.teardown(() => server.close())
  await server.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, hook: false })
  const outcomes: unknown[] = []
  // Before the route's own guard, with the token in another header: only verifyToken sees it.
  const record = async (request: FastifyRequest): Promise<void> => {
    outcomes.push(await server.cfAccess.verifyToken(request.headers['x-token'] as string, request)
      .then((claims) => claims.email, (error: { code?: string, message: string }) => error.code ?? error.message))
  }
  server.get('/boss', { onRequest: record, config: { cfAccess: { allow: { emails: ['boss@acme.com'] } } } }, async () => 'in')
  server.get('/plain', { onRequest: record }, async () => 'in')
  server.get('/off', { onRequest: record, config: { cfAccess: false } }, async () => 'in')
  await server.ready()
  const eve = access.signToken({ email: 'eve@acme.com' })
  t.equal(await server.cfAccess.verifyToken(eve).then((claims) => claims.email, (error: Error) => error.message), 'eve@acme.com', 'no request: no route policy')
  for (const url of ['/boss', '/plain', '/off']) await server.inject({ url, headers: { 'x-token': eve } })
  t.same(outcomes, ['FST_CF_ACCESS_FORBIDDEN', 'eve@acme.com', 'eve@acme.com'], 'the route policy, none, none')
})

t.test('an authorize promise that never settles is answered 503 after authorizeTimeout, not left hanging', async (t) => {
  const access = await emulator(t)
  const server = await app(t, access, { authorize: () => new Promise<boolean>(() => {}), authorizeTimeout: 200 })
  const res = await Promise.race([server.inject({ url: '/admin', headers: { [HEADER]: access.signToken() } }), sleep(3000).then(() => undefined)])
  t.equal(res?.statusCode, 503, 'answered')
  t.equal(res?.json().code, 'FST_CF_ACCESS_AUTHORIZE_TIMEOUT')
})

t.test('a route policy added before the plugin is enforced, and a route policy is fixed when the route is added', async (t) => {
  const access = await emulator(t)
  const server = Fastify()
  t.teardown(() => server.close())
  const policy = { allow: { emails: ['boss@acme.com'] } }
  await server.register(async (scope) => {
    scope.get('/early', { config: { cfAccess: { allow: { emails: ['boss@acme.com'] } } } }, async () => 'in')
    await scope.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, hook: false })
    scope.get('/late', { config: { cfAccess: policy } }, async () => 'in')
  })
  await server.ready()
  policy.allow.emails.push('eve@acme.com')
  const eve = access.signToken({ email: 'eve@acme.com' })
  const boss = access.signToken({ email: 'boss@acme.com' })
  t.equal((await server.inject({ url: '/early', headers: { [HEADER]: eve } })).statusCode, 403, 'early route: refused')
  t.equal((await server.inject({ url: '/early', headers: { [HEADER]: boss } })).statusCode, 200, 'early route: admitted')
  t.equal((await server.inject({ url: '/late', headers: { [HEADER]: eve } })).statusCode, 403, 'a change to the policy object after boot changes nothing')
  t.equal((await server.inject({ url: '/late', headers: { [HEADER]: boss } })).statusCode, 200, 'late route: admitted')
})

t.test('boot refuses required on a hook: false route, and a policy route under required: false that does not require a token itself', async (t) => {
  const access = await emulator(t)
  const boot = async (options: object, config: object): Promise<void> => {
    const server = Fastify()
    t.teardown(() => server.close())
    await server.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, ...options })
    server.get('/plain', async () => 'in')
    server.get('/', { config: { cfAccess: config } }, async () => 'in')
    await server.ready()
  }
  await t.rejects(boot({ hook: false }, { required: false }), /route GET \/: config\.cfAccess\.required applies to the plugin's own hook/)
  await t.rejects(boot({ required: false }, { allow: { emails: ['a@acme.com'] } }), /route GET \/: the plugin has required: false and this route has a policy/)
  await t.resolves(boot({}, { required: false }), 'a plain route and an optional one boot')
})

t.test('authorize\'s identity(): an all-of-groups rule, one lookup per token shared with the group grants', async (t) => {
  const access = await emulator(t)
  access.setIdentity('both@acme.com', { groups: [{ id: 'g-fin', name: 'finance' }, { id: 'g-adm', name: 'admins' }] })
  access.setIdentity('one@acme.com', { groups: [{ id: 'g-fin', name: 'finance' }] })
  const seen: unknown[] = []
  const server = await app(t, access, {
    allow: { groupIds: ['g-fin'] },
    authorize: async (claims, request, { identity }) => {
      seen.push(request.cfAccess)
      const { groups } = await identity()
      return ['g-fin', 'g-adm'].every((id) => groups.some((group) => group.id === id))
    }
  })
  const both = access.signToken({ email: 'both@acme.com' })
  const before = access.identityRequestCount
  t.equal(await status(server, both), 200, 'in both groups: admitted')
  t.equal(access.identityRequestCount, before + 1, 'one lookup, shared by the groupIds grant and authorize')
  t.equal(await status(server, both), 200)
  t.equal(access.identityRequestCount, before + 1, 'and cached for the token')
  t.equal(await status(server, access.signToken({ email: 'one@acme.com' })), 403, 'in one of them: refused')
  t.same(seen, [null, null, null], 'request.cfAccess is still null inside authorize')

  const service = await app(t, access, { allow: { serviceTokens: true }, authorize: async (_claims, _request, { identity }) => (await identity()).email !== '' })
  const res = await service.inject({ url: '/admin', headers: { [HEADER]: access.signServiceToken() } })
  t.same([res.statusCode, res.json().code], [403, 'FST_CF_ACCESS_NO_IDENTITY'], 'a service token has no identity')
  t.equal(access.identityRequestCount, before + 2, 'and costs no lookup')
})

t.test('a failed identity lookup refuses the request whatever authorize makes of it', async (t) => {
  const access = await emulator(t)
  const rules: Record<string, NonNullable<FastifyCloudflareAccessOptions['authorize']>> = {
    awaited: async (_claims, _request, { identity }) => (await identity()).email !== '',
    caught: async (_claims, _request, { identity }) => {
      try { await identity() } catch { return true }
      return true
    },
    'not awaited': (_claims, _request, { identity }) => { identity(); return true },
    'thrown over': async (_claims, _request, { identity }) => {
      await identity().catch(() => undefined)
      throw new Error('a bug of its own')
    },
    'through request.cfAccessIdentity()': async (_claims, request) => {
      try { await request.cfAccessIdentity() } catch { return true }
      return true
    }
  }
  for (const [name, authorize] of Object.entries(rules)) {
    const server = await app(t, access, { authorize, identityTimeout: 300 })
    access.setOutage(true, 'identity')
    const down = await server.inject({ url: '/admin', headers: { [HEADER]: access.signToken() } })
    t.same([down.statusCode, down.json().code, down.headers['retry-after']], [503, 'FST_CF_ACCESS_IDENTITY_UNAVAILABLE', '5'], `${name}: the endpoint down: 503 with Retry-After`)
    access.setOutage(false, 'identity')
    t.equal(await status(server, access.signToken()), name === 'thrown over' ? 500 : 200, `${name}: the endpoint back`)
  }
  // The endpoint refusing the session: a key the plugin still has cached and the emulator no longer knows.
  const server = await app(t, access, { authorize: rules.caught as NonNullable<FastifyCloudflareAccessOptions['authorize']> })
  const revoked = access.signToken({}, { key: 'previous' })
  t.equal(await status(server, access.signToken()), 200, 'keys cached')
  await access.rotateKeys()
  await access.rotateKeys()
  const res = await server.inject({ url: '/admin', headers: { [HEADER]: revoked } })
  t.same([res.statusCode, res.json().code], [401, 'FST_CF_ACCESS_TOKEN_INVALID'], 'the endpoint refusing the token: 401, caught or not')
})

t.test('request.cfAccessIdentity() inside authorize is the identity of the token being verified', async (t) => {
  const access = await emulator(t)
  access.setIdentity('ann@acme.com', { groups: [{ id: 'g-fin', name: 'finance' }] })
  const server = await app(t, access, {
    authorize: async (claims, request, { identity }) => {
      const [mine, same] = await Promise.all([request.cfAccessIdentity(), identity()])
      return mine === same && mine.email === claims.email && mine.groups.some((group) => group.name === 'finance')
    }
  })
  const before = access.identityRequestCount
  t.equal(await status(server, access.signToken({ email: 'ann@acme.com' })), 200)
  t.equal(access.identityRequestCount, before + 1, 'one lookup')
  t.equal(await status(server, access.signToken({ email: 'bob@acme.com' })), 403)
  const plain = Fastify()
  t.teardown(() => plain.close())
  await plain.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, hook: false })
  plain.get('/', async (request) => await request.cfAccessIdentity())
  const res = await plain.inject('/')
  t.same([res.statusCode, res.json().code], [401, 'FST_CF_ACCESS_TOKEN_MISSING'], 'outside authorize, without a verified token: 401 as before')
})

t.test('verifyToken(token, request) gives authorize the identity of the token it verifies', async (t) => {
  const access = await emulator(t)
  access.setIdentity('ann@acme.com', { groups: [{ id: 'g-fin', name: 'finance' }] })
  const server = Fastify()
  t.teardown(() => server.close())
  await server.register(cloudflareAccess, {
    teamDomain: access.teamDomain,
    audience: access.audience,
    authorize: async (_claims, _request, { identity }) => (await identity()).groups.some((group) => group.name === 'finance')
  })
  server.post('/check', async (request) => (await server.cfAccess.verifyToken(String(request.body), request)).email)
  const caller = access.signToken({ email: 'ann@acme.com' })
  const check = (token: string) => server.inject({ method: 'POST', url: '/check', headers: { [HEADER]: caller, 'content-type': 'text/plain' }, payload: token })
  t.equal((await check(access.signToken({ email: 'ann@acme.com' }))).body, 'ann@acme.com')
  t.equal((await check(access.signToken({ email: 'bob@acme.com' }))).statusCode, 403, 'the other token\'s identity, not the caller\'s')
})

t.test('email grants need an address: an @ after at least one character; the domain follows the last @', async (t) => {
  const access = await emulator(t)
  const domains = await app(t, access, { allow: { emailDomains: ['acme.com'] } })
  const cases: Array<[string, number]> = [
    ['acme.com', 403],
    ['@acme.com', 403],
    ['', 403],
    ['"a@b"@acme.com', 200],
    ['a@evil.com@acme.com', 200],
    ['a@acme.com@evil.com', 403]
  ]
  for (const [email, expected] of cases) t.equal(await status(domains, access.signToken({ email })), expected, JSON.stringify(email))
  const emails = await app(t, access, { allow: { emails: ['a@acme.com'] } })
  t.equal(await status(emails, access.signToken({ email: 'A@ACME.COM' })), 200)
  t.equal(await status(emails, access.signToken({ email: 'acme.com' })), 403)
})

t.test('email grants fold ASCII case only: KELVIN SIGN, NUL, spaces and a trailing dot do not match', async (t) => {
  const access = await emulator(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, allow: { emailDomains: ['Kraken.io'], emails: ['Bob@Example.COM'] } })
  app.get('/', async () => 'in')
  await app.ready()
  const as = (email: string): Promise<number> => app.inject({ url: '/', headers: { [HEADER]: access.signToken({ email }) } }).then((res) => res.statusCode)
  t.equal(await as('user@kraken.io'), 200)
  t.equal(await as('USER@KRAKEN.IO'), 200, 'ASCII case folds')
  t.equal(await as('bob@example.com'), 200)
  for (const email of ['user@\u212Araken.io', 'user@kraken.io\u0000', 'user@kraken.io.', 'user@kraken.io ', 'user@kraken\u0130o', 'bob@exampl\u0435.com', 'bob@example.com\u0000', 'user@KRAKEN.İO']) {
    t.equal(await as(email), 403, JSON.stringify(email))
  }
  await t.rejects(async () => { await Fastify().register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, allow: { emailDomains: ['\u212Araken.io'] } }) }, /allow.emailDomains/, 'a look-alike domain in the configuration is refused')
})

t.test('group grants read every entry of the identity: an id grant needs a string id, a name grant a string name', async (t) => {
  const access = await emulator(t)
  access.setIdentity('ids@acme.com', { groups: [{ id: 'g-fin' }, { id: 7, name: 'finance' }] as never })
  access.setIdentity('names@acme.com', { groups: [{ name: 'admins' }, { id: 'g-x', name: 7 }, null, 'admins'] as never })
  const byId = await app(t, access, { allow: { groupIds: ['g-fin'] } })
  t.equal(await status(byId, access.signToken({ email: 'ids@acme.com' })), 200, 'an entry with an id and no name counts for groupIds')
  t.equal(await status(byId, access.signToken({ email: 'names@acme.com' })), 403)
  const byName = await app(t, access, { allow: { groups: ['admins'] } }, (admin) => {
    admin.get('/groups', async (request) => (await request.cfAccessIdentity()).groups)
  })
  t.equal(await status(byName, access.signToken({ email: 'names@acme.com' })), 200, 'an entry with a name and no id counts for groups')
  t.equal(await status(byName, access.signToken({ email: 'ids@acme.com' })), 403, 'a numeric name is no name')
  const groups = await byName.inject({ url: '/admin/groups', headers: { [HEADER]: access.signToken({ email: 'names@acme.com' }) } })
  t.same(groups.json(), [], 'identity.groups, as the application gets it, keeps only entries with both, as typed')
})

t.test('groups match names only and groupIds ids only: a group named like the admins\' id is not the admins group', async (t) => {
  const access = await emulator(t)
  access.setIdentity('mallory@acme.com', { groups: [{ id: 'g-mallory', name: 'g-admins' }] })
  access.setIdentity('alice@acme.com', { groups: [{ id: 'g-admins', name: 'admins' }] })
  access.setIdentity('carol@acme.com', { groups: [{ id: 'g-other', name: 'Admins' }, { id: 'g-x', name: ' admins' }] })
  const app = Fastify()
  t.teardown(() => app.close())
  app.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, hook: false })
  app.after(() => {
    app.get('/by-id', { onRequest: app.cfAccess.verify, config: { cfAccess: { allow: { groupIds: ['g-admins'] } } } }, async () => 'in')
    app.get('/by-name', { onRequest: app.cfAccess.verify, config: { cfAccess: { allow: { groups: ['admins'] } } } }, async () => 'in')
  })
  await app.ready()
  const as = (email: string, url: string): Promise<number> => app.inject({ url, headers: { [HEADER]: access.signToken({ email }) } }).then((res) => res.statusCode)
  t.equal(await as('mallory@acme.com', '/by-id'), 403, 'a group whose name is the id does not match groupIds')
  t.equal(await as('alice@acme.com', '/by-id'), 200)
  t.equal(await as('alice@acme.com', '/by-name'), 200)
  t.equal(await as('mallory@acme.com', '/by-name'), 403)
  t.equal(await as('carol@acme.com', '/by-name'), 403, 'names are case-sensitive and not trimmed')
})

t.test('an identity lookup authorize never awaits cannot become an unhandled rejection', async (t) => {
  const access = await emulator(t)
  // A service token's lookup rejects at once; authorize goes on waiting for something else.
  const server = await app(t, access, { allow: { serviceTokens: true }, authorize: async (_claims, _request, { identity }) => { identity(); await sleep(50); return true } })
  const res = await server.inject({ url: '/admin', headers: { [HEADER]: access.signServiceToken() } })
  t.same([res.statusCode, res.json().code], [403, 'FST_CF_ACCESS_NO_IDENTITY'], 'refused with the lookup\'s error, and the process lives on')
})

t.test('request.cfAccessIdentity() inside authorize never answers the identity of the token the request was admitted with for another token', async (t) => {
  const access = await emulator(t)
  access.setIdentity('admin@acme.com', { groups: [{ id: 'g-adm', name: 'admins' }] })
  const server = Fastify()
  t.teardown(() => server.close())
  await server.register(cloudflareAccess, {
    teamDomain: access.teamDomain,
    audience: access.audience,
    identityTimeout: 300,
    authorize: async (_claims, request) => {
      try {
        return (await request.cfAccessIdentity()).groups.some((group) => group.id === 'g-adm')
      } catch {
        return true // an application that admits when the lookup fails: still refused
      }
    }
  })
  server.post('/check', async (request) => (await server.cfAccess.verifyToken(String(request.body), request)).email)
  const admin = access.signToken({ email: 'admin@acme.com' })
  const check = (token: string) => server.inject({ method: 'POST', url: '/check', headers: { [HEADER]: admin, 'content-type': 'text/plain' }, payload: token })
  const other = await check(access.signToken({ email: 'mallory@acme.com' }))
  t.same([other.statusCode, other.json().code], [500, 'FST_CF_ACCESS_AUTHORIZE_FAILED'], 'another token on a request admitted with the admin\'s: refused, never the admin\'s groups')
  t.match(other.json().message, /use identity\(\)/, 'the message says what to use instead')
  t.equal((await check(access.signToken({ email: 'admin@acme.com' }, { expiresIn: 60 }))).statusCode, 500, 'another token of the same user: refused too')
  t.equal((await check(admin)).body, 'admin@acme.com', 'the very token the request was admitted with: unambiguous')
})

t.test('overlapping verifications of one request: request.cfAccessIdentity() answers only when they verify the same token', async (t) => {
  const access = await emulator(t)
  access.setIdentity('ann@acme.com', { groups: [{ id: 'g-fin', name: 'finance' }] })
  const server = Fastify()
  t.teardown(() => server.close())
  await server.register(cloudflareAccess, {
    teamDomain: access.teamDomain,
    audience: access.audience,
    hook: false,
    authorize: async (_claims, request) => {
      await sleep(20) // the other verification starts meanwhile
      try {
        return (await request.cfAccessIdentity()).groups.some((group) => group.id === 'g-fin')
      } catch {
        return true
      }
    }
  })
  server.post('/both', async (request) => {
    const [first, second] = String(request.body).split(' ') as [string, string]
    const results = await Promise.allSettled([server.cfAccess.verifyToken(first, request), server.cfAccess.verifyToken(second, request)])
    return results.map((result) => result.status === 'fulfilled' ? result.value.email : (result.reason as { code: string }).code)
  })
  const both = (tokens: string) => server.inject({ method: 'POST', url: '/both', headers: { 'content-type': 'text/plain' }, payload: tokens })
  const ann = access.signToken({ email: 'ann@acme.com' })
  const bob = access.signToken({ email: 'bob@acme.com' })
  t.same((await both(`${bob} ${ann}`)).json(), ['FST_CF_ACCESS_AUTHORIZE_FAILED', 'FST_CF_ACCESS_AUTHORIZE_FAILED'], 'two tokens at once: neither gets the other\'s identity, both refused')
  t.same((await both(`${ann} ${ann}`)).json(), ['ann@acme.com', 'ann@acme.com'], 'the same token twice: its identity')
  t.same((await both(`${bob} ${bob}`)).json(), ['FST_CF_ACCESS_FORBIDDEN', 'FST_CF_ACCESS_FORBIDDEN'])
})

t.test('a verifyToken nested inside authorize leaves the outer verification\'s request.cfAccessIdentity() to the outer token', async (t) => {
  const access = await emulator(t)
  const server = Fastify()
  t.teardown(() => server.close())
  const seen: string[] = []
  await server.register(cloudflareAccess, {
    teamDomain: access.teamDomain,
    audience: access.audience,
    authorize: async (claims, request, { identity }) => {
      const delegate = request.headers['x-delegate']
      // The delegate's verification, nested: two tokens under way, where only identity() can tell them apart.
      if (claims.email !== 'ann@acme.com') return (await identity()).email === claims.email
      if (typeof delegate === 'string') seen.push((await server.cfAccess.verifyToken(delegate, request)).email as string)
      const mine = await request.cfAccessIdentity()
      seen.push(mine.email)
      return mine === await identity()
    }
  })
  server.get('/', async (request) => requireUser(request).email)
  const res = await server.inject({ url: '/', headers: { [HEADER]: access.signToken({ email: 'ann@acme.com' }), 'x-delegate': access.signToken({ email: 'bob@acme.com' }) } })
  t.equal(res.body, 'ann@acme.com', 'the outer verification admits, once the nested one is over')
  t.same(seen, ['bob@acme.com', 'ann@acme.com'], 'each verification had its own token\'s identity')
})
