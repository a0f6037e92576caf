import { isUtf8 } from 'node:buffer'
import type { IncomingHttpHeaders } from 'node:http'
import { TokenInvalidError, TokenMissingError } from './errors'

/** Longest token accepted, in characters. Real Access tokens stay under the 4 KB cookie limit. */
export const MAX_TOKEN_LENGTH = 8192

export const HEADER_NAME = 'cf-access-jwt-assertion'
export const COOKIE_NAME = 'CF_Authorization'

// Three non-empty base64url segments. Linear: no nested quantifiers.
const COMPACT_JWS = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/
/** Cloudflare's kids are 64 hex characters; any short id of URL-safe characters is accepted. */
export const KID = /^[A-Za-z0-9._~:-]{1,128}$/

/**
 * The token of a request: the `Cf-Access-Jwt-Assertion` header, else the `CF_Authorization` cookie,
 * read from the raw `Cookie` header so that it works with or without @fastify/cookie, registered in any
 * order, in any hook. The unsigned `Cf-Access-Authenticated-User-Email` header is never read.
 */
export function readToken (headers: IncomingHttpHeaders): string | undefined {
  // Node joins a repeated header into one string ('a, b'), which no token matches.
  const header = headers[HEADER_NAME]
  if (typeof header === 'string' && header !== '') return header
  const cookie = headers.cookie
  return typeof cookie === 'string' ? readCookie(cookie) : undefined
}

/**
 * The first `CF_Authorization` value of a `Cookie` header, surrounding quotes removed: the value of the
 * first `;`-separated pair whose name, without surrounding white space, is `CF_Authorization`.
 *
 * Linear in the header's length whatever its shape, and as fast for a hostile header (64 KiB of `;`, of
 * pairs without `=`) as for a benign one: it looks for the name itself with a native search and checks
 * only its occurrences (each white-space run next to one is read at most twice), instead of walking every
 * pair.
 */
export function readCookie (cookie: string): string | undefined {
  const length = cookie.length
  let at = cookie.indexOf(COOKIE_NAME)
  while (at !== -1) {
    let before = at - 1
    while (before >= 0 && isSpace(cookie.charCodeAt(before))) before--
    let eq = at + COOKIE_NAME.length
    while (eq < length && isSpace(cookie.charCodeAt(eq))) eq++
    // A name: nothing but white space back to the pair's start, and `=` right after it.
    if ((before === -1 || cookie.charCodeAt(before) === 59 /* ; */) && cookie.charCodeAt(eq) === 61 /* = */) {
      let end = cookie.indexOf(';', eq)
      if (end === -1) end = length
      let value = cookie.slice(eq + 1, end).trim()
      if (value.length >= 2 && value.charCodeAt(0) === 34 && value.charCodeAt(value.length - 1) === 34) {
        value = value.slice(1, -1)
      }
      return value === '' ? undefined : value
    }
    at = cookie.indexOf(COOKIE_NAME, at + 1)
  }
  return undefined
}

/** The characters `String.prototype.trim` removes (a header holds tab and space; the rest for the same answer as trim). */
function isSpace (code: number): boolean {
  return code === 32 || code === 9 || code === 10 || code === 11 || code === 12 || code === 13 ||
    code === 0xa0 || code === 0xfeff || code === 0x1680 || (code >= 0x2000 && code <= 0x200a) ||
    code === 0x2028 || code === 0x2029 || code === 0x202f || code === 0x205f || code === 0x3000
}

/**
 * Cheap structural checks, before any key lookup or RSA work: size, shape, canonical base64url, and a
 * header that asks for RS256 with a sane key id. Returns the key id, or the 401 error to answer (returned,
 * not thrown: rejections are ordinary traffic and exceptions are slow).
 */
