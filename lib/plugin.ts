import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { channels } from './channels'
import { isServiceToken, kLookedAt, subjectOf } from './claims'
import { AuthorizeFailedError, ForbiddenError, NoIdentityError, TokenMissingError, toError } from './errors'
import { IdentityClient } from './identity'
import { KeyStore } from './keys'
import { pluginLogger } from './log'
import { decorateLogout } from './logout'
import { describeRoutes } from './openapi'
import { isOptional } from './optional'
import { normalizeOptions, warnIfAudienceUnusual, warnIfLoopbackInProduction } from './options'
import { admits, IdentityLookups, identityWhileVerifying, type CompiledPolicy, type Verification } from './policy'
import { addScopeHook } from './preflight'
import { NO_RULE, ruleOf, watchRouteConfig, type RouteRule } from './route-config'
import { guardRoutePolicies } from './routes'
import { checkScope, claimScope } from './scopes'
import { trackStatus } from './status'
import { watchUnguarded } from './unguarded'
import { readToken } from './token'
import type { CloudflareAccessClaims, CloudflareAccessDecorator, CloudflareAccessIdentity, FastifyCloudflareAccessOptions } from './types'
import { createTokenVerifier, kCacheCounters } from './verify'

/** Where the verified token waits for `request.cfAccessIdentity()`: private, never serialised. */
const kToken = Symbol('fastify-cloudflare-access.token')
/** The route's rule (lib/route-config.ts) whose policies admitted the request: private. */
const kAdmitted = Symbol('fastify-cloudflare-access.admitted')
/** While policies run on the request: each verification under way (several only when they overlap), for `request.cfAccessIdentity()`. */
const kVerifying = Symbol('fastify-cloudflare-access.verifying')

type Request = FastifyRequest & {
  [kLookedAt]: boolean
  [kToken]: string | null
  [kAdmitted]: RouteRule | null
  [kVerifying]: Verification[] | null
}
type Done = (error?: Error) => void

/**
 * The plugin body (wrapped by fastify-plugin in index.ts): validates the options, builds the key store,
 * the verifier and the identity client once, decorates, and adds the hooks.
 *
 * A request is admitted only when its token verifies and every policy that applies (the plugin's, then the
 * route's) admits it; only then are `request.cfAccess` and the token for identity lookups set. Any refusal
 * clears them, so code after a swallowed rejection never sees a refused user's claims.
 */
