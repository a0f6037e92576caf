import fastifyAuth from '@fastify/auth'
import swagger from '@fastify/swagger'
import Fastify, { type FastifyInstance, type FastifyRequest } from 'fastify'
import t from 'tap'
import cloudflareAccess, { cloudflareAccessSecurity, cloudflareAccessSecuritySchemes, cloudflareAccessTransform, requireClaims, requireServiceToken, requireUser } from '../index'
import rateLimit from '@fastify/rate-limit'
import websocket from '@fastify/websocket'
import type { AddressInfo } from 'node:net'
import WebSocket from 'ws'
import cors from '@fastify/cors'
import { apiKeyStrategy, buildAuthApp } from '../examples/auth'
import { buildCorsAtRoot, buildCorsInScope } from '../examples/cors'
import { buildNotFoundApp } from '../examples/not-found'
import { buildOpenapiApp } from '../examples/openapi'
import { buildOptionalApp } from '../examples/optional'
import { buildRateLimitedApp, subjectKey } from '../examples/rate-limit'
import { buildTypedApp } from '../examples/typed-claims'
import { allowOrigins, buildWebsocketApp, closeAtExpiry, TOKEN_EXPIRED_CLOSE } from '../examples/websocket'
import { attackerKey as attacker, captureLogs, decode, emulator, eventually, HEADER, nowSeconds } from './helpers'

// The integrations with the usual Fastify plugins, each a recipe in examples/ run here with the real
// plugin installed, and the ways of wiring each one wrong. One test process for all of them.

type Operation = { security?: unknown, responses: Record<string, any> }
function operation (app: FastifyInstance, url: string, method = 'get'): Operation {
  const document = app.swagger() as unknown as { paths: Record<string, Record<string, Operation>> }
  const path = document.paths[url]
  if (path?.[method] === undefined) throw new Error(`no ${method} ${url} in the document`)
  return path[method]
}
const SECURITY = [{ cloudflareAccessHeader: [] }, { cloudflareAccessCookie: [] }]

t.test('OpenAPI (examples/openapi.ts)', async (t) => {
  const access = await emulator(t)
  const app = await buildOpenapiApp(access.teamDomain, access.audience, 'k3y')
  t.teardown(() => app.close())
  await app.ready()
  const document = app.swagger() as any

  t.test('the two schemes are documented: header Cf-Access-Jwt-Assertion and cookie CF_Authorization', async (t) => {
    t.match(document.openapi, /^3\./)
    t.match(document.components.securitySchemes.cloudflareAccessHeader, { type: 'apiKey', in: 'header', name: 'Cf-Access-Jwt-Assertion' })
    t.match(document.components.securitySchemes.cloudflareAccessCookie, { type: 'apiKey', in: 'cookie', name: 'CF_Authorization' })
  })

  t.test('a route protected by the scope hook shows the requirement and the 401/403/503 answers', async (t) => {
    const me = operation(app, '/admin/me')
    t.same(me.security, SECURITY)
    t.same(Object.keys(me.responses).sort(), ['200', '401', '403', '503'])
    for (const status of [401, 403, 503]) {
      const schema = me.responses[status].content['application/json'].schema
      t.same(schema.required, ['statusCode', 'code', 'error', 'message'], `${status} in Fastify's error shape`)
      t.same(schema.properties.statusCode.enum, [status])
    }
    t.ok(me.responses[503].headers['Retry-After'], '503 documents Retry-After')
    t.match(me.responses[200].content['application/json'].schema, { properties: { email: { type: 'string' } } }, 'the route\'s own answer stays')
  })

  t.test('route-level verify (hook: false) is seen; a wrapper says so itself and gets the answers', async (t) => {
    t.same(operation(app, '/api/jobs').security, SECURITY)
    const reports = operation(app, '/api/reports')
    t.same(reports.security, [...SECURITY, { apiKey: [] }])
    t.ok(reports.responses[401] && reports.responses[403] && reports.responses[503])
    t.ok(reports.responses[200], 'a default answer is still described')
  })

  t.test('public routes and config.cfAccess: false routes show none', async (t) => {
    for (const url of ['/', '/admin/health', '/api/status']) {
      const { security, responses } = operation(app, url)
      t.equal(security, undefined, `${url}: no security`)
      t.same(Object.keys(responses), ['200'], `${url}: no error answers`)
    }
  })

  t.test('describing changes nothing the routes answer', async (t) => {
    const token = access.signToken({ email: 'ann@acme.com' })
    const me = await app.inject({ url: '/admin/me', headers: { [HEADER]: token } })
    t.same(me.json(), { email: 'ann@acme.com' })
    const denied = await app.inject('/admin/me')
    t.same(Object.keys(denied.json()).sort(), ['code', 'error', 'message', 'statusCode'])
    t.equal((await app.inject({ url: '/api/reports', headers: { 'x-api-key': 'k3y' } })).statusCode, 200)
    t.equal((await app.inject('/api/reports')).statusCode, 401)
  })
})

t.test('OpenAPI: the transform describes, never mutates, and a custom 401 body keeps its shape', async (t) => {
  const access = await emulator(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(swagger, { openapi: { components: { securitySchemes: { ...cloudflareAccessSecuritySchemes } } }, transform: cloudflareAccessTransform })
  const shared = { response: { 200: { type: 'object', properties: { n: { type: 'integer' } } } } }
  const before = JSON.stringify(shared)
  app.register(async (admin) => {
    await admin.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience })
    admin.setErrorHandler((error: { statusCode?: number }, _request, reply) => {
      reply.code(error.statusCode ?? 500).send({ login: 'https://acme.cloudflareaccess.com', extra: 1 })
    })
    admin.get('/a', { schema: shared }, async () => ({ n: 1, hidden: true }))
    admin.get('/b', { schema: shared }, async () => ({ n: 2 }))
  }, { prefix: '/admin' })
  app.get('/open', { schema: shared }, async () => ({ n: 3 }))
  await app.ready()
  app.swagger()
  t.equal(JSON.stringify(shared), before, 'the shared schema object is unchanged')
  t.same((await app.inject('/admin/a')).json(), { login: 'https://acme.cloudflareaccess.com', extra: 1 }, 'no 401 schema was added to the route: the custom body is not filtered')
  t.same((await app.inject({ url: '/admin/a', headers: { [HEADER]: access.signToken() } })).json(), { n: 1 }, 'the 200 schema still serializes')
  t.equal(operation(app, '/open').security, undefined)
  t.same(operation(app, '/admin/b').security, SECURITY)
})

t.test('OpenAPI: a route that declares its own answers and requirement keeps them', async (t) => {
  const access = await emulator(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(swagger, {
    openapi: {
      components: { securitySchemes: { ...cloudflareAccessSecuritySchemes, other: { type: 'http', scheme: 'basic' } } },
      security: [{ cloudflareAccessHeader: [] }] // a document-wide requirement
    },
    transform: cloudflareAccessTransform
  })
  await app.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience })
  const mine = { description: 'Log in first', type: 'object', properties: { login: { type: 'string' } } }
  app.get('/own', { schema: { security: [{ cloudflareAccessCookie: [] }], response: { 401: mine } } }, async () => 'x')
  app.get('/health', { config: { cfAccess: false } }, async () => 'ok')
  app.get('/health2', { config: { cfAccess: false }, schema: { security: [{ other: [] }] } }, async () => 'ok')
  await app.ready()
  const own = operation(app, '/own')
  t.same(own.security, [{ cloudflareAccessCookie: [] }])
  t.equal(own.responses[401].description, 'Log in first')
  t.ok(own.responses[403] && own.responses[503])
  t.same(operation(app, '/health').security, [], 'an opted-out route overrides the document-wide requirement')
  t.same(operation(app, '/health2').security, [{ other: [] }], 'unless it declares its own')
})

