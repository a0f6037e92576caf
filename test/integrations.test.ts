import fastifyAuth from '@fastify/auth'
import swagger from '@fastify/swagger'
import Fastify, { type FastifyInstance } from 'fastify'
import t from 'tap'
import cloudflareAccess, { cloudflareAccessSecurity, cloudflareAccessSecuritySchemes, cloudflareAccessTransform } from '../index'
import { buildOpenapiApp } from '../examples/openapi'
import { emulator, HEADER } from './helpers'

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
    app.get('/p', { onRequest: app.cfAccess!.verify, config: { cfAccess: { allow: { emailDomains: ['acme.com'] } } } }, async () => 'x')
    app.get('/q', { preHandler: [async () => {}, app.cfAccess!.verify] }, async () => 'x')
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
