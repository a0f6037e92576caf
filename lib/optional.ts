/** Optional authentication (`required: false`, per plugin or per route): no token goes on anonymously through the plugin's own hook; a bad token never does. */
import type { RouteContext, RouteRule } from './route-config'

function fail (where: string, message: string): never {
  throw new Error(`fastify-cloudflare-access: ${where}: ${message}`)
}

/**
 * Whether the plugin's own hook lets a request **without a token** through on this route, with
 * `request.cfAccess` left `null`. A route's `required: false` decides, else (no `config.cfAccess`) the
 * plugin's; a route with a policy is never optional, nor one whose value is invalid (seen only at request
 * time), nor one that says neither a policy nor `required`. Called only when the request has no token, so
 * it costs nothing on the common path.
 */
export function isOptional (rule: RouteRule, pluginRequired: boolean): boolean {
  if (rule.error !== null || rule.policy !== null) return false
  // A valid config.cfAccess says required or a policy: without either, the route has none.
  return rule.required === undefined ? !rule.skip && !pluginRequired : !rule.required
}

/**
 * Refuses at boot what a route's `required` cannot mean in its registration: `required` under `hook:
 * false` (only the plugin's own hook makes a token optional; `fastify.cfAccess.verify` always requires
 * one), a route policy that would inherit the plugin's `required: false`, and an optional route under a
 * plugin-level policy (an anonymous visitor would get more than a signed-in user the policy refuses).
 */
export function checkOptional (where: string, rule: RouteRule, context: RouteContext): void {
  const { required } = rule
  if (context.hook === false && required !== undefined) {
    fail(where, 'config.cfAccess.required applies to the plugin\'s own hook, and this registration has hook: false (fastify.cfAccess.verify always requires a token)')
  }
  if (!context.required && required === undefined && rule.policy !== null) {
    fail(where, 'the plugin has required: false and this route has a policy (allow/authorize): add required: true to the route\'s config.cfAccess to require a token there')
  }
  if (context.hasPolicy && required === false) {
    fail(where, 'config.cfAccess has required: false but the registration has a policy (allow/authorize), which an anonymous visitor would skip: ' +
      'use config.cfAccess: false for a public route, or put the optional routes in a scope whose registration has no policy')
  }
}
