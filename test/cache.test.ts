import { randomBytes } from 'node:crypto'
import Fastify from 'fastify'
import t, { type Test } from 'tap'
import cloudflareAccess from '../index'
import { Doorkeeper, hashOf, TokenCache, VerifiedCache } from '../lib/cache'
import { ClaimInvalidError } from '../lib/errors'
import { KeyStore, type SigningKey } from '../lib/keys'
import type { AccessEmulator } from '../lib/testing'
import type { CloudflareAccessClaims } from '../lib/types'
import { normalizeOptions } from '../lib/options'
import { createTokenVerifier, kCacheCounters, type TokenVerifier } from '../lib/verify'
import { atTime, attackerKey, decode, emulator, HEADER, ManualClock, nowSeconds, rawToken, setup } from './helpers'

// The verified-token cache (lib/cache.ts) may change the cost of a decision, never the decision: every
// answer of a verifier that has seen and cached tokens is the answer of a fresh verifier at the same moment.
// Time goes through the verifier's clock (Date.now, fixed for a call: atTime) or the key store's
// (ManualClock), never a sleep.

const silent = { info () {}, warn () {}, error () {} }

/** A key store of the emulator's keys, silent, that refreshes only when asked (closed with the test). */
function quietStore (t: Test, access: AccessEmulator): KeyStore {
  const store = new KeyStore({ certsUrl: access.certsUrl, fetchTimeout: 2000, refreshInterval: 600_000, unknownKidCooldown: 0, maxStaleAge: 600_000, log: silent })
  t.teardown(() => store.close())
  return store
}

t.test('every decision is identical with the cache on and off', async (t) => {
  const access = await emulator(t, { audience: ['a'.repeat(64), 'b'.repeat(64)] })
  const on = await setup(t, { audience: access.audiences as string[] }, { access })
  const off = await setup(t, { audience: access.audiences as string[], cacheSize: 0 }, { access })
  const now = nowSeconds()
  const valid = access.signToken()
  const [h, p, s] = valid.split('.') as [string, string, string]
  const corpus: Array<[string, string | undefined]> = [
    ['valid user', valid],
    ['valid service', access.signServiceToken()],
    ['second audience', access.signToken({ aud: ['b'.repeat(64)] })],
    ['previous key', access.signToken({}, { key: 'previous' })],
    ['expired', access.signToken({ exp: now - 3600 })],
    ['not yet valid', access.signToken({ nbf: now + 3600 })],
    ['issued in the future', access.signToken({ iat: now + 3600, nbf: undefined })],
    ['wrong aud', access.signToken({ aud: ['c'.repeat(64)] })],
    ['wrong iss', access.signToken({ iss: 'https://evil.cloudflareaccess.com' })],
    ['type org', access.signToken({ type: 'org' })],
    ['no exp', access.signToken({ exp: undefined })],
    ['attacker key, real kid', access.signToken({}, { key: attackerKey() })],
    ['attacker key, unknown kid', access.signToken({}, { key: attackerKey(), kid: randomBytes(32).toString('hex') })],
    ['tampered payload', `${h}.${Buffer.from(JSON.stringify({ email: 'admin@acme.com' })).toString('base64url')}.${s}`],
    ['alg none', rawToken({ alg: 'none', kid: access.kids[0] }, {}, '')],
    ['HS256 header', access.signToken({}, { header: { alg: 'HS256' } })],
    ['no kid', access.signToken({}, { kid: null })],
    ['garbage', 'garbage'],
    ['two segments', `${h}.${p}`],
    ['oversized', `${h}.${'A'.repeat(9000)}.${s}`],
    ['missing', undefined]
  ]
  for (const [name, token] of corpus) {
    for (const attempt of ['first', 'second']) {
      const a = await on.get(token)
      const b = await off.get(token)
      t.same([a.statusCode, a.json.code], [b.statusCode, b.json.code], `${name} (${attempt} time)`)
    }
  }
})

t.test('a cached token is rejected once it expires', async (t) => {
  const { access, get } = await setup(t, { clockTolerance: 0 })
  const now = Date.now()
  const token = access.signToken({ exp: Math.floor(now / 1000) + 2 })
  await atTime(now, async () => {
    t.equal((await get(token)).statusCode, 200)
    t.equal((await get(token)).statusCode, 200, 'served from the cache')
  })
  const res = await atTime(now + 3100, () => get(token))
  t.equal(res.statusCode, 401)
  t.equal(res.json.code, 'FST_CF_ACCESS_TOKEN_EXPIRED')
})

t.test('clockTolerance applies to a cached token exactly as to a fresh one', async (t) => {
  const { access, get } = await setup(t, { clockTolerance: 2 })
  const now = Date.now()
  const token = access.signToken({ exp: Math.floor(now / 1000) })
  t.equal((await atTime(now, () => get(token))).statusCode, 200, 'expired by under 2 s: within tolerance')
  t.equal((await atTime(now + 3100, () => get(token))).json.code, 'FST_CF_ACCESS_TOKEN_EXPIRED', 'beyond tolerance, cached or not')
})

t.test('a cached token whose key Cloudflare removed is rejected once the store has the new set', async (t) => {
  const { access, get } = await setup(t)
  const token = access.signToken({}, { key: 'previous' })
  t.equal((await get(token)).statusCode, 200)
  t.equal((await get(token)).statusCode, 200, 'cached')
  await access.rotateKeys()
  await access.rotateKeys()
  t.equal((await get(access.signToken())).statusCode, 200, 'a token of the new key makes the store fetch the new set')
  const res = await get(token)
  t.equal(res.statusCode, 401, 'rejected although it was cached')
  t.equal(res.json.code, 'FST_CF_ACCESS_TOKEN_INVALID')
})

