import { createPrivateKey, createPublicKey, generateKeyPair, randomBytes, randomUUID, sign, verify, type KeyObject } from 'node:crypto'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { LOGOUT_PATH } from './logout'
import { COOKIE_NAME, readCookie } from './token'
import type { CloudflareAccessIdentity } from './types'

/**
 * A local stand-in for Cloudflare Access, for tests and demos: a real HTTP server on 127.0.0.1 that
 * serves the team's keys at `/cdn-cgi/access/certs` in Cloudflare's shape and signs real RS256 tokens
 * (or, with the `teamDomain` option, no server of its own: a server of yours answers through `handle()`).
 * Uses node:crypto only.
 *
 * ```ts
 * const access = await createAccessEmulator()
 * app.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience })
 * await app.inject({ url: '/', headers: { 'cf-access-jwt-assertion': access.signToken() } })
 * await access.close()
 * ```
 */

/** How an endpoint misbehaves: see {@link AccessEmulator.setOutage}. */
export type OutageMode = 'error' | 'html' | 'reset' | 'garbage' | 'empty' | 'redirect'

/**
 * The emulator's endpoints that can misbehave: `/cdn-cgi/access/certs` and `/cdn-cgi/access/get-identity`.
 * (It also answers `/cdn-cgi/access/logout`: it clears the `CF_Authorization` cookie and says so.)
 */
export type EmulatorEndpoint = 'certs' | 'identity'

export interface AccessEmulatorOptions {
  /** AUD tag(s) of the emulated application; tokens carry the first. Default: a random 64-hex tag. */
  audience?: string | string[]
  /** Email of the default user. Default `'user@example.com'`. */
  email?: string
  /** Milliseconds the certs endpoint waits before answering. Default 0. */
  latency?: number
  /** The port to listen on (127.0.0.1). Default: any free port. Not together with `teamDomain`. */
  port?: number
  /**
   * The origin of a server of yours that answers the emulator's paths with {@link AccessEmulator.handle},
   * such as `http://127.0.0.1:8787`: given, the emulator starts no server of its own (nothing listens for
   * it), and this origin is its `teamDomain`, every token's `iss`. An `http://` or `https://` origin, not
   * together with `port`. Default: the emulator's own server on 127.0.0.1. The dev proxy runs it this way.
   */
  teamDomain?: string
  /**
   * The current and previous signing keys (RSA private keys, at least 2048 bits), published under new
   * random kids. Default: two freshly generated keys. Passing the same pair to many emulators saves
   * RSA key generation (about 0.2 s a key) in a large test suite; each emulator's kids stay its own.
   */
  privateKeys?: [KeyObject, KeyObject]
}

export interface SignOptions {
  /**
   * Which key signs: `'current'` (default), `'previous'`, or any RSA private key (a KeyObject or PEM),
   * for example an attacker's key published under nobody's kid.
   */
  key?: 'current' | 'previous' | KeyObject | string
  /** The header's `kid`. Default: the kid of the signing key when it is the emulator's, else the current kid. `null` omits it. */
  kid?: string | null
  /** Extra or replaced header fields; a field set to `undefined` is removed. The signature is always RS256. */
  header?: Record<string, unknown>
  /** Lifetime in seconds, from `iat`. Default 86400 (Cloudflare's default session of 24 hours). */
  expiresIn?: number
  /** The issue time, in seconds since the epoch. Default: now. */
  now?: number
}

/** Claims given to `signToken`: any claim, replaced as given; a claim set to `undefined` is removed. */
export type ClaimsInput = Record<string, unknown>

