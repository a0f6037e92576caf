import Fastify from 'fastify'
import t from 'tap'
import cloudflareAccess from '../index'
import { hashOf, TokenCache } from '../lib/cache'
import { KeyStore, type SigningKey } from '../lib/keys'
import { normalizeOptions } from '../lib/options'
import { createAccessEmulator, type AccessEmulator } from '../lib/testing'
import type { CloudflareAccessClaims } from '../lib/types'
import { createTokenVerifier, type TokenVerifier } from '../lib/verify'

// Red team of the hot path and the verified-token cache: every answer of a verifier that has seen and
// cached tokens must be the answer of a fresh verifier (no cache, nothing remembered), asked at the
// same moment.

let access: AccessEmulator
let store: KeyStore

t.before(async () => {
  access = await createAccessEmulator()
  const silent = { info () {}, warn () {}, error () {} }
  store = new KeyStore({ certsUrl: access.certsUrl, fetchTimeout: 2000, refreshInterval: 600_000, unknownKidCooldown: 600_000, maxStaleAge: 600_000, log: silent })
})
t.teardown(async () => {
  store.close()
  await access.close()
})

function verifier (cacheSize = 1000): TokenVerifier {
  return createTokenVerifier(normalizeOptions({ teamDomain: access.teamDomain, audience: access.audience, cacheSize }), store)
}

async function answer (by: TokenVerifier, token: string): Promise<string> {
  try {
    const result = await by.verify(token)
    return result instanceof Error
      ? `${(result as { code?: string }).code} ${(result as { statusCode?: number }).statusCode} ${result.message}`
      : JSON.stringify(result)
  } catch (error) {
    return `${(error as { code?: string }).code} ${(error as { statusCode?: number }).statusCode} ${(error as Error).message}`
  }
}

/** Runs `fn` with Date.now moved by `shiftMs` (what an NTP step or a VM restore does to the clock). */
async function withClock<T> (shiftMs: number, fn: () => Promise<T>): Promise<T> {
  const realNow = Date.now
  Date.now = () => realNow() + shiftMs
  try {
    return await fn()
  } finally {
    Date.now = realNow
  }
}

t.test('a cached decision is not reused at a moment when the token is not valid yet (clock stepped back)', async (t) => {
  const cached = verifier()
  const inWindow = access.signToken() // iat = nbf = now, as Cloudflare issues them
  const inMain = access.signToken({ email: 'main@example.com' })
  const otherApp = access.signToken({ aud: ['f'.repeat(64)] })
  t.notOk((await cached.verify(inWindow)) instanceof Error)
  for (let i = 0; i < 3; i++) t.notOk((await cached.verify(inMain)) instanceof Error, 'verified, then hits')
  t.match(await answer(cached, otherApp), /CLAIM_INVALID/, 'another application: remembered as rejected')
  // The clock steps back two minutes (beyond the default 30 s tolerance): no token issued now is valid yet.
  await withClock(-120_000, async () => {
    for (const [name, token] of [['in the window', inWindow], ['in the main part', inMain], ['remembered as rejected', otherApp]] as const) {
      const fresh = await answer(verifier(0), token)
      t.match(fresh, /TOKEN_EXPIRED/, `${name}: a fresh verification says not valid yet`)
      t.equal(await answer(cached, token), fresh, `${name}: and so does the cache`)
    }
  })
  t.notOk((await cached.verify(inMain)) instanceof Error, 'back to normal time, valid again')
})

t.test('a token issued in the future (iat) is not admitted from the cache after the clock steps back', async (t) => {
  const cached = verifier()
  const now = Math.floor(Date.now() / 1000)
  // iat 20 s ahead, within the 30 s tolerance; no nbf: only the iat check bounds it from below
  const token = access.signToken({ iat: now + 20, nbf: undefined, exp: now + 3600 })
  t.notOk((await cached.verify(token)) instanceof Error)
  t.notOk((await cached.verify(token)) instanceof Error)
  await withClock(-60_000, async () => {
    const fresh = await answer(verifier(0), token)
    t.match(fresh, /issued in the future/)
    t.equal(await answer(cached, token), fresh)
  })
})

