import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { eventually, freePort } from './helpers'

// The README's "Local development" section as a reader runs it: the `dev` command of its shell block (the
// built CLI), and its app.js block, written to a file and started with `node app.js` against the built
// package, resolved by its name. Then what the section says happens: `/` and `/health` answer without a
// login, `/admin/me` after a login with the group typed as the block's comment says, a user without it
// gets 403, and the README's "Log out" route logs out.

const ROOT = join(__dirname, '..')
const CLI = join(ROOT, 'dist', 'lib', 'cli.js')
const readme = readFileSync(join(ROOT, 'README.md'), 'utf8')

/** The text of a README section, from its heading to the next heading of its level. */
function section (heading: string): string {
  const level = heading.slice(0, heading.indexOf(' ') + 1)
  const start = readme.indexOf(`\n${heading}\n`)
  if (start === -1) throw new Error(`README has no section ${heading}`)
  const end = readme.indexOf(`\n${level}`, start + heading.length + 2)
  return readme.slice(start, end === -1 ? undefined : end)
}

function block (text: string, language: string): string {
  const match = new RegExp(`\`\`\`${language}\\n([\\s\\S]*?)\`\`\``).exec(text)
  if (match === null) throw new Error(`no ${language} block`)
  return match[1] as string
}

const local = section('## Local development: a stand-in for Access in front of your app')
const shell = block(local, 'sh')
const appJs = block(local, 'js')
const logoutLine = block(section('### Log out'), 'ts').trim()

t.setTimeout(120_000)

t.before(() => {
  if (!existsSync(CLI)) throw new Error('dist/lib/cli.js is missing: run npm run build first (npm test does)')
})

/** A process of the test, ended (and waited for, boundedly) when the test ends. */
function started (t: Test, command: string[], options: { cwd?: string, env?: NodeJS.ProcessEnv } = {}): { child: ChildProcess, output: () => string, exited: Promise<number | null> } {
  const child = spawn(process.execPath, command, { cwd: options.cwd, env: options.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] })
  let output = ''
  child.stdout?.on('data', (chunk: Buffer) => { output += chunk.toString() })
  child.stderr?.on('data', (chunk: Buffer) => { output += chunk.toString() })
  const exited = new Promise<number | null>((resolve) => child.on('close', resolve))
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM')
    await Promise.race([exited, new Promise((resolve) => setTimeout(resolve, 5000))])
    child.kill('SIGKILL')
  })
  return { child, output: () => output, exited }
}