export interface AccessEmulator {
  /** `http://127.0.0.1:<port>` (or the `teamDomain` option): pass it as the plugin's `teamDomain`; it is also every token's `iss`. */
  readonly teamDomain: string
  /** The AUD tag tokens are issued for (the first, when several were given). */
  readonly audience: string
  /** Every AUD tag of the emulated application(s). */
  readonly audiences: readonly string[]
  /** `<teamDomain>/cdn-cgi/access/certs`. */
  readonly certsUrl: string
  /** The kids the certs endpoint publishes now, current first. */
  readonly kids: readonly string[]
  /** Requests the emulator's server received, any path, and those `handle()` answered (proves that nothing else was fetched). */
  readonly requestCount: number
  /** Requests to the certs endpoint. */
  readonly certsRequestCount: number
  /** Requests to the identity endpoint. */
  readonly identityRequestCount: number
  /** The paths of the last 1000 requests, in order (older ones are dropped: a long test run stays bounded). */
  readonly requests: readonly string[]
  /** A user's application token: `email`, `sub`, `identity_nonce`, `country`, `type: 'app'`, `aud`, `iss`, `iat`, `nbf`, `exp`. */
  signToken: (claims?: ClaimsInput, options?: SignOptions) => string
  /** A service token's application token: `common_name` (a Client ID ending in `.access`), `sub: ''`, no `email`, no `nbf`. */
  signServiceToken: (claims?: ClaimsInput, options?: SignOptions) => string
  /**
   * Signs a header and payload given as exact JSON text, exact bytes, or objects, with RS256: for tokens
   * no honest issuer makes, such as duplicate keys, numbers that parse to Infinity, or invalid UTF-8.
   * `options.key` as in `signToken`.
   */
  signRaw: (header: TokenPart, payload: TokenPart, options?: Pick<SignOptions, 'key'>) => string
  /** Publishes a new current key; the old current stays published as the previous key and the older one is dropped. Resolves the new kid. */
  rotateKeys: () => Promise<string>
  /** The key set as the certs endpoint serves it now. */
  jwks: () => { keys: Array<Record<string, string>> }
  /**
   * Makes an endpoint (default: certs) fail until `setOutage(false)`: `true` or `'error'` answers 503
   * with an HTML page, `'html'` answers 200 with an HTML page, `'reset'` drops the connection,
   * `'garbage'` answers 200 with invalid JSON, `'empty'` a key set without keys (an empty object for the
   * identity endpoint), `'redirect'` a 302 to another path.
   */
  setOutage: (mode: boolean | OutageMode, endpoint?: EmulatorEndpoint) => void
  /** Milliseconds an endpoint (default: certs) waits before answering; `Infinity` never answers. */
  setLatency: (ms: number, endpoint?: EmulatorEndpoint) => void
  /**
   * What the identity endpoint answers for a user, merged over the default identity (built from the
   * token: `email`, `id`/`user_uuid` = `sub`, `name`, `idp`, `geo`, no groups).
   */
  setIdentity: (email: string, identity: Partial<CloudflareAccessIdentity>) => void
  /**
   * Answers a request for one of the emulator's paths (`GET /cdn-cgi/access/certs`, `get-identity`,
   * `logout`) from a server of yours, as the emulator's own server would, and returns true; returns
   * false, touching nothing, for any other request. The dev proxy serves them on its own origin this way.
   */
  handle: (req: http.IncomingMessage, res: http.ServerResponse) => boolean
  /** Stops the emulator's own server, dropping hanging connections (with `teamDomain`: nothing to stop). */
  close: () => Promise<void>
}

interface EmulatorKey {
  kid: string
  privateKey: KeyObject
  jwk: Record<string, string>
}

async function newKey (): Promise<EmulatorKey> {
  const privateKey = await new Promise<KeyObject>((resolve, reject) => {
    generateKeyPair('rsa', { modulusLength: 2048 }, (error, _publicKey, privateKey) => {
      /* c8 ignore next */
      if (error) reject(error)
      else resolve(privateKey)
    })
  })
  return emulatorKey(privateKey)
}

