import { generateKeyPairSync, type KeyObject } from 'node:crypto'
import http from 'node:http'
import net, { type AddressInfo } from 'node:net'
import Fastify, { type FastifyInstance } from 'fastify'
import t from 'tap'
import WebSocket, { WebSocketServer } from 'ws'
import cloudflareAccess from '../index'
import { createDevProxy, DEV_AUDIENCE, LOGIN_PATH, type DevProxy } from '../lib/dev-proxy'
import { signJwt } from '../lib/testing'
import { attackerKey, decode, rawToken } from './helpers'

// The dev proxy over real HTTP, as a browser uses it: a cookie jar, the login page, an app behind it that
// registers the real plugin with the options the proxy prints, and WebSockets through it.

interface Answer { status: number, headers: http.IncomingHttpHeaders, body: string }

/** The cookies a browser keeps for the proxy's origin. */
class Jar {
  readonly cookies = new Map<string, string>()
  take (answer: Answer): Answer {
    for (const line of answer.headers['set-cookie'] ?? []) {
      const [pair, ...attributes] = line.split(';')
      const name = (pair as string).slice(0, (pair as string).indexOf('='))
      if (attributes.some((attribute) => attribute.trim() === 'Max-Age=0')) this.cookies.delete(name)
      else this.cookies.set(name, (pair as string).slice(name.length + 1))
    }
    return answer
  }

  get header (): string {
    return [...this.cookies].map(([name, value]) => `${name}=${value}`).join('; ')
  }
}

function send (port: number, options: { method?: string, path?: string, headers?: http.OutgoingHttpHeaders, body?: string, jar?: Jar } = {}): Promise<Answer> {
  const headers = { host: `127.0.0.1:${port}`, ...options.headers }
  if (options.jar !== undefined && options.jar.cookies.size > 0) headers.cookie = options.jar.header
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method: options.method ?? 'GET', path: options.path ?? '/', headers, agent: false }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => { body += chunk })
      res.on('end', () => resolve(options.jar?.take({ status: res.statusCode as number, headers: res.headers, body }) ?? { status: res.statusCode as number, headers: res.headers, body }))
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end(options.body)
  })
}

/** A port nothing listens on. */
async function closedPort (): Promise<number> {
  const server = http.createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  await new Promise((resolve) => server.close(resolve))
  return port
}

const keys: [KeyObject, KeyObject] = [generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey, generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey]

let proxy: DevProxy
let port: number
let app: FastifyInstance
const seen: string[] = []

/**
 * The app behind the proxy: the real plugin, registered with the proxy's origin as teamDomain, on a
 * server of its own that also takes WebSocket upgrades (verified with fastify.cfAccess.verifyToken).
 */
t.before(async () => {
  const upstream = http.createServer((req, res) => {
    seen.push(req.url as string)
    app.routing(req, res)
  })
  await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve))
  proxy = await createDevProxy({ upstream: `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`, port: 0, privateKeys: keys })
  port = Number(new URL(proxy.origin).port)
  app = Fastify()
  await app.register(cloudflareAccess, { teamDomain: proxy.origin, audience: proxy.audience })
  app.get('/me', async (request) => ({ claims: request.cfAccess, headers: request.headers }))
  app.get('/finance', { config: { cfAccess: { allow: { groups: ['finance'] } } } }, async (request) => (await request.cfAccessIdentity()).groups.map((group) => group.name))
  app.post('/echo', async (request, reply) => reply.header('set-cookie', ['a=1; Path=/', 'b=2; Path=/']).header('x-upstream', 'yes').send({ got: request.body }))
  app.get('/slow', async () => new Promise((resolve) => setTimeout(resolve, 2000, 'late')))
  app.get('/broken', (request, reply) => {
    reply.hijack()
    reply.raw.writeHead(200, { 'content-length': '100' })
    reply.raw.write('partial')
    setTimeout(() => reply.raw.destroy(), 20)
  })
  await app.ready()
  const wss = new WebSocketServer({ noServer: true })
  upstream.on('upgrade', (req, socket, head) => {
    if (req.url !== '/ws') {
      socket.end('HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found')
      return
    }
    app.cfAccess.verifyToken(String(req.headers['cf-access-jwt-assertion'])).then((claims) => {
      wss.handleUpgrade(req, socket, head, (ws) => {
        ws.send(`hello ${claims.email ?? claims.common_name}`)
        ws.on('message', (data) => ws.send(`echo ${String(data)}`))
      })
    }, () => socket.end('HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n'))
  })
  t.teardown(async () => {
    await proxy.close()
    await app.close()
    upstream.closeAllConnections()
    await new Promise((resolve) => upstream.close(resolve))
  })
})

