import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import t from 'tap'
import { attackerKey, emulator, nowSeconds } from './helpers'

// End to end: the built CLI, spawned as users run it (npm test builds first).
const CLI = join(__dirname, '..', 'dist', 'lib', 'cli.js')

interface Run { code: number | null, out: string, err: string }

function cli (args: string[], stdin?: string): Promise<Run> {
  const env = process.env
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, ...args], { env, stdio: ['pipe', 'pipe', 'pipe'] })
    let out = ''
    let err = ''
    child.stdout.on('data', (chunk: Buffer) => { out += chunk.toString() })
    child.stderr.on('data', (chunk: Buffer) => { err += chunk.toString() })
    child.on('close', (code) => resolve({ code, out, err }))
    // a CLI that stops reading (more than it accepts) closes the pipe under a writer
    child.stdin.on('error', () => {})
    child.stdin.end(stdin ?? '')
  })
}

// Every test starts Node processes: on a loaded machine the file takes far longer than its CPU time.
t.setTimeout(360_000)

// eslint-disable-next-line no-control-regex
const RAW_CONTROL = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/

t.before(() => {
  if (!existsSync(CLI)) throw new Error('dist/lib/cli.js is missing: run npm run build first (npm test does)')
})

t.test('inspect: a valid token, from stdin, against the live keys', async (t) => {
  const access = await emulator(t)
  const token = access.signToken({ email: 'alice@acme.com' })
  const run = await cli(['inspect', '-', '--team', access.teamDomain, '--aud', access.audience], token)
  t.equal(run.code, 0)
  t.match(run.out, /✓ signature/)
  t.match(run.out, /✓ aud/)
  t.match(run.out, /✓ subject\s+user alice@acme.com/)
  t.match(run.out, /VALID: the plugin accepts this token/)
  t.notOk(run.out.includes(token.split('.')[2] as string), 'the signature is never printed')
  t.match(run.out, /exp\s+\d+\s+\(.*in 24 h\)/, 'times made readable')
})

t.test('inspect: each failure names its check and its reason, exit 1', async (t) => {
  const access = await emulator(t)
  const certs = join(mkdtempSync(join(tmpdir(), 'cf-cli-')), 'certs.json')
  writeFileSync(certs, JSON.stringify(access.jwks()))
  const now = nowSeconds()
  const cases: Array<[string, string, RegExp]> = [
    ['expired', access.signToken({ exp: now - 3 * 3600, iat: now - 4 * 3600, nbf: now - 4 * 3600 }), /✗ exp\s+expired \(exp\) — expires .*\(3 h ago\)/],
    ['another application', access.signToken({ aud: ['f'.repeat(64)] }), /✗ aud\s+aud does not name this application — expected .*, token has ffff…ffff — a token for another Access application\?/],
    ['another team', access.signToken({ iss: 'https://other.cloudflareaccess.com' }), /✗ iss .*expected http:\/\/127\.0\.0\.1:\d+, token has "https:\/\/other\.cloudflareaccess\.com" — a token of another team\?/],
    ['forged', access.signToken({}, { key: attackerKey() }), /✗ signature\s+signature does not verify/],
    ['unknown kid', access.signToken({}, { key: attackerKey(), kid: 'a'.repeat(64) }), /✗ kid\s+unknown key id/],
    ['not yet valid', access.signToken({ nbf: now + 3600 }), /✗ nbf\s+not valid yet/],
    ['org token', access.signToken({ type: 'org' }), /✗ type/],
    ['HS256', access.signToken({}, { header: { alg: 'HS256' } }), /✗ alg\s+algorithm is not RS256/],
    ['garbage', 'garbage', /✗ structure\s+not a compact JWS/]
  ]
  const runs = await Promise.all(cases.map(([, token]) => cli(['inspect', token, '--team', access.teamDomain, '--aud', access.audience, '--certs', certs])))
  cases.forEach(([name, , expected], index) => {
    const run = runs[index] as Run
    t.equal(run.code, 1, `${name}: exit 1`)
    t.match(run.out, expected, name)
    t.match(run.out, /REJECTED: FST_CF_ACCESS_/, `${name}: verdict`)
  })
  t.equal(access.certsRequestCount, 0, 'with --certs nothing is fetched')
})