t.test('cached claims are the same frozen object; with the cache off each verify builds its own', async (t) => {
  const access = await emulator(t)
  const make = async (cacheSize?: number) => {
    const app = Fastify()
    t.teardown(() => app.close())
    await app.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, hook: false, cacheSize })
    await app.ready()
    return app
  }
  const token = access.signToken()
  const cached = await make()
  const first = await cached.cfAccess.verifyToken(token)
  t.equal(await cached.cfAccess.verifyToken(token), first)
  t.ok(Object.isFrozen(first) && Object.isFrozen(first.aud), 'frozen, deeply')
  const uncached = await make(0)
  const one = await uncached.cfAccess.verifyToken(token)
  const two = await uncached.cfAccess.verifyToken(token)
  t.not(one, two)
  t.same(one, two)
  t.ok(Object.isFrozen(one), 'frozen with the cache off too: the same behaviour either way')
  t.throws(() => { (one as { email: string }).email = 'x' }, TypeError, 'claims cannot be changed by a handler')
  const server = Fastify()
  t.teardown(() => server.close())
  await server.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience })
  server.get('/', async (request) => { (request.cfAccess as { email: string }).email = 'admin@acme.com'; return 'changed' })
  t.equal((await server.inject({ url: '/', headers: { [HEADER]: token } })).statusCode, 500, 'a handler that tries gets a TypeError')
})

t.test('VerifiedCache is bounded and evicts the least recently used', async (t) => {
  const key = { kid: 'k', pem: '', key: null } as unknown as SigningKey
  const current = (): SigningKey => key
  const claims = { aud: 'a', iss: 'i', exp: 1, email: 'e' } as const
  const cache = new VerifiedCache(2)
  cache.set('a', claims, key, Infinity)
  cache.set('b', claims, key, Infinity)
  t.equal(cache.get('a', 0, current), claims, 'a is now the most recent')
  cache.set('c', claims, key, Infinity)
  t.equal(cache.size, 2)
  t.equal(cache.get('b', 0, current), undefined, 'b was the least recently used')
  t.equal(cache.get('a', 0, current), claims)
  t.equal(cache.get('c', 0, current), claims)
  t.equal(cache.get('c', 0, () => undefined), undefined, 'a key that left the set drops the entry')
  t.equal(cache.size, 1)
  cache.set('d', claims, key, 10)
  t.equal(cache.get('d', 11, current), undefined, 'past expiresAt')
  const x = 'x'.repeat(40)
  const y = 'y' + 'x'.repeat(39)
  cache.set(x, claims, key, Infinity)
  t.equal(cache.get(y, 0, current), undefined, 'a token that shares the slot but differs is a miss')
  cache.set(y, claims, key, Infinity)
  t.equal(cache.get(x, 0, current), undefined, 'and replaces the other')
  t.equal(cache.get(y, 0, current), claims)
  const off = new VerifiedCache(0)
  off.set('a', claims, key, Infinity)
  t.equal(off.size, 0, 'size 0 keeps nothing')
})

t.test('a signed token for another application is remembered as rejected, with the same answer', async (t) => {
  const { access, app } = await setup(t, { clockTolerance: 0 })
  const ask = async (token: string) => (await app.inject({ url: '/admin/me', headers: { [HEADER]: token } })).json()
  const typed = access.signToken({ type: 'org' })
  t.equal((await ask(typed)).code, 'FST_CF_ACCESS_CLAIM_INVALID')
  t.match(await ask(typed), { statusCode: 401, message: /type is not "app"/ }, 'a rejection from the plugin’s own checks is remembered too')
  const now = Date.now()
  const other = access.signToken({ aud: ['c'.repeat(64)], exp: Math.floor(now / 1000) + 2 }, { key: 'previous' })
  const first = await atTime(now, () => ask(other))
  t.equal(first.code, 'FST_CF_ACCESS_CLAIM_INVALID')
  t.same(await atTime(now, () => ask(other)), first, 'the remembered rejection answers exactly the same')
  t.equal((await atTime(now + 2100, () => ask(other))).code, 'FST_CF_ACCESS_TOKEN_EXPIRED', 'after exp the token is expired, as without the cache')
  const again = access.signToken({ aud: ['c'.repeat(64)] }, { key: 'previous' })
  t.equal((await ask(again)).code, 'FST_CF_ACCESS_CLAIM_INVALID')
  t.equal((await ask(again)).code, 'FST_CF_ACCESS_CLAIM_INVALID', 'remembered')
  await access.rotateKeys()
  await access.rotateKeys()
  t.equal((await app.inject({ url: '/admin/me', headers: { [HEADER]: access.signToken() } })).statusCode, 200, 'a token of the new key makes the store fetch the new set')
  t.equal((await ask(again)).code, 'FST_CF_ACCESS_TOKEN_INVALID', 'once its key is gone it is an invalid token, as without the cache')
})

t.test('VerifiedCache keeps its recency order through hits, replacements and removals', async (t) => {
  const key = { kid: 'k', pem: '', key: null } as unknown as SigningKey
  const claims = { aud: 'a', iss: 'i', exp: 1, email: 'e' } as const
  const cache = new VerifiedCache(3)
  const token = (n: number): string => `${n}`.padStart(40, '0')
  for (const n of [1, 2, 3]) cache.set(token(n), claims, key, Infinity)
  t.equal(cache.get(token(2), 0, () => key), claims, 'a hit in the middle')
  t.equal(cache.get(token(2), 0, () => key), claims, 'a hit on the newest')
  cache.set(token(1), claims, key, Infinity) // replaces the oldest: 3 becomes the oldest
  cache.set(token(4), claims, key, Infinity) // evicts 3
  t.equal(cache.get(token(3), 0, () => key), undefined)
  t.equal(cache.get(token(2), 0, () => undefined), undefined, 'a removal in the middle')
  for (const n of [5, 6]) cache.set(token(n), claims, key, Infinity)
  t.equal(cache.size, 3)
  t.same([1, 4, 5, 6].map((n) => cache.get(token(n), 0, () => key) !== undefined), [false, true, true, true])
  for (const n of [4, 5, 6]) t.equal(cache.get(token(n), 0, () => undefined), undefined)
  t.equal(cache.size, 0, 'emptied through every position')
  cache.set(token(7), claims, key, Infinity)
  t.equal(cache.get(token(7), 0, () => key), claims, 'usable again after being emptied')
})