/** A signing key published under a new random kid, as Cloudflare publishes it. */
function emulatorKey (privateKey: KeyObject): EmulatorKey {
  const kid = randomBytes(32).toString('hex')
  const { n, e } = createPublicKey(privateKey).export({ format: 'jwk' }) as { n: string, e: string }
  return { kid, privateKey, jwk: { kid, kty: 'RSA', alg: 'RS256', use: 'sig', e, n } }
}

/** JSON text or exact bytes of a token part. */
export type TokenPart = string | Buffer | Record<string, unknown>

function base64url (value: TokenPart): string {
  return (Buffer.isBuffer(value) ? value : Buffer.from(typeof value === 'string' ? value : JSON.stringify(value))).toString('base64url')
}

/**
 * Signs `header.payload` with RS256: the compact JWS Cloudflare sends. Strings are taken as exact JSON
 * text, Buffers as exact bytes (even invalid UTF-8).
 */
export function signJwt (header: TokenPart, payload: TokenPart, privateKey: KeyObject | string): string {
  const input = `${base64url(header)}.${base64url(payload)}`
  const key = typeof privateKey === 'string' ? createPrivateKey(privateKey) : privateKey
  return `${input}.${sign('sha256', Buffer.from(input), key).toString('base64url')}`
}

function withoutUndefined (object: Record<string, unknown>): Record<string, unknown> {
  for (const name of Object.keys(object)) {
    if (object[name] === undefined) delete object[name]
  }
  return object
}

/** How many request paths the emulator remembers. */
const REQUEST_LOG_SIZE = 1000

/** The `teamDomain` option, checked: an http(s) origin exactly as `URL` writes it, and no `port` beside it. */
function givenOrigin (options: AccessEmulatorOptions): string | undefined {
  const value = options.teamDomain
  if (value === undefined) return undefined
  if (options.port !== undefined) throw new Error('createAccessEmulator: "port" (a server of its own) and "teamDomain" (a server of yours, through handle()) exclude each other')
  let url: URL | undefined
  try {
    url = new URL(value)
  } catch {}
  if ((url?.protocol !== 'http:' && url?.protocol !== 'https:') || url.origin !== value) {
    throw new Error(`createAccessEmulator: "teamDomain" must be an http:// or https:// origin such as http://127.0.0.1:8787, got ${JSON.stringify(value)}`)
  }
  return value
}

/**
 * Starts an emulator with a current and a previous key, as Cloudflare publishes them: on its own server on
 * 127.0.0.1, or, with the `teamDomain` option, served by a server of yours through `handle()`.
 */
