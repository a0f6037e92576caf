import http from 'node:http'
import type { AddressInfo } from 'node:net'
import t from 'tap'
import { createAccessEmulator } from '../lib/testing'
import { attackerKey, decode, emulator, listeners, nowSeconds, setup, signingKeys } from './helpers'

t.test("the certs endpoint answers in Cloudflare's shape", async (t) => {
  const access = await emulator(t)
  const res = await fetch(access.certsUrl)
  t.equal(res.status, 200)
  t.match(res.headers.get('content-type'), /application\/json/)
  const body = await res.json() as { keys: Array<Record<string, string>> }
  t.equal(body.keys.length, 2, 'a current and a previous key')
  for (const key of body.keys) {
    t.match(key, { kty: 'RSA', alg: 'RS256', use: 'sig', kid: /^[0-9a-f]{64}$/, n: /^[A-Za-z0-9_-]{342}$/, e: 'AQAB' })
  }
  t.same(body.keys.map((key) => key.kid), access.kids)
  t.equal(access.certsUrl, `${access.teamDomain}/cdn-cgi/access/certs`)
  t.match(access.teamDomain, /^http:\/\/127\.0\.0\.1:\d+$/)
  t.match(access.audience, /^[0-9a-f]{64}$/)
  const other = await fetch(`${access.teamDomain}/cdn-cgi/access/nothing`)
  t.equal(other.status, 404, 'other paths are 404')
  const post = await fetch(access.certsUrl, { method: 'POST' })
  t.equal(post.status, 404, 'only GET')
  t.equal(access.requestCount, 3)
  t.equal(access.certsRequestCount, 1, 'only GETs of the certs path count')
  t.same(access.requests, ['/cdn-cgi/access/certs', '/cdn-cgi/access/nothing', '/cdn-cgi/access/certs'])
})

t.test('tokens look like Cloudflare Access tokens', async (t) => {
  const access = await emulator(t, { email: 'dev@acme.com', audience: ['a'.repeat(64), 'b'.repeat(64)] })
  const user = decode(access.signToken())
  t.same(user.header, { alg: 'RS256', kid: access.kids[0] })
  t.match(user.payload, { aud: ['a'.repeat(64)], email: 'dev@acme.com', iss: access.teamDomain, type: 'app', country: 'US', sub: /^[0-9a-f-]{36}$/, identity_nonce: /.+/ })
  t.equal(user.payload.exp as number - (user.payload.iat as number), 86_400)
  t.equal(user.payload.nbf, user.payload.iat)
  t.same(access.audiences, ['a'.repeat(64), 'b'.repeat(64)])
  const service = decode(access.signServiceToken()).payload
  t.match(service, { common_name: /^[0-9a-f]{32}\.access$/, sub: '', type: 'app' })
  t.notOk('email' in service)
  t.notOk('nbf' in service)
  const shaped = decode(access.signToken({ email: undefined, extra: 1 }, { now: 1000, expiresIn: 60, key: 'previous' }))
  t.same([shaped.payload.iat, shaped.payload.exp, shaped.payload.extra, 'email' in shaped.payload], [1000, 1060, 1, false])
  t.equal(shaped.header.kid, access.kids[1], 'signed with the previous key, under its kid')
})

t.test('signing with a foreign key given as PEM, and rotation', async (t) => {
  const { access, get } = await setup(t, { unknownKidCooldown: 0 })
  const pem = attackerKey().export({ type: 'pkcs8', format: 'pem' }) as string
  t.equal((await get(access.signToken({}, { key: pem }))).statusCode, 401)
  const [current, previous] = access.kids
  const kid = await access.rotateKeys()
  t.same(access.kids, [kid, current], 'the old current key stays published as the previous one')
  t.not(kid, previous)
  t.equal((await get(access.signToken({}, { key: 'previous' }))).statusCode, 200)
  t.equal((await get(access.signToken())).statusCode, 200)
})