// — the admission policy: a window for first sightings, a doorkeeper, the segmented LRU —

const fakeKey = (kid: string): SigningKey => ({ kid, pem: '', key: null }) as unknown as SigningKey
const someClaims = { aud: 'a', iss: 'i', exp: 1, email: 'e' } as const

/** A deterministic pseudo-random generator (mulberry32), so that a failure replays. */
function prng (seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0
    let x = Math.imul(seed ^ (seed >>> 15), seed | 1)
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61)
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
}

t.test('TokenCache: a first sighting takes a window slot; its next request moves it to the main part', async (t) => {
  const key = fakeKey('k')
  const current = (): SigningKey => key
  const token = (n: number): string => `token-${n}-${'x'.repeat(20)}${n}`
  const cache = new TokenCache(64) // 2 window slots
  cache.set(token(1), someClaims, key, Infinity)
  t.same(cache.counters(), { hits: 0, misses: 0, size: 1 })
  t.equal(cache.get(token(1), 0, current), someClaims, 'a hit in the window')
  t.equal(cache.get(token(1), 0, current), someClaims, 'then in the main part')
  t.same(cache.counters(), { hits: 2, misses: 0, size: 1 }, 'moved, not copied')
  t.equal(cache.get(token(2), 0, current), undefined)
  t.same(cache.counters(), { hits: 2, misses: 1, size: 1 })

  cache.set(token(3), someClaims, key, 10)
  t.equal(cache.get(token(3), 11, current), undefined, 'past expiresAt in the window')
  cache.set(token(4), someClaims, key, Infinity)
  t.equal(cache.get(token(4), 0, () => undefined), undefined, 'its key left the set')
  t.equal(cache.get(token(4), 0, current), undefined, 'and the slot is empty since')
  t.equal(cache.counters().size, 1, 'only token 1 is left')

  const rejection = new ClaimInvalidError('aud does not name this application')
  cache.reject(token(5), rejection, key, Infinity)
  for (const where of ['window', 'main part']) {
    const answer = cache.get(token(5), 0, current) as Error & { code: string }
    t.not(answer, rejection, `${where}: a copy of the rejection`)
    t.ok(answer instanceof ClaimInvalidError, `${where}: of its class`)
    t.same([answer.code, answer.message], [rejection.code, rejection.message], `${where}: with its code and message`)
  }

  const off = new TokenCache(0)
  off.set(token(1), someClaims, key, Infinity)
  off.reject(token(2), rejection, key, Infinity)
  t.equal(off.get(token(1), 0, current), undefined)
  t.same(off.counters(), { hits: 0, misses: 1, size: 0 }, 'size 0 keeps nothing')
})

t.test('TokenCache: a token verified again after it left the window goes to the main part', async (t) => {
  const key = fakeKey('k')
  const current = (): SigningKey => key
  const cache = new TokenCache(1) // one window slot, one main entry
  cache.set('session-token-aaaaaaaaaaaa', someClaims, key, Infinity)
  cache.set('another-token-bbbbbbbbbbbb', someClaims, key, Infinity) // takes the only window slot
  t.equal(cache.get('session-token-aaaaaaaaaaaa', 0, current), undefined, 'pushed out of the window')
  cache.set('session-token-aaaaaaaaaaaa', someClaims, key, Infinity)
  t.same(cache.counters().size, 2, 'the doorkeeper knew it: main part, not window')
  t.equal(cache.get('another-token-bbbbbbbbbbbb', 0, current), someClaims, 'the window kept the other one')
  t.equal(cache.get('session-token-aaaaaaaaaaaa', 0, current), undefined, 'and the main part, of one entry, let it go for it')
  t.equal(cache.get('another-token-bbbbbbbbbbbb', 0, current), someClaims)
})

t.test('Doorkeeper: a sighting is remembered for one generation or two, then forgotten', async (t) => {
  const doorkeeper = new Doorkeeper(8) // generations of 64 sightings
  t.notOk(doorkeeper.sighted(hashOf('recurring')), 'first sighting')
  t.ok(doorkeeper.sighted(hashOf('recurring')), 'second sighting')
  for (let i = 0; i < 64; i++) doorkeeper.sighted(hashOf(`one-off ${i}`))
  t.ok(doorkeeper.sighted(hashOf('recurring')), 'remembered across a change of generation')
  for (let i = 64; i < 64 * 4; i++) doorkeeper.sighted(hashOf(`one-off ${i}`))
  t.notOk(doorkeeper.sighted(hashOf('recurring')), 'forgotten two generations later')

  const large = new Doorkeeper(1000)
  for (let i = 0; i < 8000; i++) large.sighted(hashOf(randomBytes(12).toString('base64url')))
  let falsePositives = 0
  for (let i = 0; i < 10_000; i++) if (large.sighted(hashOf(randomBytes(12).toString('base64url')))) falsePositives++
  t.ok(falsePositives < 200, `${falsePositives} of 10000 never-seen tokens taken for seen ones (< 2 %)`)
})

const BASE64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'

/**
 * Replays a workload on a cache: `share` of the requests carry one of `recurring` session tokens (picked
 * at random), the rest a token never seen before. A miss is verified and remembered. Answers the
 * recurring tokens' hit ratio from their third sighting on.
 */
