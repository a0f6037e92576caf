import Fastify, { type FastifyInstance, type FastifyPluginAsync, type RouteOptions } from 'fastify'
import fp from 'fastify-plugin'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import cloudflareAccess, { errorCodes } from '../index'
import type { AccessEmulator } from '../lib/testing'
import type { CloudflareAccessRouteConfig, FastifyCloudflareAccessOptions } from '../lib/types'
import { asksNothing as asksNothingRule, ruleOf } from '../lib/route-config'
import { captureLogs, emulator, HEADER } from './helpers'

// Protection a user writes must protect or stop the boot: a route whose config.cfAccess states protection
// and that no registration guards makes ready() reject, whatever the order in which routes, scopes and
// registrations were added. Never a 200 without a token.

const UNGUARDED = /fastify-cloudflare-access: (a route states|\d+ routes state) Cloudflare Access protection \(config\.cfAccess\) that no registration of the plugin gives/
/** Whether a route with this `config.cfAccess` asks for no protection (lib/route-config.ts reads it). */
function asksNothing (cfAccess: unknown): boolean {
  return asksNothingRule(ruleOf({ cfAccess }))
}

const POLICY: CloudflareAccessRouteConfig = { allow: { emails: ['cfo@acme.com'] } }

let access: AccessEmulator
t.before(async () => { access = await emulator(t) })

function options (extra: Partial<FastifyCloudflareAccessOptions> = {}): FastifyCloudflareAccessOptions {
  return { teamDomain: access.teamDomain, audience: access.audience, ...extra }
}

/** The plugin registered inside `/admin`, with one route there. */
function admin (app: FastifyInstance, extra: Partial<FastifyCloudflareAccessOptions> = {}): void {
  app.register(async (scope) => {
    await scope.register(cloudflareAccess, options(extra))
    scope.get('/', async () => 'admin')
  }, { prefix: '/admin' })
}

/** Builds an app, boots it, and returns the boot's error (undefined when it booted). */
async function boot (t: Test, build: (app: FastifyInstance) => void | Promise<void>): Promise<(Error & { code?: string }) | undefined> {
  const app = Fastify()
  t.teardown(() => app.close())
  await build(app)
  return app.ready().then(() => undefined, (error: Error) => error)
}

/** Boots and expects the refusal to name exactly these routes (`'GET, HEAD /billing'`). */
async function refused (t: Test, build: (app: FastifyInstance) => void | Promise<void>, routes: string[], message?: string): Promise<void> {
  const error = await boot(t, build)
  t.equal(error?.code, errorCodes.ROUTE_UNGUARDED, message ?? 'the boot is refused')
  t.match(error?.message, UNGUARDED)
  const listed = (error?.message ?? '').split('\n').filter((line) => line.startsWith('  ')).map((line) => line.trim())
  t.same(listed.sort(), [...routes].sort(), 'every such route, in one error')
}

t.test('the issue\'s example: a route policy at the root, the plugin inside /admin: the boot is refused', async (t) => {
  const error = await boot(t, (app) => {
    app.get('/billing', { config: { cfAccess: POLICY } }, async () => 'invoices')
    admin(app)
  })
  t.equal(error?.code, 'FST_CF_ACCESS_ROUTE_UNGUARDED')
  t.equal(error?.message, [
    'fastify-cloudflare-access: a route states Cloudflare Access protection (config.cfAccess) that no registration of the plugin gives, so nothing would check a token there (the plugin is registered in: /admin):',
    '  GET, HEAD /billing',
    'Register the plugin in the scope of each of these routes or in a scope above it (a registration guards its own scope and the scopes inside it), ' +
    'or move the route into a scope where it is registered. A route meant to be public says config.cfAccess: false.'
  ].join('\n'), 'it names the route, where the plugin is, and what to do')
})

