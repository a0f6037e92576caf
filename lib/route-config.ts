/** A route's `config.cfAccess`: read, validated and normalized in this module alone, into the rule every other module reads. */
import type { FastifyInstance, RouteOptions } from 'fastify'
import { checkOptional } from './optional'
import { compilePolicy, type CompiledPolicy } from './policy'
import { didYouMean } from './suggest'
import type { CloudflareAccessHook } from './types'

/** What a route's `config.cfAccess` asks of the plugin, validated. */
export interface RouteRule {
  /** `false`: the plugin's own hook skips the route. */
  readonly skip: boolean
  /** The route's `required` as written; undefined: the registration's decides. */
  readonly required: boolean | undefined
  /** The route's policy (`allow`, `authorize`), compiled; null without one. */
  readonly policy: CompiledPolicy | null
  /**
   * Why the value is no valid `config.cfAccess`, for a route the boot could not check (seen only at request
   * time): never optional, and refused when a token would be admitted. Null for a valid one.
   */
  readonly error: Error | null
}

/** A route without `config.cfAccess`. */
export const NO_RULE: RouteRule = Object.freeze({ skip: false, required: undefined, policy: null, error: null })
const SKIP: RouteRule = Object.freeze({ skip: true, required: undefined, policy: null, error: null })

/** Where the rule of a route the registration saw is pinned, on the route's own copy of its config. */
const kRule = Symbol('fastify-cloudflare-access.rule')

/** A pinned rule, with the value it was read from: it holds only while the route still carries that value. */
interface Pinned { readonly of: unknown, readonly rule: RouteRule }

const POLICY_KEYS = new Set(['allow', 'authorize', 'required'])

function fail (where: string, message: string): never {
  throw new Error(`fastify-cloudflare-access: ${where}: ${message}`)
}

/** The `config.cfAccess` of a route's options as written (own or inherited): for this module and the boot check's questions. */
function rawOf (config: unknown): unknown {
  return (config as { cfAccess?: unknown } | undefined)?.cfAccess
}

/**
 * Fastify copies only a config's own enumerable properties into the route: an inherited, getter or
 * non-enumerable `cfAccess` would be checked at boot but vanish from the route. Pinned as an own property
 * (for a route added before the plugin; the registration's pass pins the ones it sees).
 */
export function pinRouteConfig (route: RouteOptions): void {
  const raw = rawOf(route.config)
  if (raw !== undefined && !Object.prototype.propertyIsEnumerable.call(route.config, 'cfAccess')) {
    route.config = { ...route.config, cfAccess: raw } as RouteOptions['config']
  }
}

/** Whether the route's options carry a `config.cfAccess` at all. */
export function hasRouteConfig (route: RouteOptions): boolean {
  return rawOf(route.config) !== undefined
}

/**
 * Validates a `config.cfAccess` and normalizes it; throws an Error naming `where` for a value the plugin
 * refuses: neither `false` nor an object, unknown keys, a `required` that is not a boolean, `required: false`
 * next to a policy ("anyone, but only these people" has no meaning), or an object that asks nothing.
 */
export function readRouteConfig (where: string, raw: unknown): RouteRule {
  if (raw === undefined) return NO_RULE
  if (raw === false) return SKIP
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    fail(where, 'config.cfAccess must be false or a policy { allow?, authorize? }')
  }
  const value = raw as Record<string, unknown>
  for (const key of Object.keys(value)) {
    if (!POLICY_KEYS.has(key)) fail(where, `unknown key "config.cfAccess.${key}";${didYouMean(key, POLICY_KEYS)} known: allow, authorize, required`)
  }
  const { allow, authorize, required } = value
  const hasPolicy = allow !== undefined || authorize !== undefined
  if (required !== undefined && typeof required !== 'boolean') fail(where, 'config.cfAccess.required must be true or false')
  if (required === false && hasPolicy) {
    fail(where, 'config.cfAccess has required: false and a policy (allow/authorize): a policy needs a token, so the route cannot be optional; remove one of them')
  }
  if (!hasPolicy && required === undefined) {
    fail(where, 'config.cfAccess needs "allow", "authorize" or "required" (or false to skip verification)')
  }
  return Object.freeze({ skip: false, required, policy: hasPolicy ? compilePolicy(where, allow, authorize) : null, error: null })
}