/** app.js in a directory of its own, where `require` finds the built package and Fastify by their names, as after `npm i`. */
function appDirectory (t: Test): string {
  const dir = mkdtempSync(join(tmpdir(), 'cf-access-local-dev-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  mkdirSync(join(dir, 'node_modules'))
  symlinkSync(ROOT, join(dir, 'node_modules', 'fastify-cloudflare-access'), 'dir')
  symlinkSync(join(ROOT, 'node_modules', 'fastify'), join(dir, 'node_modules', 'fastify'), 'dir')
  writeFileSync(join(dir, 'app.js'), appJs)
  return dir
}

t.test('the README\'s blocks are what a reader would paste: CommonJS without top-level await, the dev command, node app.js', async (t) => {
  t.match(appJs, /^\/\/ app\.js\n/, 'the file is named')
  t.notMatch(appJs, /^\s*(import|export) /m, 'CommonJS: no import or export')
  t.notMatch(appJs, /^await /m, 'no top-level await')
  t.match(appJs, /require\('fastify-cloudflare-access'\)/)
  t.match(shell, /^npx fastify-cloudflare-access dev --upstream http:\/\/127\.0\.0\.1:3000 --public \/,\/health$/m)
  t.match(shell, /^CF_ACCESS_TEAM_DOMAIN=http:\/\/127\.0\.0\.1:8787 CF_ACCESS_AUD=<the printed audience> node app\.js$/m)
  t.match(appJs, /type finance in Groups/, 'it says what to type for the group-restricted route')
  t.ok(appJs.includes(`  ${logoutLine}\n`), 'the "Log out" recipe, as the app runs it')
  t.ok(readFileSync(join(ROOT, 'examples', 'browser.ts'), 'utf8').includes(logoutLine), 'and as the browser test runs it')
})

t.test('the README\'s "Local development" runs as pasted: public /, a login with the group, 403 without it, logout', async (t) => {
  const appPort = await freePort()
  const command = /^npx fastify-cloudflare-access (dev .*)$/m.exec(shell)?.[1] as string
  const args = command.split(' ').map((arg) => arg === 'http://127.0.0.1:3000' ? `http://127.0.0.1:${appPort}` : arg)
  const proxy = started(t, [CLI, ...args, '--port', '0'])
  t.ok(await eventually(() => proxy.output().includes('CF_ACCESS_AUD='), 20_000), 'the proxy started')
  // the variables the README's step 2 names, with the values the proxy printed
  const printed = /CF_ACCESS_TEAM_DOMAIN=(\S+) CF_ACCESS_AUD=(\S+)/.exec(proxy.output()) as RegExpExecArray
  const origin = printed[1] as string
  const env = { ...process.env, CF_ACCESS_TEAM_DOMAIN: origin, CF_ACCESS_AUD: printed[2], PORT: String(appPort) }
  const app = started(t, ['app.js'], { cwd: appDirectory(t), env })
  const up = await eventually(async () => (await fetch(`${origin}/health`).catch(() => undefined))?.status === 200, 20_000)
  t.ok(up, `the app answers through the proxy${up ? '' : `: ${app.output()}`}`)

  // step 3: the URL opens without a login, as does /health
  const home = await fetch(`${origin}/`, { headers: { accept: 'text/html' }, redirect: 'manual' })
  t.equal(home.status, 200, '/ is public')
  t.match(await home.text(), /<a href="\/admin\/me">Who am I\?<\/a>/)
  t.equal(await (await fetch(`${origin}/health`)).text(), 'ok')
  const first = await fetch(`${origin}/admin/me`, { headers: { accept: 'text/html' }, redirect: 'manual' })
  t.equal(first.status, 302, 'the protected route sends the browser to the login page')
  t.equal(first.headers.get('location'), '/cdn-cgi/access/login?redirect_url=%2Fadmin%2Fme')

  const loginPage = await (await fetch(`${origin}/cdn-cgi/access/login`)).text()
  const csrf = /name="csrf" value="([^"]+)"/.exec(loginPage)?.[1] as string
  const login = async (email: string, groups: string): Promise<string> => {
    const res = await fetch(`${origin}/cdn-cgi/access/login`, {
      method: 'POST',
      headers: { origin },
      body: new URLSearchParams({ csrf, kind: 'user', email, groups, redirect_url: '/admin/me' }),
      redirect: 'manual'
    })
    t.equal(res.status, 303, `${email} logged in`)
    return (res.headers.get('set-cookie') as string).split(';')[0] as string
  }
  const finance = await login('user@example.com', 'finance')
  const me = await fetch(`${origin}/admin/me`, { headers: { cookie: finance } })
  t.equal(me.status, 200, 'with finance typed in Groups')
  t.match(await me.json(), { email: 'user@example.com', iss: origin })

  const other = await login('bob@example.com', '')
  t.equal((await fetch(`${origin}/admin/me`, { headers: { cookie: other } })).status, 403, 'without the group: 403')
  const out = await fetch(`${origin}/admin/logout`, { headers: { cookie: other }, redirect: 'manual' })
  t.equal(out.status, 303, 'a refused user can log out too')
  t.equal(out.headers.get('location'), '/cdn-cgi/access/logout')
  const cleared = await fetch(`${origin}/cdn-cgi/access/logout`, { headers: { cookie: other } })
  t.match(cleared.headers.get('set-cookie'), /^CF_Authorization=; Path=\/; Max-Age=0/, 'the proxy clears the cookie, as Access does')
  t.equal((await fetch(`${origin}/admin/me`, { headers: { accept: 'text/html' }, redirect: 'manual' })).status, 302, 'without it: a login again')
  t.equal(app.child.exitCode, null, 'the app still runs')
})

t.test('app.js without the proxy\'s options stops with a message naming the option, never a silent bypass', async (t) => {
  const env: NodeJS.ProcessEnv = { ...process.env, PORT: String(await freePort()) }
  delete env.CF_ACCESS_TEAM_DOMAIN
  delete env.CF_ACCESS_AUD
  const app = started(t, ['app.js'], { cwd: appDirectory(t), env })
  t.equal(await app.exited, 1)
  t.match(app.output(), /teamDomain/)
})
