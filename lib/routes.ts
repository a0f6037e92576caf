/** Route-level `config.cfAccess`: validated at boot, and a route policy enforced whatever else the route runs. */
import type { FastifyInstance, FastifyReply, FastifyRequest, RouteOptions } from 'fastify'
import { toError } from './errors'
import { hasPolicy } from './optional'
import { compileRouteConfig, type CompiledPolicy } from './policy'
import type { CloudflareAccessPolicy, CloudflareAccessRouteConfig } from './types'

type Hook = (request: FastifyRequest, reply: FastifyReply) => Promise<void>
type Done = (error?: Error) => void

/**
 * Marks the config of a route this registration guards: on the route's own copy, never on a shared policy
 * object. The mark is an object so that a guard found gone at `onReady` can be unmarked after Fastify copied it.
 */
const kGuarded = Symbol('fastify-cloudflare-access.guarded')

interface Mark { guarded: boolean }

export interface RoutePolicies {
  /** The compiled policy of a route's `config.cfAccess` object (compiled on first use for a route added before the plugin). */
  policyOf: (config: object) => CompiledPolicy
  /**
   * Validates a route's `config.cfAccess` as the route's `onRoute` pass does (throws naming the route), for a
   * route added before the plugin, which that pass never saw.
   */
  check: (route: RouteOptions) => void
  /** Whether the route whose `config` (`request.routeOptions.config`) this is was seen being added (and so is guarded). */
  guards: (routeConfig: object) => boolean
}

/**
 * Watches the routes of the scope: validates each `config.cfAccess` when the route is added (a bad one fails
 * the boot), refuses `false` next to an explicit `verify` (a contradiction), and appends to every route with
 * a policy a last `preHandler` that runs `enforce` unless `isAdmitted` says this very policy already admitted
 * the request. So a route's policy holds even when nothing else verifies it (`hook: false` without `verify`),
 * or when a wrapper swallows `verify`'s rejection (an `@fastify/auth` "or" chain).
 */
export function watchRoutes (
  fastify: FastifyInstance,
  verify: Hook,
  isAdmitted: (request: FastifyRequest, config: object) => boolean,
  enforce: Hook
): RoutePolicies {
  const compiled = new WeakMap<object, CompiledPolicy>()
  /** Guarded routes until `onReady` checks that their guard is still among their hooks. */
  let unchecked: Array<{ route: RouteOptions, guard: unknown, mark: Mark }> = []

  /** Validates the route's config (a bad one throws) and compiles a policy; returns the config, or undefined when there is none to guard. */
  function check (route: RouteOptions): object | undefined {
    const config = (route.config as { cfAccess?: unknown } | undefined)?.cfAccess
    if (config === undefined) return undefined
    const where = `route ${String(route.method)} ${route.url}`
    if (config === false) {
      const hooks = [route.onRequest, route.preHandler].flat()
      if (hooks.includes(verify)) {
        throw new Error(`fastify-cloudflare-access: ${where}: config.cfAccess is false (no verification) but the route also runs fastify.cfAccess.verify; remove one of them`)
      }
      return undefined
    }
    compiled.set(config as object, compileRouteConfig(where, config))
    return config as object
  }

  fastify.addHook('onRoute', (route: RouteOptions) => {
    const config = check(route)
    if (config === undefined) return
    if (!hasPolicy(config)) {
      // Only `required` (lib/optional.ts): nothing to guard, but pinned like a policy (see below).
      route.config = { ...route.config, cfAccess: config as CloudflareAccessRouteConfig } as RouteOptions['config']
      return
    }
    // Fastify copies the route's own enumerable config into the route: pin the policy validated here (an
    // inherited or getter `cfAccess` would vanish from the copy) and mark this route, not the policy object
    // (which a route added before the plugin, unguarded, may share).
    const mark: Mark = { guarded: true }
    route.config = { ...route.config, cfAccess: config as CloudflareAccessPolicy, [kGuarded]: mark } as RouteOptions['config']
    // Callback style: no promise on the common path, where the scope hook already admitted the request.
    const guard = function cfAccessRoutePolicy (request: FastifyRequest, reply: FastifyReply, done: Done): void {
      if (isAdmitted(request, config)) done()
      else enforce(request, reply).then(() => done(), (error: unknown) => done(toError(error)))
    }
    route.preHandler = [route.preHandler ?? []].flat().concat(guard as unknown as Hook)
    unchecked.push({ route, guard, mark })
  })

  // An onRoute hook added after ours may assign route.preHandler and drop the guard. Fastify has built the
  // routes' hooks from those same route options by now: a route that lost its guard is unmarked, and
  // (under hook: false) is enforced up front like a route added before the plugin.
  fastify.addHook('onReady', function checkGuards (done) {
    for (const { route, guard, mark } of unchecked) {
      if (![route.preHandler].flat().includes(guard as Hook)) mark.guarded = false
    }
    // Stryker disable next-line ArrayDeclaration: equivalent, onReady runs once and no route is added after it: the list is never read again (this lets the routes go)
    unchecked = []
    done()
  })

  return {
    check (route) { check(route) },
    policyOf (config) {
      let policy = compiled.get(config)
      if (policy === undefined) {
        // Stryker disable next-line StringLiteral: message text only
        policy = compileRouteConfig('a route', config)
        compiled.set(config, policy)
      }
      return policy
    },
    guards: (routeConfig) => (routeConfig as { [kGuarded]?: Mark })[kGuarded]?.guarded === true
  }
}
