import http from 'node:http'
import type { AddressInfo } from 'node:net'
import Fastify from 'fastify'
import t, { type Test } from 'tap'
import cloudflareAccess from '../index'
import { IdentityClient, membershipOf } from '../lib/identity'
import type { AccessEmulator } from '../lib/testing'
import { emulator, HEADER, nowSeconds, setup, sleep } from './helpers'

t.test('request.cfAccessIdentity(): the full identity, cached per token', async (t) => {
  const access = await emulator(t)
  access.setIdentity('alice@acme.com', { name: 'Alice', groups: [{ id: 'g1', name: 'admins' }], devicePosture: { firewall: true } })
  const server = Fastify()
  t.teardown(() => server.close())
  await server.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience })
  server.get('/me', async (request) => {
    const identity = await request.cfAccessIdentity()
    const again = await request.cfAccessIdentity()
    return { same: identity === again, frozen: Object.isFrozen(identity) && Object.isFrozen(identity.groups), identity }
  })
  const token = access.signToken({ email: 'alice@acme.com' })
  const first = (await server.inject({ url: '/me', headers: { [HEADER]: token } })).json()
  t.match(first, { same: true, frozen: true, identity: { email: 'alice@acme.com', name: 'Alice', groups: [{ id: 'g1', name: 'admins' }], devicePosture: { firewall: true } } })
  await server.inject({ url: '/me', headers: { [HEADER]: token } })
  t.equal(access.identityRequestCount, 1, 'one lookup for the same token across requests')
  await server.inject({ url: '/me', headers: { [HEADER]: access.signToken({ email: 'alice@acme.com' }) } })
  t.equal(access.identityRequestCount, 2, 'a new token is a new lookup')
})

t.test('service tokens: a clear 403 without calling the network', async (t) => {
  const access = await emulator(t)
  const server = Fastify()
  t.teardown(() => server.close())
  await server.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience })
  server.get('/me', async (request) => request.cfAccessIdentity())
  const res = await server.inject({ url: '/me', headers: { [HEADER]: access.signServiceToken() } })
  t.equal(res.statusCode, 403)
  t.equal(res.json().code, 'FST_CF_ACCESS_NO_IDENTITY')
  t.equal(access.identityRequestCount, 0)
})

t.test('without a verified token: 401', async (t) => {
  const access = await emulator(t)
  const server = Fastify()
  t.teardown(() => server.close())
  await server.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience })
  server.get('/open', { config: { cfAccess: false } }, async (request) => request.cfAccessIdentity())
  const res = await server.inject({ url: '/open', headers: { [HEADER]: access.signToken() } })
  t.equal(res.statusCode, 401)
  t.equal(res.json().code, 'FST_CF_ACCESS_TOKEN_MISSING')
})

t.test('cfAccessIdentity() wired wrong: claims set by application code without a verified token, or cleared after one, get 401', async (t) => {
  const access = await emulator(t)
  const server = Fastify()
  t.teardown(() => server.close())
  await server.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience })
  server.get('/forged', { config: { cfAccess: false } }, async (request) => {
    request.cfAccess = { aud: [access.audience], iss: access.teamDomain, exp: 2e9, email: 'admin@acme.com' } as never
    return request.cfAccessIdentity()
  })
  server.get('/cleared', async (request) => {
    request.cfAccess = null
    return request.cfAccessIdentity()
  })
  for (const url of ['/forged', '/cleared']) {
    const res = await server.inject({ url, headers: { [HEADER]: access.signToken() } })
    t.same([res.statusCode, res.json().code], [401, 'FST_CF_ACCESS_TOKEN_MISSING'], url)
  }
  t.equal(access.identityRequestCount, 0, 'the identity endpoint was never asked')
})

t.test('single flight: concurrent lookups for one token share one request', async (t) => {
  const access = await emulator(t)
  access.setLatency(150, 'identity')
  access.setIdentity('a@acme.com', { groups: [{ id: 'g', name: 'admins' }] })
  const { app } = await setup(t, { allow: { groups: ['admins'] } }, { access })
  const token = access.signToken({ email: 'a@acme.com' })
  const responses = await Promise.all(Array.from({ length: 20 }, () => app.inject({ url: '/admin/me', headers: { [HEADER]: token } })))
  t.ok(responses.every((res) => res.statusCode === 200))
  t.equal(access.identityRequestCount, 1)
})

