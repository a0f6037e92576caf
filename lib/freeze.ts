/** Freezes an object and everything in it: for values shared by many requests, which nobody may change. */
export function deepFreeze (value: object): void {
  Object.freeze(value)
  // for...in over a parsed JSON object sees exactly its own keys, without allocating an array of values
  for (const name in value) {
    const child = (value as Record<string, unknown>)[name]
    if (typeof child === 'object' && child !== null && !Object.isFrozen(child)) deepFreeze(child)
  }
}

/**
 * Like {@link deepFreeze}, for documents from elsewhere: gives up (returning false, the value partly frozen)
 * past `maxDepth` levels, so that a deeply nested answer cannot overflow the stack.
 */
export function deepFreezeBounded (value: object, maxDepth: number): boolean {
  if (maxDepth < 0) return false
  Object.freeze(value)
  for (const name in value) {
    const child = (value as Record<string, unknown>)[name]
    if (typeof child === 'object' && child !== null && !deepFreezeBounded(child, maxDepth - 1)) return false
  }
  return true
}
