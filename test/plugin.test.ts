import Fastify, { type FastifyReply, type FastifyRequest } from 'fastify'
import fastifyCookie from '@fastify/cookie'
import t from 'tap'
import cloudflareAccess from '../index'
import { captureLogs, emulator, eventually, HEADER, setup } from './helpers'

t.test('the tutorial shape: a prefix-scoped registration protects /admin and nothing else', async (t) => {
  const { access, get } = await setup(t)
  t.equal((await get(undefined, '/public')).statusCode, 200, '/public stays open')
  t.same((await get(undefined, '/public')).json, { claims: null }, 'request.cfAccess is null outside the scope')
  const missing = await get()
  t.equal(missing.statusCode, 401)
  t.equal(missing.json.code, 'FST_CF_ACCESS_TOKEN_MISSING')
  const ok = await get(access.signToken({ email: 'alice@acme.com' }))
  t.equal(ok.statusCode, 200)
  t.equal(ok.json.claims.email, 'alice@acme.com')
  t.equal(ok.json.claims.iss, access.teamDomain)
  t.same(ok.json.claims.aud, [access.audience])
})

t.test('an unknown path under the prefix answers 404 (the root 404 handler runs the root hooks)', async (t) => {
  const { get } = await setup(t)
  t.equal((await get(undefined, '/admin/nope')).statusCode, 404)
})

t.test('sibling scopes are isolated: each has its own audience and the open sibling stays open', async (t) => {
  const access = await emulator(t, { audience: ['a'.repeat(64), 'b'.repeat(64)] })
  const app = Fastify()
  t.teardown(() => app.close())
  app.register(async (admin) => {
    await admin.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: 'a'.repeat(64) })
    admin.get('/', async (request) => request.cfAccess)
  }, { prefix: '/admin' })
  app.register(async (api) => {
    await api.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: 'b'.repeat(64) })
    api.get('/', async (request) => request.cfAccess)
  }, { prefix: '/api' })
  app.register(async (open) => {
    open.get('/', async (request) => ({ claims: request.cfAccess ?? null }))
  }, { prefix: '/open' })
  await app.ready()

  const adminToken = access.signToken({ aud: ['a'.repeat(64)] })
  const apiToken = access.signToken({ aud: ['b'.repeat(64)] })
  const status = async (url: string, token?: string): Promise<number> =>
    (await app.inject({ url, headers: token === undefined ? {} : { [HEADER]: token } })).statusCode
  t.equal(await status('/admin', adminToken), 200)
  t.equal(await status('/admin', apiToken), 401, "the /api application's token does not open /admin")
  t.equal(await status('/api', apiToken), 200)
  t.equal(await status('/api', adminToken), 401, "the /admin application's token does not open /api")
  t.equal(await status('/open'), 200)
})

t.test('registered at the root, it protects every route of the application', async (t) => {
  const access = await emulator(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience })
  app.get('/', async (request) => ({ email: request.cfAccess?.email }))
  app.register(async (child) => { child.get('/child', async () => 'ok') })
  t.equal((await app.inject('/')).statusCode, 401)
  t.equal((await app.inject('/child')).statusCode, 401, 'child scopes inherit the hook')
  const res = await app.inject({ url: '/', headers: { [HEADER]: access.signToken() } })
  t.same(res.json(), { email: 'user@example.com' })
})

t.test('several audiences: a token for any configured application passes, others do not', async (t) => {
  const prod = 'a'.repeat(64)
  const preview = 'b'.repeat(64)
  const { access, get } = await setup(t, { audience: [prod, preview] })
  t.equal((await get(access.signToken({ aud: [prod] }))).statusCode, 200)
  t.equal((await get(access.signToken({ aud: [preview] }))).statusCode, 200)
  t.equal((await get(access.signToken({ aud: preview }))).statusCode, 200, 'older tokens carry aud as a string')
  t.equal((await get(access.signToken({ aud: ['c'.repeat(64), preview] }))).statusCode, 200, 'one matching tag in the array is enough')
  const other = await get(access.signToken({ aud: ['c'.repeat(64)] }))
  t.equal(other.statusCode, 401)
  t.equal(other.json.code, 'FST_CF_ACCESS_CLAIM_INVALID')
})

t.test('service tokens pass: no email, no nbf, sub is an empty string', async (t) => {
  const { access, get } = await setup(t)
  const res = await get(access.signServiceToken({ common_name: 'abc123.access' }))
  t.equal(res.statusCode, 200)
  t.equal(res.json.claims.common_name, 'abc123.access')
  t.equal(res.json.claims.sub, '')
  t.notOk('email' in res.json.claims)
  t.notOk('nbf' in res.json.claims)
})

