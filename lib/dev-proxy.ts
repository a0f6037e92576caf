/** `fastify-cloudflare-access dev`: a stand-in for Cloudflare Access in front of a local app, built on the emulator. */
import { createHash, randomBytes, timingSafeEqual, type KeyObject } from 'node:crypto'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { pipeline, type Duplex } from 'node:stream'
import { isServiceToken, isUserToken, subjectOf } from './claims'
import { escapeHtml, GROUPS_RULE, LOGIN_PATH, loginPage, page, parseGroups, type LoginPageState } from './dev-pages'
import { publicPaths } from './dev-public'
import { parseKeySet } from './keys'
import { isLoopback, normalizeOptions } from './options'
import { DOMAIN } from './policy'
import { createAccessEmulator, type AccessEmulator } from './testing'
import { COOKIE_NAME, HEADER_NAME, readCookie } from './token'
import type { CloudflareAccessClaims, CloudflareAccessGroup } from './types'
import { createTokenVerifier } from './verify'

export { LOGIN_PATH }
const ACCESS_PREFIX = '/cdn-cgi/access/'
/** Default AUD tag: fixed, so that the app's configuration survives a restart of the proxy. */
export const DEV_AUDIENCE = createHash('sha256').update('fastify-cloudflare-access dev proxy').digest('hex')
export const DEFAULT_PORT = 8787
/** Cloudflare's default session: 24 hours. */
const SESSION_SECONDS = 86_400
const MAX_FORM_BYTES = 8192
/**
 * Logins whose groups are remembered: the latest emails. A login carries up to 8 KiB of groups; remembered for
 * every email ever used, a loop of logins would grow the process without bound.
 */
const REMEMBERED_IDENTITIES = 100
/** Headers that belong to one connection (RFC 9110 §7.6.1), never forwarded. */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'proxy-authorization', 'te', 'trailer', 'transfer-encoding', 'upgrade'])
/**
 * Names a `Connection` header may list that stay: `Host` is passed as it came, and `Content-Length` frames
 * the body (without it, a body would run on into a second request on the upstream connection).
 */
const KEPT_WHEN_NAMED = new Set(['host', 'content-length'])
/** A local part as identity providers send it: ASCII dot-atom (RFC 5322 §3.2.3). */
const LOCAL_PART = /^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$/
const CLIENT_ID = /^[A-Za-z0-9-]{1,64}\.access$/

export interface DevProxyOptions {
  /** The app behind the proxy: an `http://` origin on this machine, such as `http://127.0.0.1:3000`. */
  upstream: string
  /**
   * Forward to an upstream that is not a loopback address (127.0.0.0/8, localhost, [::1]). Default
   * false: such an upstream is refused, as it would receive signed tokens and the browser's cookies.
   */
  allowRemoteUpstream?: boolean
  /** The port on 127.0.0.1. Default 8787; `0`: any free port. */
  port?: number
  /** The AUD tag tokens are issued for. Default: a fixed development tag ({@link DEV_AUDIENCE}). */
  audience?: string
  /** The signing keys (as the emulator's `privateKeys`). Default: two fresh keys. */
  privateKeys?: [KeyObject, KeyObject]
  /**
   * Paths forwarded without a login and without a token, as an Access Bypass policy lets them through
   * (`dev --public`): `/health` exactly, `/static*` every path that starts with `/static`. Each value may
   * list several, comma-separated.
   */
  publicPaths?: readonly string[]
}

export interface DevProxy {
  /** `http://127.0.0.1:<port>`: the app's `teamDomain`, and the address to open in a browser. */
  readonly origin: string
  readonly audience: string
  readonly upstream: string
  close: () => Promise<void>
}