t.test('every order of route, scope and registration', async (t) => {
  await refused(t, (app) => { admin(app); app.get('/billing', { config: { cfAccess: POLICY } }, async () => 'x') }, ['GET, HEAD /billing'], 'a root route added after the registration')
  await refused(t, (app) => {
    app.register(async (sibling) => { sibling.get('/x', { config: { cfAccess: POLICY } }, async () => 'x') }, { prefix: '/sibling' })
    admin(app)
  }, ['GET, HEAD /sibling/x'], 'a sibling scope registered before')
  await refused(t, (app) => {
    admin(app)
    app.register(async (sibling) => { sibling.get('/x', { config: { cfAccess: POLICY } }, async () => 'x') }, { prefix: '/sibling' })
  }, ['GET, HEAD /sibling/x'], 'a sibling scope registered after')
  await refused(t, (app) => {
    app.register(async (a) => {
      a.register(async (inner) => { await inner.register(cloudflareAccess, options()) }, { prefix: '/in' })
    }, { prefix: '/a' })
    app.register(async (b) => {
      b.register(async (cousin) => { cousin.post('/y', { config: { cfAccess: { required: true } } }, async () => 'y') }, { prefix: '/cousin' })
    }, { prefix: '/b' })
  }, ['POST /b/cousin/y'], 'a cousin scope')
  await refused(t, (app) => {
    app.register(async (scope) => {
      scope.register(async (child) => { child.get('/x', { config: { cfAccess: POLICY } }, async () => 'x') })
      await scope.register(cloudflareAccess, options())
    }, { prefix: '/inner' })
    app.register(async (parent) => {
      parent.get('/up', { config: { cfAccess: POLICY } }, async () => 'x')
      parent.register(async (child) => { await child.register(cloudflareAccess, options()) })
    }, { prefix: '/outer' })
  }, ['GET, HEAD /outer/up'], 'a route in a parent of the registration\'s scope (a child of a guarded scope is guarded)')
})

t.test('guarded routes boot in every order, and answer 401 without a token', async (t) => {
  const root = Fastify()
  t.teardown(() => root.close())
  root.get('/root-before', { config: { cfAccess: POLICY } }, async () => 'x')
  await root.register(cloudflareAccess, options({ hook: false }))
  root.get('/root-after', { config: { cfAccess: POLICY } }, async () => 'x')
  await root.ready()

  const app = Fastify()
  t.teardown(() => app.close())
  app.register(async (scope) => {
    scope.get('/before', { config: { cfAccess: POLICY } }, async () => 'x')
    scope.register(async (child) => { child.get('/child-before', { config: { cfAccess: { required: true } } }, async () => 'x') })
    await scope.register(cloudflareAccess, options())
    scope.get('/after', { config: { cfAccess: POLICY } }, async () => 'x')
    scope.register(async (child) => { child.get('/child-after', { config: { cfAccess: POLICY } }, async () => 'x') }, { prefix: '/deep' })
    scope.register(fp(async (plugin) => { plugin.get('/by-plugin', { config: { cfAccess: POLICY } }, async () => 'x') }))
  }, { prefix: '/admin' })
  await app.ready()
  for (const [server, url] of [[root, '/root-before'], [root, '/root-after'], ...['/admin/before', '/admin/child-before', '/admin/after', '/admin/deep/child-after', '/admin/by-plugin'].map((url) => [app, url] as const)] as const) {
    t.equal((await server.inject(url)).statusCode, 401, `${url}: no token, 401`)
    t.equal((await server.inject({ url, headers: { [HEADER]: access.signToken({ email: 'cfo@acme.com' }) } })).statusCode, 200, `${url}: the policy admits`)
  }
  t.equal((await app.inject({ url: '/admin/before', headers: { [HEADER]: access.signToken({ email: 'eve@acme.com' }) } })).statusCode, 403)
})

t.test('several registrations: every unguarded route is listed in one error, and where the plugin is', async (t) => {
  const error = await boot(t, (app) => {
    app.get('/one', { config: { cfAccess: POLICY } }, async () => 'x')
    app.register(async (a) => { await a.register(cloudflareAccess, options()) }, { prefix: '/a' })
    app.register(async (b) => { await b.register(cloudflareAccess, options()) }, { prefix: '/b' })
    app.register(async (unprefixed) => { await unprefixed.register(cloudflareAccess, options()) })
    app.register(async (c) => {
      c.get('/two', { config: { cfAccess: { authorize: () => true } } }, async () => 'x')
      c.route({ method: ['GET', 'POST'], url: '/three', config: { cfAccess: { required: true } }, handler: async () => 'x' })
    }, { prefix: '/c' })
  })
  t.match(error?.message, /\(the plugin is registered in: \/a, \/b, a scope without a prefix\):/)
  t.match(error?.message, /^fastify-cloudflare-access: 3 routes state/)
  const listed = (error?.message ?? '').split('\n').filter((line) => line.startsWith('  ')).map((line) => line.trim())
  t.same(listed, ['GET, HEAD /one', 'GET, HEAD /c/two', 'GET, POST, HEAD /c/three'])
})

