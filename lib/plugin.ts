import type { FastifyInstance, FastifyReply, FastifyRequest, RouteOptions } from 'fastify'
import { isServiceToken, subjectOf } from './claims'
import { errorCodes, ForbiddenError, NoIdentityError, TokenMissingError } from './errors'
import { IdentityClient } from './identity'
import { KeyStore } from './keys'
import { normalizeOptions } from './options'
import { admits, compileRouteConfig, type CompiledPolicy } from './policy'
import { readToken } from './token'
import type { CloudflareAccessClaims, CloudflareAccessDecorator, CloudflareAccessIdentity, FastifyCloudflareAccessOptions } from './types'
import { createTokenVerifier, kCacheCounters } from './verify'

/** Seconds a client should wait before retrying a 503. */
const RETRY_AFTER = '5'

/** Where the verified token waits for `request.cfAccessIdentity()`: private, never serialised. */
const kToken = Symbol('fastify-cloudflare-access.token')

type RequestWithToken = FastifyRequest & { [kToken]: string | null }

/**
 * The plugin body (wrapped by fastify-plugin in index.ts): validates the options, builds the key store,
 * the verifier and the identity client once, decorates, and adds the hooks.
 */
export async function cloudflareAccess (fastify: FastifyInstance, rawOptions: FastifyCloudflareAccessOptions): Promise<void> {
  const options = normalizeOptions(rawOptions)
  if (fastify.hasDecorator('cfAccess')) {
    throw new Error(
      'fastify-cloudflare-access is already registered in this scope or a parent scope. Register it once per ' +
      'protected scope; give one registration several audiences with audience: [...] instead of registering twice.'
    )
  }

  const store = new KeyStore({
    certsUrl: options.certsUrl,
    fetchTimeout: options.fetchTimeout,
    refreshInterval: options.refreshInterval,
    unknownKidCooldown: options.unknownKidCooldown,
    maxStaleAge: options.maxStaleAge,
    log: fastify.log.child({ plugin: 'fastify-cloudflare-access' })
  })
  const verifier = createTokenVerifier(options, store)
  const identities = new IdentityClient({
    url: options.identityUrl,
    timeout: options.identityTimeout,
    ttl: options.identityCacheTtl,
    size: options.identityCacheSize
  })
  // Route policies, compiled when the route is added (so that a bad one fails at boot), keyed by the
  // route's own config.cfAccess object.
  const routePolicies = new WeakMap<object, CompiledPolicy>()

  function identityOf (request: FastifyRequest): Promise<CloudflareAccessIdentity> {
    const claims = request.cfAccess
    const token = (request as RequestWithToken)[kToken]
    if (claims === null || token === null) return Promise.reject(new TokenMissingError())
    if (isServiceToken(claims)) return Promise.reject(new NoIdentityError())
    return identities.get(token, claims.exp)
  }

  async function enforce (policy: CompiledPolicy, claims: CloudflareAccessClaims, request: FastifyRequest): Promise<void> {
    if (await admits(policy, claims, request, () => identityOf(request))) return
    throw Object.assign(new ForbiddenError(), { route: request.routeOptions.url, subject: subjectOf(claims) })
  }

  function routePolicy (config: object): CompiledPolicy {
    let policy = routePolicies.get(config)
    if (policy === undefined) {
      // A route added before this plugin in the same scope: compile (and validate) on first use.
      policy = compileRouteConfig('a route', config)
      routePolicies.set(config, policy)
    }
    return policy
  }

  /** A 503 tells the client when to come back; every error goes on to Fastify's error handler. */
  function rejected (reply: FastifyReply, error: unknown): Error {
    const { code } = error as { code?: unknown }
    if (code === errorCodes.KEYS_UNAVAILABLE || code === errorCodes.IDENTITY_UNAVAILABLE) reply.header('retry-after', RETRY_AFTER)
    return error as Error
  }

  function accept (request: FastifyRequest, token: string, claims: CloudflareAccessClaims): void {
    (request as RequestWithToken)[kToken] = token
    request.cfAccess = claims
  }

  /** The policies that apply to this request (the plugin's, then the route's), or none. */
  async function authorizeRequest (request: FastifyRequest, claims: CloudflareAccessClaims, routeConfig: object | undefined): Promise<void> {
    if (options.policy !== null) await enforce(options.policy, claims, request)
    if (routeConfig !== undefined) await enforce(routePolicy(routeConfig), claims, request)
  }

  /** The slow path: a key to fetch, or policies to apply. */
  async function authenticateAsync (request: FastifyRequest, reply: FastifyReply, token: string, pending: CloudflareAccessClaims | Promise<CloudflareAccessClaims>, routeConfig: object | undefined): Promise<void> {
    let claims: CloudflareAccessClaims
    try {
      claims = await pending
    } catch (error) {
      throw rejected(reply, error)
    }
    accept(request, token, claims)
    try {
      await authorizeRequest(request, claims, routeConfig)
    } catch (error) {
      throw rejected(reply, error) // unchanged: an error of `authorize` goes on as it is
    }
  }

  /**
   * Authenticates (and authorizes) one request. Without I/O and without a policy — the common case — it
   * works synchronously and returns nothing (accepted) or the error to answer; otherwise a promise.
   */
  function authenticate (request: FastifyRequest, reply: FastifyReply): undefined | Error | Promise<void> {
    const routeConfig = request.routeOptions.config.cfAccess
    if (routeConfig === false) return undefined
    const token = readToken(request.headers)
    const claims = verifier.verify(token)
    if (claims instanceof Error) return rejected(reply, claims)
    if (claims instanceof Promise || options.policy !== null || routeConfig !== undefined) {
      return authenticateAsync(request, reply, token as string, claims, routeConfig)
    }
    accept(request, token as string, claims)
    return undefined
  }

  /** The scope hook, callback style: no promise and no exception on the synchronous path. */
  function hook (request: FastifyRequest, reply: FastifyReply, done: (error?: Error) => void): void {
    const outcome = authenticate(request, reply)
    if (outcome === undefined) done()
    else if (outcome instanceof Error) done(outcome)
    else outcome.then(() => done(), done)
  }

  async function verify (request: FastifyRequest, reply: FastifyReply): Promise<void> {
    const outcome = authenticate(request, reply)
    if (outcome instanceof Error) throw outcome
    await outcome
  }

  async function verifyToken (token: string): Promise<CloudflareAccessClaims> {
    const claims = await verifier.verify(token)
    if (claims instanceof Error) throw claims
    return claims
  }

  const decorator: CloudflareAccessDecorator = {
    verify,
    verifyToken
  }
  Object.defineProperty(decorator, kCacheCounters, { value: verifier.cacheCounters })
  fastify.decorate('cfAccess', decorator)
  fastify.decorateRequest('cfAccess', null)
  fastify.decorateRequest(kToken, null)
  fastify.decorateRequest('cfAccessIdentity', function (this: FastifyRequest) { return identityOf(this) })
  if (options.hook !== false) fastify.addHook(options.hook, hook)

  fastify.addHook('onRoute', (route: RouteOptions) => {
    const config = (route.config as { cfAccess?: unknown } | undefined)?.cfAccess
    if (config === undefined) return
    const where = `route ${String(route.method)} ${route.url}`
    if (config === false) {
      const hooks = [route.onRequest, route.preHandler].flat()
      if (hooks.includes(verify)) {
        throw new Error(`fastify-cloudflare-access: ${where}: config.cfAccess is false (no verification) but the route also runs fastify.cfAccess.verify; remove one of them`)
      }
      return
    }
    routePolicies.set(config as object, compileRouteConfig(where, config))
  })
  fastify.addHook('onReady', async () => { store.start() })
  fastify.addHook('onClose', async () => { store.close() })
}
