/** Route policies: a route's `config.cfAccess` policy enforced whatever else the route runs. */
import type { FastifyInstance, FastifyReply, FastifyRequest, RouteOptions } from 'fastify'
import { toError } from './errors'
import type { RouteConsumer, RouteRule } from './route-config'

type Hook = (request: FastifyRequest, reply: FastifyReply) => Promise<void>
type Done = (error?: Error) => void

/**
 * Marks the config of a route this registration guards: on the route's own copy, never on a shared policy
 * object. The mark is an object so that a guard found gone at `onReady` can be unmarked after Fastify copied it.
 */
const kGuarded = Symbol('fastify-cloudflare-access.guarded')

interface Mark { guarded: boolean }

export interface RouteGuards {
  /** For lib/route-config.ts's pass: guards a route with a policy. */
  guard: RouteConsumer
  /** Whether the route whose `config` (`request.routeOptions.config`) this is was seen being added (and so is guarded). */
  guards: (routeConfig: object) => boolean
}

/**
 * Appends to every route with a policy a last `preHandler` that runs `enforce` unless `isAdmitted` says
 * this very rule already admitted the request. So a route's policy holds even when nothing else verifies
 * it (`hook: false` without `verify`), or when a wrapper swallows `verify`'s rejection (an `@fastify/auth`
 * "or" chain).
 */
export function guardRoutePolicies (
  fastify: FastifyInstance,
  isAdmitted: (request: FastifyRequest, rule: RouteRule) => boolean,
  enforce: Hook
): RouteGuards {
  /** Guarded routes until `onReady` checks that their guard is still among their hooks. */
  let unchecked: Array<{ route: RouteOptions, guard: unknown, mark: Mark }> = []

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
    guard (route, rule) {
      if (rule.policy === null) return
      // Marked on this route's own copy of its config (lib/route-config.ts pinned the rule there).
      const mark: Mark = { guarded: true }
      route.config = { ...route.config, [kGuarded]: mark } as RouteOptions['config']
      // Callback style: no promise on the common path, where the scope hook already admitted the request.
      const guard = function cfAccessRoutePolicy (request: FastifyRequest, reply: FastifyReply, done: Done): void {
        if (isAdmitted(request, rule)) done()
        else enforce(request, reply).then(() => done(), (error: unknown) => done(toError(error)))
      }
      route.preHandler = [route.preHandler ?? []].flat().concat(guard as unknown as Hook)
      unchecked.push({ route, guard, mark })
    },
    guards: (routeConfig) => (routeConfig as { [kGuarded]?: Mark })[kGuarded]?.guarded === true
  }
}