export async function createAccessEmulator (options: AccessEmulatorOptions = {}): Promise<AccessEmulator> {
  const origin = givenOrigin(options)
  const audiences = Object.freeze(
    options.audience === undefined ? [randomBytes(32).toString('hex')] : [options.audience].flat()
  )
  const email = options.email ?? 'user@example.com'
  let keys: EmulatorKey[] = options.privateKeys === undefined
    ? await Promise.all([newKey(), newKey()])
    : options.privateKeys.map(emulatorKey)
  const endpoints: Record<EmulatorEndpoint, { latency: number, outage: OutageMode | null }> = {
    certs: { latency: options.latency ?? 0, outage: null },
    identity: { latency: 0, outage: null }
  }
  const identities = new Map<string, Partial<CloudflareAccessIdentity>>()
  const requests: string[] = []
  let requestCount = 0
  const counts: Record<EmulatorEndpoint, number> = { certs: 0, identity: 0 }

  function json (res: http.ServerResponse, status: number, body: unknown): void {
    res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body))
  }

  /** The claims of a token this emulator signed (current or previous key), or undefined. */
  function ownClaims (token: string | undefined): Record<string, unknown> | undefined {
    const [header, payload, signature] = (token ?? '').split('.')
    if (signature === undefined) return undefined
    const input = Buffer.from(`${header}.${payload}`)
    const signed = keys.some((key) => verify('sha256', input, key.privateKey, Buffer.from(signature, 'base64url')))
    if (!signed) return undefined
    try {
      const claims = JSON.parse(Buffer.from(payload as string, 'base64url').toString()) as Record<string, unknown>
      return typeof claims.exp === 'number' && claims.exp * 1000 > Date.now() ? claims : undefined
    } catch {
      return undefined // signRaw can sign anything
    }
  }

  function identityFor (req: http.IncomingMessage, res: http.ServerResponse): void {
    const claims = ownClaims(readCookie(req.headers.cookie ?? ''))
    if (claims === undefined) return json(res, 400, { err: 'invalid or missing CF_Authorization token' })
    if (typeof claims.email !== 'string') return json(res, 400, { err: 'no identity for this token' })
    const email = claims.email
    json(res, 200, {
      id: claims.sub,
      name: email.slice(0, email.indexOf('@')),
      email,
      user_uuid: claims.sub,
      account_id: 'emulator',
      iat: claims.iat,
      ip: '127.0.0.1',
      idp: { id: 'emulator', type: 'onetimepin' },
      geo: { country: claims.country ?? 'US' },
      groups: [],
      devicePosture: {},
      is_warp: false,
      is_gateway: false,
      device_id: '',
      custom: {},
      ...identities.get(email.toLowerCase())
    })
  }

  function answer (endpoint: EmulatorEndpoint, req: http.IncomingMessage, res: http.ServerResponse): void {
    switch (endpoints[endpoint].outage) {
      case null:
        if (endpoint === 'certs') json(res, 200, jwks())
        else identityFor(req, res)
        return
      case 'reset':
        req.socket.destroy()
        return
      case 'html':
        res.writeHead(200, { 'content-type': 'text/html' }).end('<!DOCTYPE html><title>Just a moment...</title>')
        return
      case 'garbage':
        res.writeHead(200, { 'content-type': 'application/json' }).end('{"keys": [')
        return
      case 'empty':
        json(res, 200, endpoint === 'certs' ? { keys: [] } : {})
        return
      case 'redirect':
        res.writeHead(302, { location: '/elsewhere' }).end()
        return
      default:
        res.writeHead(503, { 'content-type': 'text/html' }).end('<!DOCTYPE html><title>503 Service Unavailable</title>')
    }
  }

  /** What Access answers at `/cdn-cgi/access/logout`: the session cookie cleared, and a page that says so. */
  function logout (res: http.ServerResponse): void {
    res.writeHead(200, {
      'content-type': 'text/html; charset=utf-8',
      'cache-control': 'no-store',
      'set-cookie': `${COOKIE_NAME}=; Path=/; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; HttpOnly; SameSite=Lax`
    }).end('<!DOCTYPE html><meta charset="utf-8"><title>Logged out</title><h1>You have been logged out</h1>' +
      `<p>The ${COOKIE_NAME} cookie is cleared. A token issued before stays valid until it expires. <a href="/">Back to the application</a></p>`)
  }

  const paths = new Map<string | undefined, EmulatorEndpoint>([['/cdn-cgi/access/certs', 'certs'], ['/cdn-cgi/access/get-identity', 'identity']])
  /** Answers a request for one of the emulator's paths; false for any other. */
  function route (req: http.IncomingMessage, res: http.ServerResponse): boolean {
    if (req.method !== 'GET') return false
    if (req.url === LOGOUT_PATH) {
      logout(res)
      return true
    }
    const endpoint = paths.get(req.url)
    if (endpoint === undefined) return false
    counts[endpoint]++
    const { latency } = endpoints[endpoint]
    if (latency === Infinity) return true // never answers; close() drops the connection
    if (latency > 0) setTimeout(answer, latency, endpoint, req, res)
    else answer(endpoint, req, res)
    return true
  }

  /** Counts a request and keeps its path in the bounded log. */
  function record (req: http.IncomingMessage): void {
    requestCount++
    requests.push(req.url as string)
    if (requests.length > REQUEST_LOG_SIZE) requests.splice(0, requests.length - REQUEST_LOG_SIZE / 2)
  }

  const server = origin === undefined ? await listen(options.port ?? 0) : undefined
  const teamDomain = origin ?? `http://127.0.0.1:${((server as http.Server).address() as AddressInfo).port}`

  /** The emulator's own server: its paths, and 404 for any other. */
  async function listen (port: number): Promise<http.Server> {
    const own = http.createServer((req, res) => {
      record(req)
      if (!route(req, res)) res.writeHead(404, { 'content-type': 'text/plain' }).end('not found')
    })
    own.keepAliveTimeout = 1000
    await new Promise<void>((resolve, reject) => {
      own.once('error', reject)
      own.listen(port, '127.0.0.1', resolve)
    })
    return own
  }

  function jwks (): { keys: Array<Record<string, string>> } {
    return { keys: keys.map((key) => ({ ...key.jwk })) }
  }

  function signer (defaults: (now: number) => Record<string, unknown>) {
    return (claims: ClaimsInput = {}, signOptions: SignOptions = {}): string => {
      const now = signOptions.now ?? Math.floor(Date.now() / 1000)
      const payload = withoutUndefined({
        ...defaults(now),
        aud: [audiences[0]],
        iss: teamDomain,
        iat: now,
        exp: now + (signOptions.expiresIn ?? 86_400),
        type: 'app',
        ...claims
      })
      const { own, privateKey } = signingKey(signOptions.key)
      const kid = signOptions.kid === undefined ? (own ?? keys[0])?.kid : signOptions.kid
      const header = withoutUndefined({ alg: 'RS256', kid: kid ?? undefined, ...signOptions.header })
      return signJwt(header, payload, privateKey)
    }
  }

  function signingKey (choice: SignOptions['key'] = 'current'): { own: EmulatorKey | undefined, privateKey: KeyObject | string } {
    const own = choice === 'current' ? keys[0] : choice === 'previous' ? keys[1] : undefined
    return { own, privateKey: own?.privateKey ?? (choice as KeyObject | string) }
  }

  return {
    teamDomain,
    audience: audiences[0] as string,
    audiences,
    certsUrl: `${teamDomain}/cdn-cgi/access/certs`,
    get kids () { return keys.map((key) => key.kid) },
    get requestCount () { return requestCount },
    get certsRequestCount () { return counts.certs },
    get identityRequestCount () { return counts.identity },
    get requests () { return requests.slice(-REQUEST_LOG_SIZE) },
    signToken: signer((now) => ({
      email,
      nbf: now,
      identity_nonce: randomBytes(12).toString('base64url'),
      sub: randomUUID(),
      country: 'US'
    })),
    signServiceToken: signer(() => ({
      common_name: `${randomBytes(16).toString('hex')}.access`,
      sub: ''
    })),
    signRaw (header, payload, signOptions = {}) {
      return signJwt(header, payload, signingKey(signOptions.key).privateKey)
    },
    async rotateKeys () {
      const key = await newKey()
      keys = [key, keys[0] as EmulatorKey]
      return key.kid
    },
    jwks,
    setOutage (mode, endpoint = 'certs') {
      endpoints[endpoint].outage = mode === false ? null : mode === true ? 'error' : mode
    },
    setLatency (ms, endpoint = 'certs') {
      endpoints[endpoint].latency = ms
    },
    setIdentity (email, identity) {
      // nothing over the default: nothing to keep (the dev proxy forgets an identity so)
      if (Object.keys(identity).length === 0) identities.delete(email.toLowerCase())
      else identities.set(email.toLowerCase(), identity)
    },
    handle (req, res) {
      const answered = route(req, res)
      if (answered) record(req)
      return answered
    },
    async close () {
      if (server === undefined) return
      server.closeAllConnections()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }
}