/** The login page's CSRF token. */
async function csrfToken (): Promise<string> {
  const page = await send(port, { path: LOGIN_PATH })
  return /name="csrf" value="([^"]+)"/.exec(page.body)?.[1] as string
}

async function login (jar: Jar, fields: Record<string, string>, headers: http.OutgoingHttpHeaders = { origin: proxy.origin, 'sec-fetch-site': 'same-origin' }): Promise<Answer> {
  const body = new URLSearchParams({ csrf: await csrfToken(), ...fields }).toString()
  return send(port, { method: 'POST', path: LOGIN_PATH, body, jar, headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers } })
}

t.test('a browser is sent to the login page and back, and the app accepts the token the proxy signs', async (t) => {
  const jar = new Jar()
  const first = await send(port, { path: '/me?x=1', headers: { accept: 'text/html,application/xhtml+xml' }, jar })
  t.equal(first.status, 302)
  t.equal(first.headers.location, `${LOGIN_PATH}?redirect_url=%2Fme%3Fx%3D1`)
  t.equal((await send(port, { method: 'HEAD', path: '/me', headers: { accept: 'text/html' } })).status, 302)
  const api = await send(port, { path: '/me', headers: { accept: 'application/json' } })
  t.equal(api.status, 401, 'a client that is no browser gets a 401, not a redirect')
  t.match(api.body, /Not logged in to the Access dev proxy/)

  const form = await send(port, { path: first.headers.location as string })
  t.equal(form.status, 200)
  t.match(form.headers['content-security-policy'], /frame-ancestors 'none'/)
  t.match(form.body, /name="redirect_url" value="\/me\?x=1"/)
  const done = await login(jar, { kind: 'user', email: 'alice@acme.com', groups: ' finance , admins,', redirect_url: '/me?x=1' })
  t.equal(done.status, 303)
  t.equal(done.headers.location, '/me?x=1')
  t.match(done.headers['set-cookie']?.[0], /^CF_Authorization=eyJ[^;]+; Path=\/; Max-Age=86400; HttpOnly; SameSite=Lax$/)

  const me = await send(port, { path: '/me', jar })
  t.equal(me.status, 200)
  const { claims, headers } = JSON.parse(me.body)
  t.match(claims, { email: 'alice@acme.com', iss: proxy.origin, aud: [proxy.audience], type: 'app' })
  t.equal(proxy.audience, DEV_AUDIENCE, 'the fixed development tag by default')
  t.equal(headers['cf-access-authenticated-user-email'], 'alice@acme.com', 'as Cloudflare adds it (the plugin never reads it)')
  t.equal(headers.host, `127.0.0.1:${port}`, 'the Host the browser sent')
  t.equal(headers.cookie, `CF_Authorization=${headers['cf-access-jwt-assertion'] as string}`, 'the cookie carries the same fresh token')
  t.ok(decode(headers['cf-access-jwt-assertion']).payload.iat as number >= Math.floor(Date.now() / 1000) - 2, 'freshly signed')

  const finance = await send(port, { path: '/finance', jar })
  t.equal(finance.status, 200, 'groups come from the identity endpoint the proxy serves')
  t.same(JSON.parse(finance.body), ['finance', 'admins'])
  const identity = await send(port, { path: '/cdn-cgi/access/get-identity', jar })
  t.match(JSON.parse(identity.body), { email: 'alice@acme.com', groups: [{ name: 'finance', id: /^[0-9a-f]{8}-[0-9a-f]{4}-/ }, { name: 'admins' }] })
  const certs = JSON.parse((await send(port, { path: '/cdn-cgi/access/certs' })).body)
  t.equal(certs.keys.length, 2)

  const bob = new Jar()
  await login(bob, { kind: 'user', email: 'bob@acme.com' })
  t.equal((await send(port, { path: '/finance', jar: bob })).status, 403, 'another identity without the group')
})

t.test('a service token login: common_name, no email header, no identity', async (t) => {
  const jar = new Jar()
  t.equal((await login(jar, { kind: 'service', client_id: 'ci.access' })).headers.location, '/')
  const { claims, headers } = JSON.parse((await send(port, { path: '/me', jar })).body)
  t.match(claims, { common_name: 'ci.access', sub: '' })
  t.notOk('email' in claims)
  t.notOk('cf-access-authenticated-user-email' in headers)
  t.equal((await send(port, { path: '/finance', jar })).status, 403)
  const random = new Jar()
  await login(random, { kind: 'service', client_id: '  ' })
  t.match(JSON.parse((await send(port, { path: '/me', jar: random })).body).claims.common_name, /^[0-9a-f]{32}\.access$/, 'empty: a random Client ID')
})