t.test('routes added by other plugins, and a config set by another plugin\'s onRoute hook', async (t) => {
  // fp() marks the function it wraps: one function for each use
  const routes = (): FastifyPluginAsync => async (app) => { app.get('/report', { config: { cfAccess: POLICY } }, async () => 'x') }
  await refused(t, (app) => { app.register(fp(routes())); admin(app) }, ['GET, HEAD /report'], 'an fp-wrapped plugin adding a route at the root')
  await refused(t, (app) => { admin(app); app.register(routes(), { prefix: '/lib' }) }, ['GET, HEAD /lib/report'], 'an encapsulated plugin registered after')
  await refused(t, (app) => {
    app.register(fp(async (plugin) => {
      plugin.addHook('onRoute', (route: RouteOptions) => {
        if ((route.config as { secret?: boolean } | undefined)?.secret === true) route.config = { ...route.config, cfAccess: POLICY } as RouteOptions['config']
      })
    }))
    admin(app)
    app.register(async (scope) => { scope.get('/secret', { config: { secret: true } as Record<string, unknown> }, async () => 'x') })
  }, ['GET, HEAD /secret'], 'config.cfAccess set by an onRoute hook after the route was declared')
})

t.test('constrained routes: by host and by version', async (t) => {
  await refused(t, (app) => {
    admin(app)
    app.get('/h', { constraints: { host: 'billing.acme.com' }, config: { cfAccess: POLICY } }, async () => 'x')
    app.get('/v', { constraints: { version: '2.0.0' }, config: { cfAccess: POLICY } }, async () => 'x')
  }, ['GET, HEAD /h', 'GET, HEAD /v'])
  await refused(t, (app) => {
    admin(app)
    app.get('/h', { constraints: { host: 'a.acme.com' }, config: { cfAccess: POLICY } }, async () => 'x')
    app.get('/h', { constraints: { host: 'b.acme.com' }, config: { cfAccess: POLICY } }, async () => 'x')
  }, ['GET, HEAD /h'], 'one url under two hosts: its methods listed once')
  const app = Fastify()
  t.teardown(() => app.close())
  app.register(async (scope) => {
    scope.get('/h', { constraints: { host: 'billing.acme.com' }, config: { cfAccess: POLICY } }, async () => 'x')
    await scope.register(cloudflareAccess, options())
  })
  await app.ready()
  t.equal((await app.inject({ url: '/h', headers: { host: 'billing.acme.com' } })).statusCode, 401, 'guarded: a constrained route before the plugin')
})

t.test('which configs ask for protection: false and { required: false } may stand anywhere', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  admin(app)
  app.get('/public', { config: { cfAccess: false } }, async () => 'public')
  app.get('/optional', { config: { cfAccess: { required: false } } }, async (request) => ({ claims: request.cfAccess ?? null }))
  app.get('/unsaid', async () => 'plain')
  await app.ready()
  t.equal((await app.inject('/public')).statusCode, 200)
  t.same((await app.inject('/optional')).json(), { claims: null }, 'outside every registration nothing verifies: the route asked for nothing')

  const stating: Array<[string, unknown]> = [
    ['required: true', { required: true }], ['allow', POLICY], ['authorize', { authorize: () => true }],
    ['a string', 'yes'], ['null', null], ['true', true], ['an empty object', {}], ['an array', []],
    ['required: false with a typo for allow', { required: false, alow: { emails: ['a@acme.com'] } }],
    ['required: false with a policy', { required: false, allow: { emails: ['a@acme.com'] } }],
    ['required: "false"', { required: 'false' }]
  ]
  for (const [name, cfAccess] of stating) {
    await refused(t, (app) => { admin(app); app.get('/x', { config: { cfAccess } as Record<string, unknown> }, async () => 'x') }, ['GET, HEAD /x'], name)
    t.notOk(asksNothing(cfAccess), `${name} states protection`)
  }
  for (const cfAccess of [undefined, false, { required: false }, { required: false, allow: undefined, authorize: undefined }]) {
    t.ok(asksNothing(cfAccess), `${JSON.stringify(cfAccess)} asks for nothing`)
  }
})