t.test('hook modes', async (t) => {
  t.test("'onRequest' (default) rejects before the body is read", async (t) => {
    const access = await emulator(t)
    const app = Fastify()
    t.teardown(() => app.close())
    await app.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience })
    app.post('/', async (request) => request.body)
    const headers = { 'content-type': 'application/json' }
    const res = await app.inject({ method: 'POST', url: '/', headers, payload: '{"not": "json"' })
    t.equal(res.statusCode, 401, 'a malformed body would answer 400 if it were parsed first')
    const authed = await app.inject({ method: 'POST', url: '/', headers: { ...headers, [HEADER]: access.signToken() }, payload: '{"not": "json"' })
    t.equal(authed.statusCode, 400, 'with a valid token the body is parsed (and rejected) afterwards')
  })

  t.test("'preHandler' verifies after the body is parsed", async (t) => {
    const access = await emulator(t)
    const app = Fastify()
    t.teardown(() => app.close())
    const order: string[] = []
    app.register(async (admin) => {
      await admin.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, hook: 'preHandler' })
      admin.addHook('preValidation', async (request) => { order.push(`preValidation:${request.cfAccess === null ? 'null' : 'set'}`) })
      admin.post('/', async (request) => { order.push('handler'); return { email: request.cfAccess?.email, body: request.body } })
    }, { prefix: '/admin' })
    const bad = await app.inject({ method: 'POST', url: '/admin', payload: { a: 1 } })
    t.equal(bad.statusCode, 401)
    const res = await app.inject({ method: 'POST', url: '/admin', payload: { a: 1 }, headers: { [HEADER]: access.signToken() } })
    t.same(res.json(), { email: 'user@example.com', body: { a: 1 } })
    t.same(order, ['preValidation:null', 'preValidation:null', 'handler'])
  })

  t.test('false adds no hook: routes choose with fastify.cfAccess.verify', async (t) => {
    const access = await emulator(t)
    const app = Fastify()
    t.teardown(() => app.close())
    await app.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, hook: false })
    app.get('/open', async (request) => ({ claims: request.cfAccess }))
    app.get('/closed', { preHandler: app.cfAccess.verify }, async (request) => ({ email: request.cfAccess?.email }))
    app.get('/early', { onRequest: app.cfAccess.verify }, async (request) => ({ email: request.cfAccess?.email }))
    t.same((await app.inject('/open')).json(), { claims: null })
    t.equal((await app.inject('/closed')).statusCode, 401)
    t.equal((await app.inject('/early')).statusCode, 401)
    const token = access.signToken({ email: 'bob@acme.com' })
    t.same((await app.inject({ url: '/closed', headers: { [HEADER]: token } })).json(), { email: 'bob@acme.com' })
    t.same((await app.inject({ url: '/early', headers: { cookie: `CF_Authorization=${token}` } })).json(), { email: 'bob@acme.com' })
  })
})

t.test('fastify.cfAccess.verifyToken resolves claims or rejects with statusCode and code', async (t) => {
  const { access, app } = await setup(t, { hook: false })
  // registered inside /admin: the decorator lives in that scope; reach it through a route
  const token = access.signToken({ email: 'carol@acme.com' })
  const scoped = Fastify()
  t.teardown(() => scoped.close())
  await scoped.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, hook: false })
  await scoped.ready()
  const claims = await scoped.cfAccess.verifyToken(token)
  t.equal(claims.email, 'carol@acme.com')
  await t.rejects(scoped.cfAccess.verifyToken(''), { statusCode: 401, code: 'FST_CF_ACCESS_TOKEN_MISSING' })
  await t.rejects(scoped.cfAccess.verifyToken('nope'), { statusCode: 401, code: 'FST_CF_ACCESS_TOKEN_INVALID' })
  await t.rejects(scoped.cfAccess.verifyToken(42 as unknown as string), { statusCode: 401, code: 'FST_CF_ACCESS_TOKEN_INVALID' })
  await t.rejects(scoped.cfAccess.verifyToken(undefined as unknown as string), { statusCode: 401, code: 'FST_CF_ACCESS_TOKEN_MISSING' })
  await t.rejects(scoped.cfAccess.verifyToken(access.signToken({ exp: 1 })), { statusCode: 401, code: 'FST_CF_ACCESS_TOKEN_EXPIRED' })
  t.equal(app.hasDecorator('cfAccess'), false, 'a prefix-scoped registration does not leak its decorator to the parent')
})

t.test('explicit verify always verifies, even on a route whose config.cfAccess is false: route hooks, scope hooks and wrappers', async (t) => {
  const access = await emulator(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(async (scope) => {
    await scope.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, hook: false })
    // An @fastify/auth-style "and" wrapper: verify, then an API key check.
    const both = async (request: FastifyRequest, reply: FastifyReply): Promise<void> => {
      await scope.cfAccess.verify(request, reply)
      if (request.headers['x-api-key'] !== 'k') throw Object.assign(new Error('bad key'), { statusCode: 401 })
    }
    scope.get('/and', { preHandler: both, config: { cfAccess: false } }, async () => 'in')
    scope.register(async (inner) => {
      inner.addHook('onRequest', inner.cfAccess.verify) // the user's own scope hook
      inner.get('/scoped', { config: { cfAccess: false } }, async () => 'in')
    })
  })
  await app.register(async (own) => {
    await own.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience })
    own.get('/health', { config: { cfAccess: false } }, async () => 'open')
  }, { prefix: '/own' })
  await app.ready()
  t.equal((await app.inject({ url: '/and', headers: { 'x-api-key': 'k' } })).statusCode, 401, 'wrapper: no token, 401 despite config.cfAccess false')
  t.equal((await app.inject({ url: '/and', headers: { 'x-api-key': 'k', [HEADER]: access.signToken() } })).statusCode, 200)
  t.equal((await app.inject({ url: '/scoped' })).statusCode, 401, 'user scope hook: no token, 401')
  t.equal((await app.inject({ url: '/scoped', headers: { [HEADER]: access.signToken() } })).statusCode, 200)
  t.equal((await app.inject({ url: '/own/health' })).statusCode, 200, 'the plugin\'s own hook honours false')
})

