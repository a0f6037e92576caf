import fc from 'fast-check'
import { createVerifier } from 'fast-jwt'
import { createVerifier as laxCreateVerifier } from 'fast-jwt-lax'
import t from 'tap'
import { decoderIsStrict } from '../lib/decoder-check'
import { KeyStore } from '../lib/keys'
import { normalizeOptions } from '../lib/options'
import { createAccessEmulator, type AccessEmulator } from '../lib/testing'
import { checkStructure, StructureMemo } from '../lib/token'
import { createTokenVerifier, type TokenVerifier } from '../lib/verify'
import { decode, signingKeys } from './helpers'

// The hot path: for a token whose header segment was seen before, the verifier skips checkStructure,
// leaves the segments' alphabet and JSON to fast-jwt, and checks the payload's UTF-8 after it (see
// StructureMemo). These tests prove that every answer is the full path's: a verifier that has seen the
// header against a new one (nothing remembered: checkStructure first, as before the hot path existed).

let access: AccessEmulator
let store: KeyStore
let valid: string
let warm: TokenVerifier

const RUNS = { numRuns: 300 }
const BASE64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'

t.before(async () => {
  access = await createAccessEmulator({ privateKeys: signingKeys() })
  const silent = { info () {}, warn () {}, error () {} }
  store = new KeyStore({ certsUrl: access.certsUrl, fetchTimeout: 2000, refreshInterval: 600_000, unknownKidCooldown: 600_000, maxStaleAge: 600_000, log: silent })
  valid = access.signToken()
  warm = verifier()
  t.notOk((await warm.verify(valid)) instanceof Error, 'the warm verifier has seen the header')
})
t.teardown(async () => {
  store.close()
  await access.close()
})

/** A verifier; by default without a cache, so that every answer is computed. */
function verifier (cacheSize = 0): TokenVerifier {
  return createTokenVerifier(normalizeOptions({ teamDomain: access.teamDomain, audience: access.audience, cacheSize }), store)
}

async function answer (by: TokenVerifier, token: string): Promise<string> {
  try {
    const result = await by.verify(token)
    return result instanceof Error ? `${(result as { code?: string }).code} ${result.message}` : JSON.stringify(result)
  } catch (error) {
    return `${(error as { code?: string }).code} ${(error as Error).message}`
  }
}

async function same (token: string): Promise<boolean> {
  return (await answer(warm, token)) === (await answer(verifier(), token))
}

