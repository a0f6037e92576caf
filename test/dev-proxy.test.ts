import { createHash, createSecretKey, randomUUID, type KeyObject } from 'node:crypto'
import http from 'node:http'
import net, { type AddressInfo } from 'node:net'
import type { Duplex } from 'node:stream'
import Fastify, { type FastifyInstance, type FastifyRequest } from 'fastify'
import t, { type Test } from 'tap'
import WebSocket, { WebSocketServer } from 'ws'
import cloudflareAccess from '../index'
import { groupId } from '../lib/dev-pages'
import { createDevProxy, DEV_AUDIENCE, LOGIN_PATH, type DevProxy, type DevProxyOptions } from '../lib/dev-proxy'
import { signJwt } from '../lib/testing'
import { attackerKey, decode, eventually, freePort, listeners, nowSeconds, rawToken, signingKeys } from './helpers'

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

const keys: [KeyObject, KeyObject] = signingKeys()

let proxy: DevProxy
let port: number
let app: FastifyInstance
const seen: string[] = []
/** The headers of every upgrade request that reached the app. */
const upgrades: http.IncomingHttpHeaders[] = []
/** What the app saw close: its side of the last WebSocket, requests and upgrades it was still answering. */
const appSide: { socket?: Duplex, closed: string[] } = { closed: [] }

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
  proxy = await createDevProxy({ upstream: `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`, port: 0, privateKeys: keys, publicPaths: ['/open,/maybe', '/files*', '/open-ws'] })
  port = Number(new URL(proxy.origin).port)
  app = Fastify()
  await app.register(cloudflareAccess, { teamDomain: proxy.origin, audience: proxy.audience })
  app.get('/me', async (request) => ({ claims: request.cfAccess, headers: request.headers }))
  app.get('/finance', { config: { cfAccess: { allow: { groups: ['finance'] } } } }, async (request) => (await request.cfAccessIdentity()).groups.map((group) => group.name))
  app.get('/admins', { config: { cfAccess: { allow: { groupIds: ['g-admins'] } } } }, async (request) => request.cfAccess?.email)
  // routes a public path leads to: one the plugin skips, one where the token is optional
  const open = async (request: FastifyRequest): Promise<unknown> => ({ url: request.url, headers: request.headers })
  app.get('/open', { config: { cfAccess: false } }, open)
  app.get('/files/*', { config: { cfAccess: false } }, open)
  app.get('/maybe', { config: { cfAccess: { required: false } } }, async (request) => ({ email: request.cfAccess?.email ?? null }))
  app.post('/echo', async (request, reply) => reply.header('set-cookie', ['a=1; Path=/', 'b=2; Path=/']).header('x-upstream', 'yes').send({ got: request.body }))
  app.get('/slow', async (request) => {
    request.raw.socket.once('close', () => appSide.closed.push(`/slow ${String(request.headers['x-run'])}`))
    return new Promise((resolve) => setTimeout(resolve, 3000, 'late'))
  })
  // hop-by-hop headers in an answer, and one its Connection header names
  app.get('/hop', (request, reply) => {
    reply.hijack()
    request.raw.socket.end('HTTP/1.1 200 OK\r\nKeep-Alive: timeout=99\r\nProxy-Connection: keep-alive\r\nTrailer: X-Sum\r\n' +
      'Connection: close, x-named\r\nX-Named: gone\r\nX-End: kept\r\nContent-Length: 2\r\n\r\nok')
  })
  app.get('/broken', (request, reply) => {
    reply.hijack()
    reply.raw.writeHead(200, { 'content-length': '100' })
    reply.raw.write('partial')
    setTimeout(() => reply.raw.destroy(), 20)
  })
  // answers Node's HTTP parser reads but its server refuses to write: a status below 100, a 101 nobody asked for
  app.get('/status-99', (request, reply) => {
    reply.hijack()
    request.raw.socket.end('HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n')
  })
  app.get('/switch', (request, reply) => {
    reply.hijack()
    request.raw.socket.write('HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: other\r\n\r\n')
  })
  await app.ready()
  const wss = new WebSocketServer({ noServer: true })
  upstream.on('upgrade', (req, socket, head) => {
    upgrades.push(req.headers)
    if (req.url === '/ws-broken') {
      // declines, then breaks off its own answer
      socket.write('HTTP/1.1 403 Forbidden\r\nContent-Length: 100\r\n\r\npartial')
      setTimeout(() => socket.destroy(), 20)
      return
    }
    if (req.url === '/ws-99') {
      // declines with a status below 100
      socket.end('HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n')
      return
    }
    if (req.url === '/ws-garbled') {
      // declines, then sends a chunked body Node's parser refuses
      socket.end('HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n')
      return
    }
    if (req.url === '/ws-decline') {
      // declines with a chunked body and hop-by-hop headers of its own connection
      socket.end('HTTP/1.1 403 Forbidden\r\nX-Reason: nope\r\nKeep-Alive: timeout=99\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nnope!\r\n0\r\n\r\n')
      return
    }
    if (req.url === '/ws-slow') {
      // never answers
      socket.once('end', () => {
        appSide.closed.push(`/ws-slow ${String(req.headers['x-run'])}`)
        socket.destroy()
      })
      return
    }
    if (req.url === '/open-ws') {
      // a public path: whatever the request carries, told back
      wss.handleUpgrade(req, socket, head, (ws) => ws.send(JSON.stringify({ token: req.headers['cf-access-jwt-assertion'] ?? null, cookie: req.headers.cookie ?? null })))
      return
    }
    appSide.socket = socket
    socket.once('close', () => appSide.closed.push(req.url as string))
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

/**
 * Raw bytes to a proxy, and everything it answers until it closes the connection; 'no close' when it keeps
 * the connection open for 10 s (a hang).
 */
function exchange (to: number, text: string): Promise<string> {
  return new Promise((resolve) => {
    const socket = net.connect(to, '127.0.0.1', () => socket.write(text))
    let answer = ''
    const timer = setTimeout(() => {
      socket.destroy()
      resolve(`${answer}no close`)
    }, 10_000)
    socket.on('data', (chunk) => { answer += String(chunk) })
    socket.on('error', () => {})
    socket.on('close', () => {
      clearTimeout(timer)
      resolve(answer)
    })
  })
}

/** The login page's CSRF token. */
async function csrfToken (to = port): Promise<string> {
  const page = await send(to, { path: LOGIN_PATH })
  return /name="csrf" value="([^"]+)"/.exec(page.body)?.[1] as string
}

async function login (jar: Jar, fields: Record<string, string>, headers: http.OutgoingHttpHeaders = { origin: proxy.origin, 'sec-fetch-site': 'same-origin' }, to = port): Promise<Answer> {
  const body = new URLSearchParams({ csrf: await csrfToken(to), ...fields }).toString()
  return send(to, { method: 'POST', path: LOGIN_PATH, body, jar, headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers } })
}