t.test('a route policy that nothing verifies (hook: false, no verify) is still enforced, never served open', async (t) => {
  const access = await emulator(t)
  access.setIdentity('ops@acme.com', { groups: [{ id: 'g-1', name: 'ops' }] })
  const app = Fastify()
  t.teardown(() => app.close())
  let handled = 0
  await app.register(async (scope) => {
    // A policy route added before the plugin, in the same scope.
    scope.get('/early', { config: { cfAccess: { allow: { emails: ['boss@acme.com'] } } } }, async (request) => { handled++; return { email: request.cfAccess?.email } })
    await scope.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, hook: false, allow: { emailDomains: ['acme.com'] } })
    scope.get('/policy', { config: { cfAccess: { allow: { emails: ['boss@acme.com'] } } } }, async (request) => { handled++; return { email: request.cfAccess?.email } })
    scope.get('/groups', { config: { cfAccess: { allow: { groups: ['ops'] } } } }, async (request) => { handled++; return { email: request.cfAccess?.email } })
    scope.get('/open', async (request) => ({ claims: request.cfAccess }))
    scope.get('/plugin-policy', { onRequest: scope.cfAccess.verify }, async () => 'in')
    // An @fastify/auth-style "or" wrapper that swallows verify's rejection when an API key is present.
    const either = async (request: FastifyRequest, reply: FastifyReply): Promise<void> => {
      try { await scope.cfAccess.verify(request, reply) } catch (error) { if (request.headers['x-api-key'] !== 'k') throw error }
    }
    scope.get('/either', { preHandler: either, config: { cfAccess: { allow: { emails: ['boss@acme.com'] } } } }, async (request) => { handled++; return { email: request.cfAccess?.email ?? null } })
  })
  await app.ready()
  const boss = access.signToken({ email: 'boss@acme.com' })
  const other = access.signToken({ email: 'eve@acme.com' })
  for (const url of ['/early', '/policy', '/either']) {
    t.equal((await app.inject({ url })).statusCode, 401, `${url}: no token, 401`)
    t.equal((await app.inject({ url, headers: { [HEADER]: other } })).statusCode, 403, `${url}: not allowed, 403`)
    t.equal((await app.inject({ url, headers: { [HEADER]: other, 'x-api-key': 'k' } })).statusCode, 403, `${url}: a swallowed rejection is refused again`)
    const res = await app.inject({ url, headers: { [HEADER]: boss } })
    t.same([res.statusCode, res.json().email], [200, 'boss@acme.com'], `${url}: allowed`)
  }
  t.equal((await app.inject({ url: '/groups', headers: { [HEADER]: other } })).statusCode, 403)
  t.equal((await app.inject({ url: '/groups', headers: { [HEADER]: access.signToken({ email: 'ops@acme.com' }) } })).statusCode, 200, 'a group grant is enforced too')
  t.equal(handled, 4, 'handlers ran only for admitted requests')
  t.same((await app.inject({ url: '/open' })).json(), { claims: null }, 'a route without a policy stays open under hook: false')
  t.equal((await app.inject({ url: '/plugin-policy', headers: { [HEADER]: access.signToken({ email: 'x@evil.com' }) } })).statusCode, 403, 'the plugin\'s own allow applies wherever verify runs')
  t.equal((await app.inject({ url: '/plugin-policy', headers: { [HEADER]: other } })).statusCode, 200)
})

t.test('a route policy with verify added as a scope hook (hook: false) keeps working, verified once', async (t) => {
  const access = await emulator(t)
  const app = Fastify()
  t.teardown(() => app.close())
  let calls = 0
  await app.register(async (scope) => {
    await scope.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, hook: false })
    scope.addHook('onRequest', scope.cfAccess.verify)
    scope.get('/', { config: { cfAccess: { authorize: (claims) => { calls++; return claims.email === 'a@acme.com' } } } }, async () => 'in')
  })
  await app.ready()
  t.equal((await app.inject({ url: '/', headers: { [HEADER]: access.signToken({ email: 'a@acme.com' }) } })).statusCode, 200)
  t.equal(calls, 1, 'the route guard saw the admission and did not run the policy again')
  t.equal((await app.inject({ url: '/', headers: { [HEADER]: access.signToken({ email: 'b@acme.com' }) } })).statusCode, 403)
})