t.test('latency and outage switches', async (t) => {
  const access = await createAccessEmulator({ latency: 150, privateKeys: signingKeys() })
  t.teardown(() => access.close())
  let started = Date.now()
  await fetch(access.certsUrl)
  t.ok(Date.now() - started >= 140, 'latency applies')
  access.setLatency(0)
  access.setOutage(true)
  t.equal((await fetch(access.certsUrl)).status, 503)
  access.setOutage('html')
  t.match(await (await fetch(access.certsUrl)).text(), /<!DOCTYPE html>/)
  access.setOutage('garbage')
  t.equal(await (await fetch(access.certsUrl)).text(), '{"keys": [')
  access.setOutage('empty')
  t.same(await (await fetch(access.certsUrl)).json(), { keys: [] })
  access.setOutage('redirect')
  t.equal((await fetch(access.certsUrl, { redirect: 'manual' })).status, 302)
  access.setOutage('reset')
  await t.rejects(fetch(access.certsUrl))
  access.setOutage(false)
  started = Date.now()
  t.equal((await fetch(access.certsUrl)).status, 200)
  t.ok(nowSeconds() > 0 && Date.now() - started < 1000)
})

t.test('close ends hanging connections', async (t) => {
  const access = await createAccessEmulator()
  access.setLatency(Infinity)
  const pending = fetch(access.certsUrl).catch((error: unknown) => error)
  await new Promise((resolve) => setTimeout(resolve, 50))
  await access.close()
  t.type(await pending, Error, 'the pending request fails instead of hanging')
})

t.test('the identity endpoint answers for the tokens the emulator issued, like Cloudflare', async (t) => {
  const access = await emulator(t)
  const ask = async (token?: string): Promise<{ status: number, body: Record<string, any> }> => {
    const res = await fetch(`${access.teamDomain}/cdn-cgi/access/get-identity`, { headers: token === undefined ? {} : { cookie: `CF_Authorization=${token}` } })
    return { status: res.status, body: await res.json() as Record<string, any> }
  }
  const token = access.signToken({ email: 'Alice@Acme.com', sub: 'u-1', country: 'PT' })
  const plain = await ask(token)
  t.equal(plain.status, 200)
  t.match(plain.body, { email: 'Alice@Acme.com', id: 'u-1', user_uuid: 'u-1', name: 'Alice', geo: { country: 'PT' }, groups: [], idp: { type: 'onetimepin' } })
  access.setIdentity('alice@acme.com', { groups: [{ id: 'g1', name: 'admins', email: 'admins@acme.com' }], name: 'Alice Liddell', devicePosture: { disk: true } })
  const set = await ask(token)
  t.match(set.body, { name: 'Alice Liddell', groups: [{ id: 'g1', name: 'admins' }], devicePosture: { disk: true } })
  t.equal((await ask(access.signToken({ country: undefined }))).body.geo.country, 'US')
  t.equal((await ask()).status, 400, 'no cookie')
  t.equal((await ask('a.b')).status, 400, 'not a JWS')
  t.equal((await ask(access.signToken({}, { key: attackerKey() }))).status, 400, 'signed by someone else')
  t.equal((await ask(access.signToken({ exp: 1 }))).status, 400, 'expired')
  t.equal((await ask(access.signRaw({ alg: 'RS256' }, 'not json'))).status, 400, 'signed garbage')
  t.match(await ask(access.signServiceToken()), { status: 400, body: { err: /no identity/ } }, 'service tokens have no identity')
  t.equal(access.identityRequestCount, 9)
  access.setOutage(true, 'identity')
  t.equal((await fetch(`${access.teamDomain}/cdn-cgi/access/get-identity`)).status, 503)
  access.setOutage('empty', 'identity')
  t.same(await (await fetch(`${access.teamDomain}/cdn-cgi/access/get-identity`)).json(), {})
  access.setOutage(false, 'identity')
  access.setLatency(120, 'identity')
  const started = Date.now()
  t.equal((await ask(token)).status, 200)
  t.ok(Date.now() - started >= 110, 'identity latency applies')
  t.equal((await fetch(access.certsUrl)).status, 200, 'the certs endpoint is unaffected')
})

t.test('logout clears the CF_Authorization cookie and says so; the token stays valid', async (t) => {
  const { access, get } = await setup(t)
  const token = access.signToken()
  const res = await fetch(`${access.teamDomain}/cdn-cgi/access/logout`, { headers: { cookie: `CF_Authorization=${token}` } })
  t.equal(res.status, 200)
  t.match(res.headers.get('set-cookie'), /^CF_Authorization=; Path=\/; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; HttpOnly; SameSite=Lax$/)
  t.equal(res.headers.get('cache-control'), 'no-store')
  t.match(await res.text(), /You have been logged out[^]*stays valid until it expires/)
  t.equal((await fetch(`${access.teamDomain}/cdn-cgi/access/logout`, { method: 'POST' })).status, 404, 'GET only')
  t.equal((await get(token)).statusCode, 200, 'logout is not revocation')
})

