import { createPublicKey, generateKeyPairSync, randomBytes } from 'node:crypto'
import diagnosticsChannel from 'node:diagnostics_channel'
import { getEventListeners } from 'node:events'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import Fastify from 'fastify'
import t, { type Test } from 'tap'
import cloudflareAccess from '../index'
import { channelNames, type KeyFetchEndMessage } from '../lib/channels'
import { fetchKeySet, KeyStore, parseKeySet, type KeyStoreOptions } from '../lib/keys'
import { normalizeOptions } from '../lib/options'
import { signJwt, type AccessEmulator } from '../lib/testing'
import { createTokenVerifier, type TokenVerifier } from '../lib/verify'
import { attackerKey, captureLogs, emulator, eventually, fixtureKeys, HEADER, keyFetchEnd, ManualClock, privateKey, setup, sleep } from './helpers'

// The key store (lib/keys.ts) and its bounded fetch (lib/fetch.ts), against real loopback servers: the
// Access emulator, and for what the emulator cannot misbehave into, a small raw HTTP server. Through the
// plugin where its wiring matters; the store alone on a ManualClock wherever a test waits on time
// (refresh intervals, retries, cooldowns, staleness): the fetches stay real HTTP, only the store's timers
// and its "now" are the test's.

async function rawServer (t: Test, handler: http.RequestListener): Promise<{ url: string, hits: () => number }> {
  let hits = 0
  const server = http.createServer((req, res) => { hits++; handler(req, res) })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()) }))
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/cdn-cgi/access/certs`, hits: () => hits }
}

const silent = { info () {}, warn () {}, error () {} }

type Line = [level: 'info' | 'warn' | 'error', fields: Record<string, any>, message: string]

/** A KeyStore on a manual clock, its log lines kept (level, fields, message), closed with the test. */
function clocked (t: Test, certsUrl: string, options: Partial<KeyStoreOptions> = {}): { store: KeyStore, clock: ManualClock, lines: Line[] } {
  const clock = new ManualClock()
  const lines: Line[] = []
  const log = {
    info (fields: object, message: string) { lines.push(['info', fields, message]) },
    warn (fields: object, message: string) { lines.push(['warn', fields, message]) },
    error (fields: object, message: string) { lines.push(['error', fields, message]) }
  }
  const store = new KeyStore({ certsUrl, fetchTimeout: 2000, refreshInterval: 60_000, unknownKidCooldown: 0, maxStaleAge: 3_600_000, log, clock, ...options })
  t.teardown(() => store.close())
  return { store, clock, lines }
}

/** Moves `clock` on by `ms`, and resolves once the key fetch from `url` that this starts has ended. */
function tick (clock: ManualClock, url: string, ms: number): Promise<KeyFetchEndMessage> {
  const ended = keyFetchEnd(url)
  clock.advance(ms)
  return ended
}

/** A verifier of the emulator's tokens on `store`. */
function verifierOn (access: AccessEmulator, store: KeyStore): TokenVerifier {
  return createTokenVerifier(normalizeOptions({ teamDomain: access.teamDomain, audience: access.audience }), store)
}

/** What `verifier` answers for `token`: 'admitted', or the refusal's code. */
async function answer (verifier: TokenVerifier, token: string): Promise<string> {
  try {
    const result = await verifier.verify(token)
    return result instanceof Error ? (result as Error & { code: string }).code : 'admitted'
  } catch (error) {
    return (error as Error & { code: string }).code
  }
}

// — through the plugin —

t.test('the key set is fetched once and serves many tokens', async (t) => {
  const { access, get } = await setup(t)
  for (let i = 0; i < 20; i++) t.equal((await get(access.signToken())).statusCode, 200)
  t.equal(access.certsRequestCount, 1)
})

t.test('single flight: 50 concurrent cold requests cause one fetch', async (t) => {
  const access = await emulator(t, { latency: 200 })
  const { app } = await setup(t, {}, { access, ready: false })
  const token = access.signToken()
  const responses = await Promise.all(Array.from({ length: 50 }, () => app.inject({ url: '/admin/me', headers: { 'cf-access-jwt-assertion': token } })))
  t.same(new Set(responses.map((res) => res.statusCode)), new Set([200]))
  t.equal(access.certsRequestCount, 1)
})

t.test('keys come only from the configured team, never from what a token names', async (t) => {
  const other = await emulator(t)
  const { access, get } = await setup(t)
  const res = await get(other.signToken({ iss: access.teamDomain, aud: [access.audience] }, { header: { jku: other.certsUrl } }))
  t.equal(res.statusCode, 401)
  t.equal(other.requestCount, 0, 'the other team was never asked')
})

t.test('a rotated-in kid is picked up at once on first sight, even right after a periodic fetch', async (t) => {
  const logs = captureLogs()
  const { access, get } = await setup(t, {}, { fastify: { logger: logs.logger } })
  t.equal((await get(access.signToken())).statusCode, 200)
  const kid = await access.rotateKeys()
  t.equal((await get(access.signToken())).statusCode, 200, 'the new kid triggers a refetch and passes')
  t.equal(access.kids[0], kid)
  t.equal(access.certsRequestCount, 2)
  t.ok(logs.lines.some((line) => line.msg.includes('key rotation seen') && line.added.includes(kid)), 'rotation logged at info')
})

t.test('with the default cooldown, a burst of 200 random kids causes one refetch', async (t) => {
  const { access, get } = await setup(t)
  t.equal((await get(access.signToken())).statusCode, 200)
  const key = attackerKey()
  const results = await Promise.all(Array.from({ length: 200 }, () => get(access.signToken({}, { key, kid: randomBytes(32).toString('hex') }))))
  t.ok(results.every((res) => res.statusCode === 401))
  t.equal(access.certsRequestCount, 2, 'the warm-up, and one refetch for the whole burst')
})

t.test('an unknown kid during the cooldown is answered 401 without waiting on the network', async (t) => {
  const { access, get } = await setup(t, { unknownKidCooldown: 5000 })
  t.equal((await get(access.signToken())).statusCode, 200)
  t.equal((await get(access.signToken({}, { key: attackerKey(), kid: 'e'.repeat(64) }))).statusCode, 401, 'a first unknown kid refetches')
  t.equal(access.certsRequestCount, 2)
  access.setLatency(Infinity)
  const started = Date.now()
  const res = await get(access.signToken({}, { key: attackerKey(), kid: 'f'.repeat(64) }))
  t.equal(res.statusCode, 401)
  t.ok(Date.now() - started < 500, `answered in ${Date.now() - started} ms`)
  t.equal(access.certsRequestCount, 2, 'no fetch during the cooldown')
})

t.test('cold start with the endpoint refusing: 503 at once, and no fetch per request while a retry is scheduled', async (t) => {
  const access = await emulator(t)
  access.setOutage('reset')
  const { get } = await setup(t, {}, { access })
  const started = Date.now()
  const res = await get(access.signToken())
  t.equal(res.statusCode, 503)
  t.equal(res.json.code, 'FST_CF_ACCESS_KEYS_UNAVAILABLE')
  t.ok(Date.now() - started < 1000, `answered in ${Date.now() - started} ms`)
  const burst = await Promise.all(Array.from({ length: 20 }, () => get(access.signToken())))
  t.ok(burst.every((r) => r.statusCode === 503))
  const fetchesDuringOutage = access.certsRequestCount
  t.ok(fetchesDuringOutage <= 4, `${fetchesDuringOutage} fetches for 21 requests: no fetch per request`)
})

t.test('cold start against a closed port: 503, not 500', async (t) => {
  const access = await emulator(t)
  const closed = await emulator(t)
  const teamDomain = closed.teamDomain
  await closed.close()
  const { get } = await setup(t, { teamDomain }, { access })
  const res = await get(access.signToken({ iss: teamDomain }))
  t.equal(res.statusCode, 503)
  t.match(res.json.message, /unreachable/)
})

t.test('a hanging endpoint fails the request within the fetch timeout; the next fetch is unaffected', async (t) => {
  const access = await emulator(t)
  access.setLatency(Infinity)
  const { get } = await setup(t, { fetchTimeout: 300 }, { access })
  const started = Date.now()
  const res = await get(access.signToken())
  const elapsed = Date.now() - started
  t.equal(res.statusCode, 503)
  t.match(res.json.message, /did not answer within 300 ms/)
  t.ok(elapsed >= 250 && elapsed < 1500, `answered in ${elapsed} ms`)
  access.setLatency(0)
  t.ok(await eventually(async () => (await get(access.signToken())).statusCode === 200, 5000), 'a later fetch succeeds: no shared abort signal')
})

t.test('garbage answers from the endpoint are 503 on a cold store', async (t) => {
  for (const mode of ['error', 'html', 'garbage', 'empty', 'redirect'] as const) {
    const access = await emulator(t)
    access.setOutage(mode)
    const { get } = await setup(t, {}, { access })
    const res = await get(access.signToken())
    t.equal(res.statusCode, 503, mode)
    t.equal(res.json.code, 'FST_CF_ACCESS_KEYS_UNAVAILABLE', mode)
    t.notOk(access.requests.includes('/elsewhere'), `${mode}: no redirect followed`)
  }
})

t.test('key rotation during a key-endpoint outage: 503 with Retry-After (not 401), and the failed refetch arms no cooldown', async (t) => {
  const access = await emulator(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, unknownKidCooldown: 60_000 })
  app.get('/', async (request) => request.cfAccess?.email)
  await app.ready()
  t.equal((await app.inject({ url: '/', headers: { [HEADER]: access.signToken() } })).statusCode, 200, 'warm')
  await access.rotateKeys()
  access.setOutage('error')
  const rotated = access.signToken()
  const during = await app.inject({ url: '/', headers: { [HEADER]: rotated } })
  t.equal(during.statusCode, 503)
  t.equal(during.json().code, 'FST_CF_ACCESS_KEYS_UNAVAILABLE')
  t.equal(during.headers['retry-after'], '5')
  const fetches = access.certsRequestCount
  for (let i = 0; i < 30; i++) {
    const res = await app.inject({ url: '/', headers: { [HEADER]: access.signToken({}, { kid: `attacker-${i}` }) } })
    t.equal(res.statusCode, 503, 'random kids during the outage: 503')
  }
  t.ok(access.certsRequestCount - fetches <= 1, `random kids during the outage cause no fetch per request (${access.certsRequestCount - fetches})`)
  access.setOutage(false)
  // The failure backoff starts at 500 ms: once it ran, the rotated key is there at once (no 60 s cooldown).
  t.ok(await eventually(async () => (await app.inject({ url: '/', headers: { [HEADER]: rotated } })).statusCode === 200, 5000), 'after the outage the rotated key verifies')
  t.equal((await app.inject({ url: '/', headers: { [HEADER]: access.signToken({}, { kid: 'never-published' }) } })).statusCode, 401, 'a kid a successful fetch lacks is unknown: 401')
})

t.test('keys outside what Cloudflare publishes are ignored: e other than 65537, modulus outside 2048..4096 bits', async (t) => {
  const access = await emulator(t)
  const odd = Object.fromEntries(Object.entries(fixtureKeys().odd).map(([name, pem]) => [name, privateKey(pem)]))
  t.same(Object.keys(odd), ['e = 3', 'e = 65539', 'e = 2^31 - 1', '4160-bit modulus'])
  t.same(Object.values(odd).map((key) => { const { modulusLength, publicExponent } = key.asymmetricKeyDetails as { modulusLength: number, publicExponent: bigint }; return [modulusLength, Number(publicExponent)] }),
    [[2048, 3], [2048, 65539], [2048, 2 ** 31 - 1], [4160, 65537]], 'the fixture keys are what their names say')
  const jwks = { keys: [...access.jwks().keys] }
  for (const [name, key] of Object.entries(odd)) {
    jwks.keys.push({ ...(key.export({ format: 'jwk' }) as Record<string, string>), d: undefined as unknown as string, p: undefined as unknown as string, q: undefined as unknown as string, dp: undefined as unknown as string, dq: undefined as unknown as string, qi: undefined as unknown as string, kid: name.replace(/[^a-z0-9]/g, '-'), alg: 'RS256', use: 'sig' })
  }
  const server = http.createServer((_req, res) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(jwks)))
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { server.closeAllConnections(); server.close() })
  const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(cloudflareAccess, { teamDomain: origin, audience: access.audience })
  app.get('/', async () => 'in')
  await app.ready()
  const claims = { iss: origin, aud: [access.audience], email: 'user@example.com', type: 'app', iat: Math.floor(Date.now() / 1000), exp: Math.floor(Date.now() / 1000) + 600 }
  t.equal((await app.inject({ url: '/', headers: { [HEADER]: access.signToken({ iss: origin }) } })).statusCode, 200, 'the real keys serve')
  for (const [name, key] of Object.entries(odd)) {
    const token = signJwt({ alg: 'RS256', kid: name.replace(/[^a-z0-9]/g, '-') }, claims, key)
    const res = await app.inject({ url: '/', headers: { [HEADER]: token } })
    t.same([res.statusCode, res.json().message], [401, 'Invalid Cloudflare Access token: unknown key id (kid)'], name)
  }
})

// — the bounded fetch —

t.test('fetchKeySet bounds every fetch', async (t) => {
  const big = await rawServer(t, (_req, res) => { res.end(JSON.stringify({ keys: [], pad: 'x'.repeat(300_000) })) })
  await t.rejects(fetchKeySet(big.url, 1000, 256 * 1024), /answered more than 262144 bytes/)

  const slowBody = await rawServer(t, (_req, res) => { res.writeHead(200); res.write('{"keys": [') })
  await t.rejects(fetchKeySet(slowBody.url, 300, 1024), /did not answer within 300 ms/, 'a body that never ends')

  const cut = await rawServer(t, (req, res) => { res.writeHead(200, { 'content-length': '100' }); res.write('{"ke'); setTimeout(() => req.socket.destroy(), 20) })
  await t.rejects(fetchKeySet(cut.url, 2000, 1024), /connection to key endpoint failed|not JSON/, 'a connection cut mid-body')

  const html = await rawServer(t, (_req, res) => { res.writeHead(200, { 'content-type': 'text/html' }).end('<html>') })
  await t.rejects(fetchKeySet(html.url, 2000, 1024), /key endpoint answered something that is not JSON/, 'a page instead of the key set: refused when it ends, not at the timeout')

  const status = await rawServer(t, (_req, res) => { res.writeHead(301, { location: 'http://127.0.0.1:1/' }).end() })
  await t.rejects(fetchKeySet(status.url, 1000, 1024), /HTTP 301/)

  const ok = await rawServer(t, (_req, res) => { res.end('{"keys":[]}') })
  t.same(await fetchKeySet(ok.url, 1000, 1024), { keys: [] })
  await t.rejects(fetchKeySet('https://127.0.0.1:1/cdn-cgi/access/certs', 1000, 1024), /unreachable/, 'https is used for https origins')
})

t.test('fetchKeySet: an answer of exactly the size cap is read; the request asks for JSON and names the plugin', async (t) => {
  const body = JSON.stringify({ keys: [], pad: 'x'.repeat(1000) })
  let headers: http.IncomingHttpHeaders = {}
  const exact = await rawServer(t, (req, res) => { headers = req.headers; res.end(body) })
  t.same(await fetchKeySet(exact.url, 1000, Buffer.byteLength(body)), { keys: [], pad: 'x'.repeat(1000) }, 'maxBytes bytes: read')
  await t.rejects(fetchKeySet(exact.url, 1000, Buffer.byteLength(body) - 1), /answered more than/, 'one byte more than maxBytes: refused')
  t.equal(headers.accept, 'application/json')
  t.equal(headers['user-agent'], 'fastify-cloudflare-access')
})

t.test('fetchKeySet: each fetch leaves no listener on the app\'s abort signal, however it ends', async (t) => {
  const controller = new AbortController()
  const ok = await rawServer(t, (_req, res) => { res.end('{"keys":[]}') })
  const failing = await rawServer(t, (_req, res) => { res.writeHead(500).end() })
  for (let i = 0; i < 3; i++) {
    await fetchKeySet(ok.url, 1000, 1024, controller.signal)
    await fetchKeySet(failing.url, 1000, 1024, controller.signal).catch(() => undefined)
  }
  t.equal(getEventListeners(controller.signal, 'abort').length, 0)
})

t.test('fetchKeySet: a server that closes each connection right after answering serves fetch after fetch', async (t) => {
  const body = JSON.stringify({ keys: [] })
  const { url, hits } = await rawServer(t, (req, res) => {
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) })
    res.end(body, () => setTimeout(() => req.socket.destroy(), 1))
  })
  for (let i = 0; i < 20; i++) {
    t.same(await fetchKeySet(url, 1000, 1000).catch((error: Error) => error.message), { keys: [] }, `fetch ${i + 1}`)
    await sleep(i % 3)
  }
  t.equal(hits(), 20)
})

t.test('parseKeySet keeps only RSA keys for RS256 signatures', async (t) => {
  const access = await emulator(t)
  const [good, second] = access.jwks().keys as [Record<string, string>, Record<string, string>]
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ format: 'jwk' })
  const small = fixtureKeys().publicJwks['rsa-1024']
  const large = fixtureKeys().publicJwks['rsa-4096']
  t.same([small, large].map((jwk) => createPublicKey({ key: jwk, format: 'jwk' }).asymmetricKeyDetails?.modulusLength), [1024, 4096], 'the fixture keys are what their names say')
  const keys = parseKeySet({
    keys: [
      good,
      { ...second, kid: 'rs384', alg: 'RS384' },
      { ...second, kid: 'enc', use: 'enc' },
      { ...ec, kid: 'ec' },
      { ...small, kid: 'small', alg: 'RS256' },
      { ...second, kid: 'no-n', n: undefined },
      { ...second, kid: 'bad-n', n: 'AAAA', e: '!!' },
      { ...second, kid: 'zero-e', e: 'AAAA' },
      { ...second, kid: 'bad kid with spaces' },
      { ...second, kid: good.kid },
      { ...second, kid: 'no-alg', alg: undefined, use: undefined },
      { ...second, kid: 'labelled-ec', kty: 'EC' },
      { ...second, kid: 12345 },
      { ...second, kid: 'no-e', e: undefined },
      { ...second, kid: 'number-n', n: 5 },
      { ...large, kid: 'rsa-4096' },
      null,
      'string',
      7
    ]
  }, new Map())
  t.same([...keys.keys()], [good.kid, 'no-alg', 'rsa-4096'], 'RS256 keys from 2048 to 4096 bits only')
  t.throws(() => parseKeySet('keys', new Map()), /no "keys" array/)
  t.throws(() => parseKeySet(7, new Map()), /no "keys" array/)
  t.throws(() => parseKeySet({ nokeys: true }, new Map()), /no "keys" array/)
  t.throws(() => parseKeySet(null, new Map()), /no "keys" array/)
  const again = parseKeySet({ keys: [good] }, keys)
  t.equal(again.get(good.kid as string), keys.get(good.kid as string), 'an unchanged key keeps its entry')
})

// — the store alone —

t.test('KeyStore on the real clock: a refresh every refreshInterval, none after close', async (t) => {
  const access = await emulator(t)
  const store = new KeyStore({ certsUrl: access.certsUrl, fetchTimeout: 1000, refreshInterval: 50, unknownKidCooldown: 0, maxStaleAge: 60_000, log: silent })
  t.teardown(() => store.close())
  store.start()
  t.ok(await eventually(() => store.fetchCount >= 3, 5000), 'the warm-up and refreshes 50 ms apart')
  store.close()
  const fetches = store.fetchCount
  await sleep(200)
  t.equal(store.fetchCount, fetches, 'closed: its timer is cleared')
})

t.test('periodic refresh replaces the whole set: a key Cloudflare removed stops verifying, one fetch per interval', async (t) => {
  const access = await emulator(t)
  const { store, clock } = clocked(t, access.certsUrl, { refreshInterval: 1000, unknownKidCooldown: 60_000 })
  const verifier = verifierOn(access, store)
  store.start()
  await store.whenReady(2000)
  const oldToken = access.signToken({}, { key: 'previous' })
  t.equal(await answer(verifier, oldToken), 'admitted', 'the previous key is published and verifies')
  await access.rotateKeys()
  await access.rotateKeys() // the old previous key is gone now
  t.equal(await answer(verifier, oldToken), 'admitted', 'until the next refresh')
  await tick(clock, access.certsUrl, 1000)
  t.equal(await answer(verifier, oldToken), 'FST_CF_ACCESS_TOKEN_INVALID', 'after the refresh the removed key is rejected')
  t.equal(await answer(verifier, access.signToken()), 'admitted', 'the new current key verifies')
  await tick(clock, access.certsUrl, 1000)
  t.equal(access.certsRequestCount, 4, 'the warm-up, one per interval, and one for the removed kid (once per cooldown): none per request')
  t.same(clock.delays, [1000], 'the next one an interval away')
})

t.test('unknown kids are bounded: 200 random kids in four rounds cause one fetch per cooldown', async (t) => {
  const access = await emulator(t)
  const { store, clock } = clocked(t, access.certsUrl, { unknownKidCooldown: 250 })
  const verifier = verifierOn(access, store)
  t.equal(await answer(verifier, access.signToken()), 'admitted')
  const key = attackerKey()
  const results: string[] = []
  for (let round = 0; round < 4; round++) {
    // 50 concurrent random kids per round, rounds 300 ms apart: each round refetches once
    results.push(...await Promise.all(Array.from({ length: 50 }, () => answer(verifier, access.signToken({}, { key, kid: randomBytes(32).toString('hex') })))))
    clock.advance(300)
  }
  t.equal(results.length, 200)
  t.ok(results.every((code) => code === 'FST_CF_ACCESS_TOKEN_INVALID'), 'all rejected')
  t.equal(access.certsRequestCount - 1, 4, 'one refetch per round')
  t.equal(await answer(verifier, access.signToken()), 'admitted', 'valid tokens still pass')
})

t.test('outage after warm-up: the last good set keeps serving, a failure is a warning, the recovery is logged', async (t) => {
  const access = await emulator(t)
  const { store, clock, lines } = clocked(t, access.certsUrl, { refreshInterval: 1000 })
  const verifier = verifierOn(access, store)
  const token = access.signToken()
  t.equal(await answer(verifier, token), 'admitted')
  access.setOutage(true)
  t.match(await tick(clock, access.certsUrl, 1000), { ok: false })
  t.match(lines, [['warn', { failures: 1 }, /key refresh failed; the last good key set keeps serving/]], 'a failed refresh is a warning')
  for (let i = 0; i < 5; i++) t.equal(await answer(verifier, access.signToken()), 'admitted', 'still admitted during the outage')
  access.setOutage(false)
  t.match(await tick(clock, access.certsUrl, 500), { ok: true }, 'the first retry, 500 ms later')
  t.match(lines.slice(1), [['info', { kids: [...access.kids] }, /key endpoint recovered/]], 'recovery logged')
  t.notOk(JSON.stringify(lines).includes(token), 'no token in any log line')
})

t.test('maxStaleAge: a set that cannot be refreshed for too long stops serving (503), with an error log', async (t) => {
  const access = await emulator(t)
  const { store, clock, lines } = clocked(t, access.certsUrl, { refreshInterval: 1000, maxStaleAge: 1000 })
  const verifier = verifierOn(access, store)
  t.equal(await answer(verifier, access.signToken()), 'admitted')
  access.setOutage(true)
  await tick(clock, access.certsUrl, 1000)
  t.equal(await answer(verifier, access.signToken()), 'admitted', 'maxStaleAge old: still serving')
  clock.advance(100)
  t.equal(await answer(verifier, access.signToken()), 'FST_CF_ACCESS_KEYS_UNAVAILABLE')
  t.ok(lines.some(([level, , message]) => level === 'error' && /older than maxStaleAge/.test(message)))
})

t.test('KeyStore used directly: close stops timers, start is idempotent', async (t) => {
  const access = await emulator(t)
  const { store, clock } = clocked(t, access.certsUrl, { fetchTimeout: 1000, refreshInterval: 1000, unknownKidCooldown: 0, maxStaleAge: 60_000 })
  t.equal(store.ready, false)
  t.same(store.kids, [])
  store.start()
  store.start()
  const key = await store.resolve(access.kids[0] as string)
  t.equal(key?.kid, access.kids[0])
  t.equal(await store.resolve(access.kids[0] as string), key, 'a known kid resolves from the set')
  t.equal(access.certsRequestCount, 1, 'start twice, one fetch')
  t.same(store.kids.sort(), [...access.kids].sort())
  t.equal(await store.resolve('unknown'), undefined, 'unknown kid after a refetch (cooldown 0)')
  t.equal(store.fetchCount, 2)
  const other = await emulator(t)
  const cooling = clocked(t, other.certsUrl, { fetchTimeout: 1000, unknownKidCooldown: 5000, maxStaleAge: 60_000 }).store
  await cooling.resolve(other.kids[0] as string)
  t.equal(cooling.isKnownUnknown('unknown'), false, 'no unknown kid has caused a refetch yet')
  t.equal(await cooling.resolve('unknown'), undefined, 'the first unknown kid refetches')
  t.equal(cooling.fetchCount, 2)
  t.equal(cooling.isKnownUnknown('unknown'), true)
  t.equal(await cooling.resolve('unknown'), undefined, 'an unknown kid within the cooldown: no fetch')
  t.equal(cooling.fetchCount, 2)
  t.equal(cooling.isKnownUnknown(other.kids[0] as string), false, 'a known kid is not unknown')
  cooling.close()
  store.close()
  const fetchesAtClose = access.certsRequestCount
  store.start()
  t.equal(clock.pending, 0, 'no timer after close')
  clock.advance(1200)
  t.equal(access.certsRequestCount, fetchesAtClose, 'no refresh after close')

  const closing = clocked(t, access.certsUrl, { fetchTimeout: 1000, refreshInterval: 1000, unknownKidCooldown: 0, maxStaleAge: 60_000 })
  const pending = closing.store.resolve(access.kids[0] as string)
  closing.store.close()
  await t.rejects(pending, { code: 'FST_CF_ACCESS_KEYS_UNAVAILABLE', message: /aborted/ }, 'a fetch under way when the store closes is aborted at once')
  await t.rejects(closing.store.resolve(access.kids[0] as string), { code: 'FST_CF_ACCESS_KEYS_UNAVAILABLE', message: /aborted/ }, 'a closed store fetches nothing')
  t.equal(closing.clock.pending, 0, 'and schedules nothing')
  closing.clock.advance(1200)
  t.equal(closing.store.fetchCount, 2)
})

t.test('KeyStore.whenReady: at once when ready, bounded when not, and a late success after the bound changes nothing', async (t) => {
  const access = await emulator(t)
  access.setLatency(100)
  const { store, clock } = clocked(t, access.certsUrl)
  const ended = keyFetchEnd(access.certsUrl)
  const waiting = store.whenReady(100)
  clock.advance(100)
  await t.rejects(waiting, { code: 'FST_CF_ACCESS_KEYS_UNAVAILABLE', message: /no key set within 100 ms$/ })
  await ended
  t.equal(store.ready, true, 'the fetch under way completed after the bound')
  const fetches = store.fetchCount
  await store.whenReady(1)
  t.equal(store.fetchCount, fetches, 'ready: resolves at once, without fetching')
})

t.test('KeyStore cold: never called stale; whenReady retries a failed fetch every 250 ms and resolves once one succeeds', async (t) => {
  const access = await emulator(t)
  access.setOutage('error')
  const { store, clock, lines } = clocked(t, access.certsUrl, { maxStaleAge: 1000 })
  t.equal(store.ready, false)
  t.same(store.kids, [])
  let resolved = false
  const failed = keyFetchEnd(access.certsUrl)
  const waiting = store.whenReady(3000).then(() => { resolved = true })
  t.match(await failed, { ok: false })
  t.equal(await tick(clock, access.certsUrl, 250).then((end) => end.ok), false, 'a second attempt 250 ms later')
  access.setOutage(false)
  t.equal(await tick(clock, access.certsUrl, 250).then((end) => end.ok), true, 'a third')
  await waiting
  t.equal(resolved, true, 'resolved by the attempt that succeeded')
  t.equal(store.ready, true)
  t.equal(access.certsRequestCount, 3)
  t.notOk(lines.some(([, , message]) => /maxStaleAge/.test(message)), 'a store that never had keys is not "stale"')
})

t.test('KeyStore cold: a lookup fetches on demand; while a retry is scheduled after a failure, lookups do not fetch', async (t) => {
  const access = await emulator(t)
  const options = { certsUrl: access.certsUrl, fetchTimeout: 1000, refreshInterval: 60_000, unknownKidCooldown: 0, maxStaleAge: 60_000, log: silent }
  const store = new KeyStore(options)
  t.teardown(() => store.close())
  const kid = access.kids[0] as string
  t.equal((await store.resolve(kid))?.kid, kid, 'never started: the lookup fetches')
  t.equal(access.certsRequestCount, 1)

  const down = await emulator(t)
  down.setOutage('error')
  const failing = new KeyStore({ ...options, certsUrl: down.certsUrl })
  t.teardown(() => failing.close())
  await t.rejects(failing.resolve(kid), { code: 'FST_CF_ACCESS_KEYS_UNAVAILABLE' }, 'the first lookup fetches, and fails')
  for (let i = 0; i < 10; i++) await t.rejects(failing.resolve(kid), { code: 'FST_CF_ACCESS_KEYS_UNAVAILABLE' })
  t.equal(down.certsRequestCount, 1, 'ten lookups one after another while the retry is scheduled: no further fetch')
})

t.test('KeyStore: a set that aged past maxStaleAge between refreshes is fetched again on the next lookup, not refused', async (t) => {
  const access = await emulator(t)
  const { store, clock } = clocked(t, access.certsUrl, { maxStaleAge: 200 })
  store.start()
  await store.whenReady(2000)
  clock.advance(300)
  t.equal(store.ready, false, 'older than maxStaleAge, no failure, the next refresh a minute away')
  const kid = access.kids[0] as string
  t.equal((await store.resolve(kid))?.kid, kid, 'the lookup fetches a fresh set')
  t.equal(access.certsRequestCount, 2)
})

t.test('KeyStore: an unknown kid is answered at once only while no fetch is under way and the set is usable', async (t) => {
  const access = await emulator(t)
  const { store, clock } = clocked(t, access.certsUrl, { refreshInterval: 600, unknownKidCooldown: 60_000, maxStaleAge: 1000 })
  store.start()
  await store.whenReady(2000)
  t.equal(await store.resolve('a kid nobody publishes'), undefined, 'a refetch that arms the cooldown')
  t.equal(store.isKnownUnknown('another kid'), true, 'within the cooldown: answered at once')
  access.setLatency(100)
  const ended = keyFetchEnd(access.certsUrl)
  clock.advance(600)
  t.equal(store.ready, true)
  t.equal(store.isKnownUnknown('another kid'), false, 'a fetch under way: wait for it instead')
  await ended
  access.setLatency(0)
  access.setOutage('error')
  t.equal(await tick(clock, access.certsUrl, 600).then((end) => end.ok), false, 'a refresh fails')
  t.equal(store.ready, true, 'the set is 600 ms old')
  clock.advance(401)
  t.equal(store.ready, false, 'no usable set: refreshes failed beyond maxStaleAge')
  t.equal(store.isKnownUnknown('another kid'), false, 'without a usable set nothing is known')
})

t.test('KeyStore: a lookup that joins a fetch under way does not arm the unknown-kid cooldown', async (t) => {
  const access = await emulator(t)
  const { store, clock } = clocked(t, access.certsUrl, { refreshInterval: 1500, unknownKidCooldown: 60_000 })
  store.start()
  await store.whenReady(2000)
  const first = await access.rotateKeys()
  access.setLatency(100)
  const ended = keyFetchEnd(access.certsUrl)
  clock.advance(1500)
  t.equal(store.fetchCount, 2, 'the periodic refresh is under way')
  t.equal((await store.resolve(first))?.kid, first, 'joined the periodic refresh under way')
  await ended
  access.setLatency(0)
  const second = await access.rotateKeys()
  const fetches = store.fetchCount
  t.equal((await store.resolve(second))?.kid, second, 'the next rotated-in kid is fetched at once: no cooldown was armed')
  t.equal(store.fetchCount, fetches + 1)
})

t.test('KeyStore: the unknown-kid cooldown lasts exactly unknownKidCooldown milliseconds from the refetch it follows', async (t) => {
  const access = await emulator(t)
  const { store, clock } = clocked(t, access.certsUrl, { unknownKidCooldown: 1000 })
  store.start()
  await store.whenReady(2000)
  t.equal(await store.resolve('a kid nobody publishes'), undefined, 'the refetch, at "now"')
  clock.advance(999)
  t.equal(store.isKnownUnknown('another kid'), true, '999 ms later: still cooling down')
  clock.advance(1)
  t.equal(store.isKnownUnknown('another kid'), false, '1000 ms later: over')
})

t.test('KeyStore.start: nothing more once a refresh is scheduled or the store is closed', async (t) => {
  const access = await emulator(t)
  const store = new KeyStore({ certsUrl: access.certsUrl, fetchTimeout: 1000, refreshInterval: 60_000, unknownKidCooldown: 0, maxStaleAge: 60_000, log: silent })
  store.start()
  await store.whenReady(2000)
  store.start()
  t.equal(store.fetchCount, 1, 'a refresh is scheduled: start again fetches nothing')
  store.close()
  const closed = new KeyStore({ certsUrl: access.certsUrl, fetchTimeout: 1000, refreshInterval: 60_000, unknownKidCooldown: 0, maxStaleAge: 60_000, log: silent })
  closed.close()
  closed.start()
  t.equal(closed.fetchCount, 0, 'closed: start fetches nothing')
  await t.rejects(closed.resolve(access.kids[0] as string), { code: 'FST_CF_ACCESS_KEYS_UNAVAILABLE' }, 'and a lookup gets a 503')
})

t.test('KeyStore: a set is usable up to maxStaleAge milliseconds after it was fetched, then dropped with an error log', async (t) => {
  const access = await emulator(t)
  const { store, clock, lines } = clocked(t, access.certsUrl, { refreshInterval: 3_600_000, maxStaleAge: 5000 })
  store.start()
  await store.whenReady(2000)
  clock.advance(5000)
  t.equal(store.ready, true, 'maxStaleAge after the fetch: still usable')
  clock.advance(1)
  t.equal(store.ready, false, '1 ms later: dropped')
  t.match(lines, [['error', { certsUrl: access.certsUrl, staleForMs: 5001 }, /key set older than maxStaleAge dropped/]])
})

t.test('KeyStore logs and stale events: a failure at error without a set and at warn with one, recovery and rotation at info, nothing after close', async (t) => {
  const access = await emulator(t)
  const stale: unknown[] = []
  const onStale = (message: unknown): void => { stale.push(message) }
  diagnosticsChannel.subscribe(channelNames.keyStale, onStale)
  t.teardown(() => diagnosticsChannel.unsubscribe(channelNames.keyStale, onStale))
  access.setOutage('error')
  const { store, clock, lines } = clocked(t, access.certsUrl, { refreshInterval: 400 })
  const logged = (): Array<[string, object]> => lines.map(([level, fields]) => [level, fields])
  await t.rejects(store.resolve(access.kids[0] as string), { code: 'FST_CF_ACCESS_KEYS_UNAVAILABLE' })
  t.match(logged(), [['error', { certsUrl: access.certsUrl, failures: 1, reason: /HTTP 503/ }]], 'no set: error')
  t.same(stale, [], 'no set: nothing stale')
  access.setOutage(false)
  await tick(clock, access.certsUrl, 400)
  t.equal(store.ready, true)
  t.same(logged().slice(1), [['info', { certsUrl: access.certsUrl, kids: [...access.kids] }]], 'recovered, once, with the kids')
  const [current, previous] = access.kids as [string, string]
  const added = await access.rotateKeys()
  await tick(clock, access.certsUrl, 400)
  t.same(logged().slice(2), [['info', { added: [added], removed: [previous] }]], 'a rotation, once')
  t.ok(store.kids.includes(current))
  await tick(clock, access.certsUrl, 400)
  t.equal(lines.length, 3, 'a refresh of the same set logs nothing')
  access.setOutage('error')
  await tick(clock, access.certsUrl, 400)
  t.match(logged()[3], ['warn', { certsUrl: access.certsUrl, failures: 1, reason: /HTTP 503/ }], 'with a set: warn')
  t.match(stale, [{ ageMs: 400, failures: 1 }], 'and a stale event, with the age of the set')
  store.close()
  const fetches = store.fetchCount
  const count = lines.length
  clock.advance(800)
  t.equal(store.fetchCount, fetches, 'closed: no timer fetches any more')
  t.equal(lines.length, count, 'and nothing is logged')
})

t.test('KeyStore logs a key added alone, and a key removed alone, as rotations', async (t) => {
  const access = await emulator(t)
  const [first, second] = access.jwks().keys as [{ kid: string }, { kid: string }]
  let keys = [first]
  const server = await rawServer(t, (_req, res) => { res.end(JSON.stringify({ keys })) })
  const { store, clock, lines } = clocked(t, server.url, { refreshInterval: 300 })
  store.start()
  await store.whenReady(2000)
  keys = [first, second]
  await tick(clock, server.url, 300)
  keys = [second]
  await tick(clock, server.url, 300)
  t.same(lines.filter(([, fields]) => 'added' in fields).map(([, fields]) => fields), [{ added: [second.kid], removed: [] }, { added: [], removed: [first.kid] }])
})

t.test('KeyStore: while fetches fail, retries back off from 500 ms, doubling, up to 4 s without a set and to 60 s or refreshInterval with one', async (t) => {
  const down = await emulator(t)
  down.setOutage('error')
  const cold = clocked(t, down.certsUrl)
  const first = keyFetchEnd(down.certsUrl)
  cold.store.start()
  await first
  const delays: number[] = cold.clock.delays
  for (let i = 0; i < 5; i++) {
    await tick(cold.clock, down.certsUrl, cold.clock.delays[0] as number)
    delays.push(...cold.clock.delays)
  }
  t.same(delays, [500, 1000, 2000, 4000, 4000, 4000], 'no set: 500 ms, doubling, at most 4 s')
  t.equal(down.certsRequestCount, 6, 'one fetch per retry, nothing else')
  down.setOutage(false)
  await tick(cold.clock, down.certsUrl, 4000)
  t.equal(cold.store.ready, true, 'the first success ends the outage: service resumes by itself')
  t.same(cold.clock.delays, [60_000], 'then refreshInterval again')

  const access = await emulator(t)
  for (const [refreshInterval, expected] of [[600_000, [500, 1000, 2000, 4000, 8000, 16_000, 32_000, 60_000, 60_000]], [3000, [500, 1000, 2000, 3000, 3000]]] as const) {
    const warm = clocked(t, access.certsUrl, { refreshInterval })
    warm.store.start()
    await warm.store.whenReady(2000)
    access.setOutage('error')
    const seen: number[] = []
    for (let i = 0; i < expected.length; i++) {
      await tick(warm.clock, access.certsUrl, warm.clock.delays[0] as number)
      seen.push(...warm.clock.delays)
    }
    access.setOutage(false)
    t.same(seen, expected, `a set serving, refreshInterval ${refreshInterval}: at most ${Math.min(60_000, refreshInterval)} ms`)
    warm.store.close()
  }
})

t.test('KeyStore.whenReady settles either way, and stops polling once it gave up', async (t) => {
  const access = await emulator(t)
  access.setOutage('error')
  const { store, clock } = clocked(t, access.certsUrl)
  let settled = 'pending'
  const first = keyFetchEnd(access.certsUrl)
  store.whenReady(600).then(() => { settled = 'resolved' }, () => { settled = 'rejected' })
  await first
  await tick(clock, access.certsUrl, 250)
  await tick(clock, access.certsUrl, 250)
  t.equal(access.certsRequestCount, 3, 'an attempt every 250 ms while it waits')
  clock.advance(100)
  await sleep(0)
  t.equal(settled, 'rejected', 'no keys within the bound: rejected')
  const fetches = store.fetchCount
  clock.advance(150)
  t.equal(store.fetchCount, fetches, 'its attempt due after it gave up fetches nothing')
  t.same(clock.delays, [1750], 'what is left: the store\'s own backoff (2 s after its third failure)')
  await tick(clock, access.certsUrl, 1750)
  t.equal(store.fetchCount, fetches + 1, 'which goes on')
  access.setOutage(false)
  await store.whenReady(2000)
  t.pass('keys at hand: resolved')
})

t.test('KeyStore cold: a lookup while a scheduled retry is under way joins it instead of failing', async (t) => {
  const access = await emulator(t)
  access.setOutage('error')
  const { store, clock } = clocked(t, access.certsUrl)
  const failed = keyFetchEnd(access.certsUrl)
  store.start()
  await failed
  t.equal(store.snapshot().failures, 1, 'the first fetch failed; a retry is scheduled')
  access.setOutage(false)
  access.setLatency(100)
  clock.advance(500)
  t.equal(store.fetchCount, 2, 'the retry is under way')
  const kid = access.kids[0] as string
  t.equal((await store.resolve(kid))?.kid, kid, 'joined the retry under way: the key, not a 503')
  t.equal(access.certsRequestCount, 2, 'no fetch of its own')
})