function replay (cache: { get: TokenCache['get'], set: TokenCache['set'] }, share: number, recurring: number, requests: number, seed: number): number {
  const key = fakeKey('k')
  const current = (): SigningKey => key
  const random = prng(seed)
  // like a signature's end: 12 random base64url characters
  const tail = (): string => Array.from({ length: 12 }, () => BASE64URL[Math.floor(random() * 64)]).join('')
  const sessions = Array.from({ length: recurring }, (_, i) => `session-${i}-${tail()}`)
  const sightings = new Array<number>(recurring).fill(0)
  let hits = 0
  let counted = 0
  for (let i = 0; i < requests; i++) {
    const session = random() < share ? Math.floor(random() * recurring) : -1
    const token = session === -1 ? `fresh-${i}-${tail()}` : sessions[session] as string
    const hit = cache.get(token, 0, current) !== undefined
    if (!hit) cache.set(token, someClaims, key, Infinity)
    if (session !== -1 && ++sightings[session]! > 2) {
      counted++
      if (hit) hits++
    }
  }
  return hits / counted
}

t.test('a flood of unique tokens does not flush the tokens that recur (workloads (e) and (f) of the benchmark)', async (t) => {
  const mixed = replay(new TokenCache(1000), 0.9, 200, 50_000, 1)
  t.ok(mixed >= 0.99, `(e) 90 % from 200 sessions: ${(mixed * 100).toFixed(2)} % hits`)
  const flood = replay(new TokenCache(1000), 0.01, 50, 150_000, 2)
  t.ok(flood >= 0.99, `(f) 99 % unique: ${(flood * 100).toFixed(2)} % hits`)
  const small = replay(new TokenCache(100), 0.01, 5, 100_000, 3)
  t.ok(small >= 0.99, `(f) with cacheSize 100 and 5 sessions: ${(small * 100).toFixed(2)} % hits`)
  // A plain LRU takes every miss: each unique token pushes a session's token closer to the door, and
  // only a session back within 1000 requests (not 5000, on average) still finds its token.
  const lru = replay(new PlainLru(1000), 0.01, 50, 150_000, 2)
  t.ok(lru < 0.25, `the same flood on a plain LRU: ${(lru * 100).toFixed(2)} % hits`)
})

/** The least recently used first out, every miss admitted: what the cache was before. */
class PlainLru {
  readonly #entries = new Map<string, CloudflareAccessClaims>()
  constructor (readonly size: number) {}
  get (token: string): CloudflareAccessClaims | undefined {
    const claims = this.#entries.get(token)
    if (claims !== undefined) {
      this.#entries.delete(token)
      this.#entries.set(token, claims)
    }
    return claims
  }

  set (token: string, claims: CloudflareAccessClaims): void {
    this.#entries.set(token, claims)
    if (this.#entries.size > this.size) this.#entries.delete(this.#entries.keys().next().value as string)
  }
}

t.test('every decision is identical with the cache on and off, at every size, through window, doorkeeper and both segments', async (t) => {
  const access = await emulator(t, { audience: ['a'.repeat(64), 'b'.repeat(64)] })
  const options = (cacheSize: number) => normalizeOptions({ teamDomain: access.teamDomain, audience: access.audiences as string[], clockTolerance: 0, cacheSize })
  const store = quietStore(t, access)
  const sizes = [0, 1, 2, 8, 64, 1000]
  const verifiers = sizes.map((size) => createTokenVerifier(options(size), store))
  const now = nowSeconds()
  const valid = access.signToken()
  const [h, , s] = valid.split('.') as [string, string, string]
  // Tokens that come back (as sessions do), of every outcome, and fresh ones minted as the run goes.
  const recurring = [
    ...Array.from({ length: 6 }, (_, i) => access.signToken({ email: `user${i}@acme.com` })),
    access.signServiceToken(),
    access.signToken({ aud: ['b'.repeat(64)] }),
    ...Array.from({ length: 3 }, () => access.signToken({ aud: [randomBytes(32).toString('hex')] })),
    access.signToken({ type: 'org' }),
    ...Array.from({ length: 3 }, () => access.signToken({ exp: now + 2 })),
    ...Array.from({ length: 3 }, () => access.signToken({}, { key: 'previous' })),
    access.signToken({}, { key: attackerKey() }),
    `${h}.${Buffer.from(JSON.stringify({ email: 'admin@acme.com' })).toString('base64url')}.${s}`,
    access.signRaw({ alg: 'RS256', kid: access.kids[0] }, Buffer.concat([Buffer.from(JSON.stringify(decode(valid).payload).slice(0, -1) + ',"x":"'), Buffer.from([0xff]), Buffer.from('"}')])),
    'garbage'
  ]
  const random = prng(7)
  const describe = (answer: unknown): string => answer instanceof Error
    ? `${(answer as { statusCode?: number }).statusCode} ${(answer as { code?: string }).code} ${answer.message}`
    : JSON.stringify(answer)
  const answers: string[][] = sizes.map(() => [])
  const realNow = Date.now
  /** Requests of one phase, each at one instant for every verifier, `offset` ms after the real time. */
  async function phase (requests: number, offset: number): Promise<void> {
    for (let i = 0; i < requests; i++) {
      const token = random() < 0.6 ? recurring[Math.floor(random() * recurring.length)] as string : access.signToken({ email: `fresh${i}@acme.com` })
      // One request, one instant for every verifier: on a loaded machine the clock would otherwise pass a
      // short-lived token's exp between two of them (the verifiers and fast-jwt read Date.now()).
      const instant = realNow() + offset
      Date.now = () => instant
      try {
        for (const [index, verifier] of verifiers.entries()) {
          let answer: unknown
          try {
            answer = await verifier.verify(token)
          } catch (error) {
            answer = error
          }
          answers[index]?.push(describe(answer))
        }
      } finally {
        Date.now = realNow
      }
    }
  }
  await phase(300, 0)
  await access.rotateKeys() // the previous key leaves the set...
  await verifiers[0]?.verify(access.signToken()) // ... once a token of the new key makes the store refetch
  await phase(300, 2100) // 2.1 s later: the short-lived tokens have expired, cached or not
  for (const [index, size] of sizes.entries()) {
    if (size === 0) continue
    t.same(answers[index], answers[0], `cacheSize ${size}: the same ${answers[0]?.length} answers as without a cache`)
    t.ok((verifiers[index]?.cacheCounters().hits ?? 0) > 0, `cacheSize ${size}: the cache answered some`)
  }
  t.equal(verifiers[0]?.cacheCounters().hits, 0, 'cacheSize 0 answered none')
  t.ok(answers[0]?.some((answer) => answer.includes('EXPIRED')) && answers[0]?.some((answer) => answer.includes('unknown key id')), 'expiry and key removal were exercised')
})

t.test('the cache counters are on the decorator, under a symbol, for the benchmark and status reports', async (t) => {
  const access = await emulator(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience })
  app.get('/', async () => 'ok')
  const get = (token: string) => app.inject({ url: '/', headers: { [HEADER]: token } })
  const counters = (app.cfAccess as unknown as Record<symbol, () => { hits: number, misses: number, size: number }>)[kCacheCounters]
  t.same(counters?.(), { hits: 0, misses: 0, size: 0 })
  const token = access.signToken()
  await get(token)
  await get(token)
  t.same(counters?.(), { hits: 1, misses: 1, size: 1 })
  t.notOk(Object.keys(app.cfAccess ?? {}).some((name) => /counter/i.test(name)), 'not part of the public shape')
})