/** A proxy of its own for one test, in front of `upstream`; its port. */
async function ownProxy (t: Test, upstream: string, options: Partial<DevProxyOptions> = {}): Promise<number> {
  const other = await createDevProxy({ upstream, port: 0, privateKeys: keys, ...options })
  t.teardown(() => other.close())
  return Number(new URL(other.origin).port)
}

t.test('a browser is sent to the login page and back, and the app accepts the token the proxy signs', async (t) => {
  const jar = new Jar()
  const first = await send(port, { path: '/me?x=1', headers: { accept: 'text/html,application/xhtml+xml' }, jar })
  t.equal(first.status, 302)
  t.equal(first.headers.location, `${LOGIN_PATH}?redirect_url=%2Fme%3Fx%3D1`)
  t.equal(first.headers['cache-control'], 'no-store')
  t.equal((await send(port, { method: 'HEAD', path: '/me', headers: { accept: 'text/html' } })).status, 302)
  const api = await send(port, { path: '/me', headers: { accept: 'application/json' } })
  t.equal(api.status, 401, 'a client that is no browser gets a 401, not a redirect')
  t.match(api.body, /<title>Unauthorized<\/title>[^]*Not logged in to the Access dev proxy/)
  t.equal((await send(port, { method: 'POST', path: '/me', headers: { accept: 'text/html' } })).status, 401, 'a POST is no page to come back to')

  const form = await send(port, { path: first.headers.location as string })
  t.equal(form.status, 200)
  t.match(form.headers['content-security-policy'], /frame-ancestors 'none'/)
  t.equal(form.headers['cache-control'], 'no-store', 'the page holds the CSRF token')
  t.match(form.body, /<title>Access dev proxy: log in<\/title>/)
  t.match(form.body, /name="email" type="email" value="user@example\.com"/, 'a default email to start from')
  t.notMatch(form.body, /role="alert"/, 'no message')
  t.match(form.body, /<h1>Access dev proxy: log in<\/h1><p>Pick who you are/, 'nothing in its place, and no one logged in')
  t.match(form.body, /name="redirect_url" value="\/me\?x=1"/)
  const done = await login(jar, { kind: 'user', email: 'alice@acme.com', groups: ' finance , admins,', redirect_url: '/me?x=1' })
  t.equal(done.status, 303)
  t.equal(done.headers.location, '/me?x=1')
  t.match(done.headers['set-cookie']?.[0], /^CF_Authorization=eyJ[^;]+; Path=\/; Max-Age=86400; HttpOnly; SameSite=Lax$/)
  t.equal(done.headers['cache-control'], 'no-store')

  const me = await send(port, { path: '/me', jar })
  t.equal(me.status, 200)
  const { claims, headers } = JSON.parse(me.body)
  t.match(claims, { email: 'alice@acme.com', iss: proxy.origin, aud: [proxy.audience], type: 'app' })
  t.equal(proxy.audience, DEV_AUDIENCE, 'the fixed development tag by default')
  t.equal(DEV_AUDIENCE, 'a581a06abfb19f602ec4acd7730f89278064a2d96f002313fea9cc1cb9040183', 'the same in every version: an app configured for it keeps working')
  t.equal(headers['cf-access-authenticated-user-email'], 'alice@acme.com', 'as Cloudflare adds it (the plugin never reads it)')
  t.equal(headers.host, `127.0.0.1:${port}`, 'the Host the browser sent')
  t.equal(headers.cookie, `CF_Authorization=${headers['cf-access-jwt-assertion'] as string}`, 'the cookie carries the same fresh token')
  t.ok(decode(headers['cf-access-jwt-assertion']).payload.iat as number >= Math.floor(Date.now() / 1000) - 2, 'freshly signed')

  const finance = await send(port, { path: '/finance', jar })
  t.equal(finance.status, 200, 'groups come from the identity endpoint the proxy serves')
  t.same(JSON.parse(finance.body), ['finance', 'admins'])
  const identity = await send(port, { path: '/cdn-cgi/access/get-identity', jar })
  const uuid = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/
  t.match(JSON.parse(identity.body), { email: 'alice@acme.com', groups: [{ name: 'finance', id: uuid }, { name: 'admins', id: uuid }] })
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
  for (const fields of [{ client_id: '  ' }, {}] as Array<Record<string, string>>) {
    const random = new Jar()
    await login(random, { kind: 'service', ...fields })
    t.match(JSON.parse((await send(port, { path: '/me', jar: random })).body).claims.common_name, /^[0-9a-f]{32}\.access$/, `${JSON.stringify(fields)}: a random Client ID`)
  }
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

  // a browser's Cookie header as it may come: spaces around the pairs, empty pairs, the login cookie amid others
  const session = jar.cookies.get('CF_Authorization') as string
  const untidy = await send(port, { path: '/me', headers: { cookie: ` theme=dark ;; CF_Authorization=${session} ;lang=en; ` } })
  t.equal(JSON.parse(untidy.body).headers.cookie.replace(/CF_Authorization=[\w.-]+$/, 'CF_Authorization=<fresh>'), 'theme=dark; lang=en; CF_Authorization=<fresh>',
    'the other cookies, each trimmed, no empty pair, and only the fresh login cookie')
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
  const before = upgrades.length
  t.equal(await refused('/ws', {}), 401, 'no login')
  t.equal(upgrades.length, before, 'refused by the proxy: the upgrade never reached the app')
  t.equal(await refused('/ws', { cookie: jar.header, host: `evil.example:${port}` }), 403, 'wrong Host')
  t.equal(await refused('/elsewhere', { cookie: jar.header }), 404, "the app's own refusal is passed on")
})