t.test('Access headers and the cookie a client sends are replaced, never passed on', async (t) => {
  const forged = rawToken({ alg: 'RS256', kid: 'x' }, { email: 'admin@acme.com' })
  const spoof = {
    'cf-access-jwt-assertion': forged,
    'cf-access-authenticated-user-email': 'admin@acme.com',
    'cf-access-client-id': 'x.access',
    'cf-access-client-secret': 'secret',
    connection: 'x-hop',
    'x-hop': 'dropped'
  }
  const before = seen.length
  const anonymous = await send(port, { path: '/me', headers: { ...spoof, cookie: `CF_Authorization=${forged}` } })
  t.equal(anonymous.status, 401, 'forged headers and a forged cookie are no login')
  t.equal(seen.length, before, 'and nothing reached the app')

  const jar = new Jar()
  await login(jar, { kind: 'user', email: 'alice@acme.com' })
  jar.cookies.set('theme', 'dark')
  const me = await send(port, { path: '/me', jar, headers: spoof })
  const { claims, headers } = JSON.parse(me.body)
  t.equal(claims.email, 'alice@acme.com')
  t.not(headers['cf-access-jwt-assertion'], forged)
  t.equal(headers['cf-access-authenticated-user-email'], 'alice@acme.com')
  t.notOk('cf-access-client-id' in headers || 'cf-access-client-secret' in headers, 'no other Cf-Access-* header')
  t.notOk('x-hop' in headers, 'headers the Connection header names are hop-by-hop')
  t.match(headers.cookie, /^theme=dark; CF_Authorization=eyJ/)
  t.equal(headers.cookie.split('CF_Authorization=').length, 2, 'one CF_Authorization cookie: the fresh one')

  // the login cookie re-signed by an attacker under the proxy's kid, for another user
  const { header, payload } = decode(jar.cookies.get('CF_Authorization') as string)
  const resigned = new Jar()
  resigned.cookies.set('CF_Authorization', signJwt(header, { ...payload, email: 'admin@acme.com' }, attackerKey()))
  t.equal((await send(port, { path: '/me', jar: resigned })).status, 401, 'a login cookie signed by anyone else is no login')
})

t.test('the app verifies, the proxy does not vouch: an app configured for another audience rejects its tokens', async (t) => {
  const jar = new Jar()
  await login(jar, { email: 'alice@acme.com' })
  const token = JSON.parse((await send(port, { path: '/me', jar })).body).headers['cf-access-jwt-assertion'] as string
  for (const [audience, status] of [['f'.repeat(64), 401], [proxy.audience, 200]] as const) {
    const other = Fastify()
    t.teardown(() => other.close())
    await other.register(cloudflareAccess, { teamDomain: proxy.origin, audience })
    other.get('/', async (request) => request.cfAccess?.email)
    const res = await other.inject({ url: '/', headers: { 'cf-access-jwt-assertion': token } })
    t.equal(res.statusCode, status, audience)
    if (status === 401) t.equal(res.json().code, 'FST_CF_ACCESS_CLAIM_INVALID')
  }
})

t.test('logout clears the login; the token already issued stays valid until it expires', async (t) => {
  const jar = new Jar()
  await login(jar, { kind: 'user', email: 'alice@acme.com' })
  const issued = jar.cookies.get('CF_Authorization') as string
  const out = await send(port, { path: '/cdn-cgi/access/logout', jar })
  t.equal(out.status, 200)
  t.match(out.body, /You have been logged out/)
  t.equal(jar.cookies.size, 0, 'the cookie is cleared')
  const again = await send(port, { path: '/me', jar, headers: { accept: 'text/html' } })
  t.equal(again.status, 302)
  t.match(again.headers.location, /^\/cdn-cgi\/access\/login\?/)
  const replayed = new Jar()
  replayed.cookies.set('CF_Authorization', issued)
  t.equal((await send(port, { path: '/me', jar: replayed })).status, 200, 'logout is not revocation')
})