/**
 * The segmented LRU as plain arrays (newest first): what VerifiedCache must do, operation by operation.
 * A hit in probation moves a token to protected; protected holds at most 80 % of the entries and its
 * overflow goes back to probation as its newest; over the bound, probation's oldest goes.
 */
class SegmentedModel {
  probation: string[] = []
  protected: string[] = []
  constructor (readonly size: number) {}
  get limit (): number { return Math.floor(this.size * 0.8) }
  get (token: string): boolean {
    if (this.protected.includes(token)) {
      this.protected = [token, ...this.protected.filter((other) => other !== token)]
      return true
    }
    if (!this.probation.includes(token)) return false
    this.probation = this.probation.filter((other) => other !== token)
    this.protect(token)
    return true
  }

  set (token: string, recurs: boolean): void {
    if (this.size === 0) return
    this.probation = this.probation.filter((other) => other !== token)
    this.protected = this.protected.filter((other) => other !== token)
    if (recurs) this.protect(token)
    else this.probation.unshift(token)
    if (this.probation.length + this.protected.length > this.size) this.probation.pop()
  }

  protect (token: string): void {
    this.protected.unshift(token)
    if (this.protected.length > this.limit) this.probation.unshift(this.protected.pop() as string)
  }
}

t.test('VerifiedCache answers hit or miss exactly as a model of the segmented LRU, through random gets and sets', async (t) => {
  const key = fakeKey('k')
  const pool = Array.from({ length: 24 }, (_, n) => `token-${n}-`.padEnd(40, String.fromCharCode(65 + n)))
  t.equal(new Set(pool.map(hashOf)).size, pool.length, 'no two tokens of the pool share a hash')
  for (const size of [1, 2, 3, 5, 10]) {
    const random = prng(size)
    const cache = new VerifiedCache(size)
    const model = new SegmentedModel(size)
    const steps: string[] = []
    let diverged = ''
    for (let step = 0; step < 3000 && diverged === ''; step++) {
      const token = pool[Math.floor(random() * (2 * size + 4))] as string
      const roll = random()
      if (roll < 0.5) {
        const hit = cache.get(token, 0, () => key) !== undefined
        steps.push(`get ${token.slice(6, 8)} ${hit ? 'hit' : 'miss'}`)
        if (hit !== model.get(token)) diverged = steps.slice(-12).join(', ')
      } else {
        // The default (no recurs argument) is a first entry into probation, as for set and reject alike.
        const recurs = roll < 0.6 ? true : roll < 0.7 ? false : undefined
        if (roll < 0.85) {
          if (recurs === undefined) cache.set(token, someClaims, key, Infinity)
          else cache.set(token, someClaims, key, Infinity, -Infinity, recurs)
        } else {
          if (recurs === undefined) cache.reject(token, new Error('no'), key, Infinity)
          else cache.reject(token, new Error('no'), key, Infinity, -Infinity, recurs)
        }
        model.set(token, recurs === true)
        steps.push(`set ${token.slice(6, 8)}${recurs === true ? ' recurs' : ''}`)
      }
      if (diverged === '' && cache.size !== model.probation.length + model.protected.length) diverged = `size after ${steps.slice(-12).join(', ')}`
    }
    t.equal(diverged, '', `size ${size}: the cache and the model agree`)
  }
})

t.test('VerifiedCache: an entry answers up to and including its expiresAt, and not a millisecond after', async (t) => {
  const key = fakeKey('k')
  const cache = new VerifiedCache(4)
  cache.set('e'.repeat(40), someClaims, key, 1000)
  t.equal(cache.get('e'.repeat(40), 1000, () => key), someClaims, 'at expiresAt')
  t.equal(cache.get('e'.repeat(40), 1001, () => key), undefined, 'one millisecond after')
  t.equal(cache.size, 0, 'and the entry is gone')
})