/** Ways to change a token: a character, the segments, the encoding (as in properties.test.ts). */
function mutation (): fc.Arbitrary<(token: string) => string> {
  const at = fc.nat()
  const char = fc.constantFrom(...BASE64URL, '.', '=', '+', '/', ' ', '%', '\t', 'é')
  return fc.oneof(
    fc.tuple(at, char).map(([index, c]) => (token: string) => { const i = index % token.length; return token.slice(0, i) + c + token.slice(i + 1) }),
    fc.tuple(at, char).map(([index, c]) => (token: string) => { const i = index % (token.length + 1); return token.slice(0, i) + c + token.slice(i) }),
    at.map((index) => (token: string) => { const i = index % token.length; return token.slice(0, i) + token.slice(i + 1) }),
    fc.constantFrom(
      (token: string) => token + '.',
      (token: string) => token + '.' + token.split('.')[2],
      (token: string) => token.replace(/\.[^.]*\./, '..'),
      (token: string) => token.replace(/-/g, '+').replace(/_/g, '/'),
      (token: string) => token.split('.').map((part) => part + '='.repeat((4 - part.length % 4) % 4)).join('.')
    ),
    fc.tuple(fc.constantFrom(1, 2), at).map(([segment, bit]) => (token: string) => {
      // flip one bit of the payload or signature and re-encode it canonically: the header stays the one seen
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

t.test('changed tokens get the same answer on the hot path as on the full path', async (t) => {
  let tried = 0
  await fc.assert(fc.asyncProperty(fc.array(mutation(), { minLength: 1, maxLength: 3 }), async (changes) => {
    const changed = changes.reduce((token, change) => change(token), valid)
    tried++
    return await same(changed)
  }), RUNS)
  t.ok(tried >= 300, `${tried} changed tokens`)
})

t.test('signed tokens with the header seen before: the same answer on both paths', async (t) => {
  const header = { alg: 'RS256', kid: access.kids[0] }
  const claims = decode(access.signToken()).payload
  const json = JSON.stringify(claims)
  const withBytes = (bytes: number[], extra: Record<string, unknown> = {}): Buffer =>
    Buffer.concat([Buffer.from(JSON.stringify({ ...claims, ...extra }).slice(0, -1) + ',"x":"'), Buffer.from(bytes), Buffer.from('"}')])
  const cases: Array<[string, string]> = [
    ['valid', access.signRaw(header, claims)],
    ['invalid UTF-8 in the payload', access.signRaw(header, withBytes([0xff, 0xfe]))],
    ['invalid UTF-8 in the payload, and another application', access.signRaw(header, withBytes([0xc3, 0x28], { aud: ['f'.repeat(64)] }))],
    ['invalid UTF-8 in the payload, and expired', access.signRaw(header, withBytes([0xed, 0xa0, 0x80], { exp: 1 }))],
    ['invalid UTF-8 in the payload, and not a user nor a service', access.signRaw(header, withBytes([0x80], { email: undefined }))],
    ['invalid UTF-8 where a duplicate key overrides it', access.signRaw(header, Buffer.concat([Buffer.from(json.slice(0, -1) + ',"x":"'), Buffer.from([0xff]), Buffer.from('","x":"fine"}')]))],
    ['a real U+FFFD (valid UTF-8)', access.signRaw(header, { ...claims, x: '\ufffd' })],
    ['non-ASCII claims', access.signRaw(header, { ...claims, name: 'Zoë Ünal 名前' })],
    ['a payload that is not JSON', access.signRaw(header, 'not json')],
    ['a payload that is a JSON array', access.signRaw(header, '[1]')],
    ['an empty payload', access.signRaw(header, '')],
    ['another application', access.signRaw(header, { ...claims, aud: ['f'.repeat(64)] })],
    ['wrong issuer', access.signRaw(header, { ...claims, iss: 'https://evil.cloudflareaccess.com' })],
    ['type org', access.signRaw(header, { ...claims, type: 'org' })]
  ]
  for (const [name, token] of cases) {
    t.ok(token.startsWith(valid.slice(0, valid.indexOf('.') + 1)), `${name}: the header seen before`)
    t.equal(await answer(warm, token), await answer(verifier(), token), name)
  }
  t.match(await answer(warm, cases[1]?.[1] as string), /not valid UTF-8/, 'invalid UTF-8 is refused on the hot path')
  t.match(await answer(warm, cases[5]?.[1] as string), /not valid UTF-8/, 'even where the claims fast-jwt parsed show no trace of it')
})

t.test('StructureMemo remembers a few headers, the latest first out, and only what checkStructure accepted', async (t) => {
  const memo = new StructureMemo()
  const tokens = Array.from({ length: 6 }, (_, i) => access.signToken({}, { kid: `kid-${i}` }))
  t.equal(memo.kidOf(tokens[0] as string), undefined, 'nothing remembered yet')
  for (const token of tokens.slice(0, 4)) memo.remember(token, checkStructure(token) as string)
  memo.remember(tokens[0] as string, 'kid-0') // already there: not twice
  t.same(tokens.slice(0, 4).map((token) => memo.kidOf(token)), ['kid-0', 'kid-1', 'kid-2', 'kid-3'])
  memo.remember(tokens[4] as string, 'kid-4')
  t.same(tokens.slice(0, 5).map((token) => memo.kidOf(token)), [undefined, 'kid-1', 'kid-2', 'kid-3', 'kid-4'], 'the fifth replaces the first')
  const [h, p, s] = (tokens[1] as string).split('.') as [string, string, string]
  t.equal(memo.kidOf(`${h}.${p}`), undefined, 'two segments')
  t.equal(memo.kidOf(`${h}..${s}`), undefined, 'an empty payload')
  t.equal(memo.kidOf(`${h}.${p}.${s.slice(0, -1)}B`), undefined, 'a non-canonical signature')
  const oneTooMany = p + 'A'.repeat((5 - p.length % 4) % 4 || 4) // a length of 1 (mod 4)
  t.equal(memo.kidOf(`${h}.${oneTooMany}.${s}`), undefined, 'a payload of a length no base64url has')
})

t.test('tokens naming one configured audience share one frozen aud array; a token naming two keeps both', async (t) => {
  const other = 'f'.repeat(64)
  const two = createTokenVerifier(normalizeOptions({ teamDomain: access.teamDomain, audience: [access.audience, other], cacheSize: 0 }), store)
  const first = await two.verify(access.signToken()) as { aud: string[] }
  const second = await two.verify(access.signToken()) as { aud: string[] }
  t.same(first.aud, [access.audience])
  t.equal(first.aud, second.aud, 'one array for both')
  t.ok(Object.isFrozen(first.aud))
  const both = await two.verify(access.signToken({ aud: [access.audience, other] })) as { aud: string[] }
  t.same(both.aud, [access.audience, other], 'two audiences: both kept')
  const foreign = await two.verify(access.signToken({ aud: [access.audience, 'e'.repeat(64)] })) as { aud: string[] }
  t.same(foreign.aud, [access.audience, 'e'.repeat(64)], 'one of ours and another: both kept')
})

t.test('the start-up self-check: the hot path is on only with a fast-jwt whose decoder refuses respelt tokens', async (t) => {
  t.ok(decoderIsStrict(), 'the fast-jwt this package resolves is strict')
  t.ok(warm.hotPath, 'so the plugin\'s verifiers use the hot path')
  t.notOk(decoderIsStrict(laxCreateVerifier), 'fast-jwt 6.2.2 decodes base64 leniently')
  // A fast-jwt that refuses the genuine token too proves nothing about respellings: not trusted either.
  const refusesAll = ((options: object) => createVerifier({ ...options, allowedAud: ['no such audience'] } as never)) as unknown as typeof createVerifier
  t.notOk(decoderIsStrict(refusesAll), 'a decoder that does not verify the embedded token is not called strict')

  // What the check guards against: fast-jwt 6.2.2 verifies a signed token with its signature respelt, which
  // the full structural check refuses. Through the hot path that token would be admitted.
  const [header, payload, signature] = valid.split('.') as [string, string, string]
  const respelt = [`${valid}==`, `${header}.${payload}.${signature.replace(/-/g, '+').replace(/_/g, '/')}`, `${header}.${payload}.${signature.slice(0, 100)} ${signature.slice(100)}`]
    .filter((token) => token !== valid)
  const pem = (await store.resolve(decode(valid).header.kid as string))?.pem as string
  const lax = laxCreateVerifier({ key: pem, algorithms: ['RS256'], allowedAud: [access.audience], allowedIss: [access.teamDomain], cache: false })
  t.ok(respelt.some((token) => { try { lax(token); return true } catch { return false } }), 'fast-jwt 6.2.2 accepts a respelt copy')

  const warnings: Array<[object, string]> = []
  const log = { warn: (fields: object, message?: string) => { warnings.push([fields, message ?? '']) } }
  const withLax = createTokenVerifier(normalizeOptions({ teamDomain: access.teamDomain, audience: access.audience, cacheSize: 0 }), store, { createVerifier: laxCreateVerifier, log })
  t.notOk(withLax.hotPath, 'with it, the hot path is off')
  t.equal(warnings.length, 1, 'and a warning says so')
  t.match(warnings[0]?.[1], /fast-jwt \d+\.\d+\.\d+ accepts a respelt copy of a signed token .*the verifier's hot path is off/)
  t.same(Object.keys(warnings[0]?.[0] ?? {}), ['fastJwtVersion'])
  t.notOk((await withLax.verify(valid)) instanceof Error, 'a valid token is admitted (its header now seen)')
  for (const token of respelt) {
    const result = await withLax.verify(token)
    t.equal((result as { code?: string }).code, 'FST_CF_ACCESS_TOKEN_INVALID', `a respelt copy is refused: ${token.length} characters`)
  }
  createTokenVerifier(normalizeOptions({ teamDomain: access.teamDomain, audience: access.audience }), store, { createVerifier: laxCreateVerifier })
  t.equal(warnings.length, 1, 'a verifier without a logger says nothing (the CLI); the check ran once per fast-jwt')
})

t.test('the start-up self-check catches each kind of lenient decoding on its own', async (t) => {
  /** fast-jwt behind a decoder that undoes one respelling before verifying: a version lenient in that one way. */
  const lenient = (undo: (token: string) => string): typeof createVerifier =>
    ((options: object) => {
      const verify = createVerifier(options as never) as (token: string) => unknown
      return (token: string) => verify(undo(token))
    }) as unknown as typeof createVerifier
  const kinds: Array<[string, (token: string) => string]> = [
    ['two padding characters', (token) => token.endsWith('==') ? token.slice(0, -2) : token],
    ['one padding character', (token) => token.endsWith('=') && !token.endsWith('==') ? token.slice(0, -1) : token],
    ['the other base64 alphabet', (token) => token.replace(/\+/g, '-').replace(/\//g, '_')],
    ['a space', (token) => token.replace(/ /g, '')],
    ['a line feed', (token) => token.replace(/\n/g, '')],
    ['a tab', (token) => token.replace(/\t/g, '')],
    ['trailing white space (it trims)', (token) => token.trimEnd()]
  ]
  t.ok(decoderIsStrict(lenient((token) => token)), 'a decoder that undoes nothing is strict')
  for (const [kind, undo] of kinds) t.notOk(decoderIsStrict(lenient(undo)), `a decoder that ignores ${kind} is not strict`)
})

t.test('byte-level variants of a cached, hot-path token are refused exactly as by a fresh verifier', async (t) => {
  const cached = verifier(1000)
  const valid = access.signToken()
  for (let i = 0; i < 3; i++) t.notOk((await cached.verify(valid)) instanceof Error)
  const [h, p, s] = valid.split('.') as [string, string, string]
  const other = access.signToken({ email: 'admin@example.com' })
  const [, p2, s2] = other.split('.') as [string, string, string]
  const previous = access.signToken({}, { key: 'previous' })
  const [hp] = previous.split('.') as [string]
  /** The other characters that encode the same bytes as a canonical last character (unused bits set). */
  const siblings = (segment: string): string[] => {
    const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'
    const bytes = Buffer.from(segment, 'base64url')
    return [...alphabet].map((c) => segment.slice(0, -1) + c)
      .filter((x) => x !== segment && Buffer.from(x, 'base64url').equals(bytes))
  }
  t.ok(siblings(s).length > 0, 'the signature has non-canonical twins')
  const variants: Array<[string, string]> = [
    ...siblings(s).map((x): [string, string] => [`signature twin ${x.slice(-1)}`, `${h}.${p}.${x}`]),
    ...siblings(p).map((x): [string, string] => [`payload twin ${x.slice(-1)}`, `${h}.${x}.${s}`]),
    ...siblings(h).map((x): [string, string] => [`header twin ${x.slice(-1)}`, `${x}.${p}.${s}`]),
    ['padding', `${valid}==`],
    ['padding on every segment', [h, p, s].map((x) => x + '='.repeat((4 - x.length % 4) % 4)).join('.')],
    ['two more characters', `${valid}AA`],
    ['four more characters', `${valid}AAAA`],
    ['trailing space', `${valid} `],
    ['leading space', ` ${valid}`],
    ['trailing newline', `${valid}\n`],
    ['tab in the signature', `${h}.${p}.${s.slice(0, 100)}\t${s.slice(100)}`],
    ['space in the payload', `${h}.${p.slice(0, 10)} ${p.slice(10)}.${s}`],
    ['standard base64 alphabet', `${h}.${p}.${s.replace(/-/g, '+').replace(/_/g, '/')}`],
    ['percent-encoded padding', `${valid}%3D%3D`],
    ['trailing dot', `${valid}.`],
    ['four segments', `${valid}.${s}`],
    ['signature repeated as a segment', `${h}.${p}.${s}.${s}`],
    ['empty payload', `${h}..${s}`],
    ['empty signature', `${h}.${p}.`],
    ['another payload, same signature', `${h}.${p2}.${s}`],
    ['same payload, another signature', `${h}.${p}.${s2}`],
    ['the previous key header', `${hp}.${p}.${s}`],
    ['signature with its tail swapped', `${h}.${p}.${s.slice(0, -12)}${s2.slice(-12)}`],
    ['non-ASCII in the signature', `${h}.${p}.${s.slice(0, -2)}é${s.slice(-1)}`],
    ['NUL in the signature', `${h}.${p}.${s.slice(0, -2)}\0${s.slice(-1)}`],
    ['cut signature', `${h}.${p}.${s.slice(0, -4)}`],
    ['cut payload', `${h}.${p.slice(0, -4)}.${s}`]
  ]
  for (const [name, token] of variants) {
    const got = await answer(cached, token)
    t.notMatch(got, /^\{/, `${name}: refused`)
    t.equal(got, await answer(verifier(0), token), `${name}: as a fresh verifier refuses it`)
    t.equal(await answer(cached, token), got, `${name}: and again`)
  }
  t.equal(await answer(cached, valid), await answer(verifier(0), valid), 'the original still verifies')
})