t.test('verifyToken applies the registration\'s policy: allow, groups, authorize (which needs the request), and the route\'s', async (t) => {
  const access = await emulator(t)
  access.setIdentity('ops@acme.com', { groups: [{ id: 'g-1', name: 'ops' }] })
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, allow: { emails: ['a@acme.com'], groups: ['ops'] } })
  const withAuthorize = Fastify()
  t.teardown(() => withAuthorize.close())
  await withAuthorize.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, authorize: (_claims, request) => request.headers['x-ok'] === '1' })
  let seen: unknown
  withAuthorize.get('/ws', { config: { cfAccess: { allow: { emails: ['a@acme.com'] } } } }, async (request) => {
    seen = await withAuthorize.cfAccess.verifyToken(request.headers['x-token'] as string, request).then((claims) => claims.email, (error: { code: string }) => error.code)
    return 'ok'
  })
  await app.ready()
  await withAuthorize.ready()
  t.equal((await app.cfAccess.verifyToken(access.signToken({ email: 'a@acme.com' }))).email, 'a@acme.com')
  await t.rejects(app.cfAccess.verifyToken(access.signToken({ email: 'eve@acme.com' })), { statusCode: 403, code: 'FST_CF_ACCESS_FORBIDDEN' }, 'allow applies')
  t.equal((await app.cfAccess.verifyToken(access.signToken({ email: 'ops@acme.com' }))).email, 'ops@acme.com', 'groups apply (identity looked up)')
  await t.rejects(app.cfAccess.verifyToken(access.signServiceToken()), { statusCode: 403, code: 'FST_CF_ACCESS_FORBIDDEN' }, 'a service token no grant admits')
  await t.rejects(withAuthorize.cfAccess.verifyToken(access.signToken({ email: 'a@acme.com' })), { statusCode: 500, code: 'FST_CF_ACCESS_AUTHORIZE_FAILED', message: /needs the request/ }, 'authorize without a request is refused, never skipped')
  const a = access.signToken({ email: 'a@acme.com' })
  await withAuthorize.inject({ url: '/ws', headers: { [HEADER]: a, 'x-ok': '1', 'x-token': a } })
  t.equal(seen, 'a@acme.com', 'with the request: authorize and the route policy admit')
  const b = access.signToken({ email: 'b@acme.com' })
  await withAuthorize.inject({ url: '/ws', headers: { [HEADER]: a, 'x-ok': '1', 'x-token': b } })
  t.equal(seen, 'FST_CF_ACCESS_FORBIDDEN', 'the route policy applies to the token given')
})

t.test('claims appear on the request only once it is admitted: a refused user plus an API key leaves request.cfAccess null', async (t) => {
  const access = await emulator(t)
  const app = Fastify()
  t.teardown(() => app.close())
  let seenInAuthorize: unknown = 'unset'
  await app.register(cloudflareAccess, {
    teamDomain: access.teamDomain,
    audience: access.audience,
    hook: false,
    authorize: (claims, request) => { seenInAuthorize = request.cfAccess; return claims.email === 'a@acme.com' }
  })
  const either = async (request: FastifyRequest, reply: FastifyReply): Promise<void> => {
    try { await app.cfAccess.verify(request, reply) } catch (error) { if (request.headers['x-api-key'] !== 'k') throw error }
  }
  app.get('/', { preHandler: either }, async (request) => ({ claims: request.cfAccess }))
  // The scope hook admitted, then a route verify with a stricter route policy refuses: the first admission is cleared.
  app.get('/twice', { onRequest: [app.cfAccess.verify], preHandler: async (request, reply) => { try { await app.cfAccess.verify(request, reply) } catch {} } }, async (request) => ({ claims: request.cfAccess }))
  await app.ready()
  const res = await app.inject({ url: '/', headers: { [HEADER]: access.signToken({ email: 'eve@acme.com' }), 'x-api-key': 'k' } })
  t.same(res.json(), { claims: null }, 'the refused user is not on the request')
  t.equal(seenInAuthorize, null, 'not even while authorize runs')
  const ok = await app.inject({ url: '/', headers: { [HEADER]: access.signToken({ email: 'a@acme.com' }) } })
  t.equal(ok.json().claims.email, 'a@acme.com')
  const twice = await app.inject({ url: '/twice', headers: { [HEADER]: access.signToken({ email: 'a@acme.com' }) } })
  t.equal(twice.json().claims.email, 'a@acme.com')
})

t.test('a refusal clears an earlier admission of the same request', async (t) => {
  const access = await emulator(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience })
  const swallow = async (request: FastifyRequest, reply: FastifyReply): Promise<void> => {
    request.headers[HEADER] = access.signToken({ email: 'eve@acme.com', aud: ['0'.repeat(64)] })
    try { await app.cfAccess.verify(request, reply) } catch {}
  }
  app.get('/', { preHandler: swallow }, async (request) => ({ claims: request.cfAccess }))
  await app.ready()
  const res = await app.inject({ url: '/', headers: { [HEADER]: access.signToken({ email: 'a@acme.com' }) } })
  t.same(res.json(), { claims: null })
})

