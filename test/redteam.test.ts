import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import Fastify, { type FastifyInstance, type FastifyRequest } from 'fastify'
import t from 'tap'
import cloudflareAccess from '../index'
import { main } from '../lib/cli'
import type { AccessEmulator } from '../lib/testing'
import type { FastifyCloudflareAccessOptions } from '../lib/types'
import { emulator, HEADER, nowSeconds } from './helpers'

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

t.test('hook: false: a route added before the plugin whose config.cfAccess is not a policy (true, null, a string) is never served open', async (t) => {
  const access = await emulator(t)
  const app = Fastify()
  t.teardown(() => app.close())
  let handled = 0
  for (const [name, value] of Object.entries({ true: true, null: null, string: 'admins' })) {
    app.get(`/${name}`, { config: { cfAccess: value as unknown as false } }, async () => { handled++; return 'open' })
  }
  await register(app, access, { hook: false })
  await app.ready()
  for (const name of ['true', 'null', 'string']) {
    const res = await app.inject({ url: `/${name}` })
    t.not(res.statusCode, 200, `cfAccess: ${name}, no token: not served`)
  }
  t.equal(handled, 0, 'no handler ran')
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

/** Runs the CLI in-process; resolves its exit code and output, or what it threw. */
async function inspect (args: string[]): Promise<{ code: number | string, out: string, err: string }> {
  let out = ''
  let err = ''
  try {
    const code = await main(['inspect', ...args], { out: (text) => { out += text + '\n' }, err: (text) => { err += text + '\n' } })
    return { code, out, err }
  } catch (error) {
    return { code: `threw ${String((error as Error).name)}: ${String((error as Error).message)}`, out, err }
  }
}

t.test('inspect: claims that defeat String() or JSON.stringify (a non-callable toString, deep nesting) are reported, never a stack trace', async (t) => {
  const access = await emulator(t)
  const certs = join(mkdtempSync(join(tmpdir(), 'cf-redteam-')), 'certs.json')
  writeFileSync(certs, JSON.stringify(access.jwks()))
  const header = { alg: 'RS256', kid: access.kids[0] }
  const base = `"iss":${JSON.stringify(access.teamDomain)},"email":"a@acme.com","exp":${nowSeconds() + 600}`
  const depth = 100_000
  const cases: Record<string, string> = {
    'aud [{"toString":1}]': access.signRaw(header, `{${base},"aud":[{"toString":1}]}`),
    'aud {"toString":1,"valueOf":1}': access.signRaw(header, `{${base},"aud":{"toString":1,"valueOf":1}}`),
    'a claim nested 100000 deep': access.signRaw(header, `{${base},"aud":[${JSON.stringify(access.audience)}],"x":${'['.repeat(depth)}${']'.repeat(depth)}}`),
    'aud nested as deep as 8192 characters allow': access.signRaw(header, `{${base},"aud":${'['.repeat(2800)}${']'.repeat(2800)}}`)
  }
  t.ok((cases['aud nested as deep as 8192 characters allow'] as string).length <= 8192, 'the deepest token the plugin would decode')
  for (const [name, token] of Object.entries(cases)) {
    for (const mode of [[], ['--json']]) {
      const run = await inspect([token, '--team', access.teamDomain, '--aud', access.audience, '--certs', certs, ...mode])
      t.equal(run.code, 1, `${name}${mode.length === 0 ? '' : ' --json'}: rejected with exit 1`)
    }
  }
})

t.test('inspect: a --certs file cannot write terminal escapes through its parse error', async (t) => {
  const access = await emulator(t)
  const certs = join(mkdtempSync(join(tmpdir(), 'cf-redteam-')), 'certs.json')
  writeFileSync(certs, '\u001b]0;pwned\u0007\u001b[2J')
  const run = await inspect([access.signToken(), '--team', access.teamDomain, '--aud', access.audience, '--certs', certs])
  t.equal(run.code, 2, 'a usage error')
  // eslint-disable-next-line no-control-regex
  t.notMatch(run.err, /[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/, 'no raw control character on stderr')
})
