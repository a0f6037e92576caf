import t from 'tap'
import { runDemo } from '../lib/demo'
import { buildPoliciesApp } from '../examples/policies'
import { buildRouteLevelApp } from '../examples/route-level'
import { testMyApp } from '../examples/testing-your-app'
import { emulator, HEADER } from './helpers'

// The examples in examples/ run, against the emulator, and do what the README says they do.

t.test('examples/route-level.ts: hook false, route-level onRequest and preHandler', async (t) => {
  const access = await emulator(t)
  const app = await buildRouteLevelApp(access.teamDomain, access.audience)
  t.teardown(() => app.close())
  const token = access.signToken({ email: 'ops@acme.com' })
  t.equal((await app.inject('/health')).statusCode, 200)
  t.equal((await app.inject('/admin')).statusCode, 401)
  t.equal((await app.inject({ url: '/admin', headers: { [HEADER]: token } })).json().email, 'ops@acme.com')
  t.equal((await app.inject({ method: 'POST', url: '/admin/jobs' })).statusCode, 401)
  t.same((await app.inject({ method: 'POST', url: '/admin/jobs', headers: { [HEADER]: token } })).json(), { by: 'ops@acme.com' })
})

t.test('examples/policies.ts: grants, narrowing, opt-out, identity, a service-token-only hook', async (t) => {
  const access = await emulator(t)
  access.setIdentity('fin@acme.com', { name: 'Fin', groups: [{ id: 'g1', name: 'finance' }] })
  const app = await buildPoliciesApp(access.teamDomain, access.audience, 'deploy.access')
  t.teardown(() => app.close())
  const get = async (url: string, token?: string, method: 'GET' | 'POST' = 'GET') => app.inject({ method, url, headers: token === undefined ? {} : { [HEADER]: token } })
  t.equal((await get('/admin/health')).statusCode, 200)
  t.equal((await get('/admin/whoami')).statusCode, 401)
  t.same((await get('/admin/whoami', access.signToken({ email: 'dev@acme.com' }))).json(), { user: 'dev@acme.com' })
  t.equal((await get('/admin/whoami', access.signToken({ email: 'eve@evil.com' }))).statusCode, 403)
  t.same((await get('/admin/whoami', access.signServiceToken({ common_name: 'deploy.access' }))).json(), { service: 'deploy.access' })
  t.equal((await get('/admin/whoami', access.signServiceToken({ common_name: 'other.access' }))).statusCode, 403)
  t.equal((await get('/admin/billing', access.signToken({ email: 'dev@acme.com' }))).statusCode, 403)
  t.same((await get('/admin/billing', access.signToken({ email: 'fin@acme.com' }))).json(), { invoices: 3 })
  t.same((await get('/admin/profile', access.signToken({ email: 'fin@acme.com' }))).json(), { name: 'Fin', groups: ['finance'] })
  t.same((await get('/hooks', access.signServiceToken(), 'POST')).json(), { queued: true })
  t.same((await get('/hooks?x=1', access.signServiceToken(), 'POST')).json(), { queued: true }, 'a query string does not change the route')
  t.same((await get('/hooks/', access.signServiceToken(), 'POST')).json(), { queued: true }, 'nor a trailing slash')
  t.equal((await get('/hooks', access.signServiceToken())).statusCode, 403, 'authorize admits POST only')
  t.equal((await get('/hooks', access.signToken({ email: 'dev@acme.com' }), 'POST')).statusCode, 403, 'users may not call the hook')
})

t.test('examples/testing-your-app.ts: the emulator in an application test', async (t) => {
  t.same(await testMyApp(), { anonymous: 401, alice: 200, email: 'alice@acme.com' })
})

t.test('the demo walks through every case with the expected answers', async (t) => {
  const lines: string[] = []
  const result = await runDemo({ print: (line) => lines.push(line) })
  t.equal(result.ok, true)
  const output = lines.join('\n')
  t.match(output, /11\/11 answers as expected; key endpoint fetched 1 time\(s\)/)
  t.match(output, /← 401 .*FST_CF_ACCESS_TOKEN_MISSING/)
  t.match(output, /← 401 .*FST_CF_ACCESS_TOKEN_EXPIRED/)
  t.match(output, /← 401 .*FST_CF_ACCESS_CLAIM_INVALID/)
  t.match(output, /not authorized\n.*\n.*← 403 .*FST_CF_ACCESS_FORBIDDEN/)
  t.match(output, /key endpoint down after warm-up[^]*← 200/)
  t.notMatch(output, /eyJ[A-Za-z0-9_-]{20}/, 'no token is printed whole')
  t.notMatch(output, /✗/)
})

t.test('--serve keeps listening and prints a ready curl command', async (t) => {
  const lines: string[] = []
  const result = await runDemo({ serve: true, print: (line) => lines.push(line) })
  t.teardown(result.close)
  const curl = lines.find((line) => line.includes('curl -s')) as string
  t.ok(curl)
  const token = /Cf-Access-Jwt-Assertion: ([^']+)'/.exec(curl)?.[1] as string
  const res = await fetch(`${result.url}/admin/me`, { headers: { 'cf-access-jwt-assertion': token } })
  t.equal(res.status, 200, 'the printed token works')
})