t.test("handle() answers the emulator's paths on a server of yours, and leaves every other request alone", async (t) => {
  const access = await emulator(t)
  const server = http.createServer((req, res) => {
    if (!access.handle(req, res)) res.writeHead(418).end('mine')
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise((resolve) => server.close(resolve)))
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  const certs = await fetch(`${base}/cdn-cgi/access/certs`)
  t.same(await certs.json(), access.jwks())
  const identity = await fetch(`${base}/cdn-cgi/access/get-identity`, { headers: { cookie: `CF_Authorization=${access.signToken({ email: 'a@acme.com' })}` } })
  t.equal((await identity.json() as { email: string }).email, 'a@acme.com')
  t.match((await fetch(`${base}/cdn-cgi/access/logout`)).headers.get('set-cookie'), /^CF_Authorization=;/)
  for (const [path, method] of [['/', 'GET'], ['/cdn-cgi/access/certs', 'POST'], ['/cdn-cgi/access/certs?x', 'GET']]) {
    const res = await fetch(`${base}${path}`, { method })
    t.equal(res.status, 418, `${method} ${path} is left to the server`)
  }
  t.same(access.requests, ['/cdn-cgi/access/certs', '/cdn-cgi/access/get-identity', '/cdn-cgi/access/logout'], 'only what it answered is recorded')
  t.equal(access.certsRequestCount, 1)
})

t.test('with teamDomain the emulator opens no port: a server of yours serves it through handle(), at that origin', async (t) => {
  const server = http.createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise((resolve) => server.close(resolve)))
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  const before = await listeners()
  const access = await emulator(t, { teamDomain: base, audience: 'c'.repeat(64) })
  t.equal(await listeners(), before, 'nothing new listens')
  server.on('request', (req, res) => {
    if (!access.handle(req, res)) res.writeHead(418).end()
  })
  t.equal(access.teamDomain, base)
  t.equal(access.certsUrl, `${base}/cdn-cgi/access/certs`)
  t.equal(decode(access.signToken()).payload.iss, base, "every token's iss")
  const { app } = await setup(t, {}, { access })
  t.equal((await app.inject({ url: '/admin/me', headers: { 'cf-access-jwt-assertion': access.signToken() } })).statusCode, 200, 'the plugin verifies its tokens with the keys your server serves')
  t.equal(access.certsRequestCount, 1)
  await access.close()
  t.equal((await fetch(access.certsUrl)).status, 200, 'close() leaves your server alone')
})

t.test('teamDomain is an http(s) origin, and excludes port', async (t) => {
  for (const teamDomain of ['127.0.0.1:8787', 'http://127.0.0.1:8787/', 'http://127.0.0.1:8787/x', 'ftp://127.0.0.1', 'HTTP://127.0.0.1:8787', 'nonsense']) {
    await t.rejects(createAccessEmulator({ teamDomain }), /"teamDomain" must be an http:\/\/ or https:\/\/ origin such as http:\/\/127\.0\.0\.1:8787/, teamDomain)
  }
  await t.rejects(createAccessEmulator({ teamDomain: 'http://127.0.0.1:8787', port: 8787 }), /"port" \(a server of its own\) and "teamDomain" \(a server of yours, through handle\(\)\) exclude each other/)
  const https = await emulator(t, { teamDomain: 'https://access.example.test' })
  t.equal(https.teamDomain, 'https://access.example.test')
})

t.test('the emulator\'s request log is bounded', async (t) => {
  const access = await emulator(t)
  const agent = new http.Agent({ keepAlive: true, maxSockets: 8 })
  t.teardown(() => agent.destroy())
  const get = (): Promise<void> => new Promise((resolve, reject) => {
    http.get(`${access.teamDomain}/x`, { agent }, (res) => { res.resume(); res.on('end', resolve) }).on('error', reject)
  })
  for (let i = 0; i < 1300; i += 50) await Promise.all(Array.from({ length: 50 }, get))
  t.equal(access.requestCount, 1300, 'every request counted')
  t.ok(access.requests.length <= 1000, `the log keeps at most 1000 (${access.requests.length})`)
})