t.test('WebSocket upgrades go through with a token; without a login they are refused', async (t) => {
  const jar = new Jar()
  await login(jar, { kind: 'user', email: 'alice@acme.com' })
  const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`, { headers: { cookie: jar.header } })
  const messages: string[] = []
  await new Promise<void>((resolve, reject) => {
    ws.on('message', (data) => {
      messages.push(String(data))
      if (messages.length === 1) ws.send('ping')
      else ws.close()
    })
    ws.on('close', () => resolve())
    ws.on('error', reject)
  })
  t.same(messages, ['hello alice@acme.com', 'echo ping'])

  const refused = async (path: string, headers: Record<string, string>, url = `ws://127.0.0.1:${port}${path}`): Promise<number> => new Promise((resolve) => {
    const client = new WebSocket(url, { headers })
    client.on('unexpected-response', (request, response) => {
      resolve(response.statusCode as number)
      request.destroy()
    })
    client.on('error', () => {})
  })
  t.equal(await refused('/ws', {}), 401, 'no login')
  t.equal(await refused('/ws', { cookie: jar.header, host: `evil.example:${port}` }), 403, 'wrong Host')
  t.equal(await refused('/elsewhere', { cookie: jar.header }), 404, "the app's own refusal is passed on")
})

t.test('the app down: a 502 page, for requests and upgrades alike', async (t) => {
  const down = await createDevProxy({ upstream: `http://127.0.0.1:${await closedPort()}`, port: 0, privateKeys: keys })
  t.teardown(() => down.close())
  const downPort = Number(new URL(down.origin).port)
  const jar = new Jar()
  const body = new URLSearchParams({ csrf: /name="csrf" value="([^"]+)"/.exec((await send(downPort, { path: LOGIN_PATH })).body)?.[1] as string, email: 'a@b.c' }).toString()
  await send(downPort, { method: 'POST', path: LOGIN_PATH, body, jar })
  const res = await send(downPort, { path: '/', jar })
  t.equal(res.status, 502)
  t.match(res.headers['content-type'], /text\/html/)
  t.match(res.body, /could not reach your app at http:\/\/127\.0\.0\.1:\d+ \(connect ECONNREFUSED [\d.:]+\)\. Is it running\?/)
  const status = await new Promise((resolve) => {
    const client = new WebSocket(`ws://127.0.0.1:${downPort}/ws`, { headers: { cookie: jar.header } })
    client.on('unexpected-response', (request, response) => resolve(response.statusCode))
    client.on('error', () => {})
  })
  t.equal(status, 502)
})

t.test('the answer of the app passes through; a broken one breaks ours; a client that leaves cancels it', async (t) => {
  const jar = new Jar()
  await login(jar, { kind: 'user', email: 'alice@acme.com' })
  const echo = await send(port, { method: 'POST', path: '/echo', jar, body: '{"a":1}', headers: { 'content-type': 'application/json' } })
  t.equal(echo.status, 200)
  t.same(JSON.parse(echo.body), { got: { a: 1 } })
  t.same(echo.headers['set-cookie'], ['a=1; Path=/', 'b=2; Path=/'])
  t.equal(echo.headers['x-upstream'], 'yes')
  await t.rejects(send(port, { path: '/broken', jar }), 'a truncated answer is not passed on as complete')

  const cancelled = await new Promise<string>((resolve) => {
    const req = http.request({ host: '127.0.0.1', port, path: '/slow', headers: { cookie: jar.header }, agent: false })
    req.on('error', (error) => resolve((error as { code?: string }).code ?? ''))
    req.end()
    setTimeout(() => req.destroy(), 100)
  })
  t.equal(cancelled, 'ECONNRESET')
  const ok = await send(port, { path: '/me', jar })
  t.equal(ok.status, 200, 'the proxy still serves')
})

t.test('only its own Host names: DNS rebinding is refused', async (t) => {
  for (const host of [`evil.example:${port}`, 'evil.example', `127.0.0.1:${port + 1}`, `localhost.evil.example:${port}`]) {
    const res = await send(port, { path: LOGIN_PATH, headers: { host } })
    t.equal(res.status, 403, host)
    t.notMatch(res.body, /name="csrf"/, `${host}: the login page (and its CSRF token) is not served`)
  }
  t.equal((await send(port, { path: LOGIN_PATH, headers: { host: `LocalHost:${port}` } })).status, 200, 'localhost:<port>')
  t.equal((await send(port, { path: `http://127.0.0.1:${port}/me` })).status, 400, 'an absolute-form target is refused')
  // a bare request, without the Connection header Node's client adds
  const jar = new Jar()
  await login(jar, { email: 'dev@acme.com' })
  const raw = await new Promise<string>((resolve) => {
    const socket = net.connect(port, '127.0.0.1', () => socket.write(`GET /me HTTP/1.1\r\nHost: localhost:${port}\r\nCookie: ${jar.header}\r\n\r\n`))
    socket.once('data', (chunk) => {
      resolve(String(chunk))
      socket.destroy()
    })
  })
  t.match(raw, /^HTTP\/1\.1 200 OK/)
})