t.test('inspect --at verifies an old token offline against saved keys', async (t) => {
  const access = await emulator(t)
  const dir = mkdtempSync(join(tmpdir(), 'cf-cli-'))
  writeFileSync(join(dir, 'certs.json'), JSON.stringify(access.jwks()))
  const then = Date.parse('2026-01-15T12:00:00Z') / 1000
  const old = access.signToken({}, { now: then, expiresIn: 3600 })
  const args = ['inspect', old, '--team', access.teamDomain, '--aud', access.audience, '--certs', join(dir, 'certs.json')]
  t.equal((await cli(args)).code, 1, 'expired now')
  const run = await cli([...args, '--at', '2026-01-15T12:30:00Z'])
  t.equal(run.code, 0, 'valid as of half an hour after it was issued')
  t.match(run.out, /as of 2026-01-15T12:30:00\.000Z/)
})

t.test('inspect --json prints a machine-readable result', async (t) => {
  const access = await emulator(t)
  const run = await cli(['inspect', '-', '--team', access.teamDomain, '--aud', access.audience, '--json'], access.signToken({ aud: ['0'.repeat(64)] }))
  t.equal(run.code, 1)
  const result = JSON.parse(run.out)
  t.match(result, { valid: false, code: 'FST_CF_ACCESS_CLAIM_INVALID', reason: 'aud does not name this application', header: { alg: 'RS256' }, claims: { email: 'user@example.com' } })
  t.same(result.checks.map((check: { name: string, status: string }) => `${check.name}:${check.status}`).slice(4, 9), ['signature:pass', 'nbf:pass', 'exp:pass', 'aud:fail', 'iss:not reached'])
  t.notOk('signature' in result, 'no signature in the output')
})

t.test('inspect: keys unreachable is a network error, exit 2', async (t) => {
  const access = await emulator(t)
  const token = access.signToken()
  const { teamDomain, audience } = access
  await access.close()
  const run = await cli(['inspect', token, '--team', teamDomain, '--aud', audience])
  t.equal(run.code, 2)
  t.match(run.out, /REJECTED: FST_CF_ACCESS_KEYS_UNAVAILABLE/)
})

t.test('usage errors: clear messages, exit 2', async (t) => {
  const cases: Array<[string[], RegExp]> = [
    [[], /Usage: fastify-cloudflare-access <command>/],
    [['frobnicate'], /unknown command "frobnicate"/],
    [['inspect'], /inspect takes one token/],
    [['inspect', 'x'], /--team is required/],
    [['inspect', 'x', '--team', 'acme'], /--aud is required/],
    [['inspect', 'x', '--team', 'evil.com', '--aud', 'a'], /--team must be a team name/],
    [['inspect', 'x', '--team', 'acme', '--aud', 'a', '--at', 'yesterday'], /--at must be an ISO time/],
    [['inspect', 'x', '--team', 'acme', '--aud', 'a', '--certs', '/nonexistent/certs.json'], /--certs \/nonexistent\/certs.json: ENOENT/],
    [['inspect', 'x', '--team', 'acme', '--aud', 'a', '--colour'], /Unknown option '--colour'/],
    [['emulator', '--port', 'many'], /--port must be a port number/],
    [['emulator', '--port', ''], /--port must be a port number, got ""/],
    [['emulator', '--aud', 'a b'], /--aud must be an Application Audience \(AUD\) tag/],
    [['emulator', '--aud', '\u001b]0;pwned\u0007'], /--aud must be an Application Audience \(AUD\) tag[^]*\\u001b/],
    [['dev'], /--upstream is required/],
    [['dev', '--upstream', 'http://192.0.2.1:3000', '--port', '0'], /--upstream http:\/\/192\.0\.2\.1:3000 is not on this machine[^]*Pass --allow-remote-upstream if you mean it/],
    [['dev', '--upstream', 'http://127.0.0.1:3000', '--port', ''], /--port must be a port number/],
    [['dev', '--upstream', 'http://127.0.0.1:3000', '--port', '0', '--aud', 'a b'], /--aud must be an Application Audience/],
    [['dev', '--upstream', 'http://127.0.0.1:3000', '--port', '0', '--public', '/,health'], /--public takes paths such as \/, \/health or \/static\*[^]*got "health" in "\/,health"/]
  ]
  const runs = await Promise.all(cases.map(([args]) => cli(args)))
  cases.forEach(([args, message], index) => {
    const run = runs[index] as Run
    t.equal(run.code, 2, args.join(' ') || '(no arguments)')
    t.match(run.err, message, args.join(' ') || '(no arguments)')
    t.notMatch(run.err, RAW_CONTROL, `${args.join(' ') || '(no arguments)'}: no raw control character`)
  })
})

