/** Route protection that no registration gives: every route of the app seen from its root, refused at boot (or, where the routes cannot all be seen, at request time). */
import diagnostics from 'node:diagnostics_channel'
import type { FastifyBaseLogger, FastifyInstance, FastifyReply, FastifyRequest, RouteOptions } from 'fastify'
import { RouteUnguardedError } from './errors'
import { asksNothing, hasRouteConfig, pinRouteConfig, ruleOf, ruleOfRoute } from './route-config'
import { guardOf } from './scopes'

// Fastify gives a plugin no list of an app's routes, and an `onRoute` hook added by a plugin sees only the
// routes added after it, in its own scope. But Fastify publishes every app it creates on the
// `fastify.initialization` channel, before any route can be added: an `onRoute` hook on that root instance is
// copied into every scope created later, so it sees every route of the app, in every scope, in every order.
// That needs this module loaded before the app is created (an `import` at the top of the file that creates
// it does so); where it was not, the routes are checked at request time instead.

interface SeenRoute {
  route: RouteOptions
  /** The instance the route was added to: its scope. */
  scope: object
}

/** A registration of the plugin, as the boot check needs it. */
export interface Registration {
  /** The scope the plugin is registered in. */
  scope: FastifyInstance
  /** Validates a route that was added before the plugin, or outside its scope with its `verify` (throws naming it). */
  check: (route: RouteOptions) => void
  /** The registration's `fastify.cfAccess.verify`: a route outside its scope that runs it is guarded by it. */
  verify: unknown
}

interface App {
  /** Every route added, until the boot check. */
  routes: SeenRoute[]
  /** Every route option object the root's hook saw: for the self-check. */
  seen: WeakSet<RouteOptions>
  /** The registrations in the app, by the scope each guards. */
  registrations: Map<object, Registration & { saw: WeakSet<RouteOptions> }>
}

// Shared by every copy of this package loaded in the process (two versions in one app, a runner that
// reloads modules): one record of each app, to which each copy adds its registrations, and one subscriber,
// the copy loaded last, whose code checks every app created since.
interface Shared {
  /** Apps created since a copy was loaded, by their root instance. */
  apps: WeakMap<object, App>
  /** Roots whose routes are refused at request time (the boot could not see them all). */
  blind: WeakSet<object>
}
const kShared = Symbol.for('fastify-cloudflare-access.unguarded.v1')
const kSubscriber = Symbol.for('fastify-cloudflare-access.unguarded.subscriber')
const globals = globalThis as { [kShared]?: Shared }
const shared: Shared = globals[kShared] ??= { apps: new WeakMap(), blind: new WeakSet() }

/** Records a new app: its routes as they are added, checked once the app is ready. */
function see (message: unknown): void {
  const root = (message as { fastify: FastifyInstance }).fastify
  // An app of another realm (a runner such as Jest gives each test file its own globals, while Node's
  // channels are the process's): its routes and registrations are that realm's copy's to check.
  if (!(root instanceof Object)) return
  const app: App = { routes: [], seen: new WeakSet(), registrations: new Map() }
  shared.apps.set(root, app)
  root.addHook('onRoute', function cfAccessSeeRoute (this: object, route: RouteOptions) {
    app.seen.add(route)
    app.routes.push({ route, scope: this })
    // A route added before the plugin is checked here, and enforced from what Fastify copies into the route.
    pinRouteConfig(route)
  })
  root.addHook('onReady', function cfAccessUnguardedRoutes (done) {
    const { routes } = app
    app.routes = []
    done(unguardedError(routes, app.registrations))
  })
}
// The subscriber is remembered on the channel, which is the process's, not on this realm's globals: a
// runner that loads the package anew in a new realm for each test file (Jest) leaves no earlier copy
// subscribed, to refuse the routes of apps whose registrations it cannot see (and to keep its realm alive).
const initialization = diagnostics.channel('fastify.initialization') as diagnostics.Channel & { [kSubscriber]?: (message: unknown) => void }
const previous = initialization[kSubscriber]
if (previous !== undefined) diagnostics.unsubscribe('fastify.initialization', previous)
initialization[kSubscriber] = see
diagnostics.subscribe('fastify.initialization', see)

/**
 * The boot's refusal, or undefined: every route that states protection no registration gives, and every
 * invalid `config.cfAccess` of a route added before the plugin, in one error.
 */
