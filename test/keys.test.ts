import { generateKeyPairSync, randomBytes } from 'node:crypto'
import diagnosticsChannel from 'node:diagnostics_channel'
import { getEventListeners } from 'node:events'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import t, { type Test } from 'tap'
import { channelNames } from '../lib/channels'
import { fetchKeySet, KeyStore, parseKeySet } from '../lib/keys'
import { attackerKey, captureLogs, emulator, eventually, setup, sleep } from './helpers'

// Each property of the key store, proven against real loopback servers: the Access emulator, and for
// what the emulator cannot misbehave into, a small raw HTTP server.

async function rawServer (t: Test, handler: http.RequestListener): Promise<{ url: string, hits: () => number }> {
  let hits = 0
  const server = http.createServer((req, res) => { hits++; handler(req, res) })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()) }))
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/cdn-cgi/access/certs`, hits: () => hits }
}

const silent = { info () {}, warn () {}, error () {} }

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

t.test('periodic refresh replaces the whole set: a key Cloudflare removed stops verifying', async (t) => {
  const { access, get } = await setup(t, { refreshInterval: 1000 })
  const started = Date.now()
  const oldToken = access.signToken({}, { key: 'previous' })
  t.equal((await get(oldToken)).statusCode, 200, 'the previous key is published and verifies')
  await access.rotateKeys()
  await access.rotateKeys() // the old previous key is gone now
  t.ok(await eventually(async () => (await get(oldToken)).statusCode === 401, 2500), 'after the refresh the removed key is rejected')
  t.equal((await get(oldToken)).json.code, 'FST_CF_ACCESS_TOKEN_INVALID')
  t.equal((await get(access.signToken())).statusCode, 200, 'the new current key verifies')
  // one fetch at start and one per interval since, not one per request (on a loaded machine this test takes longer)
  const intervals = Math.ceil((Date.now() - started) / 1000)
  t.ok(access.certsRequestCount >= 2 && access.certsRequestCount <= 2 + intervals, `${access.certsRequestCount} fetches in ${intervals} intervals`)
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

t.test('unknown kids are bounded: 200 random kids cause at most one fetch per cooldown', async (t) => {
  const { access, get } = await setup(t, { unknownKidCooldown: 250 })
  t.equal((await get(access.signToken())).statusCode, 200)
  const key = attackerKey()
  const started = Date.now()
  const results: Array<{ statusCode: number, json: Record<string, any> }> = []
  for (let round = 0; round < 4; round++) {
    // 50 concurrent random kids per round, rounds 300 ms apart: each round may refetch once
    results.push(...await Promise.all(Array.from({ length: 50 }, () => get(access.signToken({}, { key, kid: randomBytes(32).toString('hex') })))))
    await sleep(300)
  }
  const elapsed = Date.now() - started
  t.equal(results.length, 200)
  t.ok(results.every((res) => res.statusCode === 401 && res.json.code === 'FST_CF_ACCESS_TOKEN_INVALID'), 'all rejected')
  const extra = access.certsRequestCount - 1
  t.ok(extra >= 1 && extra <= Math.ceil(elapsed / 250), `${extra} refetches for 200 random kids in ${elapsed} ms`)
  t.equal((await get(access.signToken())).statusCode, 200, 'valid tokens still pass')
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

t.test('outage after warm-up: the last good set keeps serving, failures are logged, recovery too', async (t) => {
  const logs = captureLogs()
  const { access, get } = await setup(t, { refreshInterval: 1000 }, { fastify: { logger: logs.logger } })
  const token = access.signToken()
  t.equal((await get(token)).statusCode, 200)
  access.setOutage(true)
  t.ok(await eventually(() => logs.lines.some((line) => line.level === 40 && /key refresh failed/.test(line.msg)), 2500), 'a failed refresh is a warning')
  for (let i = 0; i < 5; i++) t.equal((await get(access.signToken())).statusCode, 200, 'still 200 during the outage')
  access.setOutage(false)
  t.ok(await eventually(() => logs.lines.some((line) => /key endpoint recovered/.test(line.msg)), 3000), 'recovery logged')
  t.notOk(JSON.stringify(logs.lines).includes(token), 'no token in any log line')
})

t.test('maxStaleAge: a set that cannot be refreshed for too long stops serving (503)', async (t) => {
  const logs = captureLogs()
  const { access, get } = await setup(t, { refreshInterval: 1000, maxStaleAge: 1000 }, { fastify: { logger: logs.logger } })
  t.equal((await get(access.signToken())).statusCode, 200)
  access.setOutage(true)
  await sleep(1100)
  const res = await get(access.signToken())
  t.equal(res.statusCode, 503)
  t.equal(res.json.code, 'FST_CF_ACCESS_KEYS_UNAVAILABLE')
  t.ok(logs.lines.some((line) => line.level === 50 && /older than maxStaleAge/.test(line.msg)))
})

t.test('cold start with the endpoint refusing: 503 at once, then recovery within seconds', async (t) => {
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
  access.setOutage(false)
  const recovered = Date.now()
  t.ok(await eventually(async () => (await get(access.signToken())).statusCode === 200, 5000), 'service resumes by itself')
  t.ok(Date.now() - recovered < 5000, `resumed after ${Date.now() - recovered} ms`)
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

t.test('fetchKeySet bounds every fetch', async (t) => {
  const big = await rawServer(t, (_req, res) => { res.end(JSON.stringify({ keys: [], pad: 'x'.repeat(300_000) })) })
  await t.rejects(fetchKeySet(big.url, 1000, 256 * 1024), /answered more than 262144 bytes/)

  const slowBody = await rawServer(t, (_req, res) => { res.writeHead(200); res.write('{"keys": [') })
  await t.rejects(fetchKeySet(slowBody.url, 300, 1024), /did not answer within 300 ms/, 'a body that never ends')

  const cut = await rawServer(t, (req, res) => { res.writeHead(200, { 'content-length': '100' }); res.write('{"ke'); setTimeout(() => req.socket.destroy(), 20) })
  await t.rejects(fetchKeySet(cut.url, 2000, 1024), /connection to key endpoint failed|not JSON/, 'a connection cut mid-body')

  const status = await rawServer(t, (_req, res) => { res.writeHead(301, { location: 'http://127.0.0.1:1/' }).end() })
  await t.rejects(fetchKeySet(status.url, 1000, 1024), /HTTP 301/)

  const ok = await rawServer(t, (_req, res) => { res.end('{"keys":[]}') })
  t.same(await fetchKeySet(ok.url, 1000, 1024), { keys: [] })
  await t.rejects(fetchKeySet('https://127.0.0.1:1/cdn-cgi/access/certs', 1000, 1024), /unreachable/, 'https is used for https origins')
})

t.test('parseKeySet keeps only RSA keys for RS256 signatures', async (t) => {
  const access = await emulator(t)
  const [good, second] = access.jwks().keys as [Record<string, string>, Record<string, string>]
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ format: 'jwk' })
  const small = generateKeyPairSync('rsa', { modulusLength: 1024 }).publicKey.export({ format: 'jwk' })
  const large = generateKeyPairSync('rsa', { modulusLength: 4096 }).publicKey.export({ format: 'jwk' })
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

t.test('KeyStore used directly: close stops timers, start is idempotent', async (t) => {
  const access = await emulator(t)
  const store = new KeyStore({ certsUrl: access.certsUrl, fetchTimeout: 1000, refreshInterval: 1000, unknownKidCooldown: 0, maxStaleAge: 60_000, log: silent })
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
  const cooling = new KeyStore({ certsUrl: other.certsUrl, fetchTimeout: 1000, refreshInterval: 60_000, unknownKidCooldown: 5000, maxStaleAge: 60_000, log: silent })
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
  await sleep(1200)
  t.equal(access.certsRequestCount, fetchesAtClose, 'no refresh after close')

  const closing = new KeyStore({ certsUrl: access.certsUrl, fetchTimeout: 1000, refreshInterval: 1000, unknownKidCooldown: 0, maxStaleAge: 60_000, log: silent })
  const pending = closing.resolve(access.kids[0] as string)
  closing.close()
  await t.rejects(pending, { code: 'FST_CF_ACCESS_KEYS_UNAVAILABLE', message: /aborted/ }, 'a fetch under way when the store closes is aborted at once')
  await t.rejects(closing.resolve(access.kids[0] as string), { code: 'FST_CF_ACCESS_KEYS_UNAVAILABLE', message: /aborted/ }, 'a closed store fetches nothing')
  await sleep(1200)
  t.equal(closing.fetchCount, 2, 'and schedules nothing')
})

t.test('KeyStore.whenReady: at once when ready, bounded when not, and a late success after the bound changes nothing', async (t) => {
  const access = await emulator(t)
  access.setLatency(400)
  const store = new KeyStore({ certsUrl: access.certsUrl, fetchTimeout: 2000, refreshInterval: 60_000, unknownKidCooldown: 0, maxStaleAge: 60_000, log: silent })
  t.teardown(() => store.close())
  await t.rejects(store.whenReady(100), { code: 'FST_CF_ACCESS_KEYS_UNAVAILABLE', message: /no key set within 100 ms$/ })
  await sleep(500)
  t.equal(store.ready, true, 'the fetch under way completed after the bound')
  await store.whenReady(1)
  t.pass('ready: resolves at once')
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

t.test('KeyStore cold: never called stale; whenReady retries a failed fetch and resolves once one succeeds', async (t) => {
  const access = await emulator(t)
  access.setOutage('error')
  const errors: string[] = []
  const log = { info () {}, warn () {}, error (_object: unknown, message: string) { errors.push(message) } }
  const store = new KeyStore({ certsUrl: access.certsUrl, fetchTimeout: 1000, refreshInterval: 60_000, unknownKidCooldown: 0, maxStaleAge: 1000, log })
  t.teardown(() => store.close())
  t.equal(store.ready, false)
  t.same(store.kids, [])
  setTimeout(() => access.setOutage(false), 300)
  await store.whenReady(3000)
  t.equal(store.ready, true, 'resolved by a later attempt')
  t.ok(access.certsRequestCount >= 2, 'after a failed one')
  t.notOk(errors.some((message) => /maxStaleAge/.test(message)), 'a store that never had keys is not "stale"')
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
  const store = new KeyStore({ certsUrl: access.certsUrl, fetchTimeout: 1000, refreshInterval: 60_000, unknownKidCooldown: 0, maxStaleAge: 200, log: silent })
  t.teardown(() => store.close())
  store.start()
  await store.whenReady(2000)
  await sleep(300)
  t.equal(store.ready, false, 'older than maxStaleAge, no failure, the next refresh a minute away')
  const kid = access.kids[0] as string
  t.equal((await store.resolve(kid))?.kid, kid, 'the lookup fetches a fresh set')
  t.equal(access.certsRequestCount, 2)
})

/** Resolves once `store` has started another fetch than the `seen` ones (polled every 5 ms). */
async function fetchStarted (store: KeyStore, seen: number): Promise<void> {
  while (store.fetchCount === seen) await sleep(5)
}

t.test('KeyStore: an unknown kid is answered at once only while no fetch is under way and the set is usable', async (t) => {
  const access = await emulator(t)
  const store = new KeyStore({ certsUrl: access.certsUrl, fetchTimeout: 2000, refreshInterval: 600, unknownKidCooldown: 60_000, maxStaleAge: 1000, log: silent })
  t.teardown(() => store.close())
  store.start()
  await store.whenReady(2000)
  t.equal(await store.resolve('a kid nobody publishes'), undefined, 'a refetch that arms the cooldown')
  t.equal(store.isKnownUnknown('another kid'), true, 'within the cooldown: answered at once')
  access.setLatency(300)
  await fetchStarted(store, store.fetchCount)
  t.equal(store.ready, true)
  t.equal(store.isKnownUnknown('another kid'), false, 'a fetch under way: wait for it instead')
  access.setLatency(0)
  access.setOutage('error')
  t.ok(await eventually(() => !store.ready, 4000), 'no usable set: refreshes failed beyond maxStaleAge')
  t.equal(store.isKnownUnknown('another kid'), false, 'without a usable set nothing is known')
})

t.test('KeyStore: a lookup that joins a fetch under way does not arm the unknown-kid cooldown', async (t) => {
  const access = await emulator(t)
  const store = new KeyStore({ certsUrl: access.certsUrl, fetchTimeout: 2000, refreshInterval: 1500, unknownKidCooldown: 60_000, maxStaleAge: 60_000, log: silent })
  t.teardown(() => store.close())
  store.start()
  await store.whenReady(2000)
  const first = await access.rotateKeys()
  access.setLatency(300)
  await fetchStarted(store, store.fetchCount)
  t.equal((await store.resolve(first))?.kid, first, 'joined the periodic refresh under way')
  access.setLatency(0)
  const second = await access.rotateKeys()
  const fetches = store.fetchCount
  t.equal((await store.resolve(second))?.kid, second, 'the next rotated-in kid is fetched at once: no cooldown was armed')
  t.equal(store.fetchCount, fetches + 1)
})

t.test('KeyStore: the unknown-kid cooldown lasts exactly unknownKidCooldown milliseconds from the refetch it follows', async (t) => {
  const access = await emulator(t)
  const store = new KeyStore({ certsUrl: access.certsUrl, fetchTimeout: 2000, refreshInterval: 60_000, unknownKidCooldown: 1000, maxStaleAge: 3_600_000, log: silent })
  t.teardown(() => store.close())
  store.start()
  await store.whenReady(2000)
  const realNow = Date.now
  let now = realNow()
  Date.now = () => now
  t.teardown(() => { Date.now = realNow })
  t.equal(await store.resolve('a kid nobody publishes'), undefined, 'the refetch, at "now"')
  now += 999
  t.equal(store.isKnownUnknown('another kid'), true, '999 ms later: still cooling down')
  now += 1
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
  const errors: object[] = []
  const log = { info () {}, warn () {}, error (object: object) { errors.push(object) } }
  const realNow = Date.now
  let now = realNow()
  Date.now = () => now
  t.teardown(() => { Date.now = realNow })
  const store = new KeyStore({ certsUrl: access.certsUrl, fetchTimeout: 1000, refreshInterval: 3_600_000, unknownKidCooldown: 0, maxStaleAge: 5000, log })
  t.teardown(() => store.close())
  store.start()
  await store.whenReady(2000)
  now += 5000
  t.equal(store.ready, true, 'maxStaleAge after the fetch: still usable')
  now += 1
  t.equal(store.ready, false, '1 ms later: dropped')
  t.match(errors, [{ certsUrl: access.certsUrl, staleForMs: 5001 }])
})

t.test('KeyStore logs and stale events: a failure at error without a set and at warn with one, recovery and rotation at info, nothing after close', async (t) => {
  const access = await emulator(t)
  const lines: Array<[string, object]> = []
  const log = { info (object: object) { lines.push(['info', object]) }, warn (object: object) { lines.push(['warn', object]) }, error (object: object) { lines.push(['error', object]) } }
  const stale: unknown[] = []
  const onStale = (message: unknown): void => { stale.push(message) }
  diagnosticsChannel.subscribe(channelNames.keyStale, onStale)
  t.teardown(() => diagnosticsChannel.unsubscribe(channelNames.keyStale, onStale))
  access.setOutage('error')
  const store = new KeyStore({ certsUrl: access.certsUrl, fetchTimeout: 1000, refreshInterval: 400, unknownKidCooldown: 0, maxStaleAge: 60_000, log })
  t.teardown(() => store.close())
  await t.rejects(store.resolve(access.kids[0] as string), { code: 'FST_CF_ACCESS_KEYS_UNAVAILABLE' })
  t.match(lines, [['error', { certsUrl: access.certsUrl, failures: 1, reason: /HTTP 503/ }]], 'no set: error')
  t.same(stale, [], 'no set: nothing stale')
  access.setOutage(false)
  t.ok(await eventually(() => store.ready, 3000))
  t.same(lines.slice(1), [['info', { certsUrl: access.certsUrl, kids: [...access.kids] }]], 'recovered, once, with the kids')
  const [current, previous] = access.kids as [string, string]
  const added = await access.rotateKeys()
  t.ok(await eventually(() => lines.length > 2, 3000))
  t.same(lines.slice(2), [['info', { added: [added], removed: [previous] }]], 'a rotation, once')
  t.ok(store.kids.includes(current))
  await sleep(500)
  t.equal(lines.length, 3, 'a refresh of the same set logs nothing')
  access.setOutage('error')
  t.ok(await eventually(() => lines.length > 3, 3000))
  t.match(lines[3], ['warn', { certsUrl: access.certsUrl, failures: 1, reason: /HTTP 503/ }], 'with a set: warn')
  t.match(stale, [{ ageMs: Number, failures: 1 }], 'and a stale event')
  store.close()
  const fetches = store.fetchCount
  const logged = lines.length
  await sleep(800)
  t.equal(store.fetchCount, fetches, 'closed: no timer fetches any more')
  t.equal(lines.length, logged, 'and nothing is logged')
})

t.test('KeyStore logs a key added alone, and a key removed alone, as rotations', async (t) => {
  const access = await emulator(t)
  const [first, second] = access.jwks().keys as [{ kid: string }, { kid: string }]
  let keys = [first]
  const server = await rawServer(t, (_req, res) => { res.end(JSON.stringify({ keys })) })
  const rotations: object[] = []
  const log = { info (object: object) { if ('added' in object) rotations.push(object) }, warn () {}, error () {} }
  const store = new KeyStore({ certsUrl: server.url, fetchTimeout: 1000, refreshInterval: 300, unknownKidCooldown: 0, maxStaleAge: 60_000, log })
  t.teardown(() => store.close())
  store.start()
  await store.whenReady(2000)
  keys = [first, second]
  t.ok(await eventually(() => rotations.length === 1, 3000))
  keys = [second]
  t.ok(await eventually(() => rotations.length === 2, 3000))
  t.same(rotations, [{ added: [second.kid], removed: [] }, { added: [], removed: [first.kid] }])
})

t.test('KeyStore: while fetches fail, retries back off from 500 ms, doubling', async (t) => {
  const down = await emulator(t)
  down.setOutage('error')
  const store = new KeyStore({ certsUrl: down.certsUrl, fetchTimeout: 1000, refreshInterval: 60_000, unknownKidCooldown: 0, maxStaleAge: 60_000, log: silent })
  t.teardown(() => store.close())
  const started = Date.now()
  store.start()
  // Fetches at about 0, 500 and 1 500 ms, then 3 500 ms: counted between them.
  await sleep(1200 - (Date.now() - started))
  t.equal(down.certsRequestCount, 2, 'at 1.2 s: the first fetch and one retry after 500 ms')
  await sleep(2400 - (Date.now() - started))
  t.equal(down.certsRequestCount, 3, 'at 2.4 s: one more retry, 1 s after the previous one')
})

t.test('KeyStore.whenReady settles either way, and stops polling once it gave up', async (t) => {
  const access = await emulator(t)
  access.setOutage('error')
  const store = new KeyStore({ certsUrl: access.certsUrl, fetchTimeout: 1000, refreshInterval: 60_000, unknownKidCooldown: 0, maxStaleAge: 60_000, log: silent })
  t.teardown(() => store.close())
  const settled = (promise: Promise<void>): Promise<string> => Promise.race([promise.then(() => 'resolved', () => 'rejected'), sleep(3000).then(() => 'pending')])
  t.equal(await settled(store.whenReady(600)), 'rejected', 'no keys within the bound: rejected')
  const after = access.certsRequestCount
  await sleep(1500)
  // Its own retries (every 250 ms while it waits) stop; the store's backoff schedule goes on (one fetch in 1.5 s here).
  t.ok(access.certsRequestCount - after <= 1, `no polling after giving up (${access.certsRequestCount - after} fetches in 1.5 s)`)
  access.setOutage(false)
  t.equal(await settled(store.whenReady(2000)), 'resolved', 'keys at hand: resolved')
})

t.test('KeyStore cold: a lookup while a scheduled retry is under way joins it instead of failing', async (t) => {
  const access = await emulator(t)
  access.setOutage('error')
  const store = new KeyStore({ certsUrl: access.certsUrl, fetchTimeout: 2000, refreshInterval: 60_000, unknownKidCooldown: 0, maxStaleAge: 60_000, log: silent })
  t.teardown(() => store.close())
  store.start()
  t.ok(await eventually(async () => store.snapshot().failures > 0, 2000), 'the first fetch failed; a retry is scheduled')
  access.setOutage(false)
  access.setLatency(300)
  await fetchStarted(store, store.fetchCount)
  const kid = access.kids[0] as string
  t.equal((await store.resolve(kid))?.kid, kid, 'joined the retry under way: the key, not a 503')
  t.equal(access.certsRequestCount, 2, 'no fetch of its own')
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
