import { spawn } from 'node:child_process'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import cookie from '@fastify/cookie'
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify'
import t, { type Test } from 'tap'
import cloudflareAccess from '../index'
import type { AccessEmulator } from '../lib/testing'
import type { CloudflareAccessAuthorize, FastifyCloudflareAccessOptions } from '../lib/types'
import { emulator, HEADER, sleep } from './helpers'

// Where the plugin meets other code: hooks before and after ours, wrappers around verify, hook: false,
// verifyToken, odd thrown values, and the answers under faults. Each test is named after the attack or
// fault, and failed on the code before its fix.

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
  await t.rejects(withAuthorize.cfAccess.verifyToken(access.signToken({ email: 'a@acme.com' })), { statusCode: 500, code: FAILED, message: /needs the request/ }, 'authorize without a request is refused, never skipped')
  const a = access.signToken({ email: 'a@acme.com' })
  await withAuthorize.inject({ url: '/ws', headers: { [HEADER]: a, 'x-ok': '1', 'x-token': a } })
  t.equal(seen, 'a@acme.com', 'with the request: authorize and the route policy admit')
  const b = access.signToken({ email: 'b@acme.com' })
  await withAuthorize.inject({ url: '/ws', headers: { [HEADER]: a, 'x-ok': '1', 'x-token': b } })
  t.equal(seen, 'FST_CF_ACCESS_FORBIDDEN', 'the route policy applies to the token given')
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