function unguardedError (routes: SeenRoute[], registrations: App['registrations']): Error | undefined {
  const unguarded = new Map<string, Set<string>>()
  const invalid: string[] = []
  for (const { route, scope } of routes) {
    if (!hasRouteConfig(route)) continue
    const guard = guardOf(scope)
    let registration: (Registration & { saw: WeakSet<RouteOptions> }) | undefined
    if (guard === undefined) {
      if (asksNothing(ruleOfRoute(route))) continue
      // Outside every registration's scope, a route that runs a registration's own `verify` before its
      // handler is guarded by that registration (verify applies the route's policy): checked as its route.
      const hooks: unknown[] = [route.onRequest, route.preParsing, route.preValidation, route.preHandler].flat()
      registration = [...registrations.values()].find(({ verify }) => hooks.includes(verify))
      if (registration === undefined) {
        const methods = unguarded.get(route.url) ?? new Set<string>()
        for (const method of [route.method].flat()) methods.add(method)
        unguarded.set(route.url, methods)
        continue
      }
    } else {
      // A copy of the package that does not share this record checks the routes of its registrations.
      registration = registrations.get(guard)
      if (registration === undefined || registration.saw.has(route)) continue
    }
    try {
      registration.check(route)
    } catch (error) {
      invalid.push((error as Error).message)
    }
  }
  if (unguarded.size === 0) return invalid.length === 0 ? undefined : new Error(invalid.join('\n'))
  const where = [...new Set([...registrations.values()].map(({ scope }) => scope.prefix === '' ? 'a scope without a prefix' : scope.prefix))]
  return new RouteUnguardedError([
    `fastify-cloudflare-access: ${unguarded.size === 1 ? 'a route states' : `${unguarded.size} routes state`} Cloudflare Access protection ` +
    '(config.cfAccess) that no registration of the plugin gives, so nothing would check a token there ' +
    (where.length === 0 ? '(the plugin is not registered in this app):' : `(the plugin is registered in: ${where.join(', ')}):`),
    ...[...unguarded].map(([url, methods]) => `  ${[...methods].join(', ')} ${url}`),
    'Register the plugin in the scope of each of these routes or in a scope above it (a registration guards its own scope and the scopes inside it), ' +
    'or move the route into a scope where it is registered. A route meant to be public says config.cfAccess: false.',
    ...invalid
  ].join('\n'))
}

/** The app's root instance: the last object of the scope's prototype chain before `Object.prototype` (of whichever realm). */
function rootOf (scope: object): object {
  let root = scope
  while (Object.getPrototypeOf(Object.getPrototypeOf(root)) !== null) root = Object.getPrototypeOf(root) as object
  return root
}

/**
 * Watches a registration's routes for the boot check: routes the registration guards that were added
 * before it are validated at boot, and every route that states protection outside every registration
 * refuses the boot. Where this module cannot see every route of the app (the app was created before it was
 * loaded, or a route reached the registration's `onRoute` without passing the root's), such routes are
 * refused at request time instead, with a 500 of their own, and one warning says why.
 */
export function watchUnguarded (registration: Registration, log: FastifyBaseLogger): void {
  const root = rootOf(registration.scope)
  const app = shared.apps.get(root)
  if (app === undefined) {
    refuseAtRequestTime(root as FastifyInstance, log, 'the app was created before fastify-cloudflare-access was loaded')
    return
  }
  const saw = new WeakSet<RouteOptions>()
  app.registrations.set(registration.scope, { ...registration, saw })
  registration.scope.addHook('onRoute', (route: RouteOptions) => {
    saw.add(route)
    if (!app.seen.has(route)) refuseAtRequestTime(root as FastifyInstance, log, `route ${String(route.method)} ${route.url} did not pass the onRoute hook of the app's root`)
  })
}

function refuseAtRequestTime (root: FastifyInstance, log: FastifyBaseLogger, why: string): void {
  if (shared.blind.has(root)) return
  shared.blind.add(root)
  log.warn(
    { fastifyVersion: root.version },
    `fastify-cloudflare-access: this app's routes cannot all be seen at boot (Fastify ${root.version}; ${why}): ` +
    // Stryker disable next-line StringLiteral: message text only (the warning, its version and its reason are tested)
    'a route whose config.cfAccess no registration guards is refused at request time ' +
    // Stryker disable next-line StringLiteral: message text only
    '(500 FST_CF_ACCESS_ROUTE_UNGUARDED) instead of at boot. Import fastify-cloudflare-access before creating the app to check at boot (with fastify-cli: fastify start -r fastify-cloudflare-access).'
  )
  // A lifecycle hook added to the root reaches every scope, those created before included.
  root.addHook('onRequest', function cfAccessUnguardedRoute (request: FastifyRequest, _reply: FastifyReply, done: (error?: Error) => void) {
    if (asksNothing(ruleOf(request.routeOptions.config)) || guardOf(request.server) !== undefined) {
      done()
      return
    }
    done(new RouteUnguardedError(`fastify-cloudflare-access: route ${request.method} ${request.routeOptions.url as string} has config.cfAccess but no registration of the plugin guards it: register the plugin in the route's scope or a scope above it, or move the route`))
  })
}