t.test('the app down: a 502 page, for requests and upgrades alike', async (t) => {
  const downPort = await ownProxy(t, `http://127.0.0.1:${await freePort()}`)
  const jar = new Jar()
  await login(jar, { email: 'a@b.c' }, {}, downPort)
  const res = await send(downPort, { path: '/', jar })
  t.equal(res.status, 502)
  t.match(res.headers['content-type'], /text\/html/)
  t.match(res.body, /<title>Bad Gateway<\/title>[^]*could not reach your app at http:\/\/127\.0\.0\.1:\d+ \(connect ECONNREFUSED [\d.:]+\)\. Is it running\?/)
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

  const run = randomUUID() // this run's request: the runner of the mutation tests repeats tests in one process
  const cancelled = await new Promise<string>((resolve) => {
    const req = http.request({ host: '127.0.0.1', port, path: '/slow', headers: { cookie: jar.header, 'x-run': run }, agent: false })
    req.on('error', (error) => resolve((error as { code?: string }).code ?? ''))
    req.end()
    setTimeout(() => req.destroy(), 100)
  })
  t.equal(cancelled, 'ECONNRESET')
  t.ok(await eventually(() => appSide.closed.includes(`/slow ${run}`), 2500), "the app's request is cancelled too, before it answers")
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
  const refused = await login(new Jar(), { email: 'dev@acme.com' }, { origin: 'http://evil.example' })
  t.match(refused.body, /<title>Forbidden<\/title>[^]*A login must be posted from this proxy's own page/)
  const cased = await login(new Jar(), { email: 'dev@acme.com' }, { host: `LocalHost:${port}`, origin: `http://localhost:${port}`, 'sec-fetch-site': 'same-origin' })
  t.equal(cased.status, 303, 'a Host in any case, and the Origin a browser sends for it')
})

t.test('the login form: validation, safe return paths, limits, methods', async (t) => {
  const bad = await login(new Jar(), { email: '<script>@x' })
  t.equal(bad.status, 400)
  t.match(bad.body, /<p role="alert"><strong>Enter an email address/)
  t.match(bad.body, /value="&#60;script&#62;@x"/, 'escaped')
  const none = await login(new Jar(), { kind: 'user' })
  t.equal(none.status, 400, 'no email')
  t.match(none.body, /name="email" type="email" value=""/)
  const group = await login(new Jar(), { email: 'a@b.c', groups: 'fin<ance' })
  t.equal(group.status, 400)
  t.match(group.body, /Groups are comma-separated, each a name or name=id: a name of up to 64 characters without &#60; &#62; &#34; &#38; = or control characters[^]*Not one: fin&#60;ance</)
  t.match(group.body, /name="groups" value="fin&#60;ance"/, 'what was typed stays, escaped')
  for (const clientId of ['ci', 'x ci.access', 'ci.access.evil', `${'a'.repeat(65)}.access`]) {
    const refused = await login(new Jar(), { kind: 'service', client_id: clientId })
    t.equal(refused.status, 400, clientId)
    t.match(refused.body, /A Client ID is letters, digits and dashes, ending in \.access/)
  }
  const trimmed = new Jar()
  await login(trimmed, { email: '  alice@acme.com  ' })
  t.equal(JSON.parse((await send(port, { path: '/me', jar: trimmed })).body).claims.email, 'alice@acme.com', 'white space around the email is dropped')
  t.same(JSON.parse((await send(port, { path: '/cdn-cgi/access/get-identity', jar: trimmed })).body).groups, [], 'no groups field: no groups')
  for (const target of ['https://evil.example/', '//evil.example/', '/\\evil.example/', 'relative', '/ok\nLocation: x']) {
    t.equal((await login(new Jar(), { email: 'a@b.c', redirect_url: target })).headers.location, '/', JSON.stringify(target))
  }
  const big = await send(port, { method: 'POST', path: LOGIN_PATH, body: `email=${'a'.repeat(10_000)}` })
  t.equal(big.status, 413)
  t.match(big.body, /<title>Payload Too Large<\/title>[^]*The login form is small/)
  // 8192 bytes is the limit, to the byte
  const form = new URLSearchParams({ csrf: await csrfToken(), email: 'a@b.c', pad: '' }).toString()
  for (const [bytes, status] of [[8192, 303], [8193, 413]] as const) {
    const body = form + 'x'.repeat(bytes - form.length)
    t.equal((await send(port, { method: 'POST', path: LOGIN_PATH, body })).status, status, `${bytes} bytes`)
  }
  const put = await send(port, { method: 'PUT', path: LOGIN_PATH })
  t.equal(put.status, 405)
  t.equal(put.headers.allow, 'GET, HEAD, POST')
  t.match(put.body, /<title>Method Not Allowed<\/title><style>[^<]*<\/style><h1>Method Not Allowed<\/h1>$/, 'a title, nothing else')
  t.equal((await send(port, { method: 'HEAD', path: LOGIN_PATH })).status, 200)
  const nothing = await send(port, { path: '/cdn-cgi/access/nothing' })
  t.equal(nothing.status, 404)
  t.match(nothing.body, /<title>Not Found<\/title><style>[^<]*<\/style><h1>Not Found<\/h1>$/)
  t.equal((await send(port, { method: 'POST', path: '/cdn-cgi/access/certs' })).status, 404)
})

t.test('start-up errors name the problem', async (t) => {
  const busy = Number(new URL(proxy.origin).port)
  const cases: Array<[Parameters<typeof createDevProxy>[0], RegExp]> = [
    [{ upstream: 'https://127.0.0.1:3000' }, /--upstream must be an http:\/\/ origin/],
    [{ upstream: 'http://127.0.0.1:3000/app' }, /--upstream must be an http:\/\/ origin/],
    [{ upstream: 'not a url' }, /--upstream must be an http:\/\/ origin/],
    [{ upstream: 'http://127.0.0.1:3000/?x' }, /--upstream must be an http:\/\/ origin/],
    [{ upstream: 'http://dev@127.0.0.1:3000' }, /--upstream must be an http:\/\/ origin/],
    [{ upstream: 'http://:secret@127.0.0.1:3000' }, /--upstream must be an http:\/\/ origin/],
    [{ upstream: 'http://127.0.0.1:3000', port: 70000 }, /--port must be a port number/],
    [{ upstream: 'http://127.0.0.1:3000', port: 65536 }, /--port must be a port number/],
    [{ upstream: 'http://127.0.0.1:3000', port: -1 }, /--port must be a port number/],
    [{ upstream: 'http://127.0.0.1:3000', port: 1.5 }, /--port must be a port number/],
    [{ upstream: 'http://127.0.0.1:3000', audience: 'has space' }, /option "audience"/],
    // browsers leave http's port out of Host and Origin: refused with a reason, before anything listens (it failed with the emulator's "teamDomain" message)
    [{ upstream: 'http://127.0.0.1:3000', port: 80 }, /^--port 80 is http:\/\/'s default port, which browsers leave out of Host and Origin: choose another, such as 8787$/],
    [{ upstream: `http://localhost:${busy + 0}`, port: busy }, /EADDRINUSE/]
  ]
  const before = await listeners()
  for (const [options, message] of cases) await t.rejects(createDevProxy({ privateKeys: keys, ...options }), message)
  const free = await freePort()
  for (const host of ['127.0.0.1', 'localhost']) {
    await t.rejects(createDevProxy({ upstream: `http://${host}:${free}`, port: free, privateKeys: keys }), /is the proxy itself/, host)
  }
  // the highest port is a port: it starts, or it is taken, but it is never refused as a number
  const highest = await createDevProxy({ upstream: `http://127.0.0.1:${free}`, port: 65535, privateKeys: keys }).catch((error: Error) => error)
  if (highest instanceof Error) t.match(highest.message, /EADDRINUSE/)
  else await highest.close()
  const secret = createSecretKey(Buffer.alloc(32))
  await t.rejects(createDevProxy({ upstream: `http://127.0.0.1:${free}`, port: 0, privateKeys: [secret, secret] }), /secret|type/i, 'keys that are no RSA private keys')
  t.equal(await listeners(), before, 'a failed start leaves no listener behind')
})

t.test('the login takes an email as identity providers send it; any other is refused on the page, and the proxy keeps serving', async (t) => {
  const domain189 = `${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(61)}`
  const refused = [
    'josé.€@example.com', '用户@example.com', 'ä@example.com', 'a\u0001b@example.com', 'a\u007fb@example.com', 'a b@example.com',
    'a@b', 'a@exa_mple.com', 'a@-example.com', 'a@example.com.', '.a@example.com', 'a.@example.com', 'a..b@example.com',
    '"a"@example.com', '@example.com', 'a@', 'example.com', 'a@b@example.com',
    `${'a'.repeat(65)}@example.com`, `${'a'.repeat(64)}@${domain189}x`
  ]
  for (const email of refused) {
    const jar = new Jar()
    const res = await login(jar, { email })
    t.equal(res.status, 400, JSON.stringify(email))
    t.match(res.body, /Enter an email address such as alice@example\.com, as identity providers send them: ASCII letters, digits and \. _ \+ - \(and !#\$%&#38;&#39;\*\/=\?\^`\{\|\}~\) before the @, a domain name after it\. Internationalized addresses are refused: the Cf-Access-Authenticated-User-Email header cannot carry them\./, `${JSON.stringify(email)}: says why`)
    t.equal(jar.cookies.size, 0, `${JSON.stringify(email)}: no login`)
  }
  for (const email of ["o'brien+dev@Example.COM", 'a.b-c_d!#$%&*/=?^`{|}~@sub.example.co', `${'a'.repeat(64)}@example.com`, `${'a'.repeat(64)}@${domain189}`]) {
    const jar = new Jar()
    t.equal((await login(jar, { email })).status, 303, JSON.stringify(email))
    const { headers } = JSON.parse((await send(port, { path: '/me', jar })).body)
    t.equal(headers['cf-access-authenticated-user-email'], email, `${JSON.stringify(email)}: passed on as it was given`)
  }
  t.equal((await send(port, { path: LOGIN_PATH })).status, 200, 'the proxy still serves')
})

t.test('a session whose email no header can carry reaches the app without the email header, and the proxy survives', async (t) => {
  // a login token signed with the proxy's own key (this test holds it): only the header is at stake
  const certs = JSON.parse((await send(port, { path: '/cdn-cgi/access/certs' })).body) as { keys: Array<{ kid: string }> }
  const now = nowSeconds()
  for (const email of ['josé.€@example.com', '用户@example.com', 'bell\u0007@example.com']) {
    const claims = { email, sub: 'u-1', iss: proxy.origin, aud: [proxy.audience], iat: now, nbf: now, exp: now + 600, type: 'app' }
    const jar = new Jar()
    jar.cookies.set('CF_Authorization', signJwt({ alg: 'RS256', kid: certs.keys[0]?.kid }, claims, keys[0]))
    const me = await send(port, { path: '/me', jar })
    t.equal(me.status, 200, JSON.stringify(email))
    const body = JSON.parse(me.body)
    t.equal(body.claims.email, email, 'the signed token carries it')
    t.notOk('cf-access-authenticated-user-email' in body.headers, `${JSON.stringify(email)}: no unsigned header`)
    t.match((await send(port, { path: LOGIN_PATH, jar })).body, /, with no groups\. <a href="\/cdn-cgi\/access\/logout">Log out<\/a>/, 'never logged in through the form: no groups')
  }
  t.equal((await send(port, { path: LOGIN_PATH })).status, 200, 'the proxy still serves')
})

t.test('an answer Node cannot write (a status below 100, a 101 nobody asked for) is a 502, and the proxy survives', async (t) => {
  const jar = new Jar()
  await login(jar, { email: 'alice@acme.com' })
  const odd = await send(port, { path: '/status-99', jar })
  t.equal(odd.status, 502)
  t.match(odd.body, /could not pass this request to your app at http:\/\/127\.0\.0\.1:\d+, or its answer back \(Invalid status code: 99\)/)
  const switched = await send(port, { path: '/switch', jar })
  t.equal(switched.status, 502, 'a 101 to a request without Upgrade: no hang')
  t.match(switched.body, /\(101 to a request without Upgrade\)/)
  const declined = await exchange(port, `GET /ws-99 HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nCookie: ${jar.header}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n`)
  t.match(declined, /^HTTP\/1\.1 502 Bad Gateway\r\n/, 'an upgrade declined with a status below 100: a 502 too, not the status passed on')
  t.equal((await send(port, { path: '/me', jar })).status, 200, 'the proxy still serves')
})

t.test('WebSocket upgrades: the Host, the request target, Access paths and the protocol are checked before anything is forwarded', async (t) => {
  const jar = new Jar()
  await login(jar, { email: 'alice@acme.com' })
  const before = upgrades.length
  const upgrade = (target: string, extra = ''): Promise<string> =>
    exchange(port, `${target} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nCookie: ${jar.header}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n${extra}\r\n`)
  const cases: Array<[string, string, string]> = [
    ['OPTIONS *', '', 'HTTP/1.1 400 Bad Request'],
    [`GET http://127.0.0.1:${port}/ws`, '', 'HTTP/1.1 400 Bad Request'],
    ['GET http://other.host/ws', '', 'HTTP/1.1 400 Bad Request'],
    [`GET ${LOGIN_PATH}`, '', 'HTTP/1.1 404 Not Found'],
    ['GET /cdn-cgi/access/certs', '', 'HTTP/1.1 404 Not Found']
  ]
  for (const [target, extra, status] of cases) {
    t.match(await upgrade(target, extra), new RegExp(`^${status}\r\n`), target)
  }
  const h2c = await exchange(port, `GET /ws HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nCookie: ${jar.header}\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n`)
  t.match(h2c, /^HTTP\/1\.1 400 Bad Request\r\n/, 'WebSocket only: no other protocol tunnels past the header checks')
  t.equal(upgrades.length, before, 'none reached the app')
  t.match(await upgrade('GET /ws-broken'), /^HTTP\/1\.1 403 Forbidden\r\n/, 'the same request to a path of the app is forwarded (and refused by it)')
  t.equal(upgrades.length, before + 1)
})

t.test('an app that breaks off its refusal of an upgrade breaks off ours: never a hang', async (t) => {
  const jar = new Jar()
  await login(jar, { email: 'alice@acme.com' })
  const answer = await exchange(port, `GET /ws-broken HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nCookie: ${jar.header}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n`)
  t.match(answer, /^HTTP\/1\.1 403 Forbidden\r\n[^]*partial$/, 'closed after what the app sent')
  const garbled = await exchange(port, `GET /ws-garbled HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nCookie: ${jar.header}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n`)
  t.equal(garbled, 'HTTP/1.1 403 Forbidden\r\nConnection: close\r\n\r\n', 'a body the proxy cannot read: closed after the head it passed on, no second answer behind it')
})

t.test('Connection removes the headers it names, except Host and Content-Length: a body never runs on into a second request upstream', async (t) => {
  const received: Array<{ method: string, url: string, headers: http.IncomingHttpHeaders, body: string }> = []
  const upstream = http.createServer((req, res) => {
    let body = ''
    req.setEncoding('latin1')
    req.on('data', (chunk: string) => { body += chunk })
    req.on('end', () => {
      received.push({ method: req.method as string, url: req.url as string, headers: req.headers, body })
      res.end('ok')
    })
  })
  await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise((resolve) => upstream.close(resolve)))
  const to = await ownProxy(t, `http://127.0.0.1:${(upstream.address() as AddressInfo).port}`)
  const jar = new Jar()
  await login(jar, { email: 'alice@acme.com' }, {}, to)
  const smuggled = 'GET /admin HTTP/1.1\r\nHost: 127.0.0.1\r\nCf-Access-Authenticated-User-Email: admin@acme.com\r\n\r\n'
  const head = (line: string, extra: string): string => `${line} HTTP/1.1\r\nHost: 127.0.0.1:${to}\r\nCookie: ${jar.header}\r\n${extra}`

  const chunked = await exchange(to, `${head('GET /a', 'Connection: close\r\nTransfer-Encoding: chunked\r\n')}\r\n${smuggled.length.toString(16)}\r\n${smuggled}\r\n0\r\n\r\n`)
  t.match(chunked, /^HTTP\/1\.1 200 OK/)
  const named = await exchange(to, `${head('GET /b', `Connection: close, content-length, host, x-hop\r\nX-Hop: 1\r\nContent-Length: ${smuggled.length}\r\n`)}\r\n${smuggled}`)
  t.match(named, /^HTTP\/1\.1 200 OK/)
  t.same(received.map(({ method, url, body }) => ({ method, url, body })), [
    { method: 'GET', url: '/a', body: smuggled },
    { method: 'GET', url: '/b', body: smuggled }
  ], 'two requests, each with its whole body: nothing smuggled')
  t.equal(received[0]?.headers['transfer-encoding'], 'chunked', 'a chunked body is forwarded chunked')
  t.equal(received[1]?.headers['content-length'], String(smuggled.length))
  t.equal(received[1]?.headers.host, `127.0.0.1:${to}`, 'Connection: host leaves the Host as it came')
  t.notOk('x-hop' in (received[1]?.headers ?? {}), 'another header the Connection header names is removed')
})

t.test("the client's address is the edge's: CF-Connecting-IP and X-Forwarded-For are the peer's, True-Client-IP and other Cf-* headers dropped", async (t) => {
  const jar = new Jar()
  await login(jar, { email: 'alice@acme.com' })
  const spoof = { 'cf-connecting-ip': '203.0.113.9', 'x-forwarded-for': '203.0.113.9', 'true-client-ip': '203.0.113.9', 'cf-ipcountry': 'XX', 'cf-ray': 'forged', 'x-forwarded-proto': 'https' }
  const { headers } = JSON.parse((await send(port, { path: '/me', jar, headers: spoof })).body)
  t.match(headers, { 'cf-connecting-ip': '127.0.0.1', 'x-forwarded-for': '127.0.0.1', 'x-forwarded-proto': 'http' })
  for (const name of ['true-client-ip', 'cf-ipcountry', 'cf-ray']) t.notOk(name in headers, `${name} is not passed on`)

  const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`, { headers: { cookie: jar.header, ...spoof } })
  await new Promise((resolve) => ws.once('message', resolve))
  ws.close()
  t.match(upgrades.at(-1), { 'cf-connecting-ip': '127.0.0.1', 'x-forwarded-for': '127.0.0.1', 'x-forwarded-proto': 'http' }, 'upgrades too')
  t.notOk('true-client-ip' in (upgrades.at(-1) as object))

  // the README's rate-limit recipe behind the proxy: the key is the peer's address, whatever the client says
  const limited = Fastify({ trustProxy: ['127.0.0.1', '::1'] })
  t.teardown(() => limited.close())
  limited.get('/', async (request) => ({ ip: request.ip, cf: request.headers['cf-connecting-ip'] }))
  await limited.listen({ port: 0, host: '127.0.0.1' })
  const to = await ownProxy(t, `http://127.0.0.1:${(limited.server.address() as AddressInfo).port}`)
  const other = new Jar()
  await login(other, { email: 'alice@acme.com' }, {}, to)
  t.same(JSON.parse((await send(to, { path: '/', jar: other, headers: spoof })).body), { ip: '127.0.0.1', cf: '127.0.0.1' })
})

t.test('one listener: the emulator serves the Access endpoints through the proxy, on no port of its own', async (t) => {
  const upstream = `http://127.0.0.1:${await freePort()}`
  const before = await listeners()
  const other = await createDevProxy({ upstream, port: 0, privateKeys: keys })
  t.equal(await listeners(), before + 1, 'the proxy listens; nothing else')
  const to = Number(new URL(other.origin).port)
  const certs = JSON.parse((await send(to, { path: '/cdn-cgi/access/certs' })).body) as { keys: unknown[] }
  t.equal(certs.keys.length, 2, "the keys, on the proxy's origin")
  const jar = new Jar()
  await login(jar, { email: 'alice@acme.com' }, {}, to)
  t.equal(decode(jar.cookies.get('CF_Authorization') as string).payload.iss, other.origin, "the emulator's team domain is the proxy's origin")
  await other.close()
  t.equal(await listeners(), before)
})

t.test('an upstream not on this machine is refused unless allowRemoteUpstream says so', async (t) => {
  for (const upstream of ['http://192.0.2.1:3000', 'http://example.com', 'http://localhost.example.com:3000', 'http://10.0.0.1:3000']) {
    await t.rejects(createDevProxy({ upstream, port: 0, privateKeys: keys }), /is not on this machine \(127\.0\.0\.0\/8, localhost, \[::1\]\)[^]*Pass --allow-remote-upstream if you mean it/, upstream)
  }
  const remote = await createDevProxy({ upstream: 'http://192.0.2.1:3000', port: 0, privateKeys: keys, allowRemoteUpstream: true })
  t.equal(remote.upstream, 'http://192.0.2.1:3000', 'started: nothing is sent to it until a request comes')
  await remote.close()
  for (const upstream of ['http://localhost:3000', 'http://127.1.2.3:3000', 'http://[::1]:3000']) {
    const local = await createDevProxy({ upstream, port: 0, privateKeys: keys })
    t.equal(local.upstream, upstream, `${upstream}: loopback`)
    await local.close()
  }
})

t.test('hop-by-hop headers stay on their connection, both ways', async (t) => {
  const jar = new Jar()
  await login(jar, { email: 'alice@acme.com' })
  const hop = { 'keep-alive': 'timeout=99', 'proxy-connection': 'keep-alive', 'proxy-authorization': 'Basic eDp5', te: 'trailers', trailer: 'x-sum', upgrade: 'x' }
  // raw: Node's client refuses to send some of these itself
  const lines = Object.entries(hop).map(([name, value]) => `${name}: ${value}\r\n`).join('')
  const raw = await exchange(port, `GET /me HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nCookie: ${jar.header}\r\nConnection: close\r\n${lines}\r\n`)
  const { headers } = JSON.parse(raw.slice(raw.indexOf('\r\n\r\n') + 4))
  for (const name of Object.keys(hop)) t.notOk(name in headers, `${name} is not forwarded`)
  const kept = JSON.parse((await send(port, { path: '/me', jar, headers: { connection: 'keep-alive' } })).body).headers
  t.equal(kept.connection, 'close', "the client's Connection is about its connection: the app sees the proxy's own")
  const answer = await send(port, { path: '/hop', jar })
  t.equal(answer.body, 'ok')
  t.equal(answer.headers['x-end'], 'kept')
  for (const name of ['proxy-connection', 'trailer', 'x-named']) t.notOk(name in answer.headers, `${name} in the answer is not passed on`)
  t.not(answer.headers['keep-alive'], 'timeout=99', "the app's Keep-Alive is about its connection to the proxy")
})

t.test('an upgrade the app declines: its status, body and own headers, without hop-by-hop ones, and the connection closed', async (t) => {
  const jar = new Jar()
  await login(jar, { email: 'alice@acme.com' })
  const answer = await exchange(port, `GET /ws-decline HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nCookie: ${jar.header}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 0\r\n\r\n`)
  const [head, body] = answer.split('\r\n\r\n') as [string, string]
  t.match(head, /^HTTP\/1\.1 403 Forbidden\r\n/)
  t.match(head, /\r\nX-Reason: nope(\r\n|$)/)
  t.match(head, /\r\nConnection: close$/, 'the end of the connection says where the body ends')
  t.notMatch(head, /Keep-Alive|Transfer-Encoding/i)
  t.equal(body, 'nope!', 'the body as the app meant it, its chunks undone')
  t.notOk('content-length' in (upgrades.at(-1) as object), 'an upgrade request is forwarded without a body')
})

t.test('a tunnel ends on both sides when either breaks off, and with the proxy', async (t) => {
  const jar = new Jar()
  await login(jar, { email: 'alice@acme.com' })
  const open = async (to = port): Promise<WebSocket> => {
    const ws = new WebSocket(`ws://127.0.0.1:${to}/ws`, { headers: { cookie: jar.header } })
    await new Promise((resolve) => ws.once('message', resolve))
    return ws
  }
  const closed = (ws: WebSocket): Promise<boolean> => new Promise((resolve) => {
    ws.once('close', () => resolve(true))
    setTimeout(resolve, 5000, false)
  })

  const first = await open()
  const firstClosed = closed(first)
  ;(appSide.socket as net.Socket).resetAndDestroy()
  t.ok(await firstClosed, 'the app resets its side: the client is closed')

  const second = await open()
  const before = appSide.closed.length
  ;(second as unknown as { _socket: net.Socket })._socket.resetAndDestroy()
  t.ok(await eventually(() => appSide.closed.length > before, 5000), "the client resets its side: the app's is closed")
  t.equal((await send(port, { path: '/me', jar })).status, 200, 'the proxy still serves')

  const asked = upgrades.length
  const run = randomUUID()
  const pending = new WebSocket(`ws://127.0.0.1:${port}/ws-slow`, { headers: { cookie: jar.header, 'x-run': run } })
  pending.on('error', () => {})
  t.ok(await eventually(() => upgrades.length > asked, 5000), 'the upgrade reached the app')
  pending.terminate()
  t.ok(await eventually(() => appSide.closed.includes(`/ws-slow ${run}`), 5000), 'a client that leaves before the app answers its upgrade: the app\'s side is closed')

  // a proxy of its own, in front of a WebSocket server that verifies nothing
  const echo = new WebSocketServer({ port: 0, host: '127.0.0.1' })
  t.teardown(() => new Promise((resolve) => echo.close(resolve)))
  echo.on('connection', (ws) => ws.send('hello'))
  await new Promise((resolve) => echo.once('listening', resolve))
  const other = await createDevProxy({ upstream: `http://127.0.0.1:${(echo.address() as AddressInfo).port}`, port: 0, privateKeys: keys })
  const otherPort = Number(new URL(other.origin).port)
  await login(jar, { email: 'alice@acme.com' }, {}, otherPort)
  const third = await open(otherPort)
  const thirdClosed = closed(third)
  await other.close()
  t.ok(await thirdClosed, "the proxy's close() ends its tunnels")
})

t.test('edge headers spelt with underscores are dropped too: CGI-style servers read them as the same header', async (t) => {
  const jar = new Jar()
  await login(jar, { email: 'alice@acme.com' })
  const spoof = { cf_connecting_ip: '203.0.113.9', x_forwarded_for: '203.0.113.9', x_forwarded_proto: 'https', true_client_ip: '203.0.113.9', cf_access_authenticated_user_email: 'admin@acme.com', Cf_Access_Jwt_Assertion: 'forged' }
  const { headers } = JSON.parse((await send(port, { path: '/me', jar, headers: spoof })).body)
  for (const name of Object.keys(spoof)) t.notOk(name.toLowerCase() in headers, name)
  t.equal(headers['x-custom_name'], undefined)
  t.equal(JSON.parse((await send(port, { path: '/me', jar, headers: { 'x-custom_name': 'kept' } })).body).headers['x-custom_name'], 'kept', 'other names with underscores pass')
})

t.test('the login page takes groups by name and by id, shows the ids each one carries, and the app matches them with allow.groupIds', async (t) => {
  const jar = new Jar()
  const done = await login(jar, { email: 'alice@acme.com', groups: "finance, admins=g-admins, Sales Team = s-1, O'Brien" })
  t.equal(done.status, 303)
  const identity = JSON.parse((await send(port, { path: '/cdn-cgi/access/get-identity', jar })).body)
  t.same(identity.groups, [
    { id: groupId('finance'), name: 'finance' },
    { id: 'g-admins', name: 'admins' },
    { id: 's-1', name: 'Sales Team' },
    { id: groupId("O'Brien"), name: "O'Brien" }
  ], 'a name alone gets its derived id; name=id the id given')
  t.equal(groupId('finance'), 'eab762a0-3fd9-79a0-4cc4-706e6536d382', 'SHA-256 of the name, its first 32 hex digits in UUID form, as the README says')
  t.equal((await send(port, { path: '/admins', jar })).body, 'alice@acme.com', 'allow.groupIds admits the id typed as admins=g-admins')
  t.equal((await send(port, { path: '/finance', jar })).status, 200, 'allow.groups admits the name')
  const other = new Jar()
  await login(other, { email: 'bob@acme.com', groups: 'admins' })
  t.equal((await send(port, { path: '/admins', jar: other })).status, 403, 'the name admins alone carries another id')

  const form = await send(port, { path: LOGIN_PATH, jar })
  t.match(form.body, '<p>Logged in as <strong>alice@acme.com</strong>, with groups <code>finance</code> (id <code>eab762a0-3fd9-79a0-4cc4-706e6536d382</code>), ' +
    '<code>admins</code> (id <code>g-admins</code>), <code>Sales Team</code> (id <code>s-1</code>), <code>O&#39;Brien</code> (id <code>', 'who is logged in, every group with its id, escaped')
  t.match(form.body, /<a href="\/cdn-cgi\/access\/logout">Log out<\/a>/)
  t.match(form.body, /<label for="groups">Groups<\/label>[^]*<code>finance<\/code> gets <code>eab762a0-3fd9-79a0-4cc4-706e6536d382<\/code>/, 'the help says how ids are made')
  t.match(form.body, /<label for="redirect_url">After logging in, go to<\/label>\n<input id="redirect_url" name="redirect_url" value="\/">/, 'where the login leads, as a field')
  const service = new Jar()
  await login(service, { kind: 'service', client_id: 'ci.access' })
  t.match((await send(port, { path: LOGIN_PATH, jar: service })).body, /Logged in as the service token <strong>ci\.access<\/strong>\. <a href/)
  const none = new Jar()
  await login(none, { email: 'carol@acme.com', groups: ' , ,' })
  t.match((await send(port, { path: LOGIN_PATH, jar: none })).body, /<strong>carol@acme\.com<\/strong>, with no groups\./, 'blank entries are skipped')

  // the style is allowed by its hash, and nothing else is
  const csp = form.headers['content-security-policy'] as string
  const style = /<style>([^<]*)<\/style>/.exec(form.body)?.[1] as string
  t.match(csp, `style-src 'sha256-${createHash('sha256').update(style).digest('base64')}'`)
  t.match(csp, /^default-src 'none'; /)
  t.notMatch(form.body, /<script|style="/, 'no script, no inline style attribute')

  for (const groups of ['=g-1', 'admins=', 'admins=<b>', 'admins=a b', 'a=b=c', 'x'.repeat(65), `admins=${'i'.repeat(129)}`, 'a\u0001b', 'fin"ance', 'a&b']) {
    const refused = await login(new Jar(), { email: 'a@b.c', groups })
    t.equal(refused.status, 400, JSON.stringify(groups))
    t.match(refused.body, /Groups are comma-separated, each a name or name=id/)
    t.notMatch(refused.body, /<b>|fin"ance|a&b/, `${JSON.stringify(groups)}: escaped wherever it is shown`)
  }
  t.equal((await login(new Jar(), { email: 'a@b.c', groups: `${'x'.repeat(64)}=${'i'.repeat(128)}` })).status, 303, '64 characters of name, 128 of id')
  const kept = await login(new Jar(), { kind: 'service', client_id: 'bad id', email: 'a@b.c', groups: 'finance' })
  t.match(kept.body, /value="service" checked/, 'a refused service login keeps its choice')
  t.match(kept.body, /name="client_id" value="bad id"/)
  t.match(kept.body, /name="groups" value="finance"/)
})

t.test('the groups of the latest 100 emails logged in are kept: a flood of logins leaves the memory bounded, and an older login keeps its token without its groups', async (t) => {
  // each login may carry 8 KiB of groups (some 1500 of them): remembered for every email ever used, a loop of logins grew the process without bound
  const to = await ownProxy(t, 'http://127.0.0.1:1')
  const groupsOf = async (jar: Jar): Promise<unknown> => JSON.parse((await send(to, { path: '/cdn-cgi/access/get-identity', jar })).body).groups
  const first = new Jar()
  t.equal((await login(first, { email: 'First@acme.com', groups: 'finance' }, {}, to)).status, 303)
  const jars: Jar[] = []
  for (let i = 0; i < 100; i++) {
    const jar = new Jar()
    jars.push(jar)
    t.equal((await login(jar, { email: `u${i}@acme.com`, groups: `g${i}` }, {}, to)).status, 303)
    if (i === 98) {
      // a new login of an email it remembers makes it the latest again, whatever its case
      t.equal((await login(first, { email: 'first@ACME.com', groups: 'finance' }, {}, to)).status, 303)
    }
  }
  t.same(await groupsOf(first), [{ id: groupId('finance'), name: 'finance' }], 'logged in again among the latest 100: kept')
  t.same(await groupsOf(jars[0] as Jar), [], 'the oldest of 101 emails: its token still valid, its groups forgotten')
  t.match((await send(to, { path: LOGIN_PATH, jar: jars[0] })).body, /<strong>u0@acme\.com<\/strong>, with no groups\./, 'the login page says so')
  t.same(await groupsOf(jars[1] as Jar), [{ id: groupId('g1'), name: 'g1' }], 'the next one is kept')
  t.same(await groupsOf(jars[99] as Jar), [{ id: groupId('g99'), name: 'g99' }], 'the latest is kept')
  t.equal((await login(jars[0] as Jar, { email: 'u0@acme.com', groups: 'g0' }, {}, to)).status, 303)
  t.same(await groupsOf(jars[0] as Jar), [{ id: groupId('g0'), name: 'g0' }], 'a new login brings them back')
  t.same(await groupsOf(jars[1] as Jar), [], 'and forgets the oldest again')
})

t.test('public paths are passed on without a login and without a token, as behind a Bypass policy; the browser\'s cookies as they came', async (t) => {
  // the shared proxy's public paths: '/open,/maybe', '/files*', '/open-ws'
  const to = port
  const spoof = { 'cf-access-jwt-assertion': 'forged', 'cf-access-authenticated-user-email': 'admin@acme.com', 'cf-access-client-id': 'x.access', 'cf-connecting-ip': '203.0.113.9', cf_access_jwt_assertion: 'forged' }
  const anonymous = await send(to, { path: '/open?x=1', headers: spoof })
  t.equal(anonymous.status, 200, 'no login, no redirect')
  const { url, headers } = JSON.parse(anonymous.body)
  t.equal(url, '/open?x=1')
  for (const name of ['cf-access-jwt-assertion', 'cf-access-authenticated-user-email', 'cf-access-client-id', 'cf_access_jwt_assertion', 'cookie']) {
    t.notOk(name in headers, `${name}: none added, a client's own removed`)
  }
  t.match(headers, { 'cf-connecting-ip': '127.0.0.1', 'x-forwarded-for': '127.0.0.1', 'x-forwarded-proto': 'http' }, "the edge's own headers, as on every request")

  const jar = new Jar()
  await login(jar, { email: 'alice@acme.com' }, {}, to)
  jar.cookies.set('theme', 'dark')
  const signedIn = JSON.parse((await send(to, { path: '/files/app.js', jar, headers: spoof })).body)
  t.equal(signedIn.headers.cookie, jar.header, 'the cookies as the browser sent them, CF_Authorization included')
  t.notOk('cf-access-jwt-assertion' in signedIn.headers || 'cf-access-authenticated-user-email' in signedIn.headers, 'a session adds nothing on a public path')

  // optional authentication behind the public path: the app reads the browser's cookie itself
  t.same(JSON.parse((await send(to, { path: '/maybe' })).body), { email: null }, 'a guest')
  t.same(JSON.parse((await send(to, { path: '/maybe', jar })).body), { email: 'alice@acme.com' }, 'a logged-in browser, through its cookie')
  const forged = await send(to, { path: '/maybe', headers: { cookie: `CF_Authorization=${rawToken({ alg: 'RS256', kid: 'x' }, { email: 'admin@acme.com' })}` } })
  t.equal(forged.status, 401, 'a forged cookie reaches the app as it came, and the app refuses it')
  t.equal(JSON.parse(forged.body).code, 'FST_CF_ACCESS_TOKEN_INVALID')

  // what matches: /files* is a prefix (/files, /files/…, /filesx), /open exactly
  for (const path of ['/files', '/filesx', '/files/a/b?c']) {
    const res = await send(to, { path, headers: { accept: 'text/html' } })
    t.not(res.status, 302, `${path}: public`)
    t.match(res.headers['content-type'], /application\/json/, `${path}: the app answered`)
  }
  t.equal((await send(to, { path: '/files/.well-known' })).status, 200, 'a name that starts with a dot is no dot segment')
  // a dot segment, plain, percent-encoded or after a backslash, is never public: an app that resolves it would serve another path
  for (const path of ['/files/../me', '/files/./x', '/files/..', '/files/%2e%2e/me', '/files/%2E%2e%2Fme', '/files%2f..%2fme', '/files\\..\\me', '/files/%2e', '/files/..?x']) {
    const res = await send(to, { path, headers: { accept: 'text/html' } })
    t.equal(res.status, 302, `${path}: a login first`)
  }
  // nor one a ; or # ends: servers that end the path there, or resolve it as a URL (new URL('/files/..#', base) is /), would serve its parent
  for (const path of ['/files/..#', '/files/.#x', '/files/%2e%2e#', '/files/a/..#/b', '/files/..;/me', '/files/.;x', '/files/%2E%2E;a=b/me']) {
    const res = await send(to, { path, headers: { accept: 'text/html' } })
    t.equal(res.status, 302, `${path}: a login first`)
  }
  t.equal((await send(to, { path: '/files/..x#', headers: { accept: 'text/html' } })).status, 200, 'a name that starts with two dots is no dot segment either')
  for (const path of ['/open/x', '/openx', '/me', '/Open', '/fil']) {
    const res = await send(to, { path, headers: { accept: 'text/html' } })
    t.equal(res.status, 302, `${path}: a login first`)
  }

  // WebSockets on a public path: forwarded without a login, without a token, with the cookies as they came
  const told = async (headers: Record<string, string>): Promise<unknown> => {
    const ws = new WebSocket(`ws://127.0.0.1:${to}/open-ws`, { headers })
    const message = await new Promise<string>((resolve, reject) => {
      ws.once('message', (data) => resolve(String(data)))
      ws.once('error', reject)
    })
    ws.close()
    return JSON.parse(message)
  }
  t.same(await told({ 'cf-access-jwt-assertion': 'forged' }), { token: null, cookie: null }, 'an upgrade without a login')
  t.same(await told({ cookie: jar.header }), { token: null, cookie: jar.header }, 'a logged-in browser: its cookies, no token added')
  const refused = await new Promise((resolve) => {
    const ws = new WebSocket(`ws://127.0.0.1:${to}/ws`)
    ws.on('unexpected-response', (request, response) => resolve(response.statusCode))
    ws.on('error', () => {})
  })
  t.equal(refused, 401, 'an upgrade on another path still needs a login')
})

t.test('a public /* leaves Access\'s own paths to the proxy', async (t) => {
  const to = await ownProxy(t, `http://127.0.0.1:${new URL(proxy.upstream).port}`, { publicPaths: ['/*'] })
  t.equal(JSON.parse((await send(to, { path: '/cdn-cgi/access/certs' })).body).keys.length, 2, 'the keys')
  t.match((await send(to, { path: LOGIN_PATH })).body, /name="csrf"/, 'the login page')
  const me = await send(to, { path: '/me', headers: { accept: 'text/html' } })
  t.equal(me.status, 401, 'every other path reaches the app, which asks for a token')
  t.equal(JSON.parse(me.body).code, 'FST_CF_ACCESS_TOKEN_MISSING')
})

t.test('malformed public paths stop the start with a message that names them', async (t) => {
  const before = await listeners()
  for (const value of ['', 'health', '/a,', ',/a', '/a b', '/a?x', '/a#b', '/a*b', '*', '/**', '/\u00e9', '/a\tb']) {
    await t.rejects(createDevProxy({ upstream: 'http://127.0.0.1:3000', port: 0, privateKeys: keys, publicPaths: ['/ok', value] }),
      /--public takes paths such as \/, \/health or \/static\* \(a \* at the end matches every path that starts so\), comma-separated; got "/, JSON.stringify(value))
  }
  t.equal(await listeners(), before, 'nothing left listening')
})