t.test('OpenAPI wired wrong: fails loudly, never documents a protected route as public', async (t) => {
  const access = await emulator(t)
  const options = { teamDomain: access.teamDomain, audience: access.audience }

  t.test('the schemes missing from the swagger options: a clear error, not a TypeError', async (t) => {
    const app = Fastify()
    t.teardown(() => app.close())
    await app.register(swagger, { openapi: {}, transform: cloudflareAccessTransform })
    await app.register(cloudflareAccess, options)
    app.get('/x', async () => 'x')
    await app.ready()
    t.throws(() => app.swagger(), /add cloudflareAccessSecuritySchemes to the openapi\.components\.securitySchemes/)
  })

  t.test('Swagger 2 (no cookie scheme): a clear error', async (t) => {
    const app = Fastify()
    t.teardown(() => app.close())
    await app.register(swagger, { swagger: {}, transform: cloudflareAccessTransform })
    await app.register(cloudflareAccess, options)
    app.get('/x', async () => 'x')
    await app.ready()
    t.throws(() => app.swagger(), /describes OpenAPI 3 documents/)
  })

  t.test('a policy route under hook: false is described as protected (it is never served open)', async (t) => {
    const app = Fastify()
    t.teardown(() => app.close())
    await app.register(swagger, { openapi: { components: { securitySchemes: { ...cloudflareAccessSecuritySchemes } } }, transform: cloudflareAccessTransform })
    await app.register(cloudflareAccess, { ...options, hook: false })
    app.get('/p', { onRequest: app.cfAccess.verify, config: { cfAccess: { allow: { emailDomains: ['acme.com'] } } } }, async () => 'x')
    app.get('/q', { preHandler: [async () => {}, app.cfAccess.verify] }, async () => 'x')
    await app.ready()
    t.same(operation(app, '/p').security, SECURITY)
    t.same(operation(app, '/q').security, SECURITY, 'verify found inside an array of hooks')
  })

  t.test('a wrapper with the requirement in the schema, and @fastify/auth in a protected scope', async (t) => {
    const app = Fastify()
    t.teardown(() => app.close())
    await app.register(swagger, { openapi: { components: { securitySchemes: { ...cloudflareAccessSecuritySchemes } } }, transform: cloudflareAccessTransform })
    await app.register(fastifyAuth)
    await app.register(cloudflareAccess, options)
    app.get('/w', { onRequest: app.auth([async () => {}]), schema: { security: cloudflareAccessSecurity } }, async () => 'x')
    await app.ready()
    t.same(operation(app, '/w').security, SECURITY)
    t.throws(() => { (cloudflareAccessSecurity as unknown[]).push({}) }, TypeError, 'the shared requirement cannot be changed')
  })
})

t.test('rate limiting (examples/rate-limit.ts)', async (t) => {
  const access = await emulator(t)
  const app = await buildRateLimitedApp(access.teamDomain, access.audience, { anonymous: 6, user: 2 })
  t.teardown(() => app.close())
  const get = (headers: Record<string, string> = {}, remoteAddress = '127.0.0.1') =>
    app.inject({ url: '/admin/report', headers, remoteAddress })

  t.test('anonymous requests are limited by client IP before verification: the 401s count', async (t) => {
    const from = { 'cf-connecting-ip': '198.51.100.1' }
    const codes = []
    for (let i = 0; i < 7; i++) codes.push((await get({ ...from, [HEADER]: 'garbage' })).statusCode)
    t.same(codes, [401, 401, 401, 401, 401, 401, 429])
    t.equal((await get({ 'cf-connecting-ip': '198.51.100.2' })).statusCode, 401, 'another visitor has a bucket of its own')
  })

  t.test('CF-Connecting-IP is believed only from the trusted proxy', async (t) => {
    const codes = []
    for (let i = 0; i < 7; i++) codes.push((await get({ 'cf-connecting-ip': `203.0.113.${i}` }, '192.0.2.7')).statusCode)
    t.same(codes, [401, 401, 401, 401, 401, 401, 429], 'a direct client that rotates the header is still one bucket')
  })

  t.test('verified users are limited each by their own subject after verification', async (t) => {
    const ann = access.signToken({ email: 'ann@acme.com' })
    const headers = { 'cf-connecting-ip': '198.51.100.10', [HEADER]: ann }
    t.same((await get(headers)).json(), { for: 'user:ann@acme.com' })
    t.equal((await get(headers)).statusCode, 200)
    t.equal((await get(headers)).statusCode, 429, 'ann is over her limit')
    const bob = access.signToken({ email: 'bob@acme.com' })
    t.equal((await get({ 'cf-connecting-ip': '198.51.100.10', [HEADER]: bob })).statusCode, 200, 'bob, from the same address, is not')
    const bot = access.signServiceToken({ common_name: 'ci.access' })
    t.same((await get({ 'cf-connecting-ip': '198.51.100.11', [HEADER]: bot })).json(), { for: 'service:ci.access' })
  })

  t.test('a forged token naming a user never spends that user\'s budget', async (t) => {
    const forged = access.signToken({ email: 'carol@acme.com' }, { key: attacker() })
    for (let i = 0; i < 3; i++) t.equal((await get({ 'cf-connecting-ip': '198.51.100.20', [HEADER]: forged })).statusCode, 401)
    t.equal((await get({ 'cf-connecting-ip': '198.51.100.21', [HEADER]: access.signToken({ email: 'carol@acme.com' }) })).statusCode, 200)
  })
})

t.test('rate limiting wired wrong: a per-user limiter before verification keys by address, never by an unverified claim', async (t) => {
  const access = await emulator(t)
  for (const hook of ['preHandler', 'onRequest-after-root'] as const) {
    const app = Fastify()
    t.teardown(() => app.close())
    await app.register(rateLimit, { global: false })
    const keys: string[] = []
    const limiter = app.rateLimit({ max: 100, timeWindow: 60_000, keyGenerator: (request) => { const key = subjectKey(request); keys.push(key); return key } })
    if (hook === 'onRequest-after-root') app.addHook('onRequest', limiter) // at the root: before the scope's hook
    app.register(async (admin) => {
      await admin.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, hook: hook === 'preHandler' ? 'preHandler' : 'onRequest' })
      if (hook === 'preHandler') admin.addHook('onRequest', limiter) // onRequest runs before the plugin's preHandler
      admin.get('/x', async () => 'ok')
    }, { prefix: '/admin' })
    const forged = access.signToken({ email: 'dan@acme.com' }, { key: attacker() })
    t.equal((await app.inject({ url: '/admin/x', headers: { [HEADER]: forged } })).statusCode, 401)
    t.equal((await app.inject({ url: '/admin/x', headers: { [HEADER]: access.signToken({ email: 'dan@acme.com' }) } })).statusCode, 200)
    t.same(keys, ['ip:127.0.0.1', 'ip:127.0.0.1'], `${hook}: no key came from a token`)
  }
})

type Upgrade = { status: number, ws?: WebSocket, first?: string, body?: string }
function upgrade (url: string, headers: Record<string, string>, origin?: string): Promise<Upgrade> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers, ...(origin === undefined ? {} : { origin }) })
    ws.once('message', (data) => resolve({ status: 101, ws, first: String(data) }))
    ws.once('unexpected-response', (_request, response) => {
      let body = ''
      response.on('data', (chunk: Buffer) => { body += String(chunk) })
      response.on('end', () => { resolve({ status: response.statusCode ?? 0, body }); ws.terminate() })
    })
    ws.once('error', reject)
  })
}
function closed (ws: WebSocket): Promise<{ code: number, reason: string }> {
  return new Promise((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: String(reason) })))
}
async function listen (app: FastifyInstance): Promise<string> {
  await app.listen({ port: 0, host: '127.0.0.1' })
  return `ws://127.0.0.1:${(app.server.address() as AddressInfo).port}`
}