export function checkStructure (token: unknown): string | Error {
  if (typeof token !== 'string') {
    // Stryker disable next-line StringLiteral: message text only (the refusal and its code are tested)
    return token === undefined || token === null ? new TokenMissingError() : new TokenInvalidError('not a string')
  }
  if (token === '') return new TokenMissingError()
  // Stryker disable next-line StringLiteral: message text only (the refusal and its code are tested)
  if (token.length > MAX_TOKEN_LENGTH) return new TokenInvalidError(`longer than ${MAX_TOKEN_LENGTH} characters`)
  // Stryker disable next-line StringLiteral: message text only (the refusal and its code are tested)
  if (!COMPACT_JWS.test(token)) return new TokenInvalidError('not a compact JWS of three base64url segments')
  const firstDot = token.indexOf('.')
  const lastDot = token.lastIndexOf('.')
  if (!canonical(token, 0, firstDot) || !canonical(token, firstDot + 1, lastDot) || !canonical(token, lastDot + 1, token.length)) {
    return new TokenInvalidError('not canonical base64url')
  }

  const bytes = Buffer.from(token.slice(0, firstDot), 'base64url')
  // JWS headers and JWT claims are UTF-8 JSON: invalid bytes would be silently replaced by U+FFFD.
  if (!isUtf8(bytes) || !payloadIsUtf8(token, firstDot, lastDot)) {
    return new TokenInvalidError('not valid UTF-8')
  }
  const text = bytes.toString('utf8')
  // Every JWS header is a JSON object: check its first character before paying for a parse (and an
  // exception) on random bytes.
  // Stryker disable next-line StringLiteral: message text only (the refusal and its code are tested)
  if (text.charCodeAt(0) !== 0x7b /* { */) return new TokenInvalidError('header is not a JSON object')
  let header: { alg?: unknown, kid?: unknown }
  try {
    header = JSON.parse(text) // starting with '{', it is an object or it throws
  } catch {
    // Stryker disable next-line StringLiteral: message text only (the refusal and its code are tested)
    return new TokenInvalidError('header is not JSON')
  }
  const { alg, kid } = header
  if (alg !== 'RS256') return new TokenInvalidError('algorithm is not RS256')
  if (kid === undefined) return new TokenInvalidError('no key id (kid) in header')
  if (typeof kid !== 'string' || !KID.test(kid)) return new TokenInvalidError('malformed key id (kid)')
  return kid
}

/** Header segments remembered by a `StructureMemo`: Cloudflare signs with one key at a time, two during a rotation. */
const REMEMBERED_HEADERS = 4

/** What `StructureMemo.decode` comes to. */
export type Decoded<K> =
  /** fast-jwt verified the token with the key of its kid: its payload (UTF-8, as checkStructure wants it). */
  | { readonly key: K, readonly payload: Record<string, unknown>, readonly error?: undefined, readonly kid?: undefined }
  /** fast-jwt refused a token checkStructure accepts: what fast-jwt threw (its claims, its signature). */
  | { readonly key: K, readonly refused: unknown, readonly payload?: undefined, readonly error?: undefined, readonly kid?: undefined }
  /** checkStructure's refusal, whichever path the token took. */
  | { readonly error: Error, readonly key?: undefined, readonly kid?: undefined }
  /** A token checkStructure accepts whose key is not at hand: resolve the key, then `decodeWithKey`. */
  | { readonly kid: string, readonly key?: undefined, readonly error?: undefined }

/**
 * Structure first, then fast-jwt, with the rules of the hot path kept here and nowhere else. All the tokens
 * of one signing key share one header segment, so a header that passed checkStructure is remembered (a
 * few, the latest first out), and a token that starts with one, whose key is at hand, goes to fast-jwt
 * without checkStructure's work: fast-jwt's decoder checks the segments' alphabet and JSON itself (where
 * it does: the start-up self-check, lib/decoder-check.ts, turns the hot path off otherwise). So that every
 * answer is checkStructure's:
 *  - the hot path is taken only for a key at hand: nothing but fast-jwt runs before checkStructure (no key
 *    fetch for an unknown kid);
 *  - whenever fast-jwt refuses a token, checkStructure's refusal, if it has one, is the answer;
 *  - a payload fast-jwt accepted is refused unless it is UTF-8 (fast-jwt would replace invalid bytes).
 */
export class StructureMemo {
  readonly #hot: boolean
  // Stryker disable next-line ArrayDeclaration: equivalent, the first remember overwrites slot 0, and until then its kid is undefined (no kid: not the hot path)
  readonly #headers: string[] = []
  // Stryker disable next-line ArrayDeclaration: equivalent, the first remember overwrites slot 0, and no header is remembered before it
  readonly #kids: string[] = []
  #next = 0

  /** `hot`: whether the hot path may be taken (fast-jwt's decoder is strict). */
  constructor (hot = true) {
    this.#hot = hot
  }

