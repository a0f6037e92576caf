import { spawn } from 'node:child_process'
import diagnostics from 'node:diagnostics_channel'
import { join } from 'node:path'
import Fastify from 'fastify'
import { Registry } from 'prom-client'
import t, { type Test } from 'tap'
import cloudflareAccess, { channelNames, cloudflareAccessStatus } from '../index'
import { accessMetrics, buildOperationsApp } from '../examples/operations'
import { captureLogs, emulator, eventually, HEADER, sleep } from './helpers'

// Operations: status(), readiness, waitForKeys, the diagnostics channels, the Prometheus recipe, and app.close().

/** Collects every message of every channel while the test runs. */
function listen (t: Test): Record<keyof typeof channelNames, unknown[]> {
  const seen = Object.fromEntries(Object.keys(channelNames).map((name) => [name, []])) as unknown as Record<keyof typeof channelNames, unknown[]>
  for (const [name, channel] of Object.entries(channelNames) as Array<[keyof typeof channelNames, string]>) {
    const listener = (message: unknown): void => { seen[name].push(message) }
    diagnostics.subscribe(channel, listener)
    t.teardown(() => diagnostics.unsubscribe(channel, listener))
  }
  return seen
}

t.test('status(): cold, ready, caches, stale after failed refreshes; reachable from the root with cloudflareAccessStatus', async (t) => {
  const access = await emulator(t)
  access.setLatency(300)
  const app = Fastify()
  t.teardown(() => app.close())
  app.register(async (admin) => {
    await admin.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, refreshInterval: 1000 })
    admin.get('/', async (request) => request.cfAccess?.email)
    admin.get('/status', async () => admin.cfAccess.status())
  }, { prefix: '/admin' })
  t.same(cloudflareAccessStatus(app), { ready: false, registrations: [] }, 'nothing registered yet: not ready')
  await app.ready()
  const cold = cloudflareAccessStatus(app)
  t.equal(cold.ready, false, 'cold: the first fetch is under way')
  t.same(cold.registrations[0]?.keys.kids, [])
  t.equal(cold.registrations[0]?.keys.fetchedAt, null)
  t.ok(await eventually(() => cloudflareAccessStatus(app).ready, 3000), 'ready once the keys arrive')
  const token = access.signToken()
  await app.inject({ url: '/admin', headers: { [HEADER]: token } })
  await app.inject({ url: '/admin', headers: { [HEADER]: token } })
  const warm = (await app.inject({ url: '/admin/status', headers: { [HEADER]: token } })).json()
  t.equal(warm.ready, true)
  t.equal(warm.teamDomain, access.teamDomain)
  t.same(warm.audience, [access.audience])
  t.same([...warm.keys.kids].sort(), [...access.kids].sort())
  t.match(warm.keys.fetchedAt, /^\d{4}-\d\d-\d\dT/)
  t.ok(warm.keys.ageMs >= 0)
  t.same([warm.keys.stale, warm.keys.consecutiveFailures, warm.keys.lastError, warm.keys.failingForMs], [false, 0, null, null])
  t.same(warm.cache, { size: 1, capacity: 1000, hits: 2, misses: 1 }, 'the cache answered the repeats')
  t.same(warm.identityCache, { size: 0, capacity: 1000 })
  t.notMatch(JSON.stringify(warm), token.slice(-20), 'no token in the status')
  access.setLatency(0)
  access.setOutage('error')
  t.ok(await eventually(() => (cloudflareAccessStatus(app).registrations[0]?.keys.consecutiveFailures ?? 0) > 0, 3000), 'a refresh failed')
  const stale = cloudflareAccessStatus(app)
  t.equal(stale.ready, true, 'still ready: the last good set serves')
  t.equal(stale.registrations[0]?.keys.stale, true)
  t.match(stale.registrations[0]?.keys.lastError, /HTTP 503/)
  t.ok((stale.registrations[0]?.keys.failingForMs ?? -1) >= 0)
  await app.close()
  t.same(cloudflareAccessStatus(app).registrations, [], 'a closed app reports no registration')
})