t.test('--help for each command, exit 0', async (t) => {
  for (const [args, text] of [[['--help'], /Commands:/], [['inspect', '--help'], /Exit status: 0 valid, 1 rejected, 2 usage or network error/], [['emulator', '--help'], /Runs the test kit's Access emulator/], [['dev', '--help'], /--public <paths>\s+paths passed on without a login and without a token/]] as const) {
    const run = await cli([...args])
    t.equal(run.code, 0)
    t.match(run.out, text)
  }
})

/** A command that runs until a signal, once it has printed its last line; `stop()` sends SIGTERM and resolves its exit code. */
async function running (args: string[]): Promise<{ out: string, child: ChildProcess, stop: () => Promise<number | null> }> {
  const child = spawn(process.execPath, [CLI, ...args], { env: process.env })
  let out = ''
  await new Promise<void>((resolve) => {
    child.stdout.on('data', (chunk: Buffer) => {
      out += chunk.toString()
      if (out.includes('Ctrl-C to stop.')) resolve()
    })
  })
  const exited = new Promise<number | null>((resolve) => child.on('exit', resolve))
  return {
    out,
    child,
    stop: async () => {
      child.kill('SIGTERM')
      return exited
    }
  }
}

t.test('demo: every answer as expected (exit 0); with --serve it keeps listening until SIGTERM', async (t) => {
  const walk = await cli(['demo'])
  t.equal(walk.code, 0)
  t.match(walk.out, /11\/11 answers as expected/)
  const { out, stop } = await running(['demo', '--serve'])
  const [, url, token] = /curl -s (\S+) -H 'Cf-Access-Jwt-Assertion: ([^']+)'/.exec(out) ?? []
  t.equal((await fetch(url as string, { headers: { 'cf-access-jwt-assertion': token as string } })).status, 200, 'the printed curl works')
  t.equal(await stop(), 0)
})