t.test('registering twice in nested scopes is refused in either order, with the same message', async (t) => {
  const access = await emulator(t)
  const options = { teamDomain: access.teamDomain, audience: access.audience }
  const childFirst = Fastify()
  t.teardown(() => childFirst.close())
  childFirst.register(async (child) => { await child.register(cloudflareAccess, options) })
  childFirst.register(cloudflareAccess, options)
  await t.rejects(async () => { await childFirst.ready() }, /already registered in this scope, a parent scope or a child scope/)
  const parentFirst = Fastify()
  t.teardown(() => parentFirst.close())
  parentFirst.register(cloudflareAccess, options)
  parentFirst.register(async (child) => { await child.register(cloudflareAccess, options) })
  await t.rejects(async () => { await parentFirst.ready() }, /already registered in this scope, a parent scope or a child scope/)
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

/** A team origin whose certs come from the emulator and whose identity endpoint answers as `identity` says. */
async function identityServer (t: Test, access: AccessEmulator, identity: (res: http.ServerResponse) => void): Promise<string> {
  const server = http.createServer((req, res) => {
    if (req.url === '/cdn-cgi/access/certs') res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(access.jwks()))
    else identity(res)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { server.closeAllConnections(); server.close() })
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`
}

t.test('the identity endpoint: only 400, 401 and 403 mean the session is refused; every other failure is a 503 with Retry-After', async (t) => {
  const access = await emulator(t)
  let answer: (res: http.ServerResponse) => void = () => {}
  const origin = await identityServer(t, access, (res) => answer(res))
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(cloudflareAccess, { teamDomain: origin, audience: access.audience, allow: { groups: ['ops'] }, identityCacheTtl: 0 })
  app.get('/', async () => ({}))
  await app.ready()
  const status = async (): Promise<{ statusCode: number, code: string, retry: unknown }> => {
    const res = await app.inject({ url: '/', headers: { [HEADER]: access.signToken({ iss: origin }) } })
    return { statusCode: res.statusCode, code: res.json().code, retry: res.headers['retry-after'] }
  }
  for (const code of [400, 401, 403]) {
    answer = (res) => res.writeHead(code).end('{}')
    t.same(await status(), { statusCode: 401, code: 'FST_CF_ACCESS_TOKEN_INVALID', retry: undefined }, `HTTP ${code}`)
  }
  const outages: Record<string, (res: http.ServerResponse) => void> = {
    'HTTP 404': (res) => res.writeHead(404).end('{}'),
    'HTTP 408': (res) => res.writeHead(408).end('{}'),
    'HTTP 429': (res) => res.writeHead(429).end('{}'),
    'HTTP 500': (res) => res.writeHead(500).end('{}'),
    'HTTP 502': (res) => res.writeHead(502).end('{}'),
    'a redirect': (res) => res.writeHead(302, { location: '/elsewhere' }).end(),
    'not JSON': (res) => res.writeHead(200).end('<html>'),
    'more than 64 KiB': (res) => res.writeHead(200).end(JSON.stringify({ email: 'user@example.com', groups: [], pad: 'x'.repeat(64 * 1024) })),
    'nested 5000 deep': (res) => res.writeHead(200).end(`{"email":"user@example.com","groups":[],"deep":${'['.repeat(5000)}${']'.repeat(5000)}}`),
    'nested 33 deep': (res) => res.writeHead(200).end(`{"email":"user@example.com","groups":[],"deep":${'['.repeat(33)}${']'.repeat(33)}}`)
  }
  for (const [name, outage] of Object.entries(outages)) {
    answer = outage
    t.same(await status(), { statusCode: 503, code: 'FST_CF_ACCESS_IDENTITY_UNAVAILABLE', retry: '5' }, name)
  }
  answer = (res) => res.writeHead(200).end(JSON.stringify({ email: 'user@example.com', groups: [{ id: '1', name: 'ops' }], deep: JSON.parse('['.repeat(30) + ']'.repeat(30)) as unknown }))
  t.same(await status(), { statusCode: 200, code: undefined, retry: undefined }, 'a document 31 levels deep is fine')
})

t.test('every 503 carries Retry-After: request.cfAccessIdentity() awaited in a handler', async (t) => {
  const access = await emulator(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience })
  app.get('/', async (request) => request.cfAccessIdentity())
  await app.ready()
  access.setOutage('error', 'identity')
  const res = await app.inject({ url: '/', headers: { [HEADER]: access.signToken() } })
  t.equal(res.statusCode, 503)
  t.equal(res.json().code, 'FST_CF_ACCESS_IDENTITY_UNAVAILABLE')
  t.equal(res.headers['retry-after'], '5')
})

t.test('a hostile Cookie header (1 MiB of ";" or of "a;") gets 401 without a token, and the real cookie after them is still found', async (t) => {
  const access = await emulator(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience })
  app.get('/', async (request) => request.cfAccess?.email)
  await app.ready()
  const token = access.signToken()
  for (const filler of [';'.repeat(1 << 20), 'a;'.repeat(1 << 19), ' ;='.repeat(1 << 18), 'x=1;'.repeat(1 << 18)]) {
    t.equal((await app.inject({ url: '/', headers: { cookie: filler } })).statusCode, 401)
    const res = await app.inject({ url: '/', headers: { cookie: `${filler}; CF_Authorization=${token}` } })
    t.equal(res.statusCode, 200, 'the cookie after the filler is found')
  }
})

t.test('app.close() aborts in-flight key and identity requests: a closed app\'s process exits at once, not after fetchTimeout', async (t) => {
  const access = await emulator(t)
  const script = `
    const Fastify = require('fastify')
    const plugin = require(${JSON.stringify(join(__dirname, '..', 'dist', 'index.js'))})
    const [teamDomain, audience, token, which] = process.argv.slice(1)
    const app = Fastify()
    app.register(plugin, { teamDomain, audience, fetchTimeout: 30000, identityTimeout: 30000 })
    app.get('/', async (request) => which === 'identity' ? request.cfAccessIdentity() : 'ok')
    app.ready().then(async () => {
      const pending = app.inject({ url: '/', headers: { 'cf-access-jwt-assertion': token } }).catch(() => {})
      setTimeout(async () => { await app.close(); await pending; process.stdout.write('closed') }, 300)
    })`
  for (const which of ['keys', 'identity']) {
    if (which === 'identity') {
      access.setLatency(0)
      access.setLatency(Infinity, 'identity')
    } else {
      access.setLatency(Infinity)
    }
    const started = Date.now()
    const child = spawn(process.execPath, ['-e', script, access.teamDomain, access.audience, access.signToken(), which], { cwd: join(__dirname, '..'), stdio: ['ignore', 'pipe', 'inherit'] })
    let out = ''
    child.stdout.on('data', (chunk: Buffer) => { out += chunk.toString() })
    const code = await new Promise<number | null>((resolve) => child.on('exit', resolve))
    const took = Date.now() - started
    t.equal(code, 0, `${which}: exited cleanly`)
    t.equal(out, 'closed')
    t.ok(took < 10_000, `${which}: exited ${took} ms after start, well before the 30 s fetch timeout`)
  }
})

t.test('the emulator\'s request log is bounded', async (t) => {
  const access = await emulator(t)
  const agent = new http.Agent({ keepAlive: true, maxSockets: 8 })
  t.teardown(() => agent.destroy())
  const get = (): Promise<void> => new Promise((resolve, reject) => {
    http.get(`${access.teamDomain}/x`, { agent }, (res) => { res.resume(); res.on('end', resolve) }).on('error', reject)
  })
  for (let i = 0; i < 1300; i += 50) await Promise.all(Array.from({ length: 50 }, get))
  t.equal(access.requestCount, 1300, 'every request counted')
  t.ok(access.requests.length <= 1000, `the log keeps at most 1000 (${access.requests.length})`)
})

// A red-team pass over the seams of issue 9. Each test is a way found to get past a route policy, or a
// wrong answer, and failed on the code it was written against.

function register (app: FastifyInstance, access: AccessEmulator, extra: Partial<FastifyCloudflareAccessOptions> = {}): Promise<unknown> {
  return app.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, ...extra }) as unknown as Promise<unknown>
}

/** The status of `url` for no token, a user the policy refuses, and the one it admits. */
async function answers (app: FastifyInstance, access: AccessEmulator, url: string, method: 'GET' | 'HEAD' = 'GET', headers: Record<string, string> = {}): Promise<number[]> {
  const tokens = [undefined, access.signToken({ email: 'eve@acme.com' }), access.signToken({ email: 'boss@acme.com' })]
  const codes: number[] = []
  for (const token of tokens) {
    codes.push((await app.inject({ method, url, headers: token === undefined ? headers : { ...headers, [HEADER]: token } })).statusCode)
  }
  return codes
}

const BOSS_ONLY = [401, 403, 200]

t.test('hook: false: a policy object shared by a route added before the plugin and one added after is enforced on both, GET and HEAD', async (t) => {
  const access = await emulator(t)
  const app = Fastify()
  t.teardown(() => app.close())
  // One policy constant, used wherever it applies: the usual way to write it.
  const bossOnly = { allow: { emails: ['boss@acme.com'] } }
  let handled = 0
  app.get('/early', { config: { cfAccess: bossOnly } }, async () => { handled++; return 'early' })
  await register(app, access, { hook: false })
  app.get('/late', { config: { cfAccess: bossOnly } }, async () => { handled++; return 'late' })
  await app.ready()
  t.same(await answers(app, access, '/late'), BOSS_ONLY, 'the route added after the plugin')
  t.same(await answers(app, access, '/early'), BOSS_ONLY, 'the route added before the plugin, sharing the policy object')
  t.same(await answers(app, access, '/early', 'HEAD'), BOSS_ONLY, 'its HEAD route')
  t.equal(handled, 3, 'handlers ran for the admitted user only (GET and HEAD of /early, GET of /late)')
})

t.test('a route policy Fastify does not copy into the route (inherited, or a class getter) is enforced, not validated at boot and then dropped', async (t) => {
  const access = await emulator(t)
  for (const hook of ['onRequest', 'preHandler', false] as const) {
    const app = Fastify()
    t.teardown(() => app.close())
    await register(app, access, { hook })
    const bossOnly = { allow: { emails: ['boss@acme.com'] } }
    class AdminRoute { get cfAccess (): object { return bossOnly } }
    app.get('/inherited', { config: Object.create({ cfAccess: bossOnly }) }, async () => 'in')
    app.get('/getter', { config: new AdminRoute() as unknown as Record<string, unknown> }, async () => 'in')
    await app.ready()
    t.same(await answers(app, access, '/inherited'), BOSS_ONLY, `hook ${String(hook)}: config inheriting cfAccess`)
    t.same(await answers(app, access, '/getter'), BOSS_ONLY, `hook ${String(hook)}: cfAccess from a class getter`)
  }
})

t.test('hook: false: a route added before the plugin whose config.cfAccess is not a policy (true, null, a string) refuses the boot', async (t) => {
  const access = await emulator(t)
  const app = Fastify()
  t.teardown(() => app.close())
  for (const [name, value] of Object.entries({ true: true, null: null, string: 'admins' })) {
    app.get(`/${name}`, { config: { cfAccess: value as unknown as false } }, async () => 'open')
  }
  await register(app, access, { hook: false })
  const error = await app.ready().then(() => undefined, (error: Error) => error)
  for (const name of ['true', 'null', 'string']) {
    t.match(error?.message, new RegExp(`route GET /${name}: config\\.cfAccess must be false or a policy`), `cfAccess: ${name}: named`)
  }
})

t.test('hook: false: an onRoute hook added after the plugin that replaces route.preHandler does not open a route with a policy', async (t) => {
  const access = await emulator(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await register(app, access, { hook: false })
  // A common way to wire per-route auth: assign the route's preHandler from its config (overwriting).
  app.addHook('onRoute', (route) => {
    if ((route.config as { apiKey?: boolean } | undefined)?.apiKey === true) {
      route.preHandler = async (request: FastifyRequest) => {
        if (request.headers['x-api-key'] !== 'k') throw Object.assign(new Error('API key required'), { statusCode: 401 })
      }
    }
  })
  app.get('/keyed', { config: { apiKey: true, cfAccess: { allow: { emails: ['boss@acme.com'] } } } as Record<string, unknown> }, async (request) => ({ email: request.cfAccess?.email ?? null }))
  await app.ready()
  t.same(await answers(app, access, '/keyed', 'GET', { 'x-api-key': 'k' }), BOSS_ONLY, 'an API key does not replace the route policy')
})