t.test('endpoint down: 503 FST_CF_ACCESS_IDENTITY_UNAVAILABLE, not cached, then recovery', async (t) => {
  const access = await emulator(t)
  access.setIdentity('a@acme.com', { groups: [{ id: 'g', name: 'admins' }] })
  const { get } = await setup(t, { allow: { groups: ['admins'] } }, { access })
  const token = access.signToken({ email: 'a@acme.com' })
  for (const mode of ['error', 'reset', 'html', 'garbage', 'empty'] as const) {
    access.setOutage(mode, 'identity')
    const res = await get(token)
    t.equal(res.statusCode, 503, mode)
    t.equal(res.json.code, 'FST_CF_ACCESS_IDENTITY_UNAVAILABLE', mode)
    t.equal(res.headers['retry-after'], '5', `${mode}: Retry-After`)
  }
  access.setOutage(false, 'identity')
  t.equal((await get(token)).statusCode, 200, 'a failed lookup was not cached')
})

t.test('a hanging identity endpoint fails within identityTimeout', async (t) => {
  const access = await emulator(t)
  access.setLatency(Infinity, 'identity')
  const { get } = await setup(t, { allow: { groups: ['admins'] }, identityTimeout: 200 }, { access })
  const started = Date.now()
  const res = await get(access.signToken())
  t.equal(res.statusCode, 503)
  t.match(res.json.message, /identity endpoint did not answer within 200 ms/)
  t.ok(Date.now() - started < 1500)
})

t.test('the identity endpoint refusing the token (a revoked session) is a 401', async (t) => {
  const access = await emulator(t)
  const { get } = await setup(t, { allow: { groups: ['admins'] } }, { access })
  const token = access.signToken({}, { key: 'previous' })
  t.equal((await get(access.signToken())).statusCode, 403, 'keys cached, no group')
  await access.rotateKeys()
  await access.rotateKeys() // the emulator no longer knows the key; the plugin still has it cached
  const res = await get(token)
  t.equal(res.statusCode, 401)
  t.match(res.json.message, /identity endpoint refused the token/)
})