export async function cloudflareAccess (fastify: FastifyInstance, rawOptions: FastifyCloudflareAccessOptions): Promise<void> {
  const options = normalizeOptions(rawOptions)
  const log = pluginLogger(fastify, rawOptions.logLevel, rawOptions.logSerializers)
  checkScope(fastify)

  warnIfLoopbackInProduction(log, options.issuer)
  warnIfAudienceUnusual(log, options.audience)
  const store = new KeyStore({
    certsUrl: options.certsUrl,
    fetchTimeout: options.fetchTimeout,
    refreshInterval: options.refreshInterval,
    unknownKidCooldown: options.unknownKidCooldown,
    maxStaleAge: options.maxStaleAge,
    log
  })
  const verifier = createTokenVerifier(options, store, { log })
  const identities = new IdentityClient({
    url: options.identityUrl,
    timeout: options.identityTimeout,
    ttl: options.identityCacheTtl,
    size: options.identityCacheSize
  })

  function identityFor (token: string, claims: CloudflareAccessClaims): Promise<CloudflareAccessIdentity> {
    if (isServiceToken(claims)) return Promise.reject(new NoIdentityError())
    return identities.get(token, claims.exp)
  }

  /** Resolves when `policy` admits the claims; rejects with a 403 (or whatever `authorize` failed with). */
  // `request` is undefined only for verifyToken(token) without a request, which refuses a policy with
  // `authorize` before getting here.
  async function enforce (policy: CompiledPolicy, claims: CloudflareAccessClaims, token: string, request: FastifyRequest | undefined): Promise<void> {
    const identity = new IdentityLookups(() => identityFor(token, claims))
    const context = { request: request as FastifyRequest, identity, authorizeTimeout: options.authorizeTimeout }
    // While the policy runs, request.cfAccessIdentity() is the identity of the token being verified.
    const req = request as Request | undefined
    const verification: Verification = { token, identity }
    if (req !== undefined) (req[kVerifying] ??= []).push(verification)
    let admitted: boolean
    try {
      admitted = await admits(policy, claims, context)
    } finally {
      if (req !== undefined) doneVerifying(req, verification)
    }
    if (admitted) return
    const route = request?.routeOptions.url
    const grants = grantsOf(policy)
    channels.denied.hasSubscribers && channels.denied.publish({ route, grants, kind: isServiceToken(claims) ? 'service' : 'user' })
    throw Object.assign(new ForbiddenError(), { route, subject: subjectOf(claims), grants })
  }

  /** Every policy that applies: the plugin's, then the route's. */
  async function enforceAll (claims: CloudflareAccessClaims, token: string, request: FastifyRequest, rule: RouteRule): Promise<void> {
    if (options.policy !== null) await enforce(options.policy, claims, token, request)
    // A value no registration could check at boot (lib/route-config.ts): refused, never read as "no policy".
    if (rule.error !== null) throw rule.error
    if (rule.policy !== null) await enforce(rule.policy, claims, token, request)
  }

  /** Clears what an earlier admission set, and hands the error on. */
  function rejected (request: FastifyRequest, error: Error): Error {
    const req = request as Request
    req.cfAccess = null
    req[kToken] = null
    req[kAdmitted] = null
    const { code } = error as { code?: unknown }
    channels.rejected.hasSubscribers && channels.rejected.publish({ route: request.routeOptions.url, code: typeof code === 'string' ? code : '', statusCode: (error as { statusCode?: number }).statusCode ?? 500 })
    return error
  }

  function accept (request: FastifyRequest, token: string, claims: CloudflareAccessClaims, rule: RouteRule, cached: boolean): void {
    const req = request as Request
    req[kToken] = token
    req[kAdmitted] = rule
    req.cfAccess = claims
    channels.accepted.hasSubscribers && channels.accepted.publish({ route: request.routeOptions.url, kind: isServiceToken(claims) ? 'service' : 'user', cached })
  }

  /** The cache's hit count, read only while someone listens for accepted requests (to say whether the cache answered). */
  function hits (): number {
    return channels.accepted.hasSubscribers ? verifier.cacheCounters().hits : 0
  }

  /** The slow path: a key to fetch, or policies to apply. Rejects with an Error, always. */
  async function authenticateAsync (request: FastifyRequest, token: string, pending: CloudflareAccessClaims | Promise<CloudflareAccessClaims>, rule: RouteRule, cached: boolean): Promise<void> {
    try {
      const claims = await pending
      await enforceAll(claims, token, request, rule)
      accept(request, token, claims, rule, cached)
    } catch (error) {
      throw rejected(request, toError(error)) // an Error of `authorize` goes on unchanged
    }
  }

  /** Nothing (admitted), the error to answer, or a promise of either: what checking a request comes to. */
  type Outcome = undefined | Error | Promise<void>

  /**
   * The scope hook's check: honours what a route asks of the plugin's own hook — `config.cfAccess: false`
   * skips it, and an optional route lets a request without a token go on (never under a plugin-level
   * policy, which the boot refuses; also for a route the boot could not see).
   */
  function checkInScope (request: FastifyRequest): Outcome {
    const rule = ruleOf(request.routeOptions.config)
    if (rule.skip) return undefined
    const token = lookAt(request)
    if (token === undefined && options.policy === null && isOptional(rule, options.required)) return undefined
    return authenticate(request, token, rule)
  }

  /** `verify`'s check: always a token, verified, with the registration's and the route's policies. */
  function checkAlways (request: FastifyRequest): Outcome {
    return authenticate(request, lookAt(request), ruleOf(request.routeOptions.config))
  }

  /** The request's token, once the request is marked as looked at (lib/claims.ts tells its 401 from its 500 by it). */
  function lookAt (request: FastifyRequest): string | undefined {
    (request as Request)[kLookedAt] = true
    return readToken(request.headers)
  }

  /**
   * Authenticates and authorizes one request with the route's rule. Without I/O and without a policy — the
   * common case — it works synchronously and returns nothing (admitted) or the error to answer; otherwise
   * a promise.
   */
  function authenticate (request: FastifyRequest, token: string | undefined, rule: RouteRule): Outcome {
    const before = hits()
    const claims = verifier.verify(token)
    if (claims instanceof Error) return rejected(request, claims)
    const cached = hits() !== before
    if (claims instanceof Promise || options.policy !== null || rule.policy !== null || rule.error !== null) {
      return authenticateAsync(request, token as string, claims, rule, cached)
    }
    accept(request, token as string, claims, rule, cached)
    return undefined
  }

  /** Whether the scope hook lets this request through without a token: a `config.cfAccess: false` or an optional route. */
  function tokenOptional (request: FastifyRequest): boolean {
    const rule = ruleOf(request.routeOptions.config)
    return rule.skip || (options.policy === null && isOptional(rule, options.required))
  }

  /** The scope hook, callback style: no promise and no exception on the synchronous path. */
  function hook (request: FastifyRequest, _reply: FastifyReply, done: Done): void {
    const outcome = checkInScope(request)
    if (outcome === undefined) done()
    else if (outcome instanceof Error) done(outcome)
    else outcome.then(() => done(), done)
  }

  /** `fastify.cfAccess.verify`: always verifies, wherever and however it is called. */
  async function verify (request: FastifyRequest, reply: FastifyReply): Promise<void> {
    try {
      const outcome = checkAlways(request)
      if (outcome instanceof Error) throw outcome
      await outcome
    } catch (error) {
      // Also on a route outside the plugin's scopes that runs verify, where no onError hook of ours sees it.
      putErrorHeaders(reply, error)
      throw error
    }
  }

  async function verifyToken (token: string, request?: FastifyRequest): Promise<CloudflareAccessClaims> {
    const claims = await verifier.verify(token)
    if (claims instanceof Error) throw claims
    const rule = request === undefined ? NO_RULE : ruleOf(request.routeOptions.config)
    if (rule.error !== null) throw rule.error
    const policies = [options.policy, rule.policy]
    for (const policy of policies) {
      if (policy === null) continue
      if (request === undefined && policy.authorize !== null) {
        throw new AuthorizeFailedError('this registration has an authorize rule, which needs the request: call verifyToken(token, request)')
      }
      await enforce(policy, claims, token, request)
    }
    return claims
  }

  function isAdmitted (request: FastifyRequest, rule: RouteRule): boolean {
    return (request as Request)[kAdmitted] === rule
  }

  const routes = guardRoutePolicies(fastify, isAdmitted, verify)
  const checkRoute = watchRouteConfig(fastify, { hook: options.hook, required: options.required, hasPolicy: options.policy !== null, verify }, [
    routes.guard,
    describeRoutes(options, verify)
  ])

  const status = trackStatus(fastify, options, store, verifier, () => identities.size)
  const decorator: CloudflareAccessDecorator = { verify, verifyToken, status }
  Object.defineProperty(decorator, kCacheCounters, { value: verifier.cacheCounters })
  fastify.decorate('cfAccess', decorator)
  fastify.decorateRequest('cfAccess', null)
  fastify.decorateRequest(kToken, null)
  fastify.decorateRequest(kAdmitted, null)
  fastify.decorateRequest(kVerifying, null)
  fastify.decorateRequest(kLookedAt, false)
  fastify.decorateRequest('cfAccessIdentity', function (this: FastifyRequest) {
    const claims = this.cfAccess
    const token = (this as Request)[kToken]
    // Inside `authorize`: the token being verified (its lookups refuse as identity() does), even on a
    // request admitted before (verifyToken(token, request)), where it may not be the request's token.
    const verifying = (this as Request)[kVerifying]
    if (verifying !== null) return identityWhileVerifying(verifying, claims == null ? null : token)
    if (claims == null || token === null) return Promise.reject(new TokenMissingError())
    return identityFor(token, claims)
  })
  decorateLogout(fastify)
  // A 503 of the plugin tells the client when to come back (its error's `headers`), also through an error
  // handler of the application's, which Fastify does not give them.
  fastify.addHook('onError', function cfAccessErrorHeaders (_request, reply, error, done) {
    putErrorHeaders(reply, error)
    done()
  })
  if (options.hook !== false) {
    addScopeHook(fastify, options.hook, hook, options.corsPreflight, tokenOptional)
  } else {
    // A route with a policy added before the plugin is not guarded by watchRoutes: enforce it up front.
    fastify.addHook('onRequest', function cfAccessEarlyRoutePolicy (request: FastifyRequest, reply: FastifyReply, done: Done) {
      const { config } = request.routeOptions
      const rule = ruleOf(config)
      if (rule === NO_RULE || rule.skip || routes.guards(config)) return done()
      verify(request, reply).then(() => done(), done)
    })
  }
  watchUnguarded({ scope: fastify, verify, check: checkRoute }, log)
  fastify.addHook('onReady', async () => {
    store.start()
    // Availability first by default; with waitForKeys, a deploy that cannot reach Cloudflare fails to start.
    if (options.waitForKeys > 0) await store.whenReady(options.waitForKeys)
  })
  fastify.addHook('onClose', async () => {
    store.close()
    identities.close()
  })
  // Last, once nothing above can fail: from now on the scope counts as guarded.
  claimScope(fastify)
}

/** Puts a plugin error's `headers` (a 503's Retry-After) on the reply, for an error handler of the application's. */
function putErrorHeaders (reply: FastifyReply, error: unknown): void {
  const { headers, code } = error as { headers?: Record<string, string>, code?: unknown }
  if (headers !== undefined && typeof code === 'string' && code.startsWith('FST_CF_ACCESS_')) reply.headers(headers)
}

/** Ends a verification of `enforce` on the request (verifications of one request may overlap and end in any order). */
function doneVerifying (request: Request, verification: Verification): void {
  const under = request[kVerifying] as Verification[]
  under.splice(under.indexOf(verification), 1)
  if (under.length === 0) request[kVerifying] = null
}

/** The grant kinds a policy tried, for the 403 log line: "why was I denied", without the user's data. */
function grantsOf (policy: CompiledPolicy): string[] {
  return policy.authorize === null ? [...policy.grantKinds] : [...policy.grantKinds, 'authorize']
}
