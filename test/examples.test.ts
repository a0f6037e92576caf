import t from 'tap'
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
  t.equal((await get('/hooks', access.signServiceToken())).statusCode, 403, 'authorize admits POST only')
  t.equal((await get('/hooks', access.signToken({ email: 'dev@acme.com' }), 'POST')).statusCode, 403, 'users may not call the hook')
})

t.test('examples/testing-your-app.ts: the emulator in an application test', async (t) => {
  t.same(await testMyApp(), { anonymous: 401, alice: 200, email: 'alice@acme.com' })
})