t.test('TokenCache: a token hit in the window is protected; one the doorkeeper recognises waits in probation', async (t) => {
  const key = fakeKey('k')
  const current = (): SigningKey => key
  // The cache finds entries by the last 12 characters (the signature's): make those differ.
  const token = (name: string, n: number): string => 'x'.repeat(30) + `${name}-${n}`.padStart(12, '-')
  /** 64 tokens that each reach the main part's probation: a first sighting in the window, then the doorkeeper. */
  const flood = (cache: TokenCache): void => {
    for (let n = 0; n < 64; n++) {
      cache.set(token('flood', n), someClaims, key, Infinity)
      cache.set(token('flood', n), someClaims, key, Infinity)
    }
  }

  const hit = new TokenCache(64) // 2 window slots; 64 entries, of which 51 protected
  hit.set(token('session', 1), someClaims, key, Infinity)
  t.equal(hit.get(token('session', 1), 0, current), someClaims, 'a hit in the window')
  flood(hit)
  t.equal(hit.get(token('session', 1), 0, current), someClaims, 'protected: 64 entries through probation did not push it out')

  const recognised = new TokenCache(64)
  recognised.set(token('seen', 1), someClaims, key, Infinity)
  recognised.set(token('seen', 1), someClaims, key, Infinity)
  flood(recognised)
  t.equal(recognised.get(token('seen', 1), 0, current), undefined, 'probation: the 64 entries after it pushed it out')
})

t.test('TokenCache: a window entry answers up to and including its expiresAt, and not a millisecond after', async (t) => {
  const key = fakeKey('k')
  const cache = new TokenCache(64)
  cache.set('w'.repeat(40), someClaims, key, 1000)
  t.equal(cache.get('w'.repeat(40), 1000, () => key), someClaims, 'at expiresAt')
  cache.set('v'.repeat(40), someClaims, key, 1000)
  t.equal(cache.get('v'.repeat(40), 1001, () => key), undefined, 'one millisecond after')
})

t.test('an entry answers from its validFrom on, to the millisecond, in the window and in the main part', async (t) => {
  const key = fakeKey('k')
  const main = new VerifiedCache(4)
  main.set('m'.repeat(40), someClaims, key, Infinity, 1000)
  t.equal(main.get('m'.repeat(40), 1000, () => key), someClaims, 'main part, at validFrom')
  main.set('n'.repeat(40), someClaims, key, Infinity, 1000)
  t.equal(main.get('n'.repeat(40), 999, () => key), undefined, 'main part, 1 ms before')
  const window = new TokenCache(64)
  window.set('w'.repeat(40), someClaims, key, Infinity, 1000)
  t.equal(window.get('w'.repeat(40), 1000, () => key), someClaims, 'window, at validFrom')
  window.set('v'.repeat(40), someClaims, key, Infinity, 1000)
  t.equal(window.get('v'.repeat(40), 999, () => key), undefined, 'window, 1 ms before')
})

t.test('what a verifier remembers: every admitted token, whichever time claims it lacks, and the refusals of signed tokens that time cannot heal', async (t) => {
  const access = await emulator(t)
  const store = quietStore(t, access)
  const verifier = createTokenVerifier(normalizeOptions({ teamDomain: access.teamDomain, audience: access.audience, clockTolerance: 30 }), store)
  const answer = async (token: string): Promise<string> => {
    try {
      const claims = await verifier.verify(token)
      return claims instanceof Error ? (claims as Error & { code: string }).code : 'admitted'
    } catch (error) {
      return (error as Error & { code: string }).code
    }
  }
  /** The answer twice, and whether the second came from the cache. */
  const twice = async (token: string): Promise<[string, boolean]> => {
    const first = await answer(token)
    const { hits } = verifier.cacheCounters()
    t.equal(await answer(token), first, 'the same answer the second time')
    return [first, verifier.cacheCounters().hits === hits + 1]
  }
  const instant = Date.now()
  const now = Math.floor(instant / 1000)
  const remembered: Array<[string, string, string]> = [
    ['a plain token', access.signToken(), 'admitted'],
    ['no nbf', access.signToken({ nbf: undefined }), 'admitted'],
    ['no iat', access.signToken({ iat: undefined }), 'admitted'],
    ['neither nbf nor iat', access.signToken({ nbf: undefined, iat: undefined }), 'admitted'],
    ['expired 10 s ago, within the 30 s tolerance', access.signToken({ exp: now - 10 }), 'admitted'],
    ['another application (fast-jwt refuses aud)', access.signToken({ aud: ['c'.repeat(64)] }), 'FST_CF_ACCESS_CLAIM_INVALID'],
    ['another team (fast-jwt refuses iss)', access.signToken({ iss: 'https://other.cloudflareaccess.com' }), 'FST_CF_ACCESS_CLAIM_INVALID'],
    ['no exp (fast-jwt requires it)', access.signToken({ exp: undefined }), 'FST_CF_ACCESS_CLAIM_INVALID'],
    ['exp a string of a past time (fast-jwt refuses its type)', access.signToken({ exp: '1000' }), 'FST_CF_ACCESS_CLAIM_INVALID'],
    ['type "org" (our own check)', access.signToken({ type: 'org' }), 'FST_CF_ACCESS_CLAIM_INVALID']
  ]
  await atTime(instant, async () => {
    for (const [name, token, expected] of remembered) {
      t.same(await twice(token), [expected, true], `${name}: ${expected}, and remembered`)
    }
  })
  // Refusals that time heals are never remembered: the same token is admitted once its time comes.
  const early = access.signToken({ iat: now + 32, nbf: undefined })
  t.same(await atTime(instant, () => twice(early)), ['FST_CF_ACCESS_TOKEN_EXPIRED', false], 'issued beyond the tolerance in the future: refused, not remembered')
  t.equal(await atTime(instant + 3100, () => answer(early)), 'admitted', 'admitted once its iat is within the tolerance')
  const notYet = access.signToken({ nbf: now + 32 })
  t.same(await atTime(instant, () => twice(notYet)), ['FST_CF_ACCESS_TOKEN_EXPIRED', false], 'nbf beyond the tolerance: refused, not remembered')
  t.equal(await atTime(instant + 2100, () => answer(notYet)), 'admitted', 'admitted once its nbf is within the tolerance')
})