t.test('WebSockets (examples/websocket.ts), with a real ws client', async (t) => {
  const access = await emulator(t)
  const app = await buildWebsocketApp(access.teamDomain, access.audience, ['https://app.acme.com'])
  t.teardown(() => app.close())
  const base = `${await listen(app)}/live/feed`
  const token = access.signToken({ email: 'eve@acme.com' })

  t.test('no token: the upgrade is refused with 401 and the Access error', async (t) => {
    const result = await upgrade(base, {})
    t.equal(result.status, 401)
    t.match(JSON.parse(result.body as string), { code: 'FST_CF_ACCESS_TOKEN_MISSING' })
    t.equal((await upgrade(base, { [HEADER]: access.signToken({ exp: nowSeconds() - 3600 }) })).status, 401, 'expired')
  })

  t.test('the header: upgraded, and the handler has the claims', async (t) => {
    const result = await upgrade(base, { [HEADER]: token })
    t.equal(result.status, 101)
    t.same(JSON.parse(result.first as string), { hello: 'eve@acme.com' })
    const ws = result.ws as WebSocket
    const echo = new Promise((resolve) => ws.once('message', (data) => resolve(String(data))))
    ws.send('ping')
    t.equal(await echo, 'echo ping')
    ws.close()
  })

  t.test('the cookie from an allowed Origin: upgraded; from another site: 403 (cross-site WebSocket hijacking)', async (t) => {
    const cookie = { cookie: `CF_Authorization=${token}` }
    const good = await upgrade(base, cookie, 'https://app.acme.com')
    t.equal(good.status, 101)
    good.ws?.close()
    const evil = await upgrade(base, cookie, 'https://evil.example')
    t.equal(evil.status, 403)
    t.match(JSON.parse(evil.body as string), { code: 'WS_ORIGIN_FORBIDDEN' })
    t.equal((await upgrade(base, { [HEADER]: token }, 'https://evil.example')).status, 403, 'an Origin is checked whatever carries the token')
  })

  t.test('the socket is closed when the token expires', async (t) => {
    // exp is whole seconds: a token signed late in a second may expire a few milliseconds later, before the
    // client reads the greeting. So the close is awaited from the start, and the greeting checked after it.
    const token = access.signServiceToken({ common_name: 'feed.access' }, { expiresIn: 2 })
    const exp = decode(token).payload.exp as number
    const ws = new WebSocket(base, { headers: { [HEADER]: token } })
    const messages: string[] = []
    ws.on('message', (data) => messages.push(String(data)))
    t.same(await closed(ws), { code: TOKEN_EXPIRED_CLOSE, reason: 'Cloudflare Access token expired' })
    t.ok(Date.now() >= exp * 1000, 'not before exp')
    t.ok(Date.now() < exp * 1000 + 10_000, 'at exp, not hours later')
    t.same(messages.map((message) => JSON.parse(message)), [{ hello: 'feed.access' }], 'the greeting came first')
  })
})

t.test('closeAtExpiry re-arms past setTimeout\'s limit and closes at once when already expired', async (t) => {
  const calls: Array<[number, string]> = []
  const listeners: Array<() => void> = []
  const socket = { close: (code: number, reason: string) => calls.push([code, reason]), on: (_event: string, fn: () => void) => listeners.push(fn) }
  closeAtExpiry(socket as unknown as Parameters<typeof closeAtExpiry>[0], nowSeconds() + 40 * 86_400) // 40 days: beyond 2^31 ms
  t.same(calls, [], 'not closed at once (a plain setTimeout of 40 days would fire immediately)')
  listeners.forEach((fn) => fn())
  closeAtExpiry(socket as unknown as Parameters<typeof closeAtExpiry>[0], nowSeconds() - 1)
  t.same(calls, [[TOKEN_EXPIRED_CLOSE, 'Cloudflare Access token expired']])
})

t.test('WebSockets wired wrong: other hook positions still refuse an unverified upgrade', async (t) => {
  const access = await emulator(t)
  const token = access.signToken({ email: 'eve@acme.com' })
  for (const layout of ['preHandler', 'hook-false-route-verify', 'origin-check-first'] as const) {
    const app = Fastify()
    t.teardown(() => app.close())
    await app.register(websocket)
    app.register(async (live) => {
      if (layout === 'origin-check-first') live.addHook('onRequest', allowOrigins(['https://app.acme.com']))
      await live.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, hook: layout === 'preHandler' ? 'preHandler' : layout === 'hook-false-route-verify' ? false : 'onRequest' })
      const onRequest = layout === 'hook-false-route-verify' ? live.cfAccess.verify : []
      live.get('/feed', { websocket: true, onRequest }, (socket, request) => { socket.send(String(request.cfAccess?.email)) })
    }, { prefix: '/live' })
    const base = `${await listen(app)}/live/feed`
    t.equal((await upgrade(base, {})).status, 401, `${layout}: no token`)
    t.equal((await upgrade(base, { cookie: 'CF_Authorization=nope' }, 'https://app.acme.com')).status, 401, `${layout}: bad cookie`)
    const ok = await upgrade(base, { [HEADER]: token })
    t.equal(ok.first, 'eve@acme.com', `${layout}: a valid token upgrades`)
    ok.ws?.close()
  }
})

t.test('unknown routes under a protected prefix (examples/not-found.ts)', async (t) => {
  const access = await emulator(t)
  const app = await buildNotFoundApp(access.teamDomain, access.audience)
  t.teardown(() => app.close())
  const token = access.signToken()
  for (const prefix of ['/admin', '/api']) {
    t.equal((await app.inject(`${prefix}/nope`)).statusCode, 401, `${prefix}: an unknown route without a token is 401`)
    t.equal((await app.inject(`${prefix}/deeper/still/nope`)).statusCode, 401)
    t.equal((await app.inject({ method: 'DELETE', url: prefix })).statusCode, 401, `${prefix}: an unknown method too`)
    t.equal((await app.inject({ url: `${prefix}/nope`, headers: { [HEADER]: 'garbage' } })).statusCode, 401)
    const found = await app.inject({ url: `${prefix}/nope`, headers: { [HEADER]: token } })
    t.equal(found.statusCode, 404, `${prefix}: with a token, 404`)
    t.equal(found.json().message, `Route GET:${prefix}/nope not found`)
  }
  t.equal((await app.inject('/admin/reports')).statusCode, 401)
  t.equal((await app.inject('/api/jobs')).statusCode, 401)
  t.equal((await app.inject('/elsewhere')).statusCode, 404, 'outside the prefixes the root answers 404 as before')
  const big = await app.inject({ method: 'POST', url: '/admin/nope', headers: { 'content-type': 'application/json' }, payload: '{"a":' + '1'.repeat(2_000_000) + '}' })
  t.equal(big.statusCode, 401, 'refused before the body is read (no 413)')
})

t.test('unknown routes wired wrong: without a not-found handler in the scope, the root answers 404 to anyone', async (t) => {
  const access = await emulator(t)
  const app = Fastify()
  t.teardown(() => app.close())
  app.setNotFoundHandler((_request, reply) => { reply.code(404).send('root 404') }) // at the root: the scope's hooks do not run
  app.register(async (admin) => {
    await admin.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience })
    admin.get('/reports', async () => ['q1'])
  }, { prefix: '/admin' })
  t.equal((await app.inject('/admin/nope')).statusCode, 404, 'this is why the recipe sets the handler inside the scope')
  t.equal((await app.inject('/admin/reports')).statusCode, 401)
  // registered at the root, the plugin's hook runs for the root's not-found handler too
  const root = Fastify()
  t.teardown(() => root.close())
  await root.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience })
  t.equal((await root.inject('/nope')).statusCode, 401)
  t.equal((await root.inject({ url: '/nope', headers: { [HEADER]: access.signToken() } })).statusCode, 404)
})