t.test('an app with no registration of the plugin at all: the boot is refused', async (t) => {
  const error = await boot(t, (app) => {
    app.register(async (scope) => { scope.get('/billing', { config: { cfAccess: POLICY } }, async () => 'x') })
  })
  t.equal(error?.code, errorCodes.ROUTE_UNGUARDED)
  t.match(error?.message, /\(the plugin is not registered in this app\):\n {2}GET, HEAD \/billing\n/)
  t.equal(await boot(t, (app) => { app.get('/x', { config: { cfAccess: false } }, async () => 'x') }), undefined, 'false asks for nothing')
})

t.test('an optional route under a plugin-level policy is refused at boot, in either order', async (t) => {
  for (const policy of [{ allow: { emailDomains: ['acme.com'] } }, { authorize: () => true }]) {
    const kind = Object.keys(policy)[0] as string
    for (const before of [false, true]) {
      const error = await boot(t, (app) => {
        app.register(async (scope) => {
          if (before) scope.get('/maybe', { config: { cfAccess: { required: false } } }, async () => 'x')
          await scope.register(cloudflareAccess, options(policy))
          if (!before) scope.get('/maybe', { config: { cfAccess: { required: false } } }, async () => 'x')
        })
      })
      t.match(error?.message, /route GET \/maybe: config\.cfAccess has required: false but the registration has a policy \(allow\/authorize\), which an anonymous visitor would skip: use config\.cfAccess: false for a public route, or put the optional routes in a scope whose registration has no policy/,
        `${kind}, the route added ${before ? 'before' : 'after'} the plugin`)
    }
  }
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(cloudflareAccess, options({ allow: { emailDomains: ['acme.com'] } }))
  app.get('/public', { config: { cfAccess: false } }, async () => 'public')
  app.get('/account', { config: { cfAccess: { required: true } } }, async () => 'account')
  await app.ready()
  t.equal((await app.inject('/public')).statusCode, 200, 'the way out: config.cfAccess: false')
  t.equal((await app.inject('/account')).statusCode, 401)
})

t.test('where the boot sees every route, there is no request-time fallback: no warning, no hook of its own', async (t) => {
  const logs = captureLogs('warn')
  const app = Fastify({ logger: logs.logger })
  t.teardown(() => app.close())
  app.register(async (scope) => {
    await scope.register(cloudflareAccess, options())
    scope.get('/me', { config: { cfAccess: POLICY } }, async (request) => ({ email: request.cfAccess?.email }))
  }, { prefix: '/admin' })
  app.get('/plain', async () => 'plain')
  await app.ready()
  t.same(logs.lines.filter((line) => /cannot all be seen at boot/.test(line.msg)), [], 'no warning')
  t.notMatch(app.printRoutes({ includeHooks: true }), /cfAccessUnguardedRoute/, 'no request-time hook')
  t.equal((await app.inject({ url: '/admin/me', headers: { [HEADER]: access.signToken({ email: 'cfo@acme.com' }) } })).statusCode, 200)
})