t.test('a token bounded by nbf alone (no iat) is not admitted from the cache after the clock steps back', async (t) => {
  const cached = verifier()
  const now = Math.floor(Date.now() / 1000)
  const token = access.signToken({ iat: undefined, nbf: now, exp: now + 3600 })
  t.notOk((await cached.verify(token)) instanceof Error)
  t.notOk((await cached.verify(token)) instanceof Error)
  t.notOk((await cached.verify(token)) instanceof Error, 'in the main part by now')
  await withClock(-60_000, async () => {
    const fresh = await answer(verifier(0), token)
    t.notMatch(fresh, /^\{/, 'a fresh verification refuses it: not valid yet')
    t.equal(await answer(cached, token), fresh, 'and so does the cache')
  })
})

t.test('byte-level variants of a cached, hot-path token are refused exactly as by a fresh verifier', async (t) => {
  const cached = verifier()
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

t.test('tokens that share the hash of their signature tail never answer for each other', async (t) => {
  // Two distinct 12-character tails of one 30-bit hash, by birthday search (no RSA needed: the cache
  // compares whole tokens, so any strings will do).
  const seen = new Map<number, string>()
  let a = ''
  let b = ''
  let n = 0
  while (a === '') {
    const tail = (n++).toString(36).padStart(12, '0')
    const hash = hashOf(`x.${tail}`)
    const before = seen.get(hash)
    if (before !== undefined) { a = before; b = tail } else seen.set(hash, tail)
  }
  const ta = `h.payloadA.${a}`
  const tb = `h.payloadB.${b}`
  t.equal(hashOf(ta), hashOf(tb), 'a collision')
  const key = { kid: 'k', pem: '', key: null } as unknown as SigningKey
  const current = (): SigningKey => key
  const claimsA = Object.freeze({ email: 'a@example.com' }) as unknown as CloudflareAccessClaims
  const claimsB = Object.freeze({ email: 'b@example.com' }) as unknown as CloudflareAccessClaims
  for (const hitsFirst of [0, 1, 2]) {
    const cache = new TokenCache(1024)
    cache.set(ta, claimsA, key, Infinity)
    for (let i = 0; i < hitsFirst; i++) t.equal(cache.get(ta, 0, current), claimsA)
    t.equal(cache.get(tb, 0, current), undefined, `${hitsFirst}: the other token misses`)
    cache.set(tb, claimsB, key, Infinity)
    t.equal(cache.get(tb, 0, current), claimsB, `${hitsFirst}: each answers its own claims`)
    // Colliding entries may push each other out (a miss, then a verification), never answer for each other.
    for (let i = 0; i < 4; i++) {
      const againA = cache.get(ta, 0, current)
      const againB = cache.get(tb, 0, current)
      t.ok((againA === undefined || againA === claimsA) && (againB === undefined || againB === claimsB), `${hitsFirst}: never the other's (${i})`)
    }
  }
})

t.test('claims are deeply frozen and shared audiences stay per verifier', async (t) => {
  const cached = verifier()
  const token = access.signToken({ custom: { groups: ['eng'], nested: { deep: [1, { x: 2 }] } } })
  const first = await cached.verify(token) as CloudflareAccessClaims & { custom: any }
  const second = await cached.verify(token) as CloudflareAccessClaims & { custom: any }
  t.equal(first, second, 'one object from the cache')
  t.throws(() => { (first.aud as string[]).push('evil') }, TypeError)
  t.throws(() => { first.custom.groups.push('admin') }, TypeError)
  t.throws(() => { first.custom.nested.deep[1].x = 3 }, TypeError)
  t.throws(() => { (first as { email: string }).email = 'admin@example.com' }, TypeError)
  const other = verifier()
  const third = await other.verify(token) as CloudflareAccessClaims
  t.same(third, first)
  t.not(third, first)
  t.equal(Object.isFrozen(third.aud), true)
})

t.test('a forged flood with the remembered header leaves nothing in the cache', async (t) => {
  const cached = verifier(64)
  const valid = access.signToken()
  t.notOk((await cached.verify(valid)) instanceof Error)
  const [h, p, s] = valid.split('.') as [string, string, string]
  let refused = 0
  for (let i = 0; i < 300; i++) {
    const forged = `${h}.${p}.${(i.toString(36).padStart(8, 'A') + s.slice(8))}`
    if (cached.verify(forged) instanceof Error) refused++
  }
  t.equal(refused, 300, 'each refused synchronously')
  t.equal(cached.cacheCounters().size, 1, 'only the valid token')
  t.notOk((await cached.verify(valid)) instanceof Error)
})

t.test('a cached token is refused with a 503 once the key set is older than maxStaleAge', async (t) => {
  const silent = { info () {}, warn () {}, error () {} }
  const staleStore = new KeyStore({ certsUrl: access.certsUrl, fetchTimeout: 1000, refreshInterval: 600_000, unknownKidCooldown: 600_000, maxStaleAge: 60_000, log: silent })
  t.teardown(() => staleStore.close())
  const options = normalizeOptions({ teamDomain: access.teamDomain, audience: access.audience })
  const cached = createTokenVerifier(options, staleStore)
  const token = access.signToken()
  for (let i = 0; i < 3; i++) t.notOk((await cached.verify(token)) instanceof Error)
  access.setOutage(true)
  t.teardown(() => access.setOutage(false))
  await withClock(120_000, async () => {
    t.match(await answer(cached, token), /KEYS_UNAVAILABLE 503/)
  })
})

t.test('a rejection one request\'s error handler changed is not what the next request gets', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience })
  // An error handler that annotates the error it is given, as many do (a request id, the user's name).
  app.setErrorHandler((error: Error & { seenBy?: string }, request, reply) => {
    error.seenBy = String(request.headers['x-user'])
    error.message = `${error.message} (seen by ${error.seenBy})`
    reply.send(error)
  })
  app.get('/', async () => 'ok')
  const otherApp = access.signToken({ aud: ['e'.repeat(64)] })
  const messages: string[] = []
  for (const user of ['alice', 'bob', 'carol']) {
    const res = await app.inject({ url: '/', headers: { 'cf-access-jwt-assertion': otherApp, 'x-user': user } })
    t.equal(res.statusCode, 401)
    messages.push(res.json().message)
  }
  t.same(messages, ['alice', 'bob', 'carol'].map((user) => `Cloudflare Access token rejected: aud does not name this application (seen by ${user})`),
    'each request gets its own error, untouched by the one before')
})

