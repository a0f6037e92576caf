/** `fastify-cloudflare-access dev`: a stand-in for Cloudflare Access in front of a local app, built on the emulator. */
import { createHash, randomBytes, timingSafeEqual, type KeyObject } from 'node:crypto'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { pipeline, type Duplex } from 'node:stream'
import { isServiceToken } from './claims'
import { parseKeySet } from './keys'
import { normalizeOptions } from './options'
import { createAccessEmulator } from './testing'
import { COOKIE_NAME, HEADER_NAME, readCookie } from './token'
import type { CloudflareAccessClaims } from './types'
import { createTokenVerifier } from './verify'

/** The login page: the dev proxy's own path under Access's prefix. */
export const LOGIN_PATH = '/cdn-cgi/access/login'
const ACCESS_PREFIX = '/cdn-cgi/access/'
/** Default AUD tag: fixed, so that the app's configuration survives a restart of the proxy. */
export const DEV_AUDIENCE = createHash('sha256').update('fastify-cloudflare-access dev proxy').digest('hex')
export const DEFAULT_PORT = 8787
/** Cloudflare's default session: 24 hours. */
const SESSION_SECONDS = 86_400
const MAX_FORM_BYTES = 8192
/** Request headers that belong to one connection (RFC 9110 §7.6.1), never forwarded. */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'proxy-authorization', 'te', 'trailer', 'transfer-encoding', 'upgrade'])
const EMAIL = /^[^\s@<>"',;]{1,64}@[^\s@<>"',;]{1,190}$/
const CLIENT_ID = /^[A-Za-z0-9-]{1,64}\.access$/
const GROUP = /^[^<>"&,]{1,64}$/

export interface DevProxyOptions {
  /** The app behind the proxy: an `http://` origin, such as `http://127.0.0.1:3000`. */
  upstream: string
  /** The port on 127.0.0.1. Default 8787; `0`: any free port. */
  port?: number
  /** The AUD tag tokens are issued for. Default: a fixed development tag ({@link DEV_AUDIENCE}). */
  audience?: string
  /** The signing keys (as the emulator's `privateKeys`). Default: two fresh keys. */
  privateKeys?: [KeyObject, KeyObject]
}

export interface DevProxy {
  /** `http://127.0.0.1:<port>`: the app's `teamDomain`, and the address to open in a browser. */
  readonly origin: string
  readonly audience: string
  readonly upstream: string
  close: () => Promise<void>
}

/** Stops at the first problem with a message that names the option. */
function upstreamOrigin (value: string): URL {
  let url: URL | undefined
  try {
    url = new URL(value)
  } catch {}
  if (url?.protocol !== 'http:' || url.pathname !== '/' || url.search !== '' || url.username !== '' || url.password !== '') {
    throw new Error(`--upstream must be an http:// origin such as http://127.0.0.1:3000, got ${JSON.stringify(value)}`)
  }
  return url
}

function escapeHtml (text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`)
}

function page (res: http.ServerResponse, status: number, title: string, body: string, headers: http.OutgoingHttpHeaders = {}): void {
  res.writeHead(status, {
    'content-type': 'text/html; charset=utf-8',
    'cache-control': 'no-store',
    // no script, no framing (clickjacking), forms only to this origin
    'content-security-policy': "default-src 'none'; form-action 'self'; frame-ancestors 'none'",
    ...headers
  })
    .end(`<!DOCTYPE html><meta charset="utf-8"><title>${title}</title><h1>${title}</h1>${body}`)
}

/** An answer written straight to a socket whose request asked for an upgrade. */
function refuseUpgrade (socket: Duplex, status: number, reason: string): void {
  socket.end(`HTTP/1.1 ${status} ${reason}\r\nContent-Type: text/plain\r\nContent-Length: ${reason.length}\r\nConnection: close\r\n\r\n${reason}`)
}

/**
 * The status line and headers of an upstream answer, for a socket that asked for an upgrade: as they are
 * for a 101, or without hop-by-hop headers and with `Connection: close` for an answer that declines it.
 */
function responseHead (answer: http.IncomingMessage, declined: boolean): string {
  let head = `HTTP/1.1 ${answer.statusCode as number} ${answer.statusMessage as string}\r\n`
  for (let i = 0; i < answer.rawHeaders.length; i += 2) {
    const name = answer.rawHeaders[i] as string
    if (!declined || !HOP_BY_HOP.has(name.toLowerCase())) head += `${name}: ${answer.rawHeaders[i + 1] as string}\r\n`
  }
  return `${head}${declined ? 'Connection: close\r\n' : ''}\r\n`
}

/** Where a login may send the browser back to: a path on this origin, nothing else. */
function safeReturnPath (value: string | null): string {
  return value !== null && /^\/(?![/\\])[\x21-\x7e]*$/.test(value) && !value.includes('\\') ? value : '/'
}

/** A group's id: UUID-shaped like Cloudflare's, stable for its name. */
function groupId (name: string): string {
  const hex = createHash('sha256').update(name).digest('hex')
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20, 32)}`
}

/**
 * Starts the dev proxy on 127.0.0.1: it serves the emulator's `/cdn-cgi/access/*` endpoints and a login
 * page on its own origin, remembers the chosen identity in a `CF_Authorization` cookie, and forwards every
 * other request (WebSocket upgrades included) to the upstream with a freshly signed `Cf-Access-Jwt-Assertion`.
 */
export async function createDevProxy (options: DevProxyOptions): Promise<DevProxy> {
  const target = upstreamOrigin(options.upstream)
  const port = options.port ?? DEFAULT_PORT
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`--port must be a port number, got ${JSON.stringify(port)}`)
  const audience = options.audience ?? DEV_AUDIENCE
  // the plugin's own validation of the tag, with its message
  normalizeOptions({ teamDomain: 'http://127.0.0.1', audience })
  const access = await createAccessEmulator({ audience, privateKeys: options.privateKeys })
  const csrf = randomBytes(32).toString('base64url')

  const server = http.createServer()
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(port, '127.0.0.1', resolve)
    })
  } catch (error) {
    await access.close()
    throw error
  }
  const actualPort = (server.address() as AddressInfo).port
  const origin = `http://127.0.0.1:${actualPort}`
  const hosts = new Set([`127.0.0.1:${actualPort}`, `localhost:${actualPort}`])
  if (['127.0.0.1', 'localhost'].includes(target.hostname) && Number(target.port) === actualPort) {
    server.close()
    await access.close()
    throw new Error(`--upstream ${target.origin} is the proxy itself: give the address of your app`)
  }

  // The proxy's sessions are tokens it issued, verified by the plugin's own verifier.
  const keys = parseKeySet(access.jwks(), new Map())
  const verifier = createTokenVerifier(normalizeOptions({ teamDomain: origin, audience, cacheSize: 0 }), {
    get: (kid) => keys.get(kid),
    isKnownUnknown: () => true,
    /* c8 ignore next */
    resolve: async (kid) => keys.get(kid) // never called: the set is fixed, every kid not in it is known to be unknown
  })

  /** The logged-in identity of a request (its `CF_Authorization` cookie), or undefined. */
  function session (req: http.IncomingMessage): CloudflareAccessClaims | undefined {
    const claims = verifier.verify(readCookie(req.headers.cookie ?? ''))
    return claims instanceof Error || claims instanceof Promise ? undefined : claims
  }

  /** A fresh token for the session's identity, as Access signs one for every request it lets through. */
  function freshToken (claims: CloudflareAccessClaims): string {
    if (isServiceToken(claims)) return access.signServiceToken({ common_name: claims.common_name, iss: origin, exp: claims.exp })
    return access.signToken({ email: claims.email, sub: claims.sub, identity_nonce: claims.identity_nonce, country: claims.country, iss: origin, exp: claims.exp })
  }

  /** The client's headers minus hop-by-hop ones and anything Access sets, plus what Access adds. */
  function forwardedHeaders (req: http.IncomingMessage, claims: CloudflareAccessClaims, upgrade: boolean): http.OutgoingHttpHeaders {
    const named = (req.headers.connection ?? '').toLowerCase().split(',').map((name) => name.trim())
    const headers: http.OutgoingHttpHeaders = {}
    for (const [name, value] of Object.entries(req.headers)) {
      if (name.startsWith('cf-access-') || HOP_BY_HOP.has(name) || named.includes(name) || name === 'cookie') continue
      headers[name] = value
    }
    const token = freshToken(claims)
    // the client's other cookies; a session implies the Cookie header
    const cookies = (req.headers.cookie as string).split(';').map((pair) => pair.trim())
      .filter((pair) => pair !== '' && pair.slice(0, pair.indexOf('=')).trim() !== COOKIE_NAME)
    headers.cookie = [...cookies, `${COOKIE_NAME}=${token}`].join('; ')
    headers[HEADER_NAME] = token
    if (!isServiceToken(claims)) headers['cf-access-authenticated-user-email'] = claims.email
    if (upgrade) {
      headers.connection = 'Upgrade'
      headers.upgrade = req.headers.upgrade
    }
    return headers
  }

  function upstreamRequest (req: http.IncomingMessage, claims: CloudflareAccessClaims, upgrade: boolean): http.ClientRequest {
    return http.request({
      hostname: target.hostname,
      port: target.port,
      method: req.method,
      path: req.url,
      headers: forwardedHeaders(req, claims, upgrade),
      agent: false
    })
  }

  function badGateway (res: http.ServerResponse, error: Error): void {
    if (res.headersSent || res.destroyed) {
      res.destroy()
      return
    }
    page(res, 502, 'Bad Gateway', `<p>The Access dev proxy could not reach your app at ${escapeHtml(target.origin)} (${escapeHtml(error.message)}). Is it running?</p>`)
  }

  function forward (req: http.IncomingMessage, res: http.ServerResponse, claims: CloudflareAccessClaims): void {
    const upstream = upstreamRequest(req, claims, false)
    upstream.on('response', (answer) => {
      const headers: http.OutgoingHttpHeaders = {}
      for (const [name, value] of Object.entries(answer.headers)) {
        if (!HOP_BY_HOP.has(name)) headers[name] = value
      }
      res.writeHead(answer.statusCode as number, answer.statusMessage, headers)
      // an app that breaks off its answer breaks off ours: pipeline destroys the other side
      pipeline(answer, res, () => {})
    })
    upstream.on('error', (error) => badGateway(res, error))
    res.on('close', () => upstream.destroy())
    req.pipe(upstream)
  }

  function loginForm (res: http.ServerResponse, status: number, returnTo: string, message = '', email = 'user@example.com'): void {
    page(res, status, 'Access dev proxy: log in', `${message === '' ? '' : `<p role="alert"><strong>${escapeHtml(message)}</strong></p>`}
<p>Pick who you are. Your app receives a token for this identity on every request, signed with keys served at
<code>${origin}/cdn-cgi/access/certs</code>.</p>
<form method="post" action="${LOGIN_PATH}">
<input type="hidden" name="csrf" value="${csrf}"><input type="hidden" name="redirect_url" value="${escapeHtml(returnTo)}">
<p><label><input type="radio" name="kind" value="user" checked> A user</label>
email <input name="email" type="email" value="${escapeHtml(email)}">
groups <input name="groups" placeholder="finance, admins"> (comma-separated, for <code>allow.groups</code>)</p>
<p><label><input type="radio" name="kind" value="service"> A service token</label>
Client ID <input name="client_id" placeholder="ci.access"> (empty: a random one)</p>
<p><button>Log in</button></p>
</form>`)
  }

  /** A form post from this proxy's own login page, and no other site: Origin, Sec-Fetch-Site and a token. */
  function sameOrigin (req: http.IncomingMessage, form: URLSearchParams): boolean {
    const { origin: from, 'sec-fetch-site': site } = req.headers
    if (from !== undefined && from !== `http://${String(req.headers.host).toLowerCase()}`) return false
    if (site !== undefined && site !== 'same-origin') return false
    const token = Buffer.from(form.get('csrf') ?? '')
    return token.length === csrf.length && timingSafeEqual(token, Buffer.from(csrf))
  }

  function login (req: http.IncomingMessage, res: http.ServerResponse): void {
    const query = new URL(req.url as string, origin).searchParams
    if (req.method === 'GET' || req.method === 'HEAD') {
      loginForm(res, 200, safeReturnPath(query.get('redirect_url')))
      return
    }
    if (req.method !== 'POST') {
      page(res, 405, 'Method Not Allowed', '', { allow: 'GET, HEAD, POST' })
      return
    }
    const chunks: Buffer[] = []
    let size = 0
    req.on('data', (chunk: Buffer) => {
      size += chunk.length
      if (size <= MAX_FORM_BYTES) chunks.push(chunk)
    })
    req.on('end', () => {
      if (size > MAX_FORM_BYTES) {
        page(res, 413, 'Payload Too Large', '<p>The login form is small.</p>')
        return
      }
      const form = new URLSearchParams(Buffer.concat(chunks).toString('utf8'))
      if (!sameOrigin(req, form)) {
        page(res, 403, 'Forbidden', `<p>A login must be posted from this proxy's own page: <a href="${LOGIN_PATH}">log in</a>.</p>`)
        return
      }
      const returnTo = safeReturnPath(form.get('redirect_url'))
      let token: string
      if (form.get('kind') === 'service') {
        const clientId = form.get('client_id')?.trim() || `${randomBytes(16).toString('hex')}.access`
        if (!CLIENT_ID.test(clientId)) return loginForm(res, 400, returnTo, 'A Client ID is letters, digits and dashes, ending in .access')
        token = access.signServiceToken({ common_name: clientId, iss: origin }, { expiresIn: SESSION_SECONDS })
      } else {
        const email = (form.get('email') ?? '').trim()
        if (!EMAIL.test(email)) return loginForm(res, 400, returnTo, 'Enter an email address', email)
        const groups = (form.get('groups') ?? '').split(',').map((name) => name.trim()).filter((name) => name !== '')
        if (!groups.every((name) => GROUP.test(name))) return loginForm(res, 400, returnTo, 'Group names are up to 64 characters, without < > " &', email)
        access.setIdentity(email, { groups: groups.map((name) => ({ id: groupId(name), name })) })
        token = access.signToken({ email, iss: origin }, { expiresIn: SESSION_SECONDS })
      }
      res.writeHead(303, {
        location: returnTo,
        'cache-control': 'no-store',
        'set-cookie': `${COOKIE_NAME}=${token}; Path=/; Max-Age=${SESSION_SECONDS}; HttpOnly; SameSite=Lax`
      }).end()
    })
  }

  server.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
    // DNS rebinding: a page of another site whose name now points at 127.0.0.1 still sends its own Host.
    if (!hosts.has(String(req.headers.host).toLowerCase())) {
      page(res, 403, 'Forbidden', `<p>The Access dev proxy answers only to http://127.0.0.1:${actualPort} and http://localhost:${actualPort}.</p>`)
      return
    }
    const url = req.url as string
    if (!url.startsWith('/')) {
      page(res, 400, 'Bad Request', '<p>Only origin-form request targets (a path) are proxied.</p>')
      return
    }
    const path = url.split('?')[0] as string
    if (path === LOGIN_PATH) return login(req, res)
    if (path.startsWith(ACCESS_PREFIX)) {
      if (!access.handle(req, res)) page(res, 404, 'Not Found', '')
      return
    }
    const claims = session(req)
    if (claims !== undefined) return forward(req, res, claims)
    const wantsPage = (req.method === 'GET' || req.method === 'HEAD') && String(req.headers.accept).includes('text/html')
    if (wantsPage) {
      res.writeHead(302, { location: `${LOGIN_PATH}?redirect_url=${encodeURIComponent(url)}`, 'cache-control': 'no-store' }).end()
    } else {
      page(res, 401, 'Unauthorized', `<p>Not logged in to the Access dev proxy: open <a href="${LOGIN_PATH}">${origin}${LOGIN_PATH}</a> in a browser.</p>`)
    }
  })

  /** Upgraded connections, client and upstream side: the HTTP server no longer tracks them. */
  const tunnels = new Set<Duplex>()
  function track (socket: Duplex): void {
    tunnels.add(socket)
    const forget = (): void => { tunnels.delete(socket) }
    // an error destroys the socket by itself: the listener keeps it from being an uncaught exception
    socket.on('error', forget)
    socket.on('close', forget)
  }

  /** Pipes two upgraded connections into each other; either one closing closes both. */
  function splice (a: Duplex, b: Duplex): void {
    const end = (): void => {
      a.destroy()
      b.destroy()
    }
    a.on('close', end)
    b.on('close', end)
    a.pipe(b).pipe(a)
  }

  server.on('upgrade', (req: http.IncomingMessage, socket: Duplex, head: Buffer) => {
    track(socket)
    if (!hosts.has(String(req.headers.host).toLowerCase())) return refuseUpgrade(socket, 403, 'Forbidden')
    const claims = session(req)
    if (claims === undefined) return refuseUpgrade(socket, 401, 'Unauthorized')
    const upstream = upstreamRequest(req, claims, true)
    socket.on('close', () => upstream.destroy())
    upstream.on('upgrade', (answer, upstreamSocket, upstreamHead) => {
      track(upstreamSocket)
      socket.write(responseHead(answer, false))
      socket.write(upstreamHead)
      upstreamSocket.write(head)
      splice(socket, upstreamSocket)
    })
    // the app declined the upgrade: pass its answer on, and close
    upstream.on('response', (answer) => {
      socket.write(responseHead(answer, true))
      answer.pipe(socket)
    })
    upstream.on('error', () => refuseUpgrade(socket, 502, 'Bad Gateway'))
    upstream.end()
  })

  return {
    origin,
    audience,
    upstream: target.origin,
    async close () {
      server.closeAllConnections()
      for (const socket of tunnels) socket.destroy()
      await Promise.all([new Promise((resolve) => server.close(resolve)), access.close()])
    }
  }
}