/** Stops at the first problem with a message that names the option. */
function upstreamOrigin (value: string, allowRemote: boolean): URL {
  let url: URL | undefined
  try {
    url = new URL(value)
  } catch {}
  if (url?.protocol !== 'http:' || url.pathname !== '/' || url.search !== '' || url.username !== '' || url.password !== '') {
    throw new Error(`--upstream must be an http:// origin such as http://127.0.0.1:3000, got ${JSON.stringify(value)}`)
  }
  if (!allowRemote && !isLoopback(url.hostname)) {
    throw new Error(`--upstream ${url.origin} is not on this machine (127.0.0.0/8, localhost, [::1]): it would receive signed tokens and your browser's cookies. Pass --allow-remote-upstream if you mean it`)
  }
  return url
}

/**
 * An email as Access's identity providers send it, and as a header can carry it: an ASCII local part of at
 * most 64 characters, `@`, a domain as `allow.emailDomains` takes it (in any case); 254 characters at most.
 */
export function isLoginEmail (email: string): boolean {
  const at = email.lastIndexOf('@')
  return at !== -1 && at <= 64 && email.length <= 254 && LOCAL_PART.test(email.slice(0, at)) && DOMAIN.test(email.slice(at + 1).toLowerCase())
}

/** An answer written straight to a socket whose request asked for an upgrade. */
function refuseUpgrade (socket: Duplex, status: number): void {
  const reason = http.STATUS_CODES[status] as string
  socket.end(`HTTP/1.1 ${status} ${reason}\r\nContent-Type: text/plain\r\nContent-Length: ${reason.length}\r\nConnection: close\r\n\r\n${reason}`)
}

/**
 * A message's headers without those of one connection: the hop-by-hop ones, and those its `Connection`
 * header names (except {@link KEPT_WHEN_NAMED}).
 */
function endToEnd (incoming: http.IncomingHttpHeaders): http.OutgoingHttpHeaders {
  const named = new Set((incoming.connection ?? '').toLowerCase().split(',').map((name) => name.trim()))
  const headers: http.OutgoingHttpHeaders = {}
  for (const [name, value] of Object.entries(incoming)) {
    if (!HOP_BY_HOP.has(name) && (!named.has(name) || KEPT_WHEN_NAMED.has(name))) headers[name] = value
  }
  return headers
}

/**
 * Request headers that Cloudflare's edge sets (its `Cf-*`, the client's address): a client's own never pass,
 * nor the same names spelt with `_` for `-`, which CGI-style servers (PHP, WSGI) read as the same header.
 */