t.test('cross-site login posts are refused: Origin, Sec-Fetch-Site and the CSRF token', async (t) => {
  const cases: Array<[string, http.OutgoingHttpHeaders, Record<string, string>?]> = [
    ['another site', { origin: 'http://evil.example' }],
    ['an opaque origin', { origin: 'null' }],
    ['another port of 127.0.0.1 (same site, other origin)', { origin: `http://127.0.0.1:${port + 1}` }],
    ['Sec-Fetch-Site cross-site', { 'sec-fetch-site': 'cross-site' }],
    ['Sec-Fetch-Site same-site', { 'sec-fetch-site': 'same-site' }],
    ['no CSRF token', {}, { csrf: '' }],
    ['a wrong CSRF token', {}, { csrf: 'x'.repeat(43) }]
  ]
  for (const [name, headers, fields] of cases) {
    const jar = new Jar()
    const res = await login(jar, { email: 'mallory@evil.example', ...fields }, headers)
    t.equal(res.status, 403, name)
    t.equal(jar.cookies.size, 0, `${name}: no cookie`)
  }
  const bare = await send(port, { method: 'POST', path: LOGIN_PATH, body: 'email=dev%40acme.com' })
  t.equal(bare.status, 403, 'a post without the form\'s fields')
  const curl = new Jar()
  t.equal((await login(curl, { email: 'dev@acme.com' }, {})).status, 303, 'no Origin, no Sec-Fetch-Site (curl): the CSRF token decides')
})

t.test('the login form: validation, safe return paths, limits, methods', async (t) => {
  const bad = await login(new Jar(), { email: '<script>@x' })
  t.equal(bad.status, 400)
  t.match(bad.body, /Enter an email address/)
  t.match(bad.body, /value="&#60;script&#62;@x"/, 'escaped')
  t.equal((await login(new Jar(), { kind: 'user' })).status, 400, 'no email')
  t.equal((await login(new Jar(), { email: 'a@b.c', groups: 'fin<ance' })).status, 400)
  t.equal((await login(new Jar(), { kind: 'service', client_id: 'ci' })).status, 400)
  for (const target of ['https://evil.example/', '//evil.example/', '/\\evil.example/', 'relative', '/ok\nLocation: x']) {
    t.equal((await login(new Jar(), { email: 'a@b.c', redirect_url: target })).headers.location, '/', JSON.stringify(target))
  }
  const big = await send(port, { method: 'POST', path: LOGIN_PATH, body: `email=${'a'.repeat(10_000)}` })
  t.equal(big.status, 413)
  const put = await send(port, { method: 'PUT', path: LOGIN_PATH })
  t.equal(put.status, 405)
  t.equal(put.headers.allow, 'GET, HEAD, POST')
  t.equal((await send(port, { method: 'HEAD', path: LOGIN_PATH })).status, 200)
  t.equal((await send(port, { path: '/cdn-cgi/access/nothing' })).status, 404)
  t.equal((await send(port, { method: 'POST', path: '/cdn-cgi/access/certs' })).status, 404)
})

t.test('start-up errors name the problem', async (t) => {
  const busy = Number(new URL(proxy.origin).port)
  const cases: Array<[Parameters<typeof createDevProxy>[0], RegExp]> = [
    [{ upstream: 'https://127.0.0.1:3000' }, /--upstream must be an http:\/\/ origin/],
    [{ upstream: 'http://127.0.0.1:3000/app' }, /--upstream must be an http:\/\/ origin/],
    [{ upstream: 'not a url' }, /--upstream must be an http:\/\/ origin/],
    [{ upstream: 'http://127.0.0.1:3000', port: 70000 }, /--port must be a port number/],
    [{ upstream: 'http://127.0.0.1:3000', audience: 'has space' }, /option "audience"/],
    [{ upstream: `http://localhost:${busy + 0}`, port: busy }, /EADDRINUSE/]
  ]
  for (const [options, message] of cases) await t.rejects(createDevProxy({ privateKeys: keys, ...options }), message)
  const free = await closedPort()
  await t.rejects(createDevProxy({ upstream: `http://127.0.0.1:${free}`, port: free, privateKeys: keys }), /is the proxy itself/)
})
