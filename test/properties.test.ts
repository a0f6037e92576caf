import Fastify, { type FastifyInstance } from 'fastify'
import fc from 'fast-check'
import t from 'tap'
import cloudflareAccess from '../index'
import { createAccessEmulator, type AccessEmulator } from '../lib/testing'
import { readCookie } from '../lib/token'
import { signingKeys } from './helpers'

// Property-based: whatever arrives, the answer is a 4xx (never 2xx for a changed token, never 5xx, never
// an exception outside Fastify's error path). fast-check prints the seed and path of any failure, so a
// failing case replays with `{ seed, path }` in fc.assert's options.

let access: AccessEmulator
let app: FastifyInstance
let valid: string

const BASE64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'
const RUNS = { numRuns: 300 }

t.before(async () => {
  access = await createAccessEmulator({ privateKeys: signingKeys() })
  app = Fastify()
  await app.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience })
  app.get('/', async (request) => ({ email: request.cfAccess?.email }))
  await app.ready()
  valid = access.signToken()
})
t.teardown(async () => {
  await app.close()
  await access.close()
})

async function status (headers: Record<string, string>): Promise<number> {
  return (await app.inject({ url: '/', headers })).statusCode
}

/** Ways to change a token: a character, the segments, the encoding. */
function mutation (): fc.Arbitrary<(token: string) => string> {
  const at = fc.nat()
  const char = fc.constantFrom(...BASE64URL, '.', '=', '+', '/', ' ', '%', '\t')
  return fc.oneof(
    fc.tuple(at, char).map(([index, c]) => (token: string) => { const i = index % token.length; return token.slice(0, i) + c + token.slice(i + 1) }),
    fc.tuple(at, char).map(([index, c]) => (token: string) => { const i = index % (token.length + 1); return token.slice(0, i) + c + token.slice(i) }),
    at.map((index) => (token: string) => { const i = index % token.length; return token.slice(0, i) + token.slice(i + 1) }),
    fc.constantFrom([1, 0, 2], [0, 2, 1], [2, 1, 0], [1, 2, 0], [2, 0, 1], [0, 0, 2], [0, 1, 1]).map((order) => (token: string) => {
      const parts = token.split('.')
      return order.map((i) => parts[i]).join('.')
    }),
    fc.constantFrom(
      (token: string) => token.replace(/-/g, '+').replace(/_/g, '/'),
      (token: string) => token.split('.').map((part) => part + '='.repeat((4 - part.length % 4) % 4)).join('.'),
      (token: string) => token + '.',
      (token: string) => ` ${token}`,
      (token: string) => token.toUpperCase(),
      (token: string) => Buffer.from(token.split('.')[1] ?? '', 'base64url').toString('base64') + token
    ),
    fc.tuple(fc.nat(2), at).map(([segment, bit]) => (token: string) => {
      // flip one bit of one segment's bytes and re-encode it canonically (an earlier change may have
      // removed a dot: then the last segment there is)
      const parts = token.split('.')
      const index = Math.min(segment, parts.length - 1)
      const bytes = Buffer.from(parts[index] as string, 'base64url')
      if (bytes.length === 0) return token + 'A'
      const i = bit % (bytes.length * 8)
      bytes[i >> 3] = (bytes[i >> 3] as number) ^ (1 << (i & 7))
      parts[index] = bytes.toString('base64url')
      return parts.join('.')
    })
  )
}

t.test('any change to a valid token that is not byte-identical is rejected with 401', async (t) => {
  t.equal(await status({ 'cf-access-jwt-assertion': valid }), 200, 'the original passes')
  let tried = 0
  await fc.assert(fc.asyncProperty(fc.array(mutation(), { minLength: 1, maxLength: 3 }), async (changes) => {
    const changed = changes.reduce((token, change) => change(token), valid)
    fc.pre(changed !== valid)
    tried++
    const headerStatus = await status({ 'cf-access-jwt-assertion': changed.trim() === '' ? '-' : changed })
    // a cookie value ends at ';' and loses surrounding spaces: send what is left, unless that is the original
    const cookieValue = changed.replace(/[;\s]/g, '')
    const cookieStatus = cookieValue === valid ? 401 : await status({ cookie: `CF_Authorization=${cookieValue}` })
    return headerStatus === 401 && cookieStatus === 401
  }), RUNS)
  t.ok(tried > 200, `${tried} changed tokens, all rejected`)
  t.equal(await status({ 'cf-access-jwt-assertion': valid }), 200, 'the original still passes')
})