t.test('the self-check: a route the root did not see is refused at request time, with one warning', async (t) => {
  // Simulates a Fastify whose root onRoute hooks do not reach every route: the root's recorder is taken out
  // of the root's hooks (Fastify's own symbol), so routes added from now on are seen by the registration only.
  const logs = captureLogs('warn')
  const app = Fastify({ logger: logs.logger })
  t.teardown(() => app.close())
  const kHooks = Object.getOwnPropertySymbols(app).find((symbol) => symbol.description === 'fastify.hooks') as symbol
  const hooks = (app as unknown as Record<symbol, { onRoute: Array<{ name: string }> }>)[kHooks] as { onRoute: Array<{ name: string }> }
  hooks.onRoute = hooks.onRoute.filter((hook) => hook.name !== 'cfAccessSeeRoute')
  app.register(async (scope) => {
    await scope.register(cloudflareAccess, options())
    scope.get('/me', async (request) => ({ email: request.cfAccess?.email }))
  }, { prefix: '/admin' })
  app.register(async (scope) => { scope.get('/billing', { config: { cfAccess: POLICY } }, async () => 'invoices') })
  app.get('/public', { config: { cfAccess: false } }, async () => 'public')
  app.get('/optional', { config: { cfAccess: { required: false } } }, async () => 'optional')
  app.get('/plain', async () => 'plain')
  await app.ready()
  const billing = await app.inject('/billing')
  t.equal(billing.statusCode, 500, 'refused at request time')
  t.equal(billing.json().code, 'FST_CF_ACCESS_ROUTE_UNGUARDED')
  t.match(billing.json().message, /route GET \/billing has config\.cfAccess but no registration of the plugin guards it/)
  t.equal((await app.inject({ url: '/billing', headers: { [HEADER]: access.signToken({ email: 'cfo@acme.com' }) } })).statusCode, 500, 'also with a valid token: nothing verifies there')
  for (const url of ['/public', '/optional', '/plain']) t.equal((await app.inject(url)).statusCode, 200, `${url}: asks for nothing`)
  t.equal((await app.inject('/admin/me')).statusCode, 401, 'guarded routes are verified as ever')
  t.equal((await app.inject({ url: '/admin/me', headers: { [HEADER]: access.signToken({ email: 'a@acme.com' }) } })).statusCode, 200)
  const warnings = logs.lines.filter((line) => /routes cannot all be seen at boot/.test(line.msg))
  t.equal(warnings.length, 1, 'one warning')
  t.equal(warnings[0]?.fastifyVersion, app.version, 'naming the Fastify version')
  t.match(warnings[0]?.msg, new RegExp(`Fastify ${app.version.replace(/\./g, '\\.')}; route GET /admin/me did not pass the onRoute hook of the app's root\\)`))
})

t.test('a cfAccess that Fastify would not copy into the route (inherited, a getter, not enumerable) is protected on a route declared before the plugin', async (t) => {
  class Config { get cfAccess (): CloudflareAccessRouteConfig { return POLICY } }
  const configs: Array<[string, () => object]> = [
    ['inherited', () => Object.create({ cfAccess: POLICY }) as object],
    ['a getter of a class', () => new Config()],
    ['not enumerable', () => Object.defineProperty({}, 'cfAccess', { value: POLICY, enumerable: false })]
  ]
  for (const [kind, config] of configs) {
    for (const hook of ['onRequest', 'preHandler', false] as const) {
      const app = Fastify()
      t.teardown(() => app.close())
      app.register(async (scope) => {
        scope.get('/before', { config: config() }, async () => 'x')
        await scope.register(cloudflareAccess, options({ hook }))
      })
      await app.ready()
      t.equal((await app.inject('/before')).statusCode, 401, `${kind}, hook ${String(hook)}: no token, 401`)
      t.equal((await app.inject({ url: '/before', headers: { [HEADER]: access.signToken({ email: 'eve@acme.com' }) } })).statusCode, 403, `${kind}, hook ${String(hook)}: the policy refuses`)
      t.equal((await app.inject({ url: '/before', headers: { [HEADER]: access.signToken({ email: 'cfo@acme.com' }) } })).statusCode, 200, `${kind}, hook ${String(hook)}: the policy admits`)
    }
  }
})

t.test('a registration that failed, its error swallowed by an after() callback, guards nothing: the boot is refused', async (t) => {
  const error = await boot(t, (app) => {
    app.register(async (scope) => {
      scope.decorate('cfAccess', { verify: async () => {} } as never) // the registration below fails on this
      scope.register(cloudflareAccess, options())
      scope.after((error) => { t.match(error?.message, /decorator 'cfAccess' has already been added/, 'the registration failed, and this callback drops its error') })
      scope.get('/report', { config: { cfAccess: { required: true } } }, async () => 'report')
    }, { prefix: '/admin' })
  })
  t.equal(error?.code, errorCodes.ROUTE_UNGUARDED, 'not served to anyone')
  t.match(error?.message, /\(the plugin is not registered in this app\):\n {2}GET, HEAD \/admin\/report\n/)
})