t.test('the caller in one typed line (examples/typed-claims.ts)', async (t) => {
  const access = await emulator(t)
  const app = await buildTypedApp(access.teamDomain, access.audience)
  t.teardown(() => app.close())
  const call = async (url: string, token?: string, method: 'GET' | 'POST' = 'GET') => {
    const res = await app.inject({ method, url, headers: token === undefined ? {} : { [HEADER]: token } })
    return { status: res.statusCode, body: res.json() }
  }
  const user = access.signToken({ email: 'ann@acme.com', country: 'NL' })
  const bot = access.signServiceToken({ common_name: 'ci.access' })
  t.same(await call('/admin/me', user), { status: 200, body: { email: 'ann@acme.com', country: 'NL' } })
  t.match(await call('/admin/me', bot), { status: 403, body: { code: 'FST_CF_ACCESS_FORBIDDEN' } }, 'a service token where a user is required: 403, not a crash')
  t.same(await call('/admin/deploy', bot, 'POST'), { status: 200, body: { by: 'ci.access' } })
  t.match(await call('/admin/deploy', user, 'POST'), { status: 403, body: { code: 'FST_CF_ACCESS_FORBIDDEN' } })
  t.same((await call('/admin/whoami', bot)).body, { service: 'ci.access' })
  t.same((await call('/admin/whoami', user)).body, { user: 'ann@acme.com' })
  t.same((await call('/admin/health')).body, { verified: false }, 'in the scope, unverified: null')
  t.same((await call('/')).body, { outside: true }, 'outside every scope of the plugin: undefined, as typed')
})

t.test('the typed accessors wired wrong: wherever the plugin never verified, a 500 that names the mistake — never a crash, never someone else', async (t) => {
  const access = await emulator(t)
  const app = Fastify()
  t.teardown(() => app.close())
  const seen: string[] = []
  app.addHook('onRequest', async (request) => { // at the root: before the scope's verification
    try { requireUser(request) } catch (error) { seen.push((error as { code: string }).code) }
  })
  app.get('/outside', async (request) => requireUser(request).email)
  app.register(async (admin) => {
    await admin.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, hook: false })
    admin.get('/unverified', async (request) => requireServiceToken(request).common_name) // hook: false and no verify
    admin.get('/verified', { onRequest: admin.cfAccess.verify }, async (request) => requireUser(request).email)
    admin.setNotFoundHandler(async (request) => requireClaims(request))
  }, { prefix: '/admin' })
  app.register(async (site) => {
    await site.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience })
    site.get('/public', { config: { cfAccess: false } }, async (request) => requireClaims(request))
  }, { prefix: '/site' })
  await app.ready()
  t.equal(app.cfAccess, undefined, 'the root has no fastify.cfAccess (typed as present: reading .verify here throws)')
  const token = access.signToken({ email: 'ann@acme.com' })
  const cases: Array<[string, string]> = [
    ['/outside', 'requireUser(request) in route GET /outside'],
    ['/admin/unverified', 'requireServiceToken(request) in route GET /admin/unverified'],
    ['/admin/nope', 'requireClaims(request) in a not-found handler'],
    ['/site/public', 'requireClaims(request) in route GET /site/public']
  ]
  for (const [url, where] of cases) {
    const res = await app.inject({ url, headers: { [HEADER]: token } })
    t.equal(res.statusCode, 500, `${url}: a valid token, and the application's bug`)
    t.equal(res.json().code, 'FST_CF_ACCESS_NOT_VERIFIED')
    t.equal(res.json().message, `fastify-cloudflare-access: ${where}, which the plugin never verified: the route is outside every registration of the plugin, ` +
      'has config.cfAccess: false, belongs to a hook: false registration without fastify.cfAccess.verify in its hooks, a wrapper such as @fastify/auth ' +
      'let the request through by another strategy before verify ran, or the call runs in a hook before the plugin\'s. Register the plugin in the ' +
      'route\'s scope, add fastify.cfAccess.verify to the route, or call it from the handler; behind a wrapper, read request.cfAccess')
  }
  t.equal((await app.inject({ url: '/admin/verified', headers: { [HEADER]: token } })).body, 'ann@acme.com')
  t.equal(seen.length, 5, 'the root hook saw every request')
  t.ok(seen.every((code) => code === 'FST_CF_ACCESS_NOT_VERIFIED'), 'before verification even a valid token is not read: 500, the hook is in the wrong place')
})

t.test('the typed accessors where the plugin verified and admitted no token: 401, the client\'s to fix', async (t) => {
  const access = await emulator(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, required: false })
  app.get('/maybe', async (request) => requireUser(request).email)
  const optional = await app.inject('/maybe')
  t.same([optional.statusCode, optional.json().code], [401, 'FST_CF_ACCESS_TOKEN_MISSING'], 'an optional route without a token')

  const chained = Fastify()
  t.teardown(() => chained.close())
  await chained.register(fastifyAuth)
  await chained.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, hook: false })
  const apiKey = async (request: FastifyRequest): Promise<void> => {
    if (request.headers['x-api-key'] !== 'k') throw Object.assign(new Error('bad API key'), { statusCode: 401 })
  }
  chained.get('/either', { onRequest: chained.auth([chained.cfAccess.verify, apiKey]) }, async (request) => requireClaims(request))
  chained.get('/key-first', { onRequest: chained.auth([apiKey, chained.cfAccess.verify]) }, async (request) => requireClaims(request))
  const swallowed = await chained.inject({ url: '/either', headers: { 'x-api-key': 'k', [HEADER]: 'garbage' } })
  t.same([swallowed.statusCode, swallowed.json().code], [401, 'FST_CF_ACCESS_TOKEN_MISSING'], 'a refusal an "or" chain swallowed: still no claims')
  const skipped = await chained.inject({ url: '/key-first', headers: { 'x-api-key': 'k' } })
  t.same([skipped.statusCode, skipped.json().code], [500, 'FST_CF_ACCESS_NOT_VERIFIED'], 'an "or" chain that admitted by the API key before verify ran: the plugin never looked')
  t.match(skipped.json().message, /a wrapper such as @fastify\/auth let the request through by another strategy before verify ran.*behind a wrapper, read request\.cfAccess/, 'and the message names that case')
})

const PREFLIGHT = { origin: 'https://app.acme.com', 'access-control-request-method': 'GET', 'access-control-request-headers': 'cf-access-jwt-assertion' }

t.test('CORS (examples/cors.ts): @fastify/cors at the root and inside the protected scope', async (t) => {
  const access = await emulator(t)
  const token = access.signToken({ email: 'ann@acme.com' })
  for (const [name, build] of [['at the root', buildCorsAtRoot], ['in the scope, corsPreflight: true', buildCorsInScope]] as const) {
    const app = await build(access.teamDomain, access.audience)
    t.teardown(() => app.close())
    const preflight = await app.inject({ method: 'OPTIONS', url: '/api/data', headers: PREFLIGHT })
    t.equal(preflight.statusCode, 204, `${name}: a real preflight is answered without a token`)
    t.equal(preflight.headers['access-control-allow-origin'], 'https://app.acme.com')
    t.equal(preflight.headers['access-control-allow-credentials'], 'true')
    const anonymous = await app.inject({ url: '/api/data', headers: { origin: 'https://app.acme.com' } })
    t.equal(anonymous.statusCode, 401, `${name}: the real request still needs a token`)
    t.same((await app.inject({ url: '/api/data', headers: { origin: 'https://app.acme.com', [HEADER]: token } })).json(), { for: 'ann@acme.com' })
    const cookie = await app.inject({ url: '/api/data', headers: { origin: 'https://app.acme.com', cookie: `CF_Authorization=${token}` } })
    t.equal(cookie.headers['access-control-allow-origin'], 'https://app.acme.com', `${name}: the credentialed answer carries CORS headers`)
    t.equal((await app.inject({ method: 'OPTIONS', url: '/api/data', headers: { origin: 'https://evil.example', 'access-control-request-method': 'GET' } })).headers['access-control-allow-origin'], undefined, `${name}: another site is not allowed`)
  }
  const [root, scoped] = [await buildCorsAtRoot(access.teamDomain, access.audience), await buildCorsInScope(access.teamDomain, access.audience)]
  t.teardown(() => Promise.all([root.close(), scoped.close()]))
  const anonymous = { url: '/api/data', headers: { origin: 'https://app.acme.com' } }
  t.equal((await root.inject(anonymous)).headers['access-control-allow-origin'], 'https://app.acme.com', 'at the root the browser may read the 401')
  t.equal((await scoped.inject(anonymous)).headers['access-control-allow-origin'], undefined, 'after the plugin the 401 comes first, without CORS headers (as the README says)')
  t.equal((await root.inject({ method: 'OPTIONS', url: '/api/data' })).statusCode, 400, 'at the root @fastify/cors answers a plain OPTIONS itself')
  t.equal((await scoped.inject({ method: 'OPTIONS', url: '/api/data' })).statusCode, 401, 'after the plugin a plain OPTIONS is verified first')
  t.equal((await scoped.inject({ method: 'OPTIONS', url: '/api/data', headers: { origin: 'https://app.acme.com' } })).statusCode, 401, 'Origin alone is not a preflight')
})