t.test('VerifiedCache: a hit in protected makes the entry the most recent there', async (t) => {
  const cache = new VerifiedCache(5) // protected holds 4
  const key = fakeKey('k')
  const current = (): SigningKey => key
  const claims = (email: string): CloudflareAccessClaims => ({ email }) as unknown as CloudflareAccessClaims
  for (const name of ['a', 'b', 'c', 'd']) cache.set(`token-${name}`, claims(name), key, Infinity, -Infinity, true)
  t.ok(cache.get('token-a', 0, current), 'a hit: a becomes the most recent in protected')
  cache.set('token-e', claims('e'), key, Infinity, -Infinity, true) // protected overflows: its least recent (b) goes to probation
  cache.set('token-f', claims('f'), key, Infinity) // the cache overflows: probation's oldest (b) goes
  t.ok(cache.get('token-a', 0, current), 'a stays')
  t.equal(cache.get('token-b', 0, current), undefined, 'b went')
})

t.test('TokenCache: a token verified while another was the last miss (both waited for a key) is found again', async (t) => {
  const cache = new TokenCache(1000)
  const key = fakeKey('k')
  const current = (): SigningKey => key
  const a = `header.payload.${'A'.repeat(43)}`
  const b = `header.payload.${'B'.repeat(43)}`
  t.not(hashOf(a) & 15, hashOf(b) & 15, 'different window slots')
  t.equal(cache.get(a, 0, current), undefined)
  t.equal(cache.get(b, 0, current), undefined)
  cache.set(a, someClaims, key, Infinity)
  cache.set(b, someClaims, key, Infinity)
  t.equal(cache.get(a, 0, current), someClaims, 'a hits')
  t.equal(cache.get(b, 0, current), someClaims, 'b hits')
})

// — a cached decision is the decision a fresh verifier (no cache, nothing remembered) makes at the same
// moment: clocks stepped back, tokens that share a hash, floods, errors changed by their receivers —

/** A verifier of `access`'s tokens on `store`, with a verified-token cache of `cacheSize` (0: none). */
function verifierOf (access: AccessEmulator, store: KeyStore, cacheSize = 1000): TokenVerifier {
  return createTokenVerifier(normalizeOptions({ teamDomain: access.teamDomain, audience: access.audience, cacheSize }), store)
}

/** A verifier's whole answer: the claims as JSON, or the error's code, status and message. */
async function fullAnswer (by: TokenVerifier, token: string): Promise<string> {
  try {
    const result = await by.verify(token)
    return result instanceof Error
      ? `${(result as { code?: string }).code} ${(result as { statusCode?: number }).statusCode} ${result.message}`
      : JSON.stringify(result)
  } catch (error) {
    return `${(error as { code?: string }).code} ${(error as { statusCode?: number }).statusCode} ${(error as Error).message}`
  }
}

t.test('a cached decision is not reused at a moment when the token is not valid yet (clock stepped back)', async (t) => {
  const access = await emulator(t)
  const store = quietStore(t, access)
  const verifier = (cacheSize = 1000): TokenVerifier => verifierOf(access, store, cacheSize)
  const cached = verifier()
  const inWindow = access.signToken() // iat = nbf = now, as Cloudflare issues them
  const inMain = access.signToken({ email: 'main@example.com' })
  const otherApp = access.signToken({ aud: ['f'.repeat(64)] })
  t.notOk((await cached.verify(inWindow)) instanceof Error)
  for (let i = 0; i < 3; i++) t.notOk((await cached.verify(inMain)) instanceof Error, 'verified, then hits')
  t.match(await fullAnswer(cached, otherApp), /CLAIM_INVALID/, 'another application: remembered as rejected')
  // The clock steps back two minutes (beyond the default 30 s tolerance): no token issued now is valid yet.
  await atTime(Date.now() - 120_000, async () => {
    for (const [name, token] of [['in the window', inWindow], ['in the main part', inMain], ['remembered as rejected', otherApp]] as const) {
      const fresh = await fullAnswer(verifier(0), token)
      t.match(fresh, /TOKEN_EXPIRED/, `${name}: a fresh verification says not valid yet`)
      t.equal(await fullAnswer(cached, token), fresh, `${name}: and so does the cache`)
    }
  })
  t.notOk((await cached.verify(inMain)) instanceof Error, 'back to normal time, valid again')
})

t.test('a token issued in the future (iat) is not admitted from the cache after the clock steps back', async (t) => {
  const access = await emulator(t)
  const store = quietStore(t, access)
  const verifier = (cacheSize = 1000): TokenVerifier => verifierOf(access, store, cacheSize)
  const cached = verifier()
  const now = Math.floor(Date.now() / 1000)
  // iat 20 s ahead, within the 30 s tolerance; no nbf: only the iat check bounds it from below
  const token = access.signToken({ iat: now + 20, nbf: undefined, exp: now + 3600 })
  t.notOk((await cached.verify(token)) instanceof Error)
  t.notOk((await cached.verify(token)) instanceof Error)
  await atTime(Date.now() - 60_000, async () => {
    const fresh = await fullAnswer(verifier(0), token)
    t.match(fresh, /issued in the future/)
    t.equal(await fullAnswer(cached, token), fresh)
  })
})

