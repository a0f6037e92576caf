import Fastify from 'fastify'
import t from 'tap'
import cloudflareAccess from '../index'
import { normalizeOptions, normalizeTeamDomain } from '../lib/options'
import { captureLogs } from './helpers'

const AUD = 'a'.repeat(64)

t.test('teamDomain: accepted forms normalise to the team origin', async (t) => {
  const cases: Array<[string, string]> = [
    ['acme', 'https://acme.cloudflareaccess.com'],
    ['ACME', 'https://acme.cloudflareaccess.com'],
    ['my-team-2', 'https://my-team-2.cloudflareaccess.com'],
    ['acme.cloudflareaccess.com', 'https://acme.cloudflareaccess.com'],
    ['acme.fed.cloudflareaccess.com', 'https://acme.fed.cloudflareaccess.com'],
    ['https://acme.cloudflareaccess.com', 'https://acme.cloudflareaccess.com'],
    ['https://acme.cloudflareaccess.com/', 'https://acme.cloudflareaccess.com'],
    ['https://Acme.CloudflareAccess.com', 'https://acme.cloudflareaccess.com'],
    ['https://acme.fed.cloudflareaccess.com', 'https://acme.fed.cloudflareaccess.com'],
    ['http://127.0.0.1:8787', 'http://127.0.0.1:8787'],
    ['http://127.0.0.1', 'http://127.0.0.1'],
    ['http://127.1.2.3:9', 'http://127.1.2.3:9'],
    ['http://localhost:3000', 'http://localhost:3000'],
    ['http://[::1]:3000', 'http://[::1]:3000'],
    ['http://127.1:3000', 'http://127.0.0.1:3000'],
    ['a', 'https://a.cloudflareaccess.com'],
    ['a.cloudflareaccess.com', 'https://a.cloudflareaccess.com'],
    ['http://127.10.200.1', 'http://127.10.200.1'],
    ['http://127.0.10.1', 'http://127.0.10.1'],
    ['http://127.0.0.100', 'http://127.0.0.100']
  ]
  for (const [input, origin] of cases) t.equal(normalizeTeamDomain(input), origin, input)
})

t.test('teamDomain: look-alikes and other hosts are rejected', async (t) => {
  const rejected: unknown[] = [
    '', ' acme', 'acme ', '-acme', 'acme-', 'ac_me', 'a'.repeat(64),
    'https://cloudflareaccess.com', 'https://acme.cloudflareaccess.com.evil.com', 'https://acmecloudflareaccess.com',
    'https://acme.cloudflareaccess.co', 'https://a.b.cloudflareaccess.com', 'https://acme.evil.com',
    'https://acme.cloudflareaccess.com:8443', 'https://acme.cloudflareaccess.com/path', 'https://acme.cloudflareaccess.com?x=1',
    'https://acme.cloudflareaccess.com#x', 'https://user@acme.cloudflareaccess.com', 'https://evil.com@acme.cloudflareaccess.com',
    'http://acme.cloudflareaccess.com', 'ftp://acme.cloudflareaccess.com',
    'http://127.0.0.1.evil.com', 'http://127.0.0.1@evil.com', 'http://user@127.0.0.1', 'http://evil.com#@127.0.0.1',
    'http://127.0.0.1:80/path', 'http://10.0.0.1', 'http://192.168.1.1', 'http://[::2]', 'http://localhost.evil.com',
    'http://0x7f000001.evil', 'http://127.0.0.1?@evil.com', 'https://xn--acme.cloudflareaccess.com.evil',
    'acme.cloudflareaccess.com/cdn-cgi', 'not a url', 42, null, undefined, ['acme'], { host: 'acme' },
    'https://127.0.0.1:8443', 'https://localhost', 'https://[::1]'
  ]
  for (const input of rejected) {
    t.throws(() => normalizeTeamDomain(input), /option "teamDomain" must be a team name/, JSON.stringify(input) ?? String(input))
  }
  t.throws(() => normalizeTeamDomain('x'.repeat(200)), { message: new RegExp(`got "${'x'.repeat(80)}…"$`) }, 'long values are cut to 80 characters in the message')
  t.throws(() => normalizeTeamDomain('x'.repeat(80) + ' '), { message: new RegExp(`got "${'x'.repeat(80)}…"$`) }, '81 characters: cut')
  t.throws(() => normalizeTeamDomain('_'.repeat(80)), { message: new RegExp(`got "${'_'.repeat(80)}"$`) }, '80 characters: whole')
  for (const [input, got] of [[['acme'], 'an array'], [null, 'null'], [42, 'number'], [undefined, 'undefined'], [{}, 'object']] as const) {
    t.throws(() => normalizeTeamDomain(input), { message: new RegExp(`got ${got}$`) }, `a non-string says what it is: ${got}`)
  }
})