/** A team origin whose certs come from the emulator and whose identity endpoint answers as `identity` says. */
async function teamOrigin (t: Test, access: AccessEmulator, identity: (res: http.ServerResponse) => void): Promise<string> {
  const server = http.createServer((req, res) => {
    if (req.url === '/cdn-cgi/access/certs') res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(access.jwks()))
    else identity(res)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { server.closeAllConnections(); server.close() })
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`
}

t.test('the identity endpoint: only 400, 401 and 403 mean the session is refused; every other failure is a 503 with Retry-After', async (t) => {
  const access = await emulator(t)
  let answer: (res: http.ServerResponse) => void = () => {}
  const origin = await teamOrigin(t, access, (res) => answer(res))
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(cloudflareAccess, { teamDomain: origin, audience: access.audience, allow: { groups: ['ops'] }, identityCacheTtl: 0 })
  app.get('/', async () => ({}))
  await app.ready()
  const status = async (): Promise<{ statusCode: number, code: string, retry: unknown }> => {
    const res = await app.inject({ url: '/', headers: { [HEADER]: access.signToken({ iss: origin }) } })
    return { statusCode: res.statusCode, code: res.json().code, retry: res.headers['retry-after'] }
  }
  for (const code of [400, 401, 403]) {
    answer = (res) => res.writeHead(code).end('{}')
    t.same(await status(), { statusCode: 401, code: 'FST_CF_ACCESS_TOKEN_INVALID', retry: undefined }, `HTTP ${code}`)
  }
  const outages: Record<string, (res: http.ServerResponse) => void> = {
    'HTTP 404': (res) => res.writeHead(404).end('{}'),
    'HTTP 408': (res) => res.writeHead(408).end('{}'),
    'HTTP 429': (res) => res.writeHead(429).end('{}'),
    'HTTP 500': (res) => res.writeHead(500).end('{}'),
    'HTTP 502': (res) => res.writeHead(502).end('{}'),
    'a redirect': (res) => res.writeHead(302, { location: '/elsewhere' }).end(),
    'not JSON': (res) => res.writeHead(200).end('<html>'),
    'more than 64 KiB': (res) => res.writeHead(200).end(JSON.stringify({ email: 'user@example.com', groups: [], pad: 'x'.repeat(64 * 1024) })),
    'nested 5000 deep': (res) => res.writeHead(200).end(`{"email":"user@example.com","groups":[],"deep":${'['.repeat(5000)}${']'.repeat(5000)}}`),
    'nested 33 deep': (res) => res.writeHead(200).end(`{"email":"user@example.com","groups":[],"deep":${'['.repeat(33)}${']'.repeat(33)}}`)
  }
  for (const [name, outage] of Object.entries(outages)) {
    answer = outage
    t.same(await status(), { statusCode: 503, code: 'FST_CF_ACCESS_IDENTITY_UNAVAILABLE', retry: '5' }, name)
  }
  answer = (res) => res.writeHead(200).end(JSON.stringify({ email: 'user@example.com', groups: [{ id: '1', name: 'ops' }], deep: JSON.parse('['.repeat(30) + ']'.repeat(30)) as unknown }))
  t.same(await status(), { statusCode: 200, code: undefined, retry: undefined }, 'a document 31 levels deep is fine')
})

t.test('every 503 carries Retry-After: request.cfAccessIdentity() awaited in a handler', async (t) => {
  const access = await emulator(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience })
  app.get('/', async (request) => request.cfAccessIdentity())
  await app.ready()
  access.setOutage('error', 'identity')
  const res = await app.inject({ url: '/', headers: { [HEADER]: access.signToken() } })
  t.equal(res.statusCode, 503)
  t.equal(res.json().code, 'FST_CF_ACCESS_IDENTITY_UNAVAILABLE')
  t.equal(res.headers['retry-after'], '5')
})

t.test('IdentityClient: cache expiry, never beyond exp, bounded size, odd groups dropped', async (t) => {
  const access = await emulator(t)
  access.setIdentity('a@acme.com', { groups: [{ id: 'g', name: 'ok' }, null, { id: 1, name: 'bad' }, 'x'] as never })
  const url = `${access.teamDomain}/cdn-cgi/access/get-identity`
  const short = new IdentityClient({ url, timeout: 1000, ttl: 150, size: 10 })
  const token = access.signToken({ email: 'a@acme.com' })
  const exp = nowSeconds() + 3600
  const identity = await short.get(token, exp)
  t.same(identity.groups, [{ id: 'g', name: 'ok' }])
  await short.get(token, exp)
  t.equal(short.fetchCount, 1, 'cached')
  await sleep(200)
  await short.get(token, exp)
  t.equal(short.fetchCount, 2, 'refetched after the ttl')

  const long = new IdentityClient({ url, timeout: 1000, ttl: 3_600_000, size: 10 })
  const soon = nowSeconds() + 1
  const expiring = access.signToken({ email: 'a@acme.com' }, { expiresIn: 2 })
  await long.get(expiring, soon)
  await long.get(expiring, soon)
  t.equal(long.fetchCount, 1)
  await sleep(1100)
  await long.get(expiring, soon).catch(() => undefined)
  t.equal(long.fetchCount, 2, 'an entry never outlives the token’s exp')

  const tiny = new IdentityClient({ url, timeout: 1000, ttl: 60_000, size: 2 })
  const tokens = [1, 2, 3].map(() => access.signToken({ email: 'a@acme.com' }))
  for (const each of tokens) await tiny.get(each, exp)
  await tiny.get(tokens[2] as string, exp)
  await tiny.get(tokens[1] as string, exp)
  t.equal(tiny.fetchCount, 3, 'the two most recent stay cached')
  await tiny.get(tokens[0] as string, exp)
  t.equal(tiny.fetchCount, 4, 'the least recently used was evicted')

  access.setIdentity('b@acme.com', { groups: 'admins' as never })
  const noGroups = await tiny.get(access.signToken({ email: 'b@acme.com' }), exp)
  t.same(noGroups.groups, [], 'groups that are not an array count as none')
})

/** An identity endpoint of our own: answers `answer()` as JSON, or never when it returns null. */
async function identityServer (t: Test, answer: () => string | null): Promise<string> {
  const server = http.createServer((_req, res) => {
    const body = answer()
    if (body !== null) res.setHeader('content-type', 'application/json').end(body)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()) }))
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}/cdn-cgi/access/get-identity`
}

