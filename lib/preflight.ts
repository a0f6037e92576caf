/** CORS preflights through the plugin's own scope hook without a token — only real ones, and never into a handler. */
import type { FastifyInstance, FastifyReply, FastifyRequest, RouteOptions } from 'fastify'
import { TokenMissingError } from './errors'

type Done = (error?: Error) => void
type Hook = (request: FastifyRequest, reply: FastifyReply, done: Done) => void

/** Set on a request the scope hook let through as a preflight: private, never serialised. */
const kPreflight = Symbol('fastify-cloudflare-access.preflight')
type Marked = FastifyRequest & { [kPreflight]: boolean }

/** A CORS preflight: `OPTIONS` with `Origin` and `Access-Control-Request-Method` (browsers never add credentials to it). */
export function isPreflight (request: FastifyRequest): boolean {
  if (request.raw.method !== 'OPTIONS') return false
  const origin = request.headers.origin
  const method = request.headers['access-control-request-method']
  return typeof origin === 'string' && origin !== '' && typeof method === 'string' && method !== ''
}

/**
 * Adds the plugin's scope hook. With `corsPreflight` off that is all (no cost). With it on, the hook lets a
 * request shaped like a preflight through unverified and marks it — except where `tokenOptional` says the
 * hook lets a request without a token through anyway (a public or optional route: there it goes to the hook
 * like any other request); a CORS plugin (such as @fastify/cors)
 * then answers it in an earlier or later hook of the same phase. Headers alone cannot tell a preflight
 * from an attacker's `OPTIONS` to a route of yours, so a marked request that was not answered by the next
 * phase — `preParsing` after an `onRequest` hook, or right after a `preHandler` hook — is refused with
 * 401 before any handler (or body parsing, in `onRequest` mode) sees it.
 */
export function addScopeHook (fastify: FastifyInstance, phase: 'onRequest' | 'preHandler', hook: Hook, corsPreflight: boolean, tokenOptional: (request: FastifyRequest) => boolean): void {
  if (!corsPreflight) {
    fastify.addHook(phase, hook)
    return
  }
  fastify.decorateRequest(kPreflight, false)
  fastify.addHook(phase, function cfAccessOrPreflight (request: FastifyRequest, reply: FastifyReply, done: Done): void {
    if (isPreflight(request) && !tokenOptional(request)) {
      (request as Marked)[kPreflight] = true
      done()
    } else {
      hook(request, reply, done)
    }
  })
  const refuse = (request: FastifyRequest, done: Done): void => {
    if ((request as Marked)[kPreflight]) done(new TokenMissingError())
    else done()
  }
  if (phase === 'onRequest') {
    // A route's own onRequest hooks run after the scope's: the refusal goes first among them, so that no
    // hook of a route sees an unverified request (a scope hook added after ours, such as @fastify/cors's,
    // still answers first). preParsing refuses what a route added before the plugin lets through.
    const refuseFirst = function cfAccessPreflightUnanswered (request: FastifyRequest, _reply: FastifyReply, done: Done): void { refuse(request, done) }
    fastify.addHook('onRoute', (route: RouteOptions) => {
      route.onRequest = [refuseFirst, ...[route.onRequest ?? []].flat()] as RouteOptions['onRequest']
    })
    fastify.addHook('preParsing', function cfAccessPreflightUnanswered (request, _reply, _payload, done) { refuse(request, done) })
  } else {
    fastify.addHook('preHandler', function cfAccessPreflightUnanswered (request, _reply, done) { refuse(request, done) })
  }
}