t.test('a token bounded by nbf alone (no iat) is not admitted from the cache after the clock steps back', async (t) => {
  const access = await emulator(t)
  const store = quietStore(t, access)
  const verifier = (cacheSize = 1000): TokenVerifier => verifierOf(access, store, cacheSize)
  const cached = verifier()
  const now = Math.floor(Date.now() / 1000)
  const token = access.signToken({ iat: undefined, nbf: now, exp: now + 3600 })
  t.notOk((await cached.verify(token)) instanceof Error)
  t.notOk((await cached.verify(token)) instanceof Error)
  t.notOk((await cached.verify(token)) instanceof Error, 'in the main part by now')
  await atTime(Date.now() - 60_000, async () => {
    const fresh = await fullAnswer(verifier(0), token)
    t.notMatch(fresh, /^\{/, 'a fresh verification refuses it: not valid yet')
    t.equal(await fullAnswer(cached, token), fresh, 'and so does the cache')
  })
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
  const access = await emulator(t)
  const store = quietStore(t, access)
  const verifier = (cacheSize = 1000): TokenVerifier => verifierOf(access, store, cacheSize)
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
  const access = await emulator(t)
  const store = quietStore(t, access)
  const verifier = (cacheSize = 1000): TokenVerifier => verifierOf(access, store, cacheSize)
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
  const access = await emulator(t)
  const clock = new ManualClock()
  const staleStore = new KeyStore({ certsUrl: access.certsUrl, fetchTimeout: 1000, refreshInterval: 600_000, unknownKidCooldown: 600_000, maxStaleAge: 60_000, log: silent, clock })
  t.teardown(() => staleStore.close())
  const cached = verifierOf(access, staleStore)
  const token = access.signToken()
  for (let i = 0; i < 3; i++) t.notOk((await cached.verify(token)) instanceof Error)
  access.setOutage(true)
  clock.advance(60_001)
  t.match(await fullAnswer(cached, token), /KEYS_UNAVAILABLE 503/)
})

t.test('a rejection one request\'s error handler changed is not what the next request gets', async (t) => {
  const access = await emulator(t)
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
  const access = await emulator(t)
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
  const access = await emulator(t)
  for (const keys of ['fetched', 'at hand']) {
    const own = quietStore(t, access)
    if (keys === 'at hand') await own.resolve(access.kids[0] as string)
    const cached = verifierOf(access, own)
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

// — Design pins — the sizes the cache was tuned to (docs/benchmarks.md: the window's share, the
// doorkeeper's memory). No answer depends on them, only the hit ratio and the memory (the tests above
// that build their case on a window's size say so in a comment). They are pinned here, and only here, so
// that a change of design is made on purpose: change a pin with the benchmark that justifies the new size.

t.test('design pin: the window has the largest power of two of slots up to cacheSize / 32', async (t) => {
  const key = fakeKey('k')
  /** A token whose hash has these low bits (the window slot is the hash's low bits). */
  const withLowBits = (bits: number, mask: number, avoid: string[] = []): string => {
    for (let n = 0; ; n++) {
      const token = `window-token-${n}`.padStart(40, '.')
      if ((hashOf(token) & mask) === bits && !avoid.includes(token)) return token
    }
  }
  /** Whether two first sightings whose hashes differ in `mask`'s bits both stay in the window. */
  const bothKept = (size: number, bitsA: number, bitsB: number, mask: number): boolean => {
    const cache = new TokenCache(size)
    const a = withLowBits(bitsA, mask)
    const b = withLowBits(bitsB, mask, [a])
    cache.set(a, someClaims, key, Infinity)
    cache.set(b, someClaims, key, Infinity)
    return cache.get(a, 0, () => key) !== undefined && cache.get(b, 0, () => key) !== undefined
  }
  for (const [size, slots] of [[1, 1], [63, 1], [64, 2], [127, 2], [128, 4], [1000, 16], [1024, 32]] as const) {
    const mask = 2 * slots - 1
    // Differing in the lowest bits the window reads: two slots; differing only in the next bit: one slot.
    if (slots > 1) t.ok(bothKept(size, 0, slots - 1, mask), `cacheSize ${size}: ${slots} slots, two of them used`)
    t.notOk(bothKept(size, 0, slots, mask), `cacheSize ${size}: not ${2 * slots} slots`)
  }
})

t.test('design pin: a doorkeeper generation is exactly 8 × size sightings (at least 64)', async (t) => {
  const spread = (i: number): number => Math.imul(i + 1, 0x9e3779b1) >>> 2
  /** Whether the first of 1 + `others` sightings is still remembered by the next one. */
  const remembered = (size: number, others: number): boolean => {
    const doorkeeper = new Doorkeeper(size)
    doorkeeper.sighted(spread(0))
    for (let i = 1; i <= others; i++) doorkeeper.sighted(spread(i))
    return doorkeeper.sighted(spread(0))
  }
  for (const [size, generation] of [[1, 64], [8, 64], [9, 72], [40, 320]] as const) {
    t.ok(remembered(size, 2 * generation - 1), `size ${size}: remembered through two generations of ${generation}`)
    t.notOk(remembered(size, 2 * generation), `size ${size}: forgotten one sighting later`)
  }
})

t.test('design pin: the doorkeeper holds 32 bytes per cache entry (two generations of 16 bits per sighting), at least 256 bytes', async (t) => {
  t.equal(new Doorkeeper(1).bytes, 256, 'a generation of 64 sightings: 2 × 1024 bits')
  t.equal(new Doorkeeper(8).bytes, 256)
  t.equal(new Doorkeeper(16).bytes, 512, '128 sightings: 2 × 2048 bits')
  t.equal(new Doorkeeper(1000).bytes, 32768, 'the default cacheSize: 32 KiB')
})