t.test('token sources', async (t) => {
  t.test('the header wins over the cookie', async (t) => {
    const { access, app } = await setup(t)
    const res = await app.inject({
      url: '/admin/me',
      headers: { [HEADER]: access.signToken({ email: 'header@acme.com' }), cookie: `CF_Authorization=${access.signToken({ email: 'cookie@acme.com' })}` }
    })
    t.equal(res.json().claims.email, 'header@acme.com')
    const bad = await app.inject({
      url: '/admin/me',
      headers: { [HEADER]: 'garbage', cookie: `CF_Authorization=${access.signToken()}` }
    })
    t.equal(bad.statusCode, 401, 'a bad header is not rescued by a good cookie')
  })

  t.test('the cookie is read alone, among other cookies, quoted', async (t) => {
    const { access, app } = await setup(t)
    const token = access.signToken()
    for (const cookie of [`CF_Authorization=${token}`, `a=1; CF_Authorization=${token}; b=2`, `CF_Authorization="${token}"`, `x=y;CF_Authorization=${token}`]) {
      t.equal((await app.inject({ url: '/admin/me', headers: { cookie } })).statusCode, 200, cookie.slice(0, 30))
    }
    for (const cookie of ['CF_Authorization=', 'cf_authorization=' + token, 'other=1', `XCF_Authorization=${token}`]) {
      const res = await app.inject({ url: '/admin/me', headers: { cookie } })
      t.equal(res.json().code, 'FST_CF_ACCESS_TOKEN_MISSING', cookie.slice(0, 30))
    }
  })

  t.test('an empty header falls back to the cookie', async (t) => {
    const { access, app } = await setup(t)
    const res = await app.inject({ url: '/admin/me', headers: { [HEADER]: '', cookie: `CF_Authorization=${access.signToken()}` } })
    t.equal(res.statusCode, 200)
  })

  t.test('the unsigned Cf-Access-Authenticated-User-Email header authenticates nothing', async (t) => {
    const { app } = await setup(t)
    const res = await app.inject({ url: '/admin/me', headers: { 'cf-access-authenticated-user-email': 'admin@acme.com' } })
    t.equal(res.statusCode, 401)
    t.equal(res.json().code, 'FST_CF_ACCESS_TOKEN_MISSING')
  })

  for (const [name, order] of [['before', 'before'], ['after', 'after']] as const) {
    t.test(`the cookie works with @fastify/cookie registered ${name} the plugin`, async (t) => {
      const access = await emulator(t)
      const app = Fastify()
      t.teardown(() => app.close())
      if (order === 'before') await app.register(fastifyCookie)
      await app.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience })
      if (order === 'after') await app.register(fastifyCookie)
      app.get('/', async (request) => ({ email: request.cfAccess?.email, cookies: Object.keys(request.cookies ?? {}) }))
      const res = await app.inject({ url: '/', headers: { cookie: `theme=dark; CF_Authorization=${access.signToken()}` } })
      t.equal(res.statusCode, 200)
      t.equal(res.json().email, 'user@example.com')
    })
  }

  t.test('the cookie works with @fastify/cookie and hook: false with a route-level preHandler', async (t) => {
    const access = await emulator(t)
    const app = Fastify()
    t.teardown(() => app.close())
    await app.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, hook: false })
    await app.register(fastifyCookie)
    app.get('/', { preHandler: app.cfAccess.verify }, async (request) => ({ email: request.cfAccess?.email, theme: request.cookies.theme }))
    const res = await app.inject({ url: '/', headers: { cookie: `theme=dark; CF_Authorization=${access.signToken()}` } })
    t.same(res.json(), { email: 'user@example.com', theme: 'dark' })
  })
})

t.test('registration mistakes fail at boot with a clear error', async (t) => {
  const access = await emulator(t)
  const options = { teamDomain: access.teamDomain, audience: access.audience }

  t.test('passing prefix to the plugin itself', async (t) => {
    const app = Fastify()
    t.teardown(() => app.close())
    await t.rejects(async () => { await app.register(cloudflareAccess, { ...options, prefix: '/admin' } as never) }, /do not pass "prefix".*prefixed scope/)
  })

  t.test('registering twice in one scope', async (t) => {
    const app = Fastify()
    t.teardown(() => app.close())
    app.register(cloudflareAccess, options)
    app.register(cloudflareAccess, options)
    await t.rejects(async () => { await app.ready() }, /already registered in this scope/)
  })

  t.test('registering in a child of a protected scope', async (t) => {
    const app = Fastify()
    t.teardown(() => app.close())
    app.register(cloudflareAccess, options)
    app.register(async (child) => { await child.register(cloudflareAccess, options) })
    await t.rejects(async () => { await app.ready() }, /already registered in this scope, a parent scope or a child scope/)
  })

  t.test('registering in a parent of a protected scope (the child first): the same message; sibling scopes and another app may each have one', async (t) => {
    const app = Fastify()
    t.teardown(() => app.close())
    app.register(async (child) => { await child.register(cloudflareAccess, options) })
    app.register(cloudflareAccess, options)
    await t.rejects(async () => { await app.ready() }, /already registered in this scope, a parent scope or a child scope/)
    const siblings = Fastify()
    t.teardown(() => siblings.close())
    siblings.register(async (a) => { await a.register(cloudflareAccess, options) })
    siblings.register(async (b) => { await b.register(cloudflareAccess, options) })
    await siblings.ready()
    t.pass('sibling scopes may each have one')
    const other = Fastify()
    t.teardown(() => other.close())
    await other.register(cloudflareAccess, options)
    t.pass('another app is another chain of scopes')
  })

  t.test('missing options', async (t) => {
    const app = Fastify()
    t.teardown(() => app.close())
    await t.rejects(async () => { await app.register(cloudflareAccess, undefined as never) }, /option "teamDomain" must be/)
  })
})

