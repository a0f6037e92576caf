/** Freezes an object and everything in it: for values shared by many requests, which nobody may change. */
export function deepFreeze (value: object): void {
  Object.freeze(value)
  // for...in over a parsed JSON object sees exactly its own keys, without allocating an array of values
  for (const name in value) {
    const child = (value as Record<string, unknown>)[name]
    if (typeof child === 'object' && child !== null && !Object.isFrozen(child)) deepFreeze(child)
  }
}