t.test('two registrations with different audiences keep their decisions apart', async (t) => {
  const a = 'a'.repeat(64)
  const b = 'b'.repeat(64)
  const app = Fastify()
  t.teardown(() => app.close())
  for (const [prefix, audience] of [['/a', [a]], ['/b', [b]], ['/ab', [a, b]]] as const) {
    await app.register(async (scope) => {
      await scope.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: [...audience] })
      scope.get('/', async (request) => ({ aud: request.cfAccess?.aud }))
    }, { prefix })
  }
  const forA = access.signToken({ aud: [a] })
  const forB = access.signToken({ aud: [b] })
  const expected: Array<[string, string, number, string[] | undefined]> = [
    ['/a/', forA, 200, [a]], ['/b/', forA, 401, undefined], ['/ab/', forA, 200, [a]],
    ['/a/', forB, 401, undefined], ['/b/', forB, 200, [b]], ['/ab/', forB, 200, [b]]
  ]
  for (let round = 0; round < 3; round++) {
    for (const [url, token, status, aud] of expected) {
      const res = await app.inject({ url, headers: { 'cf-access-jwt-assertion': token } })
      t.equal(res.statusCode, status, `${url} ${token === forA ? 'A' : 'B'} round ${round}`)
      if (aud !== undefined) t.same(res.json().aud, aud)
    }
  }
})

t.test('a rejection changed by its receiver stays changed only there: key fetched or at hand, window or main part', async (t) => {
  const silent = { info () {}, warn () {}, error () {} }
  for (const keys of ['fetched', 'at hand']) {
    const own = new KeyStore({ certsUrl: access.certsUrl, fetchTimeout: 2000, refreshInterval: 600_000, unknownKidCooldown: 600_000, maxStaleAge: 600_000, log: silent })
    t.teardown(() => own.close())
    if (keys === 'at hand') await own.resolve(access.kids[0] as string)
    const cached = createTokenVerifier(normalizeOptions({ teamDomain: access.teamDomain, audience: access.audience }), own)
    const token = access.signToken({ type: 'org' })
    for (let i = 0; i < 4; i++) {
      let error: Error & { mark?: number }
      try {
        error = await cached.verify(token) as Error
      } catch (thrown) {
        error = thrown as Error
      }
      t.equal(error.message, 'Cloudflare Access token rejected: type is not "app"', `${keys}, request ${i}: the message as first answered`)
      t.equal(error.mark, undefined, `${keys}, request ${i}: nothing of an earlier request`)
      error.message = 'changed'
      error.mark = i
    }
  }
})