t.test('503 answers carry Retry-After', async (t) => {
  const access = await emulator(t)
  access.setOutage(true)
  const { get } = await setup(t, {}, { access })
  const res = await get(access.signToken())
  t.equal(res.statusCode, 503)
  t.equal(res.json.code, 'FST_CF_ACCESS_KEYS_UNAVAILABLE')
  t.equal(res.headers['retry-after'], '5')
})

t.test('503 answers carry Retry-After through an error handler of the application that sends its own body', async (t) => {
  const access = await emulator(t)
  access.setOutage(true)
  const app = Fastify()
  t.teardown(() => app.close())
  app.setErrorHandler((error: Error & { statusCode?: number, code?: string }, _request, reply) => reply.code(error.statusCode ?? 500).send({ failed: error.code }))
  await app.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience })
  app.get('/', async () => 'ok')
  const res = await app.inject({ url: '/', headers: { [HEADER]: access.signToken() } })
  t.same([res.statusCode, res.json()], [503, { failed: 'FST_CF_ACCESS_KEYS_UNAVAILABLE' }])
  t.equal(res.headers['retry-after'], '5')

  const working = await emulator(t)
  working.setOutage('error', 'identity')
  const policies = Fastify()
  t.teardown(() => policies.close())
  policies.setErrorHandler((error: Error & { statusCode?: number, code?: string }, _request, reply) => reply.code(error.statusCode ?? 500).send({ failed: error.code }))
  await policies.register(async (scope) => {
    await scope.register(cloudflareAccess, { teamDomain: working.teamDomain, audience: working.audience, allow: { groups: ['admins'] } })
    scope.get('/groups', async () => 'ok')
  })
  await policies.register(async (scope) => {
    await scope.register(cloudflareAccess, { teamDomain: working.teamDomain, audience: working.audience, authorize: () => new Promise<boolean>(() => {}), authorizeTimeout: 50 })
    scope.get('/slow', async () => 'ok')
  })
  for (const [url, code] of [['/groups', 'FST_CF_ACCESS_IDENTITY_UNAVAILABLE'], ['/slow', 'FST_CF_ACCESS_AUTHORIZE_TIMEOUT']] as const) {
    const answer = await policies.inject({ url, headers: { [HEADER]: working.signToken() } })
    t.same([answer.statusCode, answer.json()], [503, { failed: code }], url)
    t.equal(answer.headers['retry-after'], '5', `${url}: Retry-After`)
  }
})

t.test("the plugin puts only its own errors' headers on the reply: an application's errors are left to its error handler", async (t) => {
  const access = await emulator(t)
  const app = Fastify()
  t.teardown(() => app.close())
  // An error handler that sends its own body, and no header of the error's: what it answers is the app's business.
  app.setErrorHandler((error: Error & { statusCode?: number }, _request, reply) => reply.code(error.statusCode ?? 500).send({ failed: error.message }))
  await app.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience })
  const thrown: Record<string, unknown> = {
    '/no-code': {},
    '/numeric-code': { code: 503 },
    '/other-code': { code: 'FST_OTHER_PLUGIN' },
    '/prefix-inside': { code: 'X_FST_CF_ACCESS_' }
  }
  for (const [url, fields] of Object.entries(thrown)) {
    app.get(url, { onRequest: app.cfAccess.verify }, async () => {
      throw Object.assign(new Error('the app failed'), { statusCode: 503, headers: { 'retry-after': '99', 'x-app': 'own' } }, fields)
    })
  }
  const token = access.signToken()
  for (const url of Object.keys(thrown)) {
    const res = await app.inject({ url, headers: { [HEADER]: token } })
    t.same([res.statusCode, res.json()], [503, { failed: 'the app failed' }], url)
    t.same([res.headers['retry-after'], res.headers['x-app']], [undefined, undefined], `${url}: none of the error's headers`)
  }
})