/** Rules of values read at request time (routes the boot could not check), by the value. */
const read = new WeakMap<object, RouteRule>()

/** The rule of a value as `readRouteConfig` reads it, without throwing: an invalid one carries its error. */
function ruleOfValue (raw: unknown): RouteRule {
  if (raw === null || typeof raw !== 'object') {
    try {
      return readRouteConfig('a route', raw)
    } catch (error) {
      return { ...NO_RULE, error: error as Error }
    }
  }
  let rule = read.get(raw)
  if (rule === undefined) {
    try {
      rule = readRouteConfig('a route', raw)
    } catch (error) {
      rule = Object.freeze({ ...NO_RULE, error: error as Error })
    }
    read.set(raw, rule)
  }
  return rule
}

/**
 * The rule of the route a request was routed to (`request.routeOptions.config`): the one pinned when a
 * registration saw the route added, else its value read now (a route added before the plugin, outside its
 * scope with its `verify`, or unseen by the boot).
 */
export function ruleOf (config: object): RouteRule {
  const raw = rawOf(config)
  const pinned = (config as { [kRule]?: Pinned })[kRule]
  // An onRoute hook added after the pass may give the route another value: that one is read, never the pinned rule.
  return pinned !== undefined && pinned.of === raw ? pinned.rule : ruleOfValue(raw)
}

/**
 * Whether a route's `config.cfAccess` asks for no protection, so that it may stand outside every
 * registration: none, `false`, or a valid `{ required: false }`. Anything else — `{ required: true }`, a
 * policy, a value the plugin would refuse (`'yes'`, `null`, unknown keys) — states protection.
 */
export function asksNothing (rule: RouteRule): boolean {
  return rule.error === null && rule.policy === null && rule.required !== true
}

/** The rule of a route's options as written, for the boot check (an invalid value carries its error). */
export function ruleOfRoute (route: RouteOptions): RouteRule {
  return ruleOfValue(rawOf(route.config))
}

/** What the route checks need of a registration. */
export interface RouteContext {
  hook: CloudflareAccessHook
  /** The plugin-level `required`. */
  required: boolean
  /** Whether the registration has a plugin-level policy (`allow` or `authorize`). */
  hasPolicy: boolean
  /** The registration's `fastify.cfAccess.verify`. */
  verify: unknown
}

/** What is done with each route of the registration's scope once its rule is read. */
export type RouteConsumer = (route: RouteOptions, rule: RouteRule) => void

/**
 * The one `onRoute` pass of a registration: each route added to its scope has its `config.cfAccess` read,
 * validated against the registration (a bad one fails the boot, naming the route) and pinned, as a rule, on
 * the route's own config — which also keeps a value Fastify would not copy (inherited, a getter). Then each
 * consumer (the route policy's guard, the OpenAPI description…) gets the route and its rule. Returns the
 * check for a route the pass did not see (added before the plugin: the boot check validates it).
 */
export function watchRouteConfig (fastify: FastifyInstance, context: RouteContext, consumers: RouteConsumer[]): (route: RouteOptions) => void {
  function check (route: RouteOptions): RouteRule {
    const where = `route ${String(route.method)} ${route.url}`
    const rule = readRouteConfig(where, rawOf(route.config))
    if (rule.skip && ([route.onRequest, route.preHandler].flat() as unknown[]).includes(context.verify)) {
      fail(where, 'config.cfAccess is false (no verification) but the route also runs fastify.cfAccess.verify; remove one of them')
    }
    if (rule !== NO_RULE && !rule.skip) checkOptional(where, rule, context)
    return rule
  }
  fastify.addHook('onRoute', (route: RouteOptions) => {
    const rule = check(route)
    if (rule !== NO_RULE) {
      const raw = rawOf(route.config)
      const pinned: Pinned = { of: raw, rule }
      route.config = { ...route.config, cfAccess: raw, [kRule]: pinned } as RouteOptions['config']
    }
    for (const consume of consumers) consume(route, rule)
  })
  return (route) => { check(route) }
}
