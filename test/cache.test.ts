import { randomBytes } from 'node:crypto'
import Fastify from 'fastify'
import t from 'tap'
import cloudflareAccess from '../index'
import { VerifiedCache } from '../lib/cache'
import type { SigningKey } from '../lib/keys'
import { attackerKey, emulator, eventually, HEADER, nowSeconds, rawToken, setup, sleep } from './helpers'

// The verified-token cache may change the cost of a decision, never the decision.

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
  const token = access.signToken({ exp: nowSeconds() + 2 })
  t.equal((await get(token)).statusCode, 200)
  t.equal((await get(token)).statusCode, 200, 'served from the cache')
  await sleep(3100)
  const res = await get(token)
  t.equal(res.statusCode, 401)
  t.equal(res.json.code, 'FST_CF_ACCESS_TOKEN_EXPIRED')
})

t.test('clockTolerance applies to a cached token exactly as to a fresh one', async (t) => {
  const { access, get } = await setup(t, { clockTolerance: 2 })
  const token = access.signToken({ exp: nowSeconds() })
  t.equal((await get(token)).statusCode, 200, 'expired by under 2 s: within tolerance')
  await sleep(3100)
  t.equal((await get(token)).json.code, 'FST_CF_ACCESS_TOKEN_EXPIRED', 'beyond tolerance, cached or not')
})

t.test('a cached token whose key Cloudflare removed is rejected after the refresh', async (t) => {
  const { access, get } = await setup(t, { refreshInterval: 1000 })
  const token = access.signToken({}, { key: 'previous' })
  t.equal((await get(token)).statusCode, 200)
  await access.rotateKeys()
  await access.rotateKeys()
  t.ok(await eventually(async () => (await get(token)).statusCode === 401, 3000), 'rejected although it was cached')
  t.equal((await get(token)).json.code, 'FST_CF_ACCESS_TOKEN_INVALID')
})

t.test('a cached token gets 503 like any other once the key set is too stale', async (t) => {
  const { access, get } = await setup(t, { refreshInterval: 1000, maxStaleAge: 1000 })
  const token = access.signToken()
  t.equal((await get(token)).statusCode, 200)
  access.setOutage(true)
  await sleep(1200)
  t.equal((await get(token)).statusCode, 503)
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
  const first = await cached.cfAccess!.verifyToken(token)
  t.equal(await cached.cfAccess!.verifyToken(token), first)
  t.ok(Object.isFrozen(first) && Object.isFrozen(first.aud), 'frozen, deeply')
  const uncached = await make(0)
  const one = await uncached.cfAccess!.verifyToken(token)
  const two = await uncached.cfAccess!.verifyToken(token)
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
  const { access, app } = await setup(t, { clockTolerance: 0, refreshInterval: 1000 })
  const ask = async (token: string) => (await app.inject({ url: '/admin/me', headers: { [HEADER]: token } })).json()
  const typed = access.signToken({ type: 'org' })
  t.equal((await ask(typed)).code, 'FST_CF_ACCESS_CLAIM_INVALID')
  t.match(await ask(typed), { statusCode: 401, message: /type is not "app"/ }, 'a rejection from the plugin’s own checks is remembered too')
  const other = access.signToken({ aud: ['c'.repeat(64)], exp: nowSeconds() + 2 }, { key: 'previous' })
  const first = await ask(other)
  t.equal(first.code, 'FST_CF_ACCESS_CLAIM_INVALID')
  t.same(await ask(other), first, 'the remembered rejection answers exactly the same')
  await sleep(2100)
  t.equal((await ask(other)).code, 'FST_CF_ACCESS_TOKEN_EXPIRED', 'after exp the token is expired, as without the cache')
  const again = access.signToken({ aud: ['c'.repeat(64)] }, { key: 'previous' })
  t.equal((await ask(again)).code, 'FST_CF_ACCESS_CLAIM_INVALID')
  await access.rotateKeys()
  await access.rotateKeys()
  t.ok(await eventually(async () => (await ask(again)).code === 'FST_CF_ACCESS_TOKEN_INVALID', 3000), 'once its key is gone it is an invalid token, as without the cache')
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