t.test('corsPreflight: only a real preflight skips verification; a tokened request merely carrying CORS headers is verified and reaches its handler', async (t) => {
  const access = await emulator(t)
  const token = access.signToken({ email: 'ann@acme.com' })
  const notPreflights: Array<[string, 'OPTIONS' | 'POST', Record<string, string>]> = [
    ['POST with both preflight headers', 'POST', PREFLIGHT],
    ['OPTIONS with an empty Origin', 'OPTIONS', { ...PREFLIGHT, origin: '' }],
    ['OPTIONS with an empty Access-Control-Request-Method', 'OPTIONS', { ...PREFLIGHT, 'access-control-request-method': '' }],
    ['OPTIONS without Origin', 'OPTIONS', { 'access-control-request-method': 'GET' }],
    ['OPTIONS with Origin only', 'OPTIONS', { origin: 'https://app.acme.com' }]
  ]
  for (const hook of ['onRequest', 'preHandler'] as const) {
    const app = Fastify()
    t.teardown(() => app.close())
    await app.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, hook, corsPreflight: true })
    app.route({ method: ['OPTIONS', 'POST'], url: '/x', handler: async (request) => ({ for: request.cfAccess?.email }) })
    for (const [name, method, headers] of notPreflights) {
      const res = await app.inject({ method, url: '/x', headers: { ...headers, [HEADER]: token } })
      t.same([res.statusCode, res.json()], [200, { for: 'ann@acme.com' }], `${hook}: ${name} is verified, not passed as a preflight`)
      t.equal((await app.inject({ method, url: '/x', headers })).statusCode, 401, `${hook}: ${name} without a token is refused`)
    }
    const unanswered = await app.inject({ method: 'OPTIONS', url: '/x', headers: { ...PREFLIGHT, [HEADER]: token } })
    t.equal(unanswered.statusCode, 401, `${hook}: a real preflight nothing answers is refused, token or not`)
  }
})

t.test('corsPreflight: a public route (config.cfAccess: false) and an optional route answer an OPTIONS shaped as a preflight as without the option', async (t) => {
  const access = await emulator(t)
  for (const hook of ['onRequest', 'preHandler'] as const) {
    const app = Fastify()
    t.teardown(() => app.close())
    app.register(async (site) => {
      await site.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, hook, corsPreflight: true })
      site.options('/public', { config: { cfAccess: false } }, async () => 'public preflight')
      site.options('/optional', { config: { cfAccess: { required: false } } }, async (request) => request.cfAccess?.email ?? 'anonymous')
      site.options('/private', async () => 'private')
    })
    app.register(async (optional) => {
      await optional.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, hook, corsPreflight: true, required: false })
      optional.options('/all-optional', async () => 'anonymous')
    })
    app.register(async (policy) => {
      await policy.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, hook, corsPreflight: true, allow: { emails: ['ann@acme.com'] } })
      policy.options('/policy', async () => 'policy')
    })
    const preflight = (url: string, headers = {}) => app.inject({ method: 'OPTIONS', url, headers: { ...PREFLIGHT, ...headers } })
    t.equal((await preflight('/public')).body, 'public preflight', `${hook}: the public route answers`)
    t.equal((await preflight('/optional')).body, 'anonymous', `${hook}: the optional route answers without a token`)
    t.equal((await preflight('/all-optional')).body, 'anonymous', `${hook}: so does a route of an optional registration`)
    t.equal((await preflight('/optional', { [HEADER]: access.signToken({ email: 'ann@acme.com' }) })).body, 'ann@acme.com', `${hook}: a token there is verified`)
    t.equal((await preflight('/optional', { [HEADER]: 'not.a.token' })).statusCode, 401, `${hook}: a bad one refused`)
    t.equal((await preflight('/private')).statusCode, 401, `${hook}: a protected route still refuses it`)
    t.equal((await preflight('/policy')).statusCode, 401, `${hook}: so does a route under a plugin-level policy`)
  }
})

t.test('corsPreflight: no hook of a route sees an unverified request, whether a CORS plugin answers or not', async (t) => {
  const access = await emulator(t)
  const options = { teamDomain: access.teamDomain, audience: access.audience }
  for (const withCors of [false, true]) {
    const app = Fastify()
    t.teardown(() => app.close())
    const seen: Array<[string, unknown]> = []
    app.register(async (api) => {
      await api.register(cloudflareAccess, { ...options, corsPreflight: true })
      if (withCors) await api.register(cors, { origin: true })
      // another plugin's onRoute hook that appends a route hook of its own (as @fastify/rate-limit does)
      api.addHook('onRoute', (route) => { route.onRequest = [...[route.onRequest ?? []].flat(), async (request: FastifyRequest) => { seen.push(['appended', request.cfAccess]) }] })
      api.route({
        method: ['OPTIONS', 'GET'],
        url: '/data',
        onRequest: async (request) => { seen.push(['own', request.cfAccess]) },
        handler: async () => 'data'
      })
    }, { prefix: '/api' })
    const preflight = await app.inject({ method: 'OPTIONS', url: '/api/data', headers: PREFLIGHT })
    t.equal(preflight.statusCode, withCors ? 204 : 401, withCors ? '@fastify/cors, a scope hook after ours, answers it' : 'nothing answers it: 401')
    t.same(seen, [], `${withCors ? 'with' : 'without'} @fastify/cors: no route hook ran`)
    const res = await app.inject({ url: '/api/data', headers: { [HEADER]: access.signToken({ email: 'ann@acme.com' }) } })
    t.equal(res.statusCode, 200)
    t.same(seen.map(([which, claims]) => [which, (claims as { email?: string } | null)?.email]), [['own', 'ann@acme.com'], ['appended', 'ann@acme.com']], 'a verified request runs them, after verification')
  }
})