t.test('the readiness recipe: 503 until the first key set is held and again once it is older than maxStaleAge', async (t) => {
  const access = await emulator(t)
  access.setOutage('error')
  const registry = new Registry()
  const app = await buildOperationsApp(access.teamDomain, access.audience, registry)
  t.teardown(() => app.close())
  t.equal((await app.inject('/ready')).statusCode, 503, 'cold and the endpoint down: not ready')
  access.setOutage(false)
  t.ok(await eventually(async () => (await app.inject('/ready')).statusCode === 200, 6000), 'ready once a fetch succeeds')
  const stale = Fastify()
  t.teardown(() => stale.close())
  await stale.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, maxStaleAge: 1000, refreshInterval: 1000 })
  stale.get('/ready', { config: { cfAccess: false } }, async (_request, reply) => reply.code(stale.cfAccess.status().ready ? 200 : 503).send())
  await stale.ready()
  t.ok(await eventually(async () => (await stale.inject('/ready')).statusCode === 200, 3000))
  access.setOutage('error')
  t.ok(await eventually(async () => (await stale.inject('/ready')).statusCode === 503, 4000), 'not ready once the set is older than maxStaleAge')
})

t.test('waitForKeys: ready() waits for the first key set, and rejects within its bound when none comes', async (t) => {
  const access = await emulator(t)
  access.setLatency(200)
  const waiting = Fastify()
  t.teardown(() => waiting.close())
  await waiting.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, waitForKeys: 3000 })
  await waiting.ready()
  t.equal(waiting.cfAccess.status().ready, true, 'ready() resolved with the keys held')
  const down = await emulator(t)
  down.setOutage('error')
  const failing = Fastify()
  t.teardown(() => failing.close())
  await failing.register(cloudflareAccess, { teamDomain: down.teamDomain, audience: down.audience, waitForKeys: 600 })
  const started = Date.now()
  await t.rejects(async () => { await failing.ready() }, { code: 'FST_CF_ACCESS_KEYS_UNAVAILABLE', message: /no key set within 600 ms \(key endpoint answered HTTP 503\)/ })
  t.ok(Date.now() - started < 3000, 'within its bound')
  t.ok(down.certsRequestCount >= 2, 'it retried while waiting')
  const hanging = await emulator(t)
  hanging.setLatency(Infinity)
  const slow = Fastify()
  t.teardown(() => slow.close())
  await slow.register(cloudflareAccess, { teamDomain: hanging.teamDomain, audience: hanging.audience, waitForKeys: 300 })
  await t.rejects(async () => { await slow.ready() }, { message: /no key set within 300 ms$/ }, 'a hanging endpoint: the bound, without a reason yet')
  const fast = Fastify()
  t.teardown(() => fast.close())
  await fast.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience })
  access.setLatency(Infinity)
  await fast.ready()
  t.equal(fast.cfAccess.status().ready, false, 'by default ready() does not wait for Cloudflare')
  await t.rejects(async () => { await Fastify().register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, waitForKeys: -1 }) }, /"waitForKeys" must be a number of milliseconds from 0/)
})