t.test('audience: one tag or a non-empty array of non-empty strings', async (t) => {
  t.same(normalizeOptions({ teamDomain: 'acme', audience: AUD }).audience, [AUD])
  t.same(normalizeOptions({ teamDomain: 'acme', audience: [AUD, 'b', AUD] }).audience, [AUD, 'b'], 'duplicates collapse')
  t.same(normalizeOptions({ teamDomain: 'acme', audience: 'x'.repeat(256) }).audience, ['x'.repeat(256)], '256 characters: the longest tag')
  t.equal(normalizeOptions({ teamDomain: 'acme', audience: AUD, required: true }).required, true, 'required: true, said')
  for (const audience of [[], '', ' ', 'has space', 5, null, undefined, [AUD, 3], [''], 'x'.repeat(257), { 0: AUD }]) {
    t.throws(() => normalizeOptions({ teamDomain: 'acme', audience } as never), /option "audience" must be/, JSON.stringify(audience) ?? 'undefined')
  }
})

t.test('hook, clockTolerance and the key-store durations', async (t) => {
  const defaults = normalizeOptions({ teamDomain: 'acme', audience: AUD })
  t.match(defaults, {
    issuer: 'https://acme.cloudflareaccess.com',
    certsUrl: 'https://acme.cloudflareaccess.com/cdn-cgi/access/certs',
    hook: 'onRequest',
    clockToleranceMs: 30_000,
    fetchTimeout: 5000,
    refreshInterval: 600_000,
    unknownKidCooldown: 5000,
    maxStaleAge: 21_600_000,
    cacheSize: 1000,
    identityTimeout: 5000,
    identityCacheTtl: 300_000,
    identityCacheSize: 1000,
    identityUrl: 'https://acme.cloudflareaccess.com/cdn-cgi/access/get-identity',
    policy: null
  })
  t.equal(normalizeOptions({ teamDomain: 'acme', audience: AUD, cacheSize: 0 }).cacheSize, 0, '0 turns the cache off')
  t.ok(Object.isFrozen(defaults))
  t.equal(normalizeOptions({ teamDomain: 'acme', audience: AUD, hook: 'preHandler' }).hook, 'preHandler')
  t.equal(normalizeOptions({ teamDomain: 'acme', audience: AUD, hook: false }).hook, false)
  t.equal(normalizeOptions({ teamDomain: 'acme', audience: AUD, clockTolerance: 0 }).clockToleranceMs, 0, '0 means zero')
  t.equal(normalizeOptions({ teamDomain: 'acme', audience: AUD, clockTolerance: 1.5 }).clockToleranceMs, 1500, 'seconds to milliseconds')
  for (const hook of ['onSend', true, 'onrequest', null]) {
    t.throws(() => normalizeOptions({ teamDomain: 'acme', audience: AUD, hook } as never), /option "hook" must be 'onRequest', 'preHandler' or false/)
  }
  const bad: Array<[string, unknown]> = [
    ['clockTolerance', -1], ['clockTolerance', '30'], ['clockTolerance', NaN], ['clockTolerance', 601],
    ['fetchTimeout', 0], ['fetchTimeout', Infinity], ['fetchTimeout', 60_001],
    ['refreshInterval', 999], ['unknownKidCooldown', -5], ['maxStaleAge', 0],
    ['cacheSize', -1], ['cacheSize', '1000'], ['identityCacheSize', 1_000_001], ['identityTimeout', 0], ['identityCacheTtl', -1]
  ]
  for (const [name, value] of bad) {
    t.throws(() => normalizeOptions({ teamDomain: 'acme', audience: AUD, [name]: value }), new RegExp(`option "${name}" must be a number of`), `${name}: ${String(value)}`)
  }
})

t.test('every duration and size option accepts its bounds exactly and refuses one past them', async (t) => {
  // [option, lowest, highest, the normalized field, its scale]: the range the error message states
  const ranges: Array<[string, number, number, string, number]> = [
    ['clockTolerance', 0, 600, 'clockToleranceMs', 1000],
    ['fetchTimeout', 1, 60_000, 'fetchTimeout', 1],
    ['refreshInterval', 1_000, 86_400_000, 'refreshInterval', 1],
    ['unknownKidCooldown', 0, 3_600_000, 'unknownKidCooldown', 1],
    ['maxStaleAge', 1_000, 7 * 86_400_000, 'maxStaleAge', 1],
    ['authorizeTimeout', 1, 600_000, 'authorizeTimeout', 1],
    ['waitForKeys', 0, 600_000, 'waitForKeys', 1],
    ['identityTimeout', 1, 60_000, 'identityTimeout', 1],
    ['identityCacheTtl', 0, 86_400_000, 'identityCacheTtl', 1],
    ['identityCacheSize', 0, 1_000_000, 'identityCacheSize', 1],
    ['cacheSize', 0, 1_000_000, 'cacheSize', 1]
  ]
  for (const [name, lowest, highest, field, scale] of ranges) {
    for (const value of [lowest, highest]) {
      const normalized = normalizeOptions({ teamDomain: 'acme', audience: AUD, [name]: value }) as unknown as Record<string, number>
      t.equal(normalized[field], value * scale, `${name}: ${value} accepted`)
    }
    for (const value of [lowest - 1, highest + 1, highest + 0.5]) {
      t.throws(() => normalizeOptions({ teamDomain: 'acme', audience: AUD, [name]: value }),
        { message: `fastify-cloudflare-access: option "${name}" must be a number of ${name === 'clockTolerance' ? 'seconds' : /Size$/.test(name) ? 'entries' : 'milliseconds'} from ${lowest} to ${highest}, got number` },
        `${name}: ${value} refused`)
    }
  }
})

