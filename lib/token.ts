import type { IncomingHttpHeaders } from 'node:http'
import { TokenInvalidError, TokenMissingError } from './errors'

/** Longest token accepted, in characters. Real Access tokens stay under the 4 KB cookie limit. */
export const MAX_TOKEN_LENGTH = 8192

export const HEADER_NAME = 'cf-access-jwt-assertion'
export const COOKIE_NAME = 'CF_Authorization'

// Three non-empty base64url segments. Linear: no nested quantifiers.
const COMPACT_JWS = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/
// Cloudflare's kids are 64 hex characters; allow any short id of URL-safe characters.
const KID = /^[A-Za-z0-9._~:-]{1,128}$/

/**
 * The token of a request: the `Cf-Access-Jwt-Assertion` header, else the `CF_Authorization` cookie,
 * read from the raw `Cookie` header so that it works with or without @fastify/cookie, registered in any
 * order, in any hook. The unsigned `Cf-Access-Authenticated-User-Email` header is never read.
 */
export function readToken (headers: IncomingHttpHeaders): string | undefined {
  const header = headers[HEADER_NAME]
  if (typeof header === 'string' && header !== '') return header
  const cookie = headers.cookie
  return typeof cookie === 'string' ? readCookie(cookie) : undefined
}

/** The first `CF_Authorization` value of a `Cookie` header, surrounding quotes removed. */
export function readCookie (cookie: string): string | undefined {
  let start = 0
  while (start < cookie.length) {
    let end = cookie.indexOf(';', start)
    if (end === -1) end = cookie.length
    const eq = cookie.indexOf('=', start)
    if (eq !== -1 && eq < end && cookie.slice(start, eq).trim() === COOKIE_NAME) {
      let value = cookie.slice(eq + 1, end).trim()
      if (value.length >= 2 && value.charCodeAt(0) === 34 && value.charCodeAt(value.length - 1) === 34) {
        value = value.slice(1, -1)
      }
      return value === '' ? undefined : value
    }
    start = end + 1
  }
  return undefined
}

/**
 * Cheap structural checks, before any key lookup or RSA work: size, shape, and a header that asks for
 * RS256 with a sane key id. Returns the key id; throws a 401 error otherwise.
 */
export function checkStructure (token: unknown): string {
  if (typeof token !== 'string') {
    if (token === undefined || token === null) throw new TokenMissingError()
    throw new TokenInvalidError('not a string')
  }
  if (token === '') throw new TokenMissingError()
  if (token.length > MAX_TOKEN_LENGTH) throw new TokenInvalidError(`longer than ${MAX_TOKEN_LENGTH} characters`)
  if (!COMPACT_JWS.test(token)) throw new TokenInvalidError('not a compact JWS of three base64url segments')

  let header: unknown
  try {
    header = JSON.parse(Buffer.from(token.slice(0, token.indexOf('.')), 'base64url').toString('utf8'))
  } catch {
    throw new TokenInvalidError('header is not JSON')
  }
  if (header === null || typeof header !== 'object' || Array.isArray(header)) {
    throw new TokenInvalidError('header is not a JSON object')
  }
  const { alg, kid } = header as { alg?: unknown, kid?: unknown }
  if (alg !== 'RS256') throw new TokenInvalidError('algorithm is not RS256')
  if (kid === undefined) throw new TokenInvalidError('no key id (kid) in header')
  if (typeof kid !== 'string' || !KID.test(kid)) throw new TokenInvalidError('malformed key id (kid)')
  return kid
}
