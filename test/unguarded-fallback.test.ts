import Fastify, { type FastifyInstance } from 'fastify'
import t from 'tap'
import { createAccessEmulator } from '../lib/testing'

// An app created before the package is loaded (a CommonJS file that requires the plugin late, a runner
// that builds the app before loading the user's code): the boot cannot see its routes, so a route whose
// config.cfAccess no registration guards is refused at request time, with a 500 of its own and one warning.
// This file must not import the plugin at the top.

const lines: Array<Record<string, any>> = []
const app = Fastify({ logger: { level: 'warn', stream: { write: (line: string) => { lines.push(JSON.parse(line)) } } } })
const cloudflareAccess = require('../index') as typeof import('../index')

t.test('routes outside every registration are refused at request time, guarded ones verified as ever', async (t) => {
  const access = await createAccessEmulator()
  t.teardown(() => access.close())
  t.teardown(() => app.close())
  const policy = { allow: { emails: ['cfo@acme.com'] } }
  app.get('/billing', { config: { cfAccess: policy } }, async () => 'invoices')
  app.register(async (admin) => {
    // Added before the plugin, in its scope: not checked at boot here, enforced at request time as ever
    admin.get('/early', { config: { cfAccess: { allow: { emails: ['cfo@acme.com'] } } } }, async () => 'early')
    await admin.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience })
    admin.get('/me', async (request) => ({ email: request.cfAccess?.email }))
    admin.get('/billing', { config: { cfAccess: policy } }, async () => 'invoices')
  }, { prefix: '/admin' })
  app.register(async (sibling) => {
    sibling.get('/report', { config: { cfAccess: { required: true } } }, async () => 'report')
    sibling.get('/odd', { config: { cfAccess: 'yes' as never } }, async () => 'odd')
  }, { prefix: '/sibling' })
  // A root hook of the application's, ahead of everything the plugin adds, that checks tokens itself
  const checked: unknown[] = []
  let siteAccess: FastifyInstance['cfAccess'] | undefined
  app.addHook('onRequest', async (request) => {
    const token = request.headers['x-token']
    if (typeof token === 'string') checked.push(await siteAccess?.verifyToken(token, request).then(() => 'admitted', (error: Error) => error.message))
  })
  app.register(async (site) => {
    site.get('/odd', { config: { cfAccess: 'yes' as never } }, async () => 'odd')
    site.get('/null', { config: { cfAccess: null as never } }, async () => 'null')
    // A policy that came out undefined (allow: process.env.X ? ... : undefined): refused at boot where seen
    site.get('/unsaid', { config: { cfAccess: { allow: undefined } } }, async () => 'unsaid')
    await site.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, required: false })
    siteAccess = site.cfAccess
    site.get('/', async () => 'site')
  }, { prefix: '/site' })
  app.register(async (finance) => {
    // An optional route under a plugin-level policy, unseen by the boot (which would refuse it): never anonymous
    finance.get('/maybe', { config: { cfAccess: { required: false } } }, async () => 'maybe')
    await finance.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, allow: { emails: ['cfo@acme.com'] } })
  }, { prefix: '/finance' })
  app.get('/public', { config: { cfAccess: false } }, async () => 'public')
  app.get('/optional', { config: { cfAccess: { required: false } } }, async () => 'optional')
  await app.ready()

  const cfo = access.signToken({ email: 'cfo@acme.com' })
  for (const url of ['/billing', '/sibling/report', '/sibling/odd']) {
    for (const headers of [{}, { 'cf-access-jwt-assertion': cfo }]) {
      const res = await app.inject({ url, headers })
      t.equal(res.statusCode, 500, `${url}: refused`)
      t.equal(res.json().code, 'FST_CF_ACCESS_ROUTE_UNGUARDED')
    }
  }
  t.match((await app.inject('/billing')).json().message, /^fastify-cloudflare-access: route GET \/billing has config\.cfAccess but no registration of the plugin guards it: register the plugin in the route's scope or a scope above it, or move the route$/)
  t.equal((await app.inject('/public')).statusCode, 200)
  t.equal((await app.inject('/optional')).statusCode, 200)
  t.equal((await app.inject('/admin/me')).statusCode, 401)
  t.equal((await app.inject({ url: '/admin/billing', headers: { 'cf-access-jwt-assertion': cfo } })).statusCode, 200, 'a guarded policy route admits')
  t.equal((await app.inject({ url: '/admin/billing', headers: { 'cf-access-jwt-assertion': access.signToken({ email: 'eve@acme.com' }) } })).statusCode, 403)
  t.equal((await app.inject('/admin/early')).statusCode, 401, 'a policy route added before the plugin: verified')
  t.equal((await app.inject({ url: '/admin/early', headers: { 'cf-access-jwt-assertion': cfo } })).statusCode, 200)
  t.equal((await app.inject({ url: '/admin/early', headers: { 'cf-access-jwt-assertion': access.signToken({ email: 'eve@acme.com' }) } })).statusCode, 403, 'and its policy applied')
  t.equal((await app.inject('/finance/maybe')).statusCode, 401, 'an optional route under a plugin-level policy: a token is required')
  t.equal((await app.inject({ url: '/finance/maybe', headers: { 'cf-access-jwt-assertion': access.signToken({ email: 'eve@acme.com' }) } })).statusCode, 403)
  t.equal((await app.inject({ url: '/finance/maybe', headers: { 'cf-access-jwt-assertion': cfo } })).statusCode, 200)
  t.equal((await app.inject('/site/')).statusCode, 200, 'an optional registration')
  t.equal((await app.inject('/site/odd')).statusCode, 401, 'an odd config added before it, unseen by the boot, is not optional')
  const odd = await app.inject({ url: '/site/odd', headers: { 'cf-access-jwt-assertion': cfo } })
  t.same([odd.statusCode, odd.json().message], [500, 'fastify-cloudflare-access: a route: config.cfAccess must be false or a policy { allow?, authorize? }'], 'and with a valid token, refused: never read as "no policy"')
  await app.inject({ url: '/site/odd', headers: { 'x-token': cfo } })
  t.same(checked, ['fastify-cloudflare-access: a route: config.cfAccess must be false or a policy { allow?, authorize? }'], 'verifyToken(token, request) on that route refuses too')
  t.equal((await app.inject('/site/null')).statusCode, 401, 'nor is null')
  t.equal((await app.inject('/site/unsaid')).statusCode, 401, 'nor one that says neither a policy nor required')

  const warnings = lines.filter((line) => /routes cannot all be seen at boot/.test(line.msg))
  t.equal(warnings.length, 1, 'one warning')
  t.equal(warnings[0]?.fastifyVersion, app.version)
  t.match(warnings[0]?.msg, /the app was created before fastify-cloudflare-access was loaded/)
  t.match(warnings[0]?.msg, /Import fastify-cloudflare-access before creating the app/)
  const refusals = lines.filter((line) => line.err?.code === 'FST_CF_ACCESS_ROUTE_UNGUARDED')
  t.ok(refusals.length > 0 && refusals.every((line) => line.level === 50), 'each refusal is logged as the error it is (500)')
})