t.test('diagnostics channels: each event is published with its documented shape, and never a token', async (t) => {
  const access = await emulator(t)
  access.setIdentity('ops@acme.com', { groups: [{ id: 'g-ops', name: 'ops' }] })
  const seen = listen(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, allow: { emailDomains: ['acme.com'], serviceTokens: true }, maxStaleAge: 1500, refreshInterval: 1000 })
  app.get('/', async (request) => request.cfAccess?.email ?? null)
  app.get('/ops', { config: { cfAccess: { allow: { groupIds: ['g-ops'] } } } }, async () => 'ops')
  app.get('/broken', { config: { cfAccess: { authorize: () => { throw new Error('database down') } } } }, async () => 'never')
  await app.ready()
  const user = access.signToken({ email: 'a@acme.com' })
  await app.inject({ url: '/', headers: { [HEADER]: user } })
  await app.inject({ url: '/', headers: { [HEADER]: user } })
  await app.inject({ url: '/', headers: { [HEADER]: access.signServiceToken() } })
  await app.inject({ url: '/' })
  await app.inject({ url: '/', headers: { [HEADER]: access.signToken({ email: 'eve@evil.com' }) } })
  const ops = access.signToken({ email: 'ops@acme.com' })
  await app.inject({ url: '/ops', headers: { [HEADER]: ops } })
  await app.inject({ url: '/ops', headers: { [HEADER]: ops } })
  await app.inject({ url: '/ops', headers: { [HEADER]: access.signServiceToken() } })
  await app.inject({ url: '/broken', headers: { [HEADER]: user } })
  await access.rotateKeys()
  await app.inject({ url: '/', headers: { [HEADER]: access.signToken({ email: 'a@acme.com' }) } })
  access.setOutage('error')
  t.ok(await eventually(() => seen.keyStale.length > 0, 3000), 'a failed refresh while serving: stale')
  t.ok(await eventually(() => seen.keyDropped.length > 0 || (app.cfAccess.status().ready === false && seen.keyDropped.length > 0), 4000), 'older than maxStaleAge: dropped')

  t.match(seen.accepted, [
    { route: '/', kind: 'user', cached: false },
    { route: '/', kind: 'user', cached: true },
    { route: '/', kind: 'service', cached: false }
  ])
  t.match(seen.accepted.find((m) => (m as { route: string }).route === '/ops'), { route: '/ops', kind: 'user' })
  t.match(seen.rejected, [
    { route: '/', code: 'FST_CF_ACCESS_TOKEN_MISSING', statusCode: 401 },
    { route: '/', code: 'FST_CF_ACCESS_FORBIDDEN', statusCode: 403 }
  ])
  t.same(seen.denied, [{ route: '/', grants: ['emailDomains', 'serviceTokens'], kind: 'user' }, { route: '/ops', grants: ['groupIds'], kind: 'service' }])
  t.match(seen.rejected, [{}, {}, { route: '/ops', code: 'FST_CF_ACCESS_FORBIDDEN', statusCode: 403 }, { route: '/broken', code: '', statusCode: 500 }], 'an Error of authorize without code or status: 500')
  t.match(seen.keyFetchStart[0], { url: access.certsUrl, reason: 'refresh' })
  t.ok(seen.keyFetchStart.some((m) => (m as { reason: string }).reason === 'unknown-kid'), 'the rotated-in kid caused an unknown-kid fetch')
  t.match(seen.keyFetchEnd[0], { url: access.certsUrl, ok: true, durationMs: Number })
  t.equal((seen.keyFetchEnd[0] as { kids: string[] }).kids.length, 2, 'the kids of the set fetched')
  t.ok(seen.keyFetchEnd.some((m) => (m as { ok: boolean, error?: string }).ok === false && /HTTP 503/.test((m as { error: string }).error)), 'a failed fetch, with its reason')
  t.equal((seen.keyRotation[0] as { added: string[] }).added.length, 1, 'rotation: one kid added')
  t.equal((seen.keyRotation[0] as { removed: string[] }).removed.length, 1, 'and one removed')
  t.match(seen.keyStale[0], { ageMs: Number, failures: 1 })
  t.match(seen.keyDropped[0], { ageMs: Number })
  t.match(seen.identity, [{ cached: false, ok: true, durationMs: Number }, { cached: true, ok: true, durationMs: 0 }])
  const times = Object.values(seen).flat().flatMap((message) => ['durationMs', 'ageMs'].map((name) => (message as Record<string, unknown>)[name]).filter((value) => value !== undefined))
  t.ok(times.length > 5 && times.every((value) => typeof value === 'number' && value >= 0 && value < 60_000), 'durations and ages are milliseconds elapsed, not timestamps')
  const all = JSON.stringify(seen)
  for (const token of [user, ops]) t.notOk(all.includes(token.slice(-20)), 'no token in any message')
})

t.test('the identity channel reports failed lookups with their code', async (t) => {
  const access = await emulator(t)
  const seen = listen(t)
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience })
  app.get('/', async (request) => request.cfAccessIdentity())
  await app.ready()
  access.setOutage('error', 'identity')
  await app.inject({ url: '/', headers: { [HEADER]: access.signToken() } })
  t.match(seen.identity, [{ cached: false, ok: false, code: 'FST_CF_ACCESS_IDENTITY_UNAVAILABLE' }])
  const { durationMs } = seen.identity[0] as { durationMs: number }
  t.ok(durationMs >= 0 && durationMs < 60_000, 'milliseconds elapsed')
})

