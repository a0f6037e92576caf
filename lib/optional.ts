/** Optional authentication (`required: false`, per plugin or per route): no token goes on anonymously through the plugin's own hook; a bad token never does. */
import type { FastifyInstance, RouteOptions } from 'fastify'
import type { CloudflareAccessHook } from './types'

function fail (where: string, message: string): never {
  throw new Error(`fastify-cloudflare-access: ${where}: ${message}`)
}

/** Whether a route's `config.cfAccess` object carries a policy (`allow` or `authorize`). */
export function hasPolicy (config: object): boolean {
  const { allow, authorize } = config as { allow?: unknown, authorize?: unknown }
  return allow !== undefined || authorize !== undefined
}

/**
 * Checks `config.cfAccess.required` where a route policy is compiled: a boolean, and never `false` next to
 * a policy — "anyone, but only these people" has no meaning, so it is refused rather than guessed.
 */
export function checkRouteRequired (where: string, config: Record<string, unknown>): void {
  const { required } = config
  if (required === undefined) return
  if (typeof required !== 'boolean') fail(where, 'config.cfAccess.required must be true or false')
  if (required === false && hasPolicy(config)) {
    fail(where, 'config.cfAccess has required: false and a policy (allow/authorize): a policy needs a token, so the route cannot be optional; remove one of them')
  }
}

/**
 * Whether the plugin's own hook lets a request **without a token** through on this route, with
 * `request.cfAccess` left `null`. A route's `required` decides, else the plugin's; a route with a policy
 * is never optional (also one added before the plugin, whose config was not checked at boot). A config
 * object without a policy and without `required` is invalid (refused at boot where the boot saw it), so
 * never optional either. Called only when the request has no token, so it costs nothing on the common path.
 */
export function isOptional (config: unknown, pluginRequired: boolean): boolean {
  if (config === undefined) return !pluginRequired
  if (config === null || typeof config !== 'object' || hasPolicy(config)) return false
  return (config as { required?: unknown }).required === false
}

/**
 * Refuses at boot what the per-route checks cannot see: `required` on a route of a `hook: false`
 * registration (only the plugin's own hook makes a token optional; `fastify.cfAccess.verify` always
 * requires one), a route policy that would inherit the plugin's `required: false`, and an optional route
 * under a plugin-level policy (an anonymous visitor would get more than a signed-in user the policy
 * refuses). Checks every route added to the scope from now on, and returns the check for routes added
 * before (lib/unguarded.ts).
 */
export function watchRequirements (fastify: FastifyInstance, hook: CloudflareAccessHook, pluginRequired: boolean, pluginHasPolicy: boolean): (route: RouteOptions) => void {
  function check (route: RouteOptions): void {
    const config = (route.config as { cfAccess?: unknown } | undefined)?.cfAccess
    if (config === null || typeof config !== 'object') return
    const where = `route ${String(route.method)} ${route.url}`
    const { required } = config as { required?: unknown }
    if (hook === false && required !== undefined) {
      fail(where, 'config.cfAccess.required applies to the plugin\'s own hook, and this registration has hook: false (fastify.cfAccess.verify always requires a token)')
    }
    if (!pluginRequired && required === undefined && hasPolicy(config)) {
      fail(where, 'the plugin has required: false and this route has a policy (allow/authorize): add required: true to the route\'s config.cfAccess to require a token there')
    }
    if (pluginHasPolicy && required === false) {
      fail(where, 'config.cfAccess has required: false but the registration has a policy (allow/authorize), which an anonymous visitor would skip: ' +
        'use config.cfAccess: false for a public route, or put the optional routes in a scope whose registration has no policy')
    }
  }
  fastify.addHook('onRoute', check)
  return check
}