t.test('503 answers of verify carry Retry-After where no onError hook of the plugin sees them: a route outside its scopes, a wrapper that answers the refusal itself', async (t) => {
  const access = await emulator(t)
  access.setOutage(true)
  const app = Fastify()
  t.teardown(() => app.close())
  app.setErrorHandler((error: Error & { statusCode?: number, code?: string }, _request, reply) => reply.code(error.statusCode ?? 500).send({ failed: error.code }))
  let verify: ((request: FastifyRequest, reply: FastifyReply) => Promise<void>) | undefined
  await app.register(async (scope) => {
    await scope.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, hook: false })
    verify = scope.cfAccess.verify
  }, { prefix: '/admin' })
  app.get('/billing', { onRequest: verify }, async () => 'invoices')
  app.get('/wrapped', { preHandler: async (request, reply) => { await (verify as NonNullable<typeof verify>)(request, reply) } }, async () => 'invoices')
  for (const url of ['/billing', '/wrapped']) {
    const res = await app.inject({ url, headers: { [HEADER]: access.signToken() } })
    t.same([res.statusCode, res.json()], [503, { failed: 'FST_CF_ACCESS_KEYS_UNAVAILABLE' }], url)
    t.equal(res.headers['retry-after'], '5', `${url}: Retry-After`)
  }

  // In the plugin's scope, a wrapper that answers verify's refusal itself: no error reaches an onError hook.
  const wrapper = Fastify()
  t.teardown(() => wrapper.close())
  await wrapper.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, hook: false })
  wrapper.get('/answered', {
    preHandler: async (request, reply) => {
      try {
        await wrapper.cfAccess.verify(request, reply)
      } catch (error) {
        return await reply.code((error as { statusCode: number }).statusCode).send({ failed: (error as { code: string }).code })
      }
    }
  }, async () => 'invoices')
  const answered = await wrapper.inject({ url: '/answered', headers: { [HEADER]: access.signToken() } })
  t.same([answered.statusCode, answered.json()], [503, { failed: 'FST_CF_ACCESS_KEYS_UNAVAILABLE' }], 'a wrapper that answers the refusal itself')
  t.equal(answered.headers['retry-after'], '5', 'a wrapper that answers the refusal itself: Retry-After')
})

t.test('exports: the plugin, .default, the named export and the error constructors', async (t) => {
  t.equal(cloudflareAccess.default, cloudflareAccess)
  t.equal(cloudflareAccess.fastifyCloudflareAccess, cloudflareAccess)
  t.equal(cloudflareAccess.errorCodes.TOKEN_MISSING, 'FST_CF_ACCESS_TOKEN_MISSING')
  const error = new cloudflareAccess.TokenInvalidError('reason')
  t.equal(error.code, 'FST_CF_ACCESS_TOKEN_INVALID')
  t.equal(error.statusCode, 401)
  t.equal(error.message, 'Invalid Cloudflare Access token: reason')
  t.equal(new cloudflareAccess.KeysUnavailableError('x').statusCode, 503)
  t.equal(new cloudflareAccess.TokenExpiredError('x').statusCode, 401)
  t.equal(new cloudflareAccess.ClaimInvalidError('x').statusCode, 401)
  t.equal(new cloudflareAccess.TokenMissingError().statusCode, 401)
})

t.test('each rejection is logged once at info with its code, and no token appears in any log line', async (t) => {
  const logs = captureLogs('trace')
  const { access, app } = await setup(t, {}, { fastify: { logger: logs.logger } })
  const tokens = [access.signToken({ exp: 1 }), access.signToken({ aud: ['0'.repeat(64)] }), access.signToken({}, { kid: 'f'.repeat(64) }), 'x.y.z']
  for (const token of tokens) {
    await app.inject({ url: '/admin/me', headers: { [HEADER]: token, cookie: `CF_Authorization=${token}` } })
  }
  const rejections = logs.lines.filter((line) => line.err?.code?.startsWith('FST_CF_ACCESS_'))
  t.same(rejections.map((line) => [line.level, line.err.code]), [
    [30, 'FST_CF_ACCESS_TOKEN_EXPIRED'],
    [30, 'FST_CF_ACCESS_CLAIM_INVALID'],
    [30, 'FST_CF_ACCESS_TOKEN_INVALID'],
    [30, 'FST_CF_ACCESS_TOKEN_INVALID']
  ])
  const everything = JSON.stringify(logs.lines)
  for (const token of tokens.slice(0, 3)) {
    for (const part of token.split('.')) {
      for (let i = 0; i + 20 <= part.length; i += 20) {
        if (everything.includes(part.slice(i, i + 20))) t.fail('a 20-character piece of a token is in the logs')
      }
    }
  }
  t.notOk(everything.includes('originalError'), "fast-jwt's original error is never logged")
})

t.test('the key set is fetched in the background when the app is ready, before any request', async (t) => {
  const { access } = await setup(t)
  t.ok(await eventually(() => access.certsRequestCount === 1, 2000))
})