// Header values as HTTP allows them: tab, printable ASCII and the upper Latin-1 range.
const headerChar = fc.oneof(fc.integer({ min: 0x20, max: 0x7e }), fc.integer({ min: 0x80, max: 0xff }), fc.constant(0x09)).map((code) => String.fromCharCode(code))
const headerValue = fc.oneof(
  fc.string({ unit: headerChar, maxLength: 200 }),
  fc.string({ unit: headerChar, minLength: 8000, maxLength: 9000 }),
  fc.array(fc.string({ unit: fc.constantFrom(...BASE64URL), maxLength: 400 }), { minLength: 1, maxLength: 5 }).map((parts) => parts.join('.')),
  fc.tuple(fc.string({ unit: fc.constantFrom(...BASE64URL), maxLength: 400 }), fc.string({ unit: fc.constantFrom(...BASE64URL), maxLength: 400 }))
    .map(([payload, signature]) => `${valid.split('.')[0] as string}.${payload}.${signature}`)
)

t.test('arbitrary header values get a 4xx, never a 2xx or a 5xx', async () => {
  await fc.assert(fc.asyncProperty(headerValue, async (value) => {
    const code = await status({ 'cf-access-jwt-assertion': value })
    return code >= 400 && code < 500
  }), RUNS)
})

t.test('arbitrary cookies get a 4xx, never a 2xx or a 5xx', async () => {
  await fc.assert(fc.asyncProperty(headerValue, fc.boolean(), async (value, named) => {
    const code = await status({ cookie: named ? `CF_Authorization=${value}` : value })
    return code >= 400 && code < 500
  }), RUNS)
})

t.test('verifyToken rejects arbitrary values with a 401 error, never anything else', async () => {
  const scoped = Fastify()
  await scoped.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, hook: false })
  await scoped.ready()
  const anyInput = fc.oneof(fc.string({ maxLength: 10_000 }), fc.string({ unit: 'binary', maxLength: 500 }), headerValue, fc.uint8Array({ maxLength: 500 }).map((bytes) => Buffer.from(bytes)), fc.anything())
  await fc.assert(fc.asyncProperty(anyInput, async (input) => {
    try {
      await scoped.cfAccess.verifyToken(input as string)
      return false
    } catch (error) {
      const { statusCode, code } = error as { statusCode?: number, code?: string }
      return statusCode === 401 && typeof code === 'string' && code.startsWith('FST_CF_ACCESS_')
    }
  }), RUNS)
  await scoped.close()
})

/** The obvious Cookie parser, for reference: split on ';', the first `CF_Authorization` pair decides. */
function referenceCookie (header: string): string | undefined {
  for (const pair of header.split(';')) {
    const eq = pair.indexOf('=')
    if (eq === -1 || pair.slice(0, eq).trim() !== 'CF_Authorization') continue
    let value = pair.slice(eq + 1).trim()
    if (value.length >= 2 && value.startsWith('"') && value.endsWith('"')) value = value.slice(1, -1)
    return value === '' ? undefined : value
  }
  return undefined
}

t.test('readCookie agrees with a simple reference parser on random and hostile Cookie headers', async () => {
  const piece = fc.constantFrom(';', '=', ' ', '\t', '"', '\u00a0', '\u3000', 'CF_Authorization', 'cf_authorization', 'x', 'tok.en', ';;;;', '====', 'a=b')
  fc.assert(fc.property(fc.array(piece, { maxLength: 40 }), (pieces) => {
    const header = pieces.join('')
    return readCookie(header) === referenceCookie(header)
  }), { numRuns: 3000 })
  fc.assert(fc.property(fc.string({ maxLength: 200 }), (header) => readCookie(header) === referenceCookie(header)), { numRuns: 1000 })
  const hostile = [';'.repeat(1 << 16), 'a;'.repeat(1 << 15), '='.repeat(1 << 16), ' ;='.repeat(1 << 14), `${'x;'.repeat(1 << 15)}CF_Authorization=t`, `${';'.repeat(1 << 15)} CF_Authorization = "t" ;`,
    `${'CF_Authorization      ;'.repeat(1 << 12)}CF_Authorization=t`, `${'x=CF_Authorization;'.repeat(1 << 12)}CF_Authorization=t`, 'CF_Authorization'.repeat(1 << 12)]
  for (const header of hostile) {
    if (readCookie(header) !== referenceCookie(header)) throw new Error(`disagrees on a hostile header of ${header.length} characters`)
  }
})