t.test('unknown options and a non-object are rejected, naming what is accepted', async (t) => {
  t.throws(() => normalizeOptions({ teamDomain: 'acme', audience: AUD, audiences: [AUD] } as never), /unknown option "audiences"; did you mean "audience"\? known options: teamDomain, audience/)
  const suggestions: Array<[string, string | undefined]> = [
    ['teamdomain', 'teamDomain'], ['team', 'teamDomain'], ['aud', 'audience'], ['clocktolerance', 'clockTolerance'],
    ['requried', 'required'], ['cors', 'corsPreflight'], ['cache', 'cacheSize'], ['hooks', 'hook'], ['allowed', 'allow'],
    ['policy', undefined], ['x', undefined], ['emails', undefined]
  ]
  for (const [typed, meant] of suggestions) {
    const message = t.throws(() => normalizeOptions({ teamDomain: 'acme', audience: AUD, [typed]: 1 } as never)) as Error
    if (meant === undefined) t.notMatch(message?.message, /did you mean/, `${typed}: no guess`)
    else t.match(message?.message, `unknown option "${typed}"; did you mean "${meant}"? known options:`, `${typed} → ${meant}`)
  }
  t.throws(() => normalizeOptions(null as never), /options are required/)
  t.throws(() => normalizeOptions('acme' as never), /options are required/)
})

t.test("the caller's options object is never mutated", async (t) => {
  const options = Object.freeze({ teamDomain: 'ACME', audience: Object.freeze([AUD]) })
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(cloudflareAccess, options)
  t.same(options, { teamDomain: 'ACME', audience: [AUD] })
})

t.test('bad options make register and ready reject', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  app.register(cloudflareAccess, { teamDomain: 'https://evil.com', audience: AUD })
  await t.rejects(async () => { await app.ready() }, /option "teamDomain"/)
})

t.test('a loopback teamDomain under NODE_ENV=production logs a warning at registration, and only then', async (t) => {
  const saved = process.env.NODE_ENV
  t.teardown(() => {
    if (saved === undefined) delete process.env.NODE_ENV
    else process.env.NODE_ENV = saved
  })
  const warnings = async (env: string | undefined, teamDomain: string): Promise<Array<Record<string, any>>> => {
    if (env === undefined) delete process.env.NODE_ENV
    else process.env.NODE_ENV = env
    const logs = captureLogs('warn')
    const app = Fastify({ logger: logs.logger })
    // registration only: no ready(), so no key fetch (the team domains here need not exist)
    await app.register(cloudflareAccess, { teamDomain, audience: AUD })
    await app.close()
    return logs.lines.filter((line) => line.level === 40)
  }
  const [warning, ...more] = await warnings('production', 'http://127.0.0.1:8787')
  t.same(more, [])
  t.match(warning, { plugin: 'fastify-cloudflare-access', teamDomain: 'http://127.0.0.1:8787', msg: /loopback origin .* NODE_ENV is production/ })
  t.equal((await warnings('production', 'http://localhost:3000')).length, 1)
  t.equal((await warnings('production', 'http://[::1]:9000')).length, 1)
  t.same(await warnings('production', 'acme'), [], "the team's domain")
  t.same(await warnings('development', 'http://127.0.0.1:8787'), [], 'development')
  t.same(await warnings(undefined, 'http://127.0.0.1:8787'), [], 'NODE_ENV unset')
  t.same(await warnings('test', 'http://127.0.0.1:8787'), [], 'tests')
})

t.test('refusals name the option, its unit and its range, and a policy option says where it is', async (t) => {
  const refused = (extra: Record<string, unknown>): string => {
    try {
      normalizeOptions({ teamDomain: 'acme', audience: AUD, ...extra } as never)
    } catch (error) {
      return (error as Error).message
    }
    return 'accepted'
  }
  t.match(refused({ fetchTimeout: -1 }), /option "fetchTimeout" must be a number of milliseconds from 1 to 60000, got number$/)
  t.match(refused({ clockTolerance: 601 }), /option "clockTolerance" must be a number of seconds from 0 to 600, got number$/)
  t.match(refused({ refreshInterval: 10 }), /option "refreshInterval" must be a number of milliseconds from 1000 to 86400000, got number$/)
  t.match(refused({ allow: { emails: 'x' } }), /^fastify-cloudflare-access: options: "allow.emails" must be/)
})