t.test('CORS wired wrong: a preflight that nothing answers never reaches a handler', async (t) => {
  const access = await emulator(t)
  const options = { teamDomain: access.teamDomain, audience: access.audience }
  const layouts = {
    'no CORS plugin at all': async (api: FastifyInstance) => { await api.register(cloudflareAccess, { ...options, corsPreflight: true }) },
    '@fastify/cors with preflight: false': async (api: FastifyInstance) => {
      await api.register(cloudflareAccess, { ...options, corsPreflight: true })
      await api.register(cors, { origin: true, preflight: false })
    },
    '@fastify/cors answering in preValidation (too late)': async (api: FastifyInstance) => {
      await api.register(cloudflareAccess, { ...options, corsPreflight: true })
      await api.register(cors, { origin: true, hook: 'preValidation' })
    },
    'plugin hook preHandler, CORS after it': async (api: FastifyInstance) => {
      await api.register(cloudflareAccess, { ...options, hook: 'preHandler', corsPreflight: true })
      await api.register(cors, { origin: true, hook: 'preHandler' })
    },
    'a user hook after the plugin': async (api: FastifyInstance) => {
      await api.register(cloudflareAccess, { ...options, corsPreflight: true })
      api.addHook('onRequest', async () => {})
    },
    'the option off, CORS after the plugin': async (api: FastifyInstance) => {
      await api.register(cloudflareAccess, options)
      await api.register(cors, { origin: true })
    }
  }
  for (const [name, layout] of Object.entries(layouts)) {
    const app = Fastify()
    t.teardown(() => app.close())
    let handled = 0
    app.register(async (api) => {
      await layout(api)
      api.options('/hook', async () => { handled++; return 'handled' })
      api.route({ method: ['OPTIONS', 'POST'], url: '/any', handler: async () => { handled++; return 'handled' } })
      api.setNotFoundHandler(async () => { handled++; return 'not found handler' })
    }, { prefix: '/api' })
    for (const url of ['/api/hook', '/api/any', '/api/unknown']) {
      const res = await app.inject({ method: 'OPTIONS', url, headers: PREFLIGHT })
      t.equal(res.statusCode, 401, `${name}: OPTIONS ${url} shaped as a preflight`)
    }
    t.equal((await app.inject({ method: 'POST', url: '/api/any', headers: PREFLIGHT })).statusCode, 401, `${name}: only OPTIONS can be a preflight`)
    t.equal(handled, 0, `${name}: no handler ran`)
  }
  t.test('in onRequest mode the refusal comes before the body is read', async (t) => {
    const app = Fastify()
    t.teardown(() => app.close())
    await app.register(cloudflareAccess, { ...options, corsPreflight: true })
    app.options('/x', async () => 'handled')
    const res = await app.inject({ method: 'OPTIONS', url: '/x', headers: { ...PREFLIGHT, 'content-type': 'application/json' }, payload: '{"a":' + '1'.repeat(2_000_000) + '}' })
    t.equal(res.statusCode, 401, 'not 413: no body was parsed')
  })
  t.test('fastify.cfAccess.verify never lets a preflight through, and hook: false refuses the option', async (t) => {
    const app = Fastify()
    t.teardown(() => app.close())
    await app.register(cloudflareAccess, { ...options, corsPreflight: true })
    app.options('/x', { onRequest: app.cfAccess.verify }, async () => 'handled')
    await app.register(cors, { origin: true, preflightContinue: true })
    t.equal((await app.inject({ method: 'OPTIONS', url: '/x', headers: PREFLIGHT })).statusCode, 401)
    await t.rejects(async () => { await Fastify().register(cloudflareAccess, { ...options, hook: false, corsPreflight: true }) }, /option "corsPreflight" must be used with the plugin's own hook/)
    await t.rejects(async () => { await Fastify().register(cloudflareAccess, { ...options, corsPreflight: 'yes' as unknown as boolean }) }, /option "corsPreflight" must be true or false/)
    const off = Fastify()
    t.teardown(() => off.close())
    await off.register(cloudflareAccess, { ...options, corsPreflight: false })
    off.options('/x', async () => 'handled')
    t.equal((await off.inject({ method: 'OPTIONS', url: '/x', headers: PREFLIGHT })).statusCode, 401, 'corsPreflight: false is the default behaviour')
  })
  t.test('@fastify/cors before the plugin in the scope works without the option', async (t) => {
    const app = Fastify()
    t.teardown(() => app.close())
    app.register(async (api) => {
      await api.register(cors, { origin: true })
      await api.register(cloudflareAccess, options)
      api.get('/data', async () => 'data')
    }, { prefix: '/api' })
    t.equal((await app.inject({ method: 'OPTIONS', url: '/api/data', headers: PREFLIGHT })).statusCode, 204)
    t.equal((await app.inject('/api/data')).statusCode, 401)
  })
})

t.test("Fastify's own register options: logLevel and logSerializers apply to the plugin's log lines; prefix is still refused", async (t) => {
  const access = await emulator(t)
  access.setOutage(true)
  const keyLines = async (extra: Record<string, unknown>): Promise<Array<Record<string, any>>> => {
    const { logger, lines } = captureLogs('info')
    const app = Fastify({ logger })
    t.teardown(() => app.close())
    await app.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, ...extra })
    await app.ready()
    await eventually(() => lines.some((line) => line.plugin === 'fastify-cloudflare-access'), 1000)
    return lines.filter((line) => line.plugin === 'fastify-cloudflare-access')
  }
  const plain = await keyLines({})
  t.equal(plain[0]?.level, 50, 'by default the outage is logged at error')
  t.equal(plain[0]?.certsUrl, access.certsUrl)
  t.same(await keyLines({ logLevel: 'fatal' }), [], 'logLevel: fatal silences it')
  const serialized = await keyLines({ logSerializers: { certsUrl: (url: string) => `<${url.length} characters>` } })
  t.equal(serialized[0]?.certsUrl, `<${access.certsUrl.length} characters>`, 'logSerializers are applied')
  const { logger, lines } = captureLogs('info')
  const app = Fastify({ logger })
  t.teardown(() => app.close())
  await app.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, logLevel: 'debug' })
  app.get('/x', async () => 'x')
  await app.ready()
  await app.inject('/x')
  t.ok(await eventually(() => lines.some((line) => line.plugin === 'fastify-cloudflare-access'), 1000), 'accepted, not refused as unknown')
  t.ok(lines.some((line) => line.level === 30 && line.err?.code === 'FST_CF_ACCESS_TOKEN_MISSING'), 'request lines keep the route\'s level')

  const register = (extra: Record<string, unknown>) => async () => { await Fastify().register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, ...extra }) }
  await t.rejects(register({ logLevel: 'loud' }), /option "logLevel" must be one of fatal, error, warn, info, debug, trace, silent, got "loud"/)
  await t.rejects(register({ logLevel: 3 }), /option "logLevel" must be one of .*got number/)
  await t.rejects(register({ logSerializers: { certsUrl: 'no' } }), /option "logSerializers" must be an object of functions/)
  await t.rejects(register({ logSerializers: [] }), /option "logSerializers" must be an object of functions/)
  await t.rejects(register({ logSerializers: null }), /option "logSerializers" must be an object of functions/)
  await t.rejects(register({ prefix: '/admin' }), /do not pass "prefix" to this plugin/)
  const silent = Fastify() // no logger: the abstract logger has no levels, the standard names apply
  t.teardown(() => silent.close())
  await silent.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, logLevel: 'silent' })
  await t.rejects(async () => { await Fastify().register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, logLevel: 'verbose' as 'info' }) }, /must be one of fatal, error, warn, info, debug, trace, silent, got "verbose"/)
})

t.test('@fastify/auth (examples/auth.ts): Access or an API key, Access and an API key', async (t) => {
  const access = await emulator(t)
  const app = await buildAuthApp(access.teamDomain, access.audience, ['k1', 'k2'])
  t.teardown(() => app.close())
  const call = async (method: 'GET' | 'POST', url: string, headers: Record<string, string> = {}) => {
    const res = await app.inject({ method, url, headers })
    return { status: res.statusCode, body: res.json(), retryAfter: res.headers['retry-after'] }
  }
  const user = { [HEADER]: access.signToken({ email: 'ann@acme.com' }) }
  const bot = { [HEADER]: access.signServiceToken({ common_name: 'ci.access' }) }

  t.test('or: either one admits; with neither, the Access error', async (t) => {
    t.same((await call('GET', '/reports', user)).body, { by: 'ann@acme.com' })
    t.same((await call('GET', '/reports', { 'x-api-key': 'k2' })).body, { by: 'api key' })
    t.same((await call('GET', '/reports', bot)).body, { by: 'ci.access' })
    t.match(await call('GET', '/reports'), { status: 401, body: { code: 'FST_CF_ACCESS_TOKEN_MISSING' } })
    t.match(await call('GET', '/reports', { 'x-api-key': 'nope', [HEADER]: 'garbage' }), { status: 401, body: { code: 'FST_CF_ACCESS_TOKEN_INVALID' } })
    t.match(await call('GET', '/reports', { [HEADER]: access.signToken({ exp: nowSeconds() - 3600 }) }), { status: 401, body: { code: 'FST_CF_ACCESS_TOKEN_EXPIRED' } })
  })

  t.test('and: both are needed; the first failure answers, Access first', async (t) => {
    t.same((await call('POST', '/deploy', { ...bot, 'x-api-key': 'k1' })).body, { by: 'ci.access' })
    t.same((await call('POST', '/deploy', { ...user, 'x-api-key': 'k1' })).body, { by: 'ann@acme.com' })
    t.match(await call('POST', '/deploy', { 'x-api-key': 'k1' }), { status: 401, body: { code: 'FST_CF_ACCESS_TOKEN_MISSING' } })
    t.match(await call('POST', '/deploy', bot), { status: 401, body: { code: 'APP_API_KEY_INVALID' } })
    t.match(await call('POST', '/deploy'), { status: 401, body: { code: 'FST_CF_ACCESS_TOKEN_MISSING' } })
  })

  t.test('a key outage stays a 503 with Retry-After through the wrapper (not the 401 @fastify/auth sets)', async (t) => {
    const cold = await emulator(t)
    cold.setOutage(true)
    const outage = await buildAuthApp(cold.teamDomain, cold.audience, ['k1'])
    t.teardown(() => outage.close())
    const token = cold.signToken()
    for (const [method, url, headers] of [['GET', '/reports', { [HEADER]: token }], ['POST', '/deploy', { [HEADER]: token, 'x-api-key': 'k1' }]] as const) {
      const res = await outage.inject({ method, url, headers })
      t.equal(res.statusCode, 503, `${method} ${url}`)
      t.equal(res.json().code, 'FST_CF_ACCESS_KEYS_UNAVAILABLE')
      t.equal(res.headers['retry-after'], '5')
    }
    t.equal((await outage.inject({ url: '/reports', headers: { 'x-api-key': 'k1' } })).statusCode, 200, 'the API key still works')
  })
})

