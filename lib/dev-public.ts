/** `dev --public`: the paths the dev proxy forwards without a login, as an Access Bypass policy lets them through. */

/** A path as a browser sends it: `/`, then printable ASCII other than `?`, `#` and `*`; `*` only at the end. */
const PATTERN = /^\/[\x21-\x22\x24-\x29\x2b-\x3e\x40-\x7e]*\*?$/

/** `.` and `/` percent-encoded, and `\` (which some servers read as `/`), spelt plainly for {@link DOT_SEGMENT}. */
const SPELT_SEPARATOR = /%2e|%2f|%5c|\\/gi
const SEPARATORS: Record<string, string> = { '%2e': '.', '%2f': '/', '%5c': '/', '\\': '/' }
/**
 * A `.` or `..` segment: a server that resolves it would serve another path than the one matched. It ends at
 * a `/`, or where servers end a path: the end, a `;` (path parameters) or a `#` (`new URL('/a/..#', base)` is `/`).
 */
const DOT_SEGMENT = /\/\.\.?(?:[/;#]|$)/

/**
 * Reads `--public` values (each one path or several, comma-separated) into a test of a request's path:
 * `/health` matches `/health` only, `/static*` every path that starts with `/static` (`/static`,
 * `/static/app.js`, `/statics`). A path with a `.` or `..` segment, plain or percent-encoded, ended by `/`,
 * `;`, `#` or the path's end, is never public (Cloudflare resolves them before it matches a policy; an app
 * that resolves them would serve another path).
 * Stops at the first malformed value with a message that names it.
 */
export function publicPaths (values: readonly string[]): (path: string) => boolean {
  const exact = new Set<string>()
  const prefixes: string[] = []
  for (const value of values) {
    for (const pattern of value.split(',').map((part) => part.trim())) {
      if (!PATTERN.test(pattern)) {
        throw new Error(`--public takes paths such as /, /health or /static* (a * at the end matches every path that starts so), comma-separated; got ${JSON.stringify(pattern)} in ${JSON.stringify(value)}`)
      }
      if (pattern.endsWith('*')) prefixes.push(pattern.slice(0, -1))
      else exact.add(pattern)
    }
  }
  return (path) => !DOT_SEGMENT.test(path.replace(SPELT_SEPARATOR, (c) => SEPARATORS[c.toLowerCase()] as string)) &&
    (exact.has(path) || prefixes.some((prefix) => path.startsWith(prefix)))
}