  /**
   * Decodes and verifies `token` with `verify` (fast-jwt with the key `keyAt` has for its kid): the key at
   * hand, or the kid to resolve.
   */
  decode<K> (token: unknown, keyAt: (kid: string) => K | undefined, verify: (key: K, token: string) => Record<string, unknown>): Decoded<K> {
    // Within the size cap only: fast-jwt knows no cap, and a validly signed token past it must still be refused.
    if (this.#hot && typeof token === 'string' && token.length <= MAX_TOKEN_LENGTH) {
      const kid = this.kidOf(token)
      const key = kid === undefined ? undefined : keyAt(kid)
      if (key !== undefined) return this.decodeWithKey(token, key, verify)
    }
    const kid = checkStructure(token)
    if (typeof kid !== 'string') return { error: kid }
    const key = keyAt(kid)
    if (key === undefined) return { kid }
    // Only the header of a key at hand: random kids would push the real one out.
    this.remember(token as string, kid)
    return this.decodeWithKey(token as string, key, verify)
  }

  /** Verifies with fast-jwt a token that checkStructure accepted, or one the hot path let through. */
  decodeWithKey<K> (token: string, key: K, verify: (key: K, token: string) => Record<string, unknown>): Decoded<K> {
    let payload: Record<string, unknown>
    try {
      payload = verify(key, token)
    } catch (refused) {
      const structural = checkStructure(token)
      return structural instanceof Error ? { error: structural } : { key, refused }
    }
    return payloadIsUtf8(token) ? { key, payload } : { error: new TokenInvalidError('not valid UTF-8') }
  }

  /**
   * The token's kid, when its header segment is one remembered and its payload and signature end in
   * canonical characters; otherwise undefined (let checkStructure decide, then `remember`).
   */
  kidOf (token: string): string | undefined {
    for (let i = 0; i < this.#headers.length; i++) {
      const header = this.#headers[i] as string
      if (token.startsWith(header)) {
        // The dot after the payload (indexOf: lastIndexOf scans far slower). A further dot makes a
        // segment fast-jwt refuses; a payload segment is at least one character long.
        const dot = token.indexOf('.', header.length)
        if (dot <= header.length) return undefined
        return canonical(token, header.length, dot) && canonical(token, dot + 1, token.length) ? this.#kids[i] : undefined
      }
    }
    return undefined
  }

  /** Remembers the header segment of a token that checkStructure accepted with this kid. */
  remember (token: string, kid: string): void {
    const header = token.slice(0, token.indexOf('.') + 1)
    if (this.#headers.includes(header)) return
    this.#headers[this.#next] = header
    this.#kids[this.#next] = kid
    this.#next = (this.#next + 1) % REMEMBERED_HEADERS
  }
}

/** Decoding room for payloadIsUtf8: a payload of the longest token accepted decodes to fewer bytes than it has characters. */
const scratch = Buffer.allocUnsafe(MAX_TOKEN_LENGTH)

/**
 * Whether a token's payload segment (between its first two dots, or between `firstDot` and `lastDot`;
 * base64url characters only) decodes to valid UTF-8. Decodes into a buffer kept for the purpose.
 */
export function payloadIsUtf8 (token: string, firstDot = token.indexOf('.'), lastDot = token.indexOf('.', firstDot + 1)): boolean {
  const length = scratch.write(token.slice(firstDot + 1, lastDot), 0, 'base64url')
  return isUtf8(scratch.subarray(0, length))
}

// The last character of a base64url segment whose length is 2 or 3 (mod 4) carries 4 or 2 unused bits,
// which must be zero: otherwise several strings decode to the same bytes, and a token could be altered
// (the signature especially) and still verify. By character code: 1 if it may end a segment whose length
// is 3 (mod 4), 2 if one of length 2 or 3; a table lookup, not a regular expression: it runs on every token.
const CANONICAL_LAST = new Uint8Array(128)
for (const char of 'AEIMQUYcgkosw048') CANONICAL_LAST[char.charCodeAt(0)] = 1
for (const char of 'AQgw') CANONICAL_LAST[char.charCodeAt(0)] = 2

/** Whether `token.slice(start, end)` (base64url characters only) is the canonical encoding of its bytes. */
function canonical (token: string, start: number, end: number): boolean {
  const length = (end - start) % 4
  // length 1 needs 3: one character cannot encode a whole byte; past the table, undefined is never ≥
  return length === 0 || (CANONICAL_LAST[token.charCodeAt(end - 1)] as number) >= 4 - length
}