function setByEdge (name: string): boolean {
  const dashed = name.replaceAll('_', '-')
  return dashed.startsWith('cf-') || dashed === 'x-forwarded-for' || dashed === 'x-forwarded-proto' || dashed === 'true-client-ip'
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

/**
 * Runs one step of proxying: a synchronous throw (a value Node refuses to send, an answer it refuses to
 * write) goes to `fail`, never up to the event loop, where it would end the process.
 */
function guarded (step: () => void, fail: (error: Error) => void): void {
  try {
    step()
  } catch (error) {
    fail(error as Error)
  }
}

/**
 * Starts the dev proxy on 127.0.0.1: it serves the emulator's `/cdn-cgi/access/*` endpoints and a login
 * page on its own origin (the emulator opens no port of its own), remembers the chosen identity in a
 * `CF_Authorization` cookie, and forwards every other request (WebSocket upgrades included) to the upstream
 * with a freshly signed `Cf-Access-Jwt-Assertion`, as Cloudflare's edge sets its headers; requests for the
 * `publicPaths` without a login and without a token, as behind a Bypass policy.
 */
export async function createDevProxy (options: DevProxyOptions): Promise<DevProxy> {
  const target = upstreamOrigin(options.upstream, options.allowRemoteUpstream === true)
  const port = options.port ?? DEFAULT_PORT
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`--port must be a port number, got ${JSON.stringify(port)}`)
  // the origin would be http://127.0.0.1, and the Host a browser sends 127.0.0.1: neither is what the proxy checks
  if (port === 80) throw new Error(`--port 80 is http://'s default port, which browsers leave out of Host and Origin: choose another, such as ${DEFAULT_PORT}`)
  const audience = options.audience ?? DEV_AUDIENCE
  // the plugin's own validation of the tag, with its message
  normalizeOptions({ teamDomain: 'http://127.0.0.1', audience })
  const isPublic = publicPaths(options.publicPaths ?? [])

  const server = http.createServer()
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, '127.0.0.1', resolve)
  })
  const actualPort = (server.address() as AddressInfo).port
  const origin = `http://127.0.0.1:${actualPort}`
  const hosts = new Set([`127.0.0.1:${actualPort}`, `localhost:${actualPort}`])
  let access: AccessEmulator
  try {
    if (['127.0.0.1', 'localhost'].includes(target.hostname) && Number(target.port) === actualPort) {
      throw new Error(`--upstream ${target.origin} is the proxy itself: give the address of your app`)
    }
    // Access's endpoints are served on this origin through access.handle(): no listener of the emulator's own
    access = await createAccessEmulator({ audience, privateKeys: options.privateKeys, teamDomain: origin })
  } catch (error) {
    await new Promise((resolve) => server.close(resolve))
    throw error
  }
  const csrf = randomBytes(32).toString('base64url')

  // The proxy's sessions are tokens it issued, verified by the plugin's own verifier.
  const keys = parseKeySet(access.jwks(), new Map())
  const verifier = createTokenVerifier(normalizeOptions({ teamDomain: origin, audience, cacheSize: 0 }), {
    get: (kid) => keys.get(kid),
    isKnownUnknown: () => true,
    /* c8 ignore next 2 */
    // Stryker disable next-line ArrowFunction: never called
    resolve: async (kid) => keys.get(kid) // never called: the set is fixed, every kid not in it is known to be unknown
  })

  /** The logged-in identity of a request (its `CF_Authorization` cookie), or undefined. */
  function session (req: http.IncomingMessage): CloudflareAccessClaims | undefined {
    const claims = verifier.verify(readCookie(req.headers.cookie ?? ''))
    return claims instanceof Error || claims instanceof Promise ? undefined : claims
  }

  /** 403 for a Host that is not the proxy's (DNS rebinding), 400 for a target that is no path (`*`, absolute form), else 0. */
  function refusal (req: http.IncomingMessage): 0 | 400 | 403 {
    // A page of another site whose name now points at 127.0.0.1 still sends its own Host.
    if (!hosts.has(String(req.headers.host).toLowerCase())) return 403
    return (req.url as string).startsWith('/') ? 0 : 400
  }

  /** A fresh token for the session's identity, as Access signs one for every request it lets through. */
  function freshToken (claims: CloudflareAccessClaims): string {
    if (isServiceToken(claims)) return access.signServiceToken({ common_name: claims.common_name, iss: origin, exp: claims.exp })
    return access.signToken({ email: claims.email, sub: claims.sub, identity_nonce: claims.identity_nonce, country: claims.country, iss: origin, exp: claims.exp })
  }

  /**
   * The client's end-to-end headers minus anything Access or the edge sets, plus what they add: for a
   * session the token and the email (only an address a header can carry), for every request the client's
   * address as the edge sees it. Without a session (a public path, as behind a Bypass policy) no token is
   * added, and the browser's cookies pass as they came.
   */
  function forwardedHeaders (req: http.IncomingMessage, claims: CloudflareAccessClaims | undefined, upgrade: boolean): http.OutgoingHttpHeaders {
    const headers = endToEnd(req.headers)
    for (const name of Object.keys(headers)) {
      if (setByEdge(name)) delete headers[name]
    }
    if (claims !== undefined) {
      const token = freshToken(claims)
      // the client's other cookies; a session implies the Cookie header
      const cookies = (req.headers.cookie as string).split(';').map((pair) => pair.trim())
        .filter((pair) => pair !== '' && pair.slice(0, pair.indexOf('=')).trim() !== COOKIE_NAME)
      headers.cookie = [...cookies, `${COOKIE_NAME}=${token}`].join('; ')
      headers[HEADER_NAME] = token
      if (isUserToken(claims) && isLoginEmail(claims.email)) headers['cf-access-authenticated-user-email'] = claims.email
    }
    headers['cf-connecting-ip'] = req.socket.remoteAddress
    headers['x-forwarded-for'] = req.socket.remoteAddress
    headers['x-forwarded-proto'] = 'http'
    if (upgrade) {
      // the upgrade request's body is not forwarded: what follows it belongs to the new protocol
      delete headers['content-length']
      headers.connection = 'Upgrade'
      headers.upgrade = req.headers.upgrade
    } else if (req.headers['transfer-encoding'] !== undefined) {
      // the body arrives decoded: chunk it again, or it would run on into a second request upstream
      headers['transfer-encoding'] = req.headers['transfer-encoding']
    }
    return headers
  }

  function upstreamRequest (req: http.IncomingMessage, claims: CloudflareAccessClaims | undefined, upgrade: boolean): http.ClientRequest {
    return http.request({
      hostname: target.hostname,
      port: target.port,
      method: req.method,
      path: req.url,
      headers: forwardedHeaders(req, claims, upgrade),
      agent: false
    })
  }

  /** A 502 page that says what went wrong with the app (plain text), unless the answer has begun: then it breaks off. */
  function badGateway (res: http.ServerResponse, text: string): void {
    if (res.headersSent || res.destroyed) {
      res.destroy()
      return
    }
    page(res, 502, 'Bad Gateway', `<p>${escapeHtml(`The Access dev proxy ${text}`)}</p>`)
  }

  function forward (req: http.IncomingMessage, res: http.ServerResponse, claims: CloudflareAccessClaims | undefined): void {
    const unusable = (error: Error): void => badGateway(res, `could not pass this request to your app at ${target.origin}, or its answer back (${error.message}).`)
    guarded(() => {
      const upstream = upstreamRequest(req, claims, false)
      upstream.on('response', (answer) => guarded(() => {
        res.writeHead(answer.statusCode as number, answer.statusMessage, endToEnd(answer.headers))
        // an app that breaks off its answer breaks off ours: pipeline destroys the other side
        pipeline(answer, res, () => {})
      }, unusable))
      // a switch of protocols nobody asked for (the request had no Upgrade): nothing to pass on
      upstream.on('upgrade', (answer, upstreamSocket) => {
        upstreamSocket.destroy()
        unusable(new Error(`${answer.statusCode as number} to a request without Upgrade`))
      })
      upstream.on('error', (error) => badGateway(res, `could not reach your app at ${target.origin} (${error.message}). Is it running?`))
      res.on('close', () => upstream.destroy())
      req.pipe(upstream)
    }, unusable)
  }

  /**
   * The groups each email logged in with last, as the emulator's identity endpoint serves them: the latest
   * {@link REMEMBERED_IDENTITIES} emails (by their latest login), in that order, oldest first.
   */
  const groupsOf = new Map<string, readonly CloudflareAccessGroup[]>()
  function remember (email: string, groups: CloudflareAccessGroup[]): void {
    const key = email.toLowerCase()
    groupsOf.delete(key)
    groupsOf.set(key, groups)
    access.setIdentity(email, { groups })
    if (groupsOf.size > REMEMBERED_IDENTITIES) {
      const oldest = groupsOf.keys().next().value as string
      groupsOf.delete(oldest)
      // the default identity, without groups: the emulator keeps nothing for it; the login's token stays valid
      access.setIdentity(oldest, {})
    }
  }

  /** The login page, with who the request's session is (if any). */
  function loginForm (req: http.IncomingMessage, res: http.ServerResponse, status: number, state: Omit<LoginPageState, 'csrf' | 'signedIn'>): void {
    const claims = session(req)
    const signedIn = claims === undefined
      ? undefined
      : { subject: subjectOf(claims), service: isServiceToken(claims), groups: isServiceToken(claims) ? [] : groupsOf.get(claims.email.toLowerCase()) ?? [] }
    loginPage(res, status, { ...state, csrf, signedIn })
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
      loginForm(req, res, 200, { returnTo: safeReturnPath(query.get('redirect_url')) })
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
      const email = (form.get('email') ?? '').trim()
      const groupsField = form.get('groups') ?? ''
      const clientField = form.get('client_id') ?? ''
      const service = form.get('kind') === 'service'
      const refuse = (message: string): void => loginForm(req, res, 400, { returnTo, message, email, groups: groupsField, clientId: clientField, service })
      let token: string
      if (service) {
        const clientId = clientField.trim() || `${randomBytes(16).toString('hex')}.access`
        if (!CLIENT_ID.test(clientId)) return refuse('A Client ID is letters, digits and dashes, ending in .access')
        token = access.signServiceToken({ common_name: clientId, iss: origin }, { expiresIn: SESSION_SECONDS })
      } else {
        if (!isLoginEmail(email)) {
          return refuse('Enter an email address such as alice@example.com, as identity providers send them: ' +
            'ASCII letters, digits and . _ + - (and !#$%&\'*/=?^`{|}~) before the @, a domain name after it. ' +
            'Internationalized addresses are refused: the Cf-Access-Authenticated-User-Email header cannot carry them.')
        }
        const groups = parseGroups(groupsField)
        if ('invalid' in groups) return refuse(`${GROUPS_RULE}. Not one: ${groups.invalid}`)
        remember(email, groups)
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
    const refused = refusal(req)
    if (refused === 403) {
      page(res, 403, 'Forbidden', `<p>The Access dev proxy answers only to http://127.0.0.1:${actualPort} and http://localhost:${actualPort}.</p>`)
      return
    }
    if (refused === 400) {
      page(res, 400, 'Bad Request', '<p>Only origin-form request targets (a path) are proxied.</p>')
      return
    }
    const url = req.url as string
    const path = url.split('?')[0] as string
    if (path === LOGIN_PATH) return login(req, res)
    if (path.startsWith(ACCESS_PREFIX)) {
      if (!access.handle(req, res)) page(res, 404, 'Not Found', '')
      return
    }
    if (isPublic(path)) return forward(req, res, undefined)
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
    // the other end is done: Node's HTTP server would keep the connection half open, and nobody would close it
    socket.on('end', () => socket.destroy())
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
    const refused = refusal(req)
    if (refused !== 0) return refuseUpgrade(socket, refused)
    // Access answers its own paths at the edge, and none of them is a WebSocket
    if ((req.url as string).startsWith(ACCESS_PREFIX)) return refuseUpgrade(socket, 404)
    // WebSockets only, what Access is used with: another protocol (h2c) would tunnel past the proxy's header checks
    if (String(req.headers.upgrade).toLowerCase() !== 'websocket') return refuseUpgrade(socket, 400)
    const open = isPublic((req.url as string).split('?')[0] as string)
    const claims = open ? undefined : session(req)
    if (!open && claims === undefined) return refuseUpgrade(socket, 401)
    let declined = false
    // a 502, unless the app's refusal has begun: a second answer would follow it on the connection
    const fail = (): void => {
      if (declined) socket.destroy()
      else refuseUpgrade(socket, 502)
    }
    guarded(() => {
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
        // a status no HTTP answer has (below 100; a request's answer gets the 502 too, from writeHead)
        if ((answer.statusCode as number) < 100) {
          answer.destroy()
          return fail()
        }
        declined = true
        socket.write(responseHead(answer, true))
        pipeline(answer, socket, () => {})
      })
      upstream.on('error', fail)
      upstream.end()
    }, fail)
  })

  return {
    origin,
    audience,
    upstream: target.origin,
    async close () {
      server.closeAllConnections()
      for (const socket of tunnels) socket.destroy()
      await new Promise((resolve) => server.close(resolve))
    }
  }
}
