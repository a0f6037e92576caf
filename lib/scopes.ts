/** Which Fastify scopes hold a registration of the plugin: one per chain of nested scopes, in either order. */

// A child scope is created with Object.create(parent) (fastify-plugin hands the plugin the scope itself),
// so a scope's ancestors are its prototype chain. Tracked privately, in weak sets (nothing kept alive,
// nothing to clean up): the public decorator says nothing about where registrations are. The sets are
// shared by every copy of this package loaded in the process (two versions in one app, a test runner that
// reloads modules): a route guarded by one copy's registration is guarded for the others' boot checks too.
interface Registry {
  /** Scopes with a registration. */
  registered: WeakSet<object>
  /** Scopes with a registration in themselves or in a descendant. */
  holding: WeakSet<object>
}
const kRegistry = Symbol.for('fastify-cloudflare-access.scopes')
const shared = globalThis as { [kRegistry]?: Registry }
const registry: Registry = shared[kRegistry] ??= { registered: new WeakSet(), holding: new WeakSet() }

const TWICE = 'fastify-cloudflare-access is already registered in this scope, a parent scope or a child scope. ' +
  // Stryker disable next-line StringLiteral: message text only, the advice after the refusal (the refusal and its first sentence are tested)
  'Register it once per protected scope; give one registration several audiences with audience: [...] instead of registering twice.'

/** Throws when this scope, a parent or a child already has a registration. */
export function checkScope (scope: object): void {
  if (registry.holding.has(scope) || guardOf(scope) !== undefined) throw new Error(TWICE)
}

/**
 * Records a registration in `scope` (or throws as {@link checkScope}). Called once the registration has set
 * up everything that can fail: a registration that failed (its error swallowed by an `after` callback)
 * guards nothing, so its scope must not count as guarded.
 */
export function claimScope (scope: object): void {
  checkScope(scope)
  registry.registered.add(scope)
  for (let up: object | null = scope; up !== null; up = Object.getPrototypeOf(up)) registry.holding.add(up)
}

/** The scope whose registration guards `scope`: `scope` itself or its nearest ancestor with one; undefined for none. */
export function guardOf (scope: object): object | undefined {
  for (let up: object | null = scope; up !== null; up = Object.getPrototypeOf(up)) {
    if (registry.registered.has(up)) return up
  }
  return undefined
}
