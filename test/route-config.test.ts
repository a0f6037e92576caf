import Fastify, { type FastifyInstance, type FastifyRequest } from 'fastify'
import t from 'tap'
import cloudflareAccess from '../index'
import type { AccessEmulator } from '../lib/testing'
import type { FastifyCloudflareAccessOptions } from '../lib/types'
import { emulator, HEADER } from './helpers'

// A route's config.cfAccess (lib/route-config.ts): however the route carries it, a policy is enforced and anything else stops the boot.

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

t.test('a config.cfAccess an onRoute hook added after the plugin gives the route is the one enforced, not the value the plugin read before it', async (t) => {
  const access = await emulator(t)
  // Such a hook (a plugin putting a policy on every route of its scope) runs after the plugin's pass.
  const cases = [['onRequest', false], ['onRequest', { required: false }], ['onRequest', { required: true }], ['preHandler', false], [false, false]] as const
  for (const [hook, first] of cases) {
    const app = Fastify()
    t.teardown(() => app.close())
    await register(app, access, { hook })
    app.addHook('onRoute', (route) => {
      route.config = { ...route.config, cfAccess: { allow: { emails: ['boss@acme.com'] } } } as typeof route.config
    })
    app.get('/admin', { config: { cfAccess: first } }, async () => 'in')
    await app.ready()
    t.same(await answers(app, access, '/admin'), BOSS_ONLY, `hook ${String(hook)}, the route's own value ${JSON.stringify(first)}`)
  }
})

t.test('an invalid config.cfAccess an onRoute hook added after the plugin gives the route is never read as no policy: a 500, never admitted', async (t) => {
  const access = await emulator(t)
  const token = access.signToken({ email: 'boss@acme.com' })
  for (const value of ['yes', null, { allow: 'x' }, {}]) {
    for (const wiring of ['scope hook', 'verify', 'verifyToken'] as const) {
      const app = Fastify()
      t.teardown(() => app.close())
      await register(app, access, { hook: wiring === 'scope hook' ? 'onRequest' : false })
      app.addHook('onRoute', (route) => {
        route.config = { ...route.config, cfAccess: value } as typeof route.config
      })
      if (wiring === 'verifyToken') {
        app.get('/admin', { config: { cfAccess: false } }, async (request) => (await app.cfAccess.verifyToken(token, request)).email)
      } else {
        app.get('/admin', { config: { cfAccess: { allow: { emails: ['boss@acme.com'] } } }, onRequest: wiring === 'verify' ? app.cfAccess.verify : [] }, async () => 'in')
      }
      await app.ready()
      const res = await app.inject({ url: '/admin', headers: { [HEADER]: token } })
      t.equal(res.statusCode, 500, `${JSON.stringify(value)} through ${wiring}: the application's wiring mistake`)
      t.match(res.json().message, /config\.cfAccess|"allow" must be an object/, 'saying what is wrong')
    }
  }
})