t.test('emulator: runs standalone, prints a token that verifies, stops on SIGTERM', async (t) => {
  const { out, stop } = await running(['emulator', '--aud', 'a'.repeat(64)])
  const teamDomain = /teamDomain\s+(\S+)/.exec(out)?.[1] as string
  const token = /User token[^\n]*\n(\S+)/.exec(out)?.[1] as string
  t.match(out, /audience\s+a{64}/)
  t.match(out, /curl -s http:\/\/127\.0\.0\.1:3000\/ -H 'Cf-Access-Jwt-Assertion: eyJ/)
  const run = await cli(['inspect', token, '--team', teamDomain, '--aud', 'a'.repeat(64)])
  t.equal(run.code, 0, 'the printed token verifies against the running emulator')
  t.equal(await stop(), 0)
})

t.test('inspect: a token cannot write terminal escapes: claim names, values and header fields are printed escaped', async (t) => {
  const access = await emulator(t)
  const token = access.signRaw(
    { alg: 'RS256', kid: access.kids[0], 'x\u001b]0;pwned\u0007': 'title\u009b2J' },
    { iss: access.teamDomain, aud: [access.audience], email: 'eve@acme.com\u001b[2K\rVALID', exp: nowSeconds() + 600, 'hide\u001b[8m': '\u202eevil', type: 'app' }
  )
  for (const args of [[], ['--json']]) {
    const run = await cli(['inspect', '-', '--team', access.teamDomain, '--aud', access.audience, ...args], token)
    t.notMatch(run.out, RAW_CONTROL, `no raw control character in the ${args.length === 0 ? 'text' : 'JSON'} output`)
    t.match(run.out, /\\u001b/, 'escapes shown as \\u001b')
    if (args.length === 1) t.equal(JSON.parse(run.out).claims['hide\u001b[8m'], '\u202eevil', 'the JSON output still parses to the real values')
  }
})

t.test('inspect: out-of-range times are failing checks, never a stack trace', async (t) => {
  const access = await emulator(t)
  const base = { iss: access.teamDomain, aud: [access.audience], email: 'a@acme.com', type: 'app' }
  const cases: Array<[string, string, RegExp]> = [
    ['exp: 1e20', `{"iss":${JSON.stringify(base.iss)},"aud":[${JSON.stringify(access.audience)}],"email":"a@acme.com","exp":1e20,"iat":1e20}`, /✗ iat\s+issued in the future/],
    ['iat: 1e999', `{"iss":${JSON.stringify(base.iss)},"aud":[${JSON.stringify(access.audience)}],"email":"a@acme.com","exp":${nowSeconds() + 600},"iat":1e999}`, /✗ (iat|exp)\s+.*(not a finite number|out of range)/],
    ['exp: -1e20', `{"iss":${JSON.stringify(base.iss)},"aud":[${JSON.stringify(access.audience)}],"email":"a@acme.com","exp":-1e20}`, /✗ exp\s+/]
  ]
  for (const [name, payload, expected] of cases) {
    const run = await cli(['inspect', '-', '--team', access.teamDomain, '--aud', access.audience], access.signRaw({ alg: 'RS256', kid: access.kids[0] }, payload))
    t.equal(run.code, 1, `${name}: rejected, exit 1`)
    t.match(run.out, expected, name)
    t.notMatch(run.err, /RangeError|at .*\.js:\d+/, `${name}: no stack trace`)
  }
})

t.test('inspect: --at 0 or before 1970 is a usage error, never misreported as a bad signature', async (t) => {
  const access = await emulator(t)
  for (const at of ['1970-01-01T00:00:00Z', '1969-07-20T20:17:00Z', '0']) {
    const run = await cli(['inspect', access.signToken(), '--team', access.teamDomain, '--aud', access.audience, '--at', at])
    t.equal(run.code, 2, at)
    t.match(run.err, /--at must be an ISO time after 1970/, at)
  }
})

t.test('dev: prints the options the app must use and the public paths, serves the keys there, stops on SIGTERM', async (t) => {
  const { out, stop } = await running(['dev', '--upstream', 'http://127.0.0.1:9', '--port', '0', '--aud', 'b'.repeat(64), '--public', '/,/health', '--public', '/static*'])
  t.match(out, /Public, without a login or a token \(as an Access Bypass policy\): \/, \/health, \/static\*\n/)
  const teamDomain = /teamDomain: '(http:\/\/127\.0\.0\.1:\d+)',/.exec(out)?.[1] as string
  t.ok(teamDomain, 'teamDomain printed as code')
  t.match(out, new RegExp(`audience: '${'b'.repeat(64)}'`))
  t.match(out, new RegExp(`CF_ACCESS_TEAM_DOMAIN=${teamDomain} CF_ACCESS_AUD=${'b'.repeat(64)}`))
  t.match(out, /Access dev proxy: http:\/\/127\.0\.0\.1:\d+ → http:\/\/127\.0\.0\.1:9/)
  const certs = await fetch(`${teamDomain}/cdn-cgi/access/certs`)
  t.equal(((await certs.json()) as { keys: unknown[] }).keys.length, 2)
  t.notMatch(out, /not on this machine/)
  const home = await fetch(`${teamDomain}/`, { headers: { accept: 'text/html' }, redirect: 'manual' })
  t.equal(home.status, 502, 'a public path goes straight to the app (here: none running), no login first')
  t.equal(await stop(), 0)
})

t.test('inspect: claims that defeat String() or JSON.stringify (a non-callable toString, deep nesting) are reported, never a stack trace', async (t) => {
  const access = await emulator(t)
  const certs = join(mkdtempSync(join(tmpdir(), 'cf-cli-')), 'certs.json')
  writeFileSync(certs, JSON.stringify(access.jwks()))
  const header = { alg: 'RS256', kid: access.kids[0] }
  const base = `"iss":${JSON.stringify(access.teamDomain)},"email":"a@acme.com","exp":${nowSeconds() + 600}`
  // as deep as fits in the 64 KiB inspect reads from standard input (base64 makes 4 characters of 3)
  const depth = 20_000
  const cases: Record<string, string> = {
    'aud [{"toString":1}]': access.signRaw(header, `{${base},"aud":[{"toString":1}]}`),
    'aud {"toString":1,"valueOf":1}': access.signRaw(header, `{${base},"aud":{"toString":1,"valueOf":1}}`),
    'a claim nested 20000 deep': access.signRaw(header, `{${base},"aud":[${JSON.stringify(access.audience)}],"x":${'['.repeat(depth)}${']'.repeat(depth)}}`),
    'aud nested as deep as 8192 characters allow': access.signRaw(header, `{${base},"aud":${'['.repeat(2800)}${']'.repeat(2800)}}`)
  }
  t.ok((cases['aud nested as deep as 8192 characters allow'] as string).length <= 8192, 'the deepest token the plugin would decode')
  for (const [name, token] of Object.entries(cases)) {
    for (const mode of [[], ['--json']]) {
      const run = await cli(['inspect', '-', '--team', access.teamDomain, '--aud', access.audience, '--certs', certs, ...mode], token)
      t.equal(run.code, 1, `${name}${mode.length === 0 ? '' : ' --json'}: rejected with exit 1`)
    }
  }
})

t.test('inspect: a --certs file cannot write terminal escapes through its parse error', async (t) => {
  const access = await emulator(t)
  const certs = join(mkdtempSync(join(tmpdir(), 'cf-cli-')), 'certs.json')
  writeFileSync(certs, '\u001b]0;pwned\u0007\u001b[2J')
  const run = await cli(['inspect', access.signToken(), '--team', access.teamDomain, '--aud', access.audience, '--certs', certs])
  t.equal(run.code, 2, 'a usage error')
  // eslint-disable-next-line no-control-regex
  t.notMatch(run.err, /[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/, 'no raw control character on stderr')
})

t.test('dev --allow-remote-upstream: starts, and says that the upstream is not on this machine', async (t) => {
  const { out, stop } = await running(['dev', '--upstream', 'http://192.0.2.1:3000', '--port', '0', '--allow-remote-upstream'])
  t.match(out, /Access dev proxy: http:\/\/127\.0\.0\.1:\d+ → http:\/\/192\.0\.2\.1:3000/)
  t.match(out, /http:\/\/192\.0\.2\.1:3000 is not on this machine \(--allow-remote-upstream\): it receives signed tokens/)
  t.equal(await stop(), 0)
})

t.test('dev: logins with an email no header can carry and answers Node cannot write never end the process', async (t) => {
  const app = http.createServer((req, res) => {
    if (req.url === '/odd') req.socket.end('HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n')
    else res.end(String(req.headers['cf-access-authenticated-user-email']))
  })
  await new Promise<void>((resolve) => app.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise((resolve) => app.close(resolve)))
  const { out, child, stop } = await running(['dev', '--upstream', `http://127.0.0.1:${(app.address() as AddressInfo).port}`, '--port', '0'])
  const origin = /teamDomain: '(http:\/\/127\.0\.0\.1:\d+)',/.exec(out)?.[1] as string
  const csrf = /name="csrf" value="([^"]+)"/.exec(await (await fetch(`${origin}/cdn-cgi/access/login`)).text())?.[1] as string
  const login = (email: string): Promise<Response> => fetch(`${origin}/cdn-cgi/access/login`, { method: 'POST', body: new URLSearchParams({ csrf, email }), redirect: 'manual' })
  for (const email of ['josé.€@example.com', '用户@example.com', 'a\u0007b@example.com']) {
    const refused = await login(email)
    t.equal(refused.status, 400, JSON.stringify(email))
    t.match(await refused.text(), /Enter an email address/)
  }
  const cookie = ((await login('dev@example.com')).headers.get('set-cookie') as string).split(';')[0] as string
  t.equal((await fetch(`${origin}/odd`, { headers: { cookie } })).status, 502, 'an answer status of 99')
  const page = await fetch(`${origin}/`, { headers: { cookie } })
  t.equal(await page.text(), 'dev@example.com')
  t.equal(child.exitCode, null, 'still running')
  t.equal(await stop(), 0)
})