t.test('malformed tokens are rejected before the key lookup: 401 even while keys are unavailable', async (t) => {
  const access = await emulator(t)
  access.setOutage(true)
  const { get } = await setup(t, {}, { access })
  t.equal((await get(access.signToken())).statusCode, 503, 'a well-formed token needs the keys')
  for (const token of ['garbage', 'a.b', access.signToken({}, { header: { alg: 'HS256' } }), access.signToken({}, { kid: null })]) {
    t.equal((await get(token)).json.code, 'FST_CF_ACCESS_TOKEN_INVALID')
  }
  t.equal((await get()).json.code, 'FST_CF_ACCESS_TOKEN_MISSING')
})

t.test('a header given several values is no single token: 401 invalid', async (t) => {
  const { access, app } = await setup(t)
  const token = access.signToken()
  const res = await app.inject({ url: '/admin/me', headers: { [HEADER]: [token, token] as unknown as string } })
  t.equal(res.statusCode, 401)
  t.equal(res.json().code, 'FST_CF_ACCESS_TOKEN_INVALID')
})

// The README's recipe for an application that logs request headers: pino's redact keeps the token out.
t.test('the log redaction recipe keeps the header and the cookie out of request logs', async (t) => {
  const access = await emulator(t)
  const lines: string[] = []
  const app = Fastify({
    logger: {
      stream: { write: (line: string) => { lines.push(line) } },
      // the recipe, as in the README:
      redact: ['req.headers["cf-access-jwt-assertion"]', 'req.headers.cookie'],
      serializers: {
        req: (request) => ({ method: request.method, url: request.url, headers: request.headers })
      }
    }
  })
  t.teardown(() => app.close())
  await app.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience })
  app.get('/', async () => 'ok')
  const token = access.signToken()
  const res = await app.inject({ url: '/', headers: { 'cf-access-jwt-assertion': token, cookie: `CF_Authorization=${token}; theme=dark` } })
  t.equal(res.statusCode, 200)
  const output = lines.join('')
  t.match(output, /"cf-access-jwt-assertion":"\[Redacted\]"/)
  t.match(output, /"cookie":"\[Redacted\]"/)
  t.notOk(output.includes(token.slice(-30)), 'no part of the token in the logs')
})

t.test('reply.cfAccessLogout() redirects to the relative logout path, never to a Host or a parameter', async (t) => {
  const access = await emulator(t)
  const app = Fastify()
  t.teardown(() => app.close())
  app.register(async (admin) => {
    await admin.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience })
    admin.post('/logout', async (request, reply) => reply.cfAccessLogout())
    admin.get('/bye', { config: { cfAccess: false } }, (request, reply) => { reply.cfAccessLogout() })
  }, { prefix: '/admin' })
  app.get('/outside', async (request, reply) => typeof reply.cfAccessLogout)
  const token = access.signToken()
  const hostile = { [HEADER]: token, host: 'evil.example', 'x-forwarded-host': 'evil.example', 'x-forwarded-proto': 'https', referer: 'https://evil.example/' }
  for (const url of ['/admin/logout', '/admin/logout?redirect_url=https://evil.example/', '/admin/logout?returnTo=//evil.example&next=%2F%2Fevil.example']) {
    const res = await app.inject({ method: 'POST', url, headers: hostile })
    t.equal(res.statusCode, 303, url)
    t.equal(res.headers.location, '/cdn-cgi/access/logout', `${url}: relative, fixed`)
    t.equal(res.headers['cache-control'], 'no-store')
  }
  t.equal((await app.inject({ method: 'POST', url: '/admin/logout' })).statusCode, 401, 'the logout route is protected like any other')
  t.equal((await app.inject('/admin/bye')).headers.location, '/cdn-cgi/access/logout', 'a route without verification can log out too')
  t.equal((await app.inject('/outside')).body, 'undefined', "the decorator belongs to the plugin's scope")
})

t.test('reply.cfAccessLogout() with hook: false and with the preHandler hook', async (t) => {
  const access = await emulator(t)
  for (const hook of [false, 'preHandler'] as const) {
    const app = Fastify()
    t.teardown(() => app.close())
    await app.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, hook })
    app.get('/logout', async (request, reply) => reply.cfAccessLogout())
    const res = await app.inject({ url: '/logout', headers: { [HEADER]: access.signToken() } })
    t.equal(res.headers.location, '/cdn-cgi/access/logout', String(hook))
  }
})

t.test('logout is not revocation: a token issued before stays valid until exp, cached or not', async (t) => {
  const access = await emulator(t)
  for (const cacheSize of [1000, 0]) {
    const { get } = await setup(t, { cacheSize }, { access })
    const token = access.signToken({}, { expiresIn: 3600 })
    t.equal((await get(token)).statusCode, 200)
    const out = await fetch(`${access.teamDomain}/cdn-cgi/access/logout`, { headers: { cookie: `CF_Authorization=${token}` } })
    t.match(out.headers.get('set-cookie'), /^CF_Authorization=;.*Max-Age=0/, 'the emulator ends the session: the cookie is cleared')
    t.equal((await get(token)).statusCode, 200, `cacheSize ${cacheSize}: the token itself still verifies`)
    t.equal((await get(access.signToken({}, { now: Math.floor(Date.now() / 1000) - 3600, expiresIn: 60 }))).statusCode, 401, 'until its exp')
  }
})