t.test('a route outside every registration that runs a registration\'s own verify is guarded by it, and checked as its route', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  let verify: ((...args: any[]) => Promise<void>) | undefined
  await app.register(async (scope) => {
    await scope.register(cloudflareAccess, options({ hook: false }))
    verify = scope.cfAccess.verify
  }, { prefix: '/admin' })
  app.get('/billing', { onRequest: verify, config: { cfAccess: POLICY } }, async () => 'invoices')
  app.get('/account', { preHandler: [async () => {}, verify as () => Promise<void>], config: { cfAccess: { allow: { emailDomains: ['acme.com'] } } } }, async () => 'account')
  await app.ready()
  t.equal((await app.inject('/billing')).statusCode, 401)
  t.equal((await app.inject({ url: '/billing', headers: { [HEADER]: access.signToken({ email: 'eve@acme.com' }) } })).statusCode, 403, 'its policy applied')
  t.equal((await app.inject({ url: '/billing', headers: { [HEADER]: access.signToken({ email: 'cfo@acme.com' }) } })).statusCode, 200)
  t.equal((await app.inject('/account')).statusCode, 401, 'verify among other preHandlers')
  t.equal((await app.inject({ url: '/account', headers: { [HEADER]: access.signToken({ email: 'eve@acme.com' }) } })).statusCode, 200)

  const odd = await boot(t, async (app) => {
    let verify: ((...args: any[]) => Promise<void>) | undefined
    await app.register(async (scope) => {
      await scope.register(cloudflareAccess, options())
      verify = scope.cfAccess.verify
    }, { prefix: '/admin' })
    app.get('/odd', { onRequest: verify, config: { cfAccess: 'yes' as never } }, async () => 'x')
    // a wrapper hides verify (and could swallow its refusal): not guarded
    app.get('/wrapped', { onRequest: async (request, reply) => { await (verify as (...args: any[]) => Promise<void>)(request, reply) }, config: { cfAccess: POLICY } }, async () => 'x')
  })
  t.equal(odd?.code, errorCodes.ROUTE_UNGUARDED)
  const listed = (odd?.message ?? '').split('\n').filter((line) => line.startsWith('  ')).map((line) => line.trim())
  t.same(listed, ['GET, HEAD /wrapped'], 'the route that runs verify is not listed as unguarded')
  t.match(odd?.message, /route GET \/odd: config\.cfAccess must be false or a policy/, 'but its config is validated')
})

t.test('two copies of the package in one app: each checks its own routes, neither refuses the other\'s', async (t) => {
  // A second copy, as two versions of the package in one app (or a runner that reloads modules) load it.
  const lib = join(__dirname, '..', 'lib')
  for (const file of Object.keys(require.cache)) {
    if (file.startsWith(lib) || file === join(__dirname, '..', 'index.ts')) Reflect.deleteProperty(require.cache, file)
  }
  const other = require('../index') as typeof cloudflareAccess
  t.not(other, cloudflareAccess, 'another copy')
  const build = (odd: boolean) => (app: FastifyInstance): void => {
    app.register(async (a) => {
      a.get('/early', { config: { cfAccess: POLICY } }, async () => 'x')
      await a.register(cloudflareAccess, options())
    }, { prefix: '/a' })
    app.register(async (b) => {
      b.get('/early', { config: { cfAccess: odd ? 'yes' as never : POLICY } }, async () => 'x')
      await b.register(other, options())
    }, { prefix: '/b' })
  }
  const error = await boot(t, build(true))
  t.equal(error?.message.split('\n').filter((line) => /route GET \/b\/early: config\.cfAccess must be false or a policy/.test(line)).length, 1, 'the copy that guards a route checks it, once')
  t.notMatch(error?.message, /\/a\/early/)
  const app = Fastify()
  t.teardown(() => app.close())
  build(false)(app)
  await app.ready()
  for (const url of ['/a/early', '/b/early']) t.equal((await app.inject(url)).statusCode, 401, `${url}: guarded by its copy`)
})
