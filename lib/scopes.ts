/** Which Fastify scopes hold a registration of the plugin: one per chain of nested scopes, in either order. */

// A child scope is created with Object.create(parent) (fastify-plugin hands the plugin the scope itself),
// so a scope's ancestors are its prototype chain. Tracked privately, in weak sets (nothing kept alive,
// nothing to clean up): the public decorator says nothing about where registrations are.
const registered = new WeakSet<object>()
/** Scopes with a registration in themselves or in a descendant. */
const holding = new WeakSet<object>()

const TWICE = 'fastify-cloudflare-access is already registered in this scope, a parent scope or a child scope. ' +
  // Stryker disable next-line StringLiteral: message text only, the advice after the refusal (the refusal and its first sentence are tested)
  'Register it once per protected scope; give one registration several audiences with audience: [...] instead of registering twice.'

/** Records a registration in `scope`, or throws when this scope, a parent or a child already has one. */
export function claimScope (scope: object): void {
  if (holding.has(scope)) throw new Error(TWICE)
  for (let up: object | null = Object.getPrototypeOf(scope); up !== null; up = Object.getPrototypeOf(up)) {
    if (registered.has(up)) throw new Error(TWICE)
  }
  registered.add(scope)
  for (let up: object | null = scope; up !== null; up = Object.getPrototypeOf(up)) holding.add(up)
}