t.test('IdentityClient: a document that is not an identity is a 503; identity.groups keeps only entries with a string id and name, the grants read each id and name on its own', async (t) => {
  let body = 'null'
  const client = new IdentityClient({ url: await identityServer(t, () => body), timeout: 1000, ttl: 60_000, size: 10 })
  const exp = nowSeconds() + 3600
  for (const document of ['null', '42', '"a@acme.com"', '[]', '{}', '{"email":5}', '{"email":null}']) {
    body = document
    await t.rejects(client.get(`token for ${document}`, exp), { statusCode: 503, code: 'FST_CF_ACCESS_IDENTITY_UNAVAILABLE' }, document)
  }
  body = JSON.stringify({ email: 'a@acme.com', groups: [{ id: 'g', name: 'ok' }, { id: 5, name: 'n' }, { id: 'i', name: null }, { id: 'i' }, { name: 'n' }, null, 'x', [1]] })
  const identity = await client.get('token with groups', exp)
  t.same(identity.groups, [{ id: 'g', name: 'ok' }], 'what the application gets: both, as typed')
  t.same([...membershipOf(identity).ids], ['g', 'i'], 'what groupIds matches: every string id')
  t.same([...membershipOf(identity).names], ['ok', 'n'], 'what groups matches: every string name')
  t.same([...membershipOf({ email: 'a@acme.com', groups: [{ id: 'g', name: 'ok' }] }).ids], [], 'an identity the client did not return has none')
  body = JSON.stringify({ email: 'a@acme.com' })
  t.same((await client.get('token without groups', exp)).groups, [], 'no groups: none')
})

t.test('IdentityClient.close() ends a lookup under way at once, with a 503', async (t) => {
  const client = new IdentityClient({ url: await identityServer(t, () => null), timeout: 30_000, ttl: 60_000, size: 10 })
  const pending = client.get('a token', nowSeconds() + 3600)
  await sleep(50)
  const started = Date.now()
  client.close()
  await t.rejects(pending, { statusCode: 503, code: 'FST_CF_ACCESS_IDENTITY_UNAVAILABLE' })
  t.ok(Date.now() - started < 1000, 'at once, not after the 30 s timeout')
})

t.test('IdentityClient: many lookups under way at once are no "possible memory leak" warning, and close() ends them all', async (t) => {
  const client = new IdentityClient({ url: await identityServer(t, () => null), timeout: 30_000, ttl: 60_000, size: 100 })
  const warnings: string[] = []
  const onWarning = (warning: Error): void => { warnings.push(warning.name) }
  process.on('warning', onWarning)
  t.teardown(() => { process.off('warning', onWarning) })
  const exp = nowSeconds() + 3600
  // One lookup per token: 50 users arriving at once each wait on the endpoint (each listens for the close).
  const pending = Array.from({ length: 50 }, (_, i) => client.get(`token ${i}`, exp))
  await sleep(50)
  client.close()
  for (const lookup of pending) await t.rejects(lookup, { code: 'FST_CF_ACCESS_IDENTITY_UNAVAILABLE' })
  await sleep(10) // process warnings are emitted on the next tick
  t.same(warnings, [], 'no MaxListenersExceededWarning')
})

t.test('IdentityClient: an entry answers until its expiry, and not at it', async (t) => {
  const client = new IdentityClient({ url: await identityServer(t, () => JSON.stringify({ email: 'a@acme.com' })), timeout: 1000, ttl: 1000, size: 10 })
  const exp = nowSeconds() + 3600
  const realNow = Date.now
  let now = realNow()
  Date.now = () => now
  t.teardown(() => { Date.now = realNow })
  await client.get('a token', exp)
  now += 999
  await client.get('a token', exp)
  t.equal(client.fetchCount, 1, '1 ms before: cached')
  now += 1
  await client.get('a token', exp)
  t.equal(client.fetchCount, 2, 'at the expiry: fetched again')
})
