import type { AddressInfo } from 'node:net'
import t from 'tap'
import WebSocket from 'ws'
import { ForbiddenError } from '../index'
import { buildBrowserApp } from '../examples/browser'
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

t.test('examples/browser.ts: pages for a browser, JSON for API clients, a refused user\'s page with every token value escaped', async (t) => {
  const access = await emulator(t)
  access.setIdentity('fin@acme.com', { groups: [{ id: 'g-finance', name: 'finance' }] })
  access.setIdentity('<img src=x onerror=alert(1)>@acme.com', { groups: [{ id: 'g-other', name: 'finance' }] })
  const app = await buildBrowserApp({ teamDomain: access.teamDomain, audience: access.audience, financeGroupId: 'g-finance', origins: ['http://app.example'] })
  t.teardown(() => app.close())
  // a refusal of the application's own, without a subject
  app.get('/own', async () => { throw new ForbiddenError() })
  const page = { accept: 'text/html,application/xhtml+xml,*/*;q=0.8' }
  const get = async (url: string, token?: string, accept = page.accept) => app.inject({ url, headers: { accept, ...(token === undefined ? {} : { [HEADER]: token }) } })

  t.match((await get('/')).body, /<h1>Welcome<\/h1>/, 'the home page is public')
  t.equal((await get('/health')).body, 'ok')
  t.equal((await get('/app/')).statusCode, 401, 'the app is not')
  t.match((await get('/app/')).json(), { code: 'FST_CF_ACCESS_TOKEN_MISSING' }, 'a 401 stays JSON, even for a page request: behind Access a browser never sees one')
  const fin = access.signToken({ email: 'fin@acme.com' })
  const home = await get('/app/', fin)
  t.match(home.headers['content-type'], /^text\/html/)
  t.match(home.body, /<h1>Hello, fin@acme\.com<\/h1>/)
  t.match(home.body, /<a id="logout-link" href="\/app\/logout">Log out<\/a>/)
  t.match(home.body, /<form id="logout-form" method="get" action="\/app\/logout">/)
  t.same((await get('/app/me', fin, '*/*')).json(), { email: 'fin@acme.com' })
  t.match((await get('/app/finance', fin)).body, /<h1>Finance<\/h1>/, 'the group id admits')

  const evil = access.signToken({ email: '<img src=x onerror=alert(1)>@acme.com' })
  const refused = await get('/app/finance', evil)
  t.equal(refused.statusCode, 403)
  t.match(refused.headers['content-type'], /^text\/html; charset=utf-8/)
  t.match(refused.body, /You are signed in as <strong>&#60;img src=x onerror=alert\(1\)&#62;@acme\.com<\/strong>, who may not open this page/)
  t.notMatch(refused.body, /<img/, 'the email is escaped')
  t.match(refused.body, /<a href="\/cdn-cgi\/access\/logout">Log out<\/a> to sign in with another account/)
  t.match((await get('/app/', evil)).body, /Hello, &#60;img/, 'escaped on the greeting too')
  const service = await get('/app/finance', access.signServiceToken({ common_name: 'ci.access' }))
  t.match(service.body, /signed in as <strong>ci\.access<\/strong>/, 'a service token is named by its Client ID')
  t.match((await get('/app/', access.signServiceToken({ common_name: 'ci.access' }))).body, /Hello, ci\.access/)
  t.match((await get('/own')).body, /You are signed in as <strong>someone<\/strong>/, 'a ForbiddenError thrown without a subject')
  for (const accept of ['application/json', '*/*', undefined]) {
    const api = await app.inject({ url: '/app/finance', headers: { [HEADER]: evil, ...(accept === undefined ? {} : { accept }) } })
    t.equal(api.statusCode, 403)
    t.same(api.json(), { statusCode: 403, code: 'FST_CF_ACCESS_FORBIDDEN', error: 'Forbidden', message: 'This Cloudflare Access identity is not allowed here' }, `Accept ${String(accept)}: the JSON error, unchanged`)
  }

  for (const token of [undefined, fin]) {
    const out = await get('/app/logout', token)
    t.equal(out.statusCode, 303, `logout ${token === undefined ? 'without' : 'with'} a token`)
    t.equal(out.headers.location, '/cdn-cgi/access/logout')
  }

  await app.listen({ port: 0, host: '127.0.0.1' })
  const url = `ws://127.0.0.1:${(app.server.address() as AddressInfo).port}/app/ws`
  const ws = new WebSocket(url, { headers: { [HEADER]: fin, origin: 'http://app.example' } })
  t.equal(await new Promise((resolve, reject) => { ws.once('message', (data) => resolve(String(data))); ws.once('error', reject) }), 'hello fin@acme.com')
  ws.close()
  const foreign = await new Promise((resolve) => {
    const other = new WebSocket(url, { headers: { [HEADER]: fin, origin: 'http://evil.example' } })
    other.on('unexpected-response', (request, response) => resolve(response.statusCode))
    other.on('error', () => {})
  })
  t.equal(foreign, 403, 'an upgrade from another site is refused')
})