t.test('@fastify/auth wired wrong', async (t) => {
  const access = await emulator(t)
  const options = { teamDomain: access.teamDomain, audience: access.audience }
  const apiKey = apiKeyStrategy(['k1'])
  const token = access.signToken({ email: 'eve@evil.com' })

  t.test('or with Access first: with neither, the client gets the other strategy\'s error (why the order matters)', async (t) => {
    const app = Fastify()
    t.teardown(() => app.close())
    await app.register(fastifyAuth)
    await app.register(cloudflareAccess, { ...options, hook: false })
    app.get('/x', { onRequest: app.auth([app.cfAccess.verify, apiKey]) }, async () => 'x')
    t.equal((await app.inject('/x')).json().code, 'APP_API_KEY_INVALID')
  })

  t.test('config.cfAccess: false does not switch off verify inside a wrapper', async (t) => {
    const app = Fastify()
    t.teardown(() => app.close())
    await app.register(fastifyAuth)
    await app.register(cloudflareAccess, { ...options, hook: false })
    app.get('/and', { config: { cfAccess: false }, onRequest: app.auth([app.cfAccess.verify, apiKey], { relation: 'and' }) }, async () => 'x')
    t.equal((await app.inject({ url: '/and', headers: { 'x-api-key': 'k1' } })).statusCode, 401, 'a valid API key alone does not pass an "and"')
    t.equal((await app.inject({ url: '/and', headers: { 'x-api-key': 'k1', [HEADER]: access.signToken() } })).statusCode, 200)
  })

  t.test('or: a user the policy refuses, plus a valid API key, reaches the handler without that user\'s claims', async (t) => {
    const app = Fastify()
    t.teardown(() => app.close())
    await app.register(fastifyAuth)
    await app.register(cloudflareAccess, { ...options, hook: false, allow: { emailDomains: ['acme.com'] } })
    app.get('/x', { onRequest: app.auth([app.cfAccess.verify, apiKey]) }, async (request) => ({ claims: request.cfAccess }))
    t.same((await app.inject({ url: '/x', headers: { [HEADER]: token, 'x-api-key': 'k1' } })).json(), { claims: null })
    t.equal((await app.inject({ url: '/x', headers: { [HEADER]: token } })).json().code, 'APP_API_KEY_INVALID')
  })

  t.test('or on a route with its own policy: the policy holds even for a valid API key', async (t) => {
    const app = Fastify()
    t.teardown(() => app.close())
    await app.register(fastifyAuth)
    await app.register(cloudflareAccess, { ...options, hook: false })
    app.get('/x', { config: { cfAccess: { allow: { emailDomains: ['acme.com'] } } }, onRequest: app.auth([apiKey, app.cfAccess.verify]) }, async () => 'x')
    t.equal((await app.inject({ url: '/x', headers: { 'x-api-key': 'k1' } })).statusCode, 401)
    t.equal((await app.inject({ url: '/x', headers: { 'x-api-key': 'k1', [HEADER]: token } })).statusCode, 403)
    t.equal((await app.inject({ url: '/x', headers: { [HEADER]: access.signToken({ email: 'ann@acme.com' }) } })).statusCode, 200)
  })
})

t.test('optional authentication (examples/optional.ts)', async (t) => {
  const access = await emulator(t)
  const app = await buildOptionalApp(access.teamDomain, access.audience)
  t.teardown(() => app.close())
  const get = async (url: string, headers: Record<string, string> = {}) => {
    const res = await app.inject({ url, headers })
    return { status: res.statusCode, body: res.json() }
  }
  const user = access.signToken({ email: 'ann@acme.com' })
  const bad = {
    garbage: { [HEADER]: 'garbage' },
    'a garbage cookie': { cookie: 'CF_Authorization=garbage' },
    expired: { [HEADER]: access.signToken({ exp: nowSeconds() - 3600 }) },
    forged: { [HEADER]: access.signToken({}, { key: attacker() }) },
    'another application': { [HEADER]: access.signToken({ aud: ['f'.repeat(64)] }) }
  }
  for (const [url, anonymous, signedIn] of [
    ['/site/', { hello: 'guest' }, { hello: 'ann@acme.com' }],
    ['/admin/status', { signedIn: false }, { signedIn: true }]
  ] as const) {
    t.same(await get(url), { status: 200, body: anonymous }, `${url}: no token, the request goes on anonymously`)
    t.same(await get(url, { [HEADER]: user }), { status: 200, body: signedIn }, `${url}: a valid token, the claims`)
    t.same(await get(url, { cookie: `CF_Authorization=${user}` }), { status: 200, body: signedIn }, `${url}: the cookie too`)
    for (const [name, headers] of Object.entries(bad)) {
      t.equal((await get(url, headers)).status, 401, `${url}: a token that fails is never ignored (${name})`)
    }
  }
  t.same((await get('/site/', { [HEADER]: access.signServiceToken({ common_name: 'ci.access' }) })).body, { hello: 'ci.access' })
  t.match(await get('/site/account'), { status: 401, body: { code: 'FST_CF_ACCESS_TOKEN_MISSING' } }, 'required: true overrides the plugin')
  t.equal((await get('/site/account', { [HEADER]: user })).status, 200)
  t.equal((await get('/admin/reports')).status, 401, 'the rest of the protected scope still requires a token')
})

t.test('optional authentication under a key outage: no token goes on, a token gets 503', async (t) => {
  const access = await emulator(t)
  access.setOutage(true)
  const app = await buildOptionalApp(access.teamDomain, access.audience)
  t.teardown(() => app.close())
  t.equal((await app.inject('/site/')).statusCode, 200)
  const res = await app.inject({ url: '/site/', headers: { [HEADER]: access.signToken() } })
  t.equal(res.statusCode, 503)
  t.equal(res.headers['retry-after'], '5')
})