t.test('inspect: a pasted cookie or Cookie header is read as the token; more than 64 KiB of standard input is refused', async (t) => {
  const access = await emulator(t)
  const token = access.signToken({ email: 'alice@acme.com' })
  const args = ['--team', access.teamDomain, '--aud', access.audience]
  const pasted: Array<[string, string]> = [
    ['the cookie', `CF_Authorization=${token}`],
    ['a Cookie header value', `theme=dark; CF_Authorization=${token}; _ga=GA1.2.3`],
    ['a whole Cookie header line', `Cookie: theme=dark; CF_Authorization="${token}"\n`],
    ['a header line', `cf-access-jwt-assertion: ${token}`],
    ['the token with white space around it', `\n  ${token}  \n`]
  ]
  for (const [name, text] of pasted) {
    const fromStdin = await cli(['inspect', '-', ...args], text)
    t.equal(fromStdin.code, 0, `${name}, from standard input`)
    t.match(fromStdin.out, /VALID: the plugin accepts this token/)
  }
  t.equal((await cli(['inspect', `CF_Authorization=${token}`, ...args])).code, 0, 'the cookie as the argument')
  for (const nothing of ['', '\n', 'Cf-Access-Jwt-Assertion: ']) {
    const none = await cli(['inspect', '-', ...args], nothing)
    t.equal(none.code, 1, `${JSON.stringify(nothing)}: no token`)
    t.match(none.out, /✗ token\s+expected the Cf-Access-Jwt-Assertion header or the CF_Authorization cookie — nothing was given \(empty input\)/, 'never "present"')
  }
  const empty = await cli(['inspect', '-', ...args], 'theme=dark; CF_Authorization=; b=1')
  t.equal(empty.code, 2, 'a cookie without a value: a usage error')
  t.match(empty.err, /the pasted cookie has no CF_Authorization value/)
  const huge = await cli(['inspect', '-', ...args], 'x'.repeat(64 * 1024 + 1))
  t.equal(huge.code, 2, 'more than 64 KiB: a usage error')
  t.match(huge.err, /standard input is larger than 64 KiB/)
  t.equal((await cli(['inspect', '-', ...args], `${'x'.repeat(64 * 1024 - token.length - 1)} ${token}`)).code, 1, 'exactly 64 KiB is read (and that text is no token)')
  const help = await cli(['inspect', '--help'])
  t.match(help.out, /CF_Authorization cookie is HttpOnly/, 'the help says how to copy the cookie')
  t.match(help.out, /Application → Cookies \(Chrome, Edge\) or Storage →\s+Cookies \(Firefox, Safari\)/)
})
