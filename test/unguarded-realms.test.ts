import diagnostics from 'node:diagnostics_channel'
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify'
import { join } from 'node:path'
import vm from 'node:vm'
import t from 'tap'
import cloudflareAccess from '../index'
import { watchUnguarded } from '../lib/unguarded'
import { emulator, HEADER } from './helpers'

// A runner such as Jest loads the package anew for each test file, in a realm of its own: new globals
// (so a new record of apps and registrations), while Node's channels are the process's. The copy of an
// earlier file must not stay subscribed and refuse the later files' routes, whose registrations it cannot
// see; an object of another realm is not this copy's to check. This file runs the plugin as such a runner
// would: the copy imported above plays the earlier test file.

/** A Fastify-shaped scope made in another realm, and the names of the hooks added to its root. */
function foreignScope (): { scope: FastifyInstance, hooks: string[] } {
  const hooks: string[] = []
  const scope = vm.runInNewContext('Object.create({ version: "5.0.0", addHook (name) { hooks.push(name) } })', { hooks }) as FastifyInstance
  return { scope, hooks }
}

t.test('an app of another realm is left to that realm\'s copy of the package', async (t) => {
  const { scope, hooks } = foreignScope()
  diagnostics.channel('fastify.initialization').publish({ fastify: Object.getPrototypeOf(scope) })
  t.same(hooks, [], 'no hook added to it')
})

t.test('a registration in a scope of another realm, whose app was not seen: refused at request time, with one warning', async (t) => {
  const { scope, hooks } = foreignScope()
  const warnings: unknown[][] = []
  const log = { warn: (...args: unknown[]) => { warnings.push(args) } } as unknown as FastifyBaseLogger
  watchUnguarded({ scope, verify: undefined, check () {} }, log)
  t.same(hooks, ['onRequest'], 'the request-time refusal, on the root of that scope')
  t.equal(warnings.length, 1)
  t.match(warnings[0], [{ fastifyVersion: '5.0.0' }, /the app was created before fastify-cloudflare-access was loaded/])
})

t.test('a copy loaded with globals of its own leaves no earlier copy subscribed: its apps boot, and are checked', async (t) => {
  const access = await emulator(t)
  // The next test file's realm: globals without the earlier copy's records, and the package loaded anew.
  for (const name of ['fastify-cloudflare-access.unguarded.v1', 'fastify-cloudflare-access.scopes']) Reflect.deleteProperty(globalThis, Symbol.for(name))
  const lib = join(__dirname, '..', 'lib')
  for (const file of Object.keys(require.cache)) {
    if (file.startsWith(lib) || file === join(__dirname, '..', 'index.ts')) Reflect.deleteProperty(require.cache, file)
  }
  const later = require('../index') as typeof cloudflareAccess
  t.not(later, cloudflareAccess, 'another copy')

  const app = Fastify()
  t.teardown(() => app.close())
  app.register(async (admin) => {
    await admin.register(later, { teamDomain: access.teamDomain, audience: access.audience })
    admin.get('/report', { config: { cfAccess: { required: true } } }, async () => 'report')
  }, { prefix: '/admin' })
  await app.ready()
  t.equal((await app.inject('/admin/report')).statusCode, 401, 'booted, and guarded')
  t.equal((await app.inject({ url: '/admin/report', headers: { [HEADER]: access.signToken() } })).statusCode, 200)

  const unguarded = Fastify()
  t.teardown(() => unguarded.close())
  unguarded.get('/billing', { config: { cfAccess: { required: true } } }, async () => 'x')
  unguarded.register(async (admin) => { await admin.register(later, { teamDomain: access.teamDomain, audience: access.audience }) }, { prefix: '/admin' })
  await t.rejects(async () => { await unguarded.ready() }, { code: 'FST_CF_ACCESS_ROUTE_UNGUARDED', message: /\(the plugin is registered in: \/admin\):\n {2}GET, HEAD \/billing\n/ }, 'refused by the copy loaded last, which sees its registrations')
})