t.test('optional authentication wired wrong', async (t) => {
  const access = await emulator(t)
  const options = { teamDomain: access.teamDomain, audience: access.audience }
  const token = access.signToken({ email: 'ann@acme.com' })

  t.test('explicit verify always requires a token, on an optional route and in an optional scope', async (t) => {
    const app = Fastify()
    t.teardown(() => app.close())
    await app.register(fastifyAuth)
    await app.register(cloudflareAccess, { ...options, required: false })
    const { verify } = app.cfAccess
    app.get('/hooked', { onRequest: verify }, async () => 'x')
    app.get('/wrapped', { onRequest: app.auth([verify]), config: { cfAccess: { required: false } } }, async () => 'x')
    app.get('/later', { preHandler: verify }, async () => 'x')
    for (const url of ['/hooked', '/wrapped', '/later']) {
      t.equal((await app.inject(url)).statusCode, 401, url)
      t.equal((await app.inject({ url, headers: { [HEADER]: token } })).statusCode, 200, url)
    }
  })

  t.test('hooks before and after the plugin\'s see null; requireUser answers 401; preHandler mode too', async (t) => {
    for (const hook of ['onRequest', 'preHandler'] as const) {
      const app = Fastify()
      t.teardown(() => app.close())
      const seen: unknown[] = []
      app.addHook('onRequest', async (request) => { seen.push(request.cfAccess) })
      await app.register(cloudflareAccess, { ...options, hook, required: false })
      app.addHook('preHandler', async (request) => { seen.push(request.cfAccess) })
      app.get('/', async (request) => ({ email: requireUser(request).email }))
      app.get('/open', async (request) => ({ claims: request.cfAccess }))
      t.equal((await app.inject('/')).statusCode, 401, `${hook}: a handler that needs the user still gets none`)
      t.same((await app.inject('/open')).json(), { claims: null })
      t.same(seen, [null, null, null, null], `${hook}: never anything but null without a token`)
      t.equal((await app.inject({ url: '/', headers: { [HEADER]: 'garbage' } })).statusCode, 401)
      t.equal((await app.inject({ url: '/', headers: { [HEADER]: token } })).json().email, 'ann@acme.com')
    }
  })

  t.test('a route with required: true under a plugin with required: false refuses a request without a token', async (t) => {
    for (const hook of ['onRequest', 'preHandler'] as const) {
      const app = Fastify()
      t.teardown(() => app.close())
      await app.register(cloudflareAccess, { ...options, hook, required: false })
      app.get('/strict', { config: { cfAccess: { required: true } } }, async (request) => ({ claims: request.cfAccess }))
      app.get('/open', async (request) => ({ claims: request.cfAccess }))
      const res = await app.inject('/strict')
      t.same([res.statusCode, res.json().code], [401, 'FST_CF_ACCESS_TOKEN_MISSING'], `${hook}: the route's required: true wins`)
      t.same((await app.inject('/open')).json(), { claims: null }, `${hook}: the plugin's required: false holds elsewhere`)
      t.equal((await app.inject({ url: '/strict', headers: { [HEADER]: token } })).json().claims.email, 'ann@acme.com')
    }
  })

  t.test('a policy is never optional: refused at boot, and a route added before the plugin requires a token', async (t) => {
    const boot = async (register: (app: FastifyInstance) => Promise<void>) => {
      const app = Fastify()
      t.teardown(() => app.close())
      await register(app)
      await app.ready()
    }
    await t.rejects(boot(async (app) => { await app.register(cloudflareAccess, { ...options, required: false, allow: { emailDomains: ['acme.com'] } }) }), /option "required" must be true when allow or authorize is given/)
    // the advice names ways out that boot: a route's { required: false } under this policy would be refused too
    await t.rejects(boot(async (app) => { await app.register(cloudflareAccess, { ...options, required: false, allow: { emailDomains: ['acme.com'] } }) }), {
      message: /\(a policy needs a token; public routes say config\.cfAccess: false, and optional routes need a registration without a policy, in a scope of their own\)/
    })
    await t.rejects(boot(async (app) => { await app.register(cloudflareAccess, { ...options, required: false, authorize: () => true }) }), /option "required" must be true when allow or authorize/)
    await t.rejects(boot(async (app) => { await app.register(cloudflareAccess, { ...options, hook: false, required: false }) }), /option "required" must be true with hook: false/)
    await t.rejects(boot(async (app) => { await app.register(cloudflareAccess, { ...options, required: 'no' as unknown as boolean }) }), /option "required" must be true or false/)
    await t.rejects(boot(async (app) => {
      await app.register(cloudflareAccess, options)
      app.get('/x', { config: { cfAccess: { required: false, allow: { emails: ['a@acme.com'] } } as never } }, async () => 'x')
    }), /required: false and a policy/)
    await t.rejects(boot(async (app) => {
      await app.register(cloudflareAccess, { ...options, required: false })
      app.get('/x', { config: { cfAccess: { allow: { emails: ['a@acme.com'] } } } }, async () => 'x')
    }), /the plugin has required: false and this route has a policy/)
    await t.rejects(boot(async (app) => {
      await app.register(cloudflareAccess, { ...options, hook: false })
      app.get('/x', { config: { cfAccess: { required: true } } }, async () => 'x')
    }), /config\.cfAccess\.required applies to the plugin's own hook/)
    await t.rejects(boot(async (app) => {
      await app.register(cloudflareAccess, options)
      app.get('/x', { config: { cfAccess: { required: 'no' } as never } }, async () => 'x')
    }), /config\.cfAccess\.required must be true or false/)
    await t.rejects(boot(async (app) => {
      await app.register(cloudflareAccess, options)
      app.get('/x', { config: { cfAccess: {} as never } }, async () => 'x')
    }), /needs "allow", "authorize" or "required"/)

    // Routes added before the plugin are checked at boot too (lib/unguarded.ts), all in one error.
    const refused = await boot(async (app) => {
      app.register(async (scope) => {
        scope.get('/early', { config: { cfAccess: { allow: { emailDomains: ['acme.com'] } } } }, async () => 'x')
        scope.get('/early-odd', { config: { cfAccess: 'yes' as never } }, async () => 'x')
        scope.get('/early-null', { config: { cfAccess: null as never } }, async () => 'x')
        scope.get('/early-unsaid', { config: { cfAccess: { required: undefined } as never } }, async () => 'x')
        await scope.register(cloudflareAccess, { ...options, required: false })
      })
    }).then(() => undefined, (error: Error) => error.message)
    t.match(refused, /route GET \/early: the plugin has required: false and this route has a policy/, 'a route policy added before the plugin that would inherit required: false')
    t.match(refused, /route GET \/early-odd: config\.cfAccess must be false or a policy/, 'an odd config added before the plugin')
    t.match(refused, /route GET \/early-null: config\.cfAccess must be false or a policy/)
    t.match(refused, /route GET \/early-unsaid: config\.cfAccess needs "allow", "authorize" or "required"/)

    const app = Fastify()
    t.teardown(() => app.close())
    app.register(async (scope) => {
      scope.get('/early', { config: { cfAccess: { required: true, allow: { emailDomains: ['acme.com'] } } } }, async () => 'x')
      scope.get('/early-optional', { config: { cfAccess: { required: false } } }, async (request) => ({ claims: request.cfAccess }))
      await scope.register(cloudflareAccess, { ...options, required: false })
      scope.get('/required', { config: { cfAccess: { required: true, allow: { emailDomains: ['acme.com'] } } } }, async () => 'x')
    })
    for (const url of ['/early', '/required']) {
      t.equal((await app.inject(url)).statusCode, 401, `${url}: a route policy requires a token`)
      t.equal((await app.inject({ url, headers: { [HEADER]: access.signToken({ email: 'eve@evil.com' }) } })).statusCode, 403)
      t.equal((await app.inject({ url, headers: { [HEADER]: token } })).statusCode, 200)
    }
    t.same((await app.inject('/early-optional')).json(), { claims: null })
  })

  t.test('OpenAPI: an optional route offers "no token" as an alternative', async (t) => {
    const app = Fastify()
    t.teardown(() => app.close())
    await app.register(swagger, { openapi: { components: { securitySchemes: { ...cloudflareAccessSecuritySchemes } } }, transform: cloudflareAccessTransform })
    await app.register(cloudflareAccess, options)
    app.get('/maybe', { config: { cfAccess: { required: false } } }, async () => 'x')
    app.get('/surely', { config: { cfAccess: { required: true } } }, async () => 'x')
    await app.ready()
    t.same(operation(app, '/maybe').security, [...SECURITY, {}])
    t.ok(operation(app, '/maybe').responses[401], 'a bad token is still a 401')
    t.same(operation(app, '/surely').security, SECURITY)
  })

  t.test('verifyToken with the request of an optional route applies no policy and needs the token', async (t) => {
    const app = Fastify()
    t.teardown(() => app.close())
    await app.register(cloudflareAccess, options)
    app.get('/maybe', { config: { cfAccess: { required: false } } }, async (request) => (await app.cfAccess.verifyToken(token, request)).email)
    t.equal((await app.inject('/maybe')).body, 'ann@acme.com')
  })
})