t.test('the Prometheus recipe: rejections by code, key fetch latency and failures, cache hit ratio', async (t) => {
  const access = await emulator(t)
  const registry = new Registry()
  t.teardown(accessMetrics(registry))
  const app = await buildOperationsApp(access.teamDomain, access.audience, registry)
  t.teardown(() => app.close())
  const token = access.signToken()
  for (let i = 0; i < 3; i++) await app.inject({ url: '/admin', headers: { [HEADER]: token } })
  await app.inject({ url: '/admin' })
  await app.inject({ url: '/admin', headers: { [HEADER]: 'x.y.z' } })
  const text = (await app.inject('/metrics')).body
  t.match(text, /cf_access_requests_total\{outcome="accepted",code="",kind="user",cached="false"\} 1/)
  t.match(text, /cf_access_requests_total\{outcome="accepted",code="",kind="user",cached="true"\} 2/)
  t.match(text, /cf_access_requests_total\{outcome="rejected",code="FST_CF_ACCESS_TOKEN_MISSING",kind="",cached=""\} 1/)
  t.match(text, /cf_access_requests_total\{outcome="rejected",code="FST_CF_ACCESS_TOKEN_INVALID",kind="",cached=""\} 1/)
  t.match(text, /cf_access_key_fetch_seconds_count\{ok="true"\} 1/)
})

t.test('a 403 log line names the grant kinds the policy tried, and nothing of the user beyond the subject', async (t) => {
  const access = await emulator(t)
  const { logger, lines } = captureLogs()
  const app = Fastify({ logger })
  t.teardown(() => app.close())
  await app.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, allow: { emails: ['a@acme.com'] }, authorize: () => true })
  app.get('/', async () => 'in')
  await app.ready()
  const token = access.signToken({ email: 'eve@evil.com', country: 'ZZ' })
  await app.inject({ url: '/', headers: { [HEADER]: token } })
  const line = lines.find((entry) => entry.err?.code === 'FST_CF_ACCESS_FORBIDDEN')
  t.same(line?.err.grants, ['emails', 'authorize'])
  t.equal(line?.err.subject, 'eve@evil.com')
  t.equal(line?.err.route, '/')
  t.notOk(JSON.stringify(lines).includes(token.slice(-20)), 'no token in the log')
  t.notOk(JSON.stringify(lines).includes('"ZZ"'), 'no other claim in the log')
  await sleep(0)
})

t.test('app.close() aborts in-flight key and identity requests: a closed app\'s process exits at once, not after fetchTimeout', async (t) => {
  const access = await emulator(t)
  const script = `
    const Fastify = require('fastify')
    const plugin = require(${JSON.stringify(join(__dirname, '..', 'dist', 'index.js'))})
    const [teamDomain, audience, token, which] = process.argv.slice(1)
    const app = Fastify()
    app.register(plugin, { teamDomain, audience, fetchTimeout: 30000, identityTimeout: 30000 })
    app.get('/', async (request) => which === 'identity' ? request.cfAccessIdentity() : 'ok')
    app.ready().then(async () => {
      const pending = app.inject({ url: '/', headers: { 'cf-access-jwt-assertion': token } }).catch(() => {})
      setTimeout(async () => { await app.close(); await pending; process.stdout.write('closed') }, 300)
    })`
  for (const which of ['keys', 'identity']) {
    if (which === 'identity') {
      access.setLatency(0)
      access.setLatency(Infinity, 'identity')
    } else {
      access.setLatency(Infinity)
    }
    const started = Date.now()
    const child = spawn(process.execPath, ['-e', script, access.teamDomain, access.audience, access.signToken(), which], { cwd: join(__dirname, '..'), stdio: ['ignore', 'pipe', 'inherit'] })
    let out = ''
    child.stdout.on('data', (chunk: Buffer) => { out += chunk.toString() })
    const code = await new Promise<number | null>((resolve) => child.on('exit', resolve))
    const took = Date.now() - started
    t.equal(code, 0, `${which}: exited cleanly`)
    t.equal(out, 'closed')
    t.ok(took < 10_000, `${which}: exited ${took} ms after start, well before the 30 s fetch timeout`)
  }
})
