import { execFile } from 'node:child_process'
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { promisify } from 'node:util'
import t from 'tap'
import { createAccessEmulator } from '../lib/testing'

// The package as users get it: packed once (`npm pack`), checked by attw, installed into a scratch
// project, required, imported, compiled by a strict TypeScript consumer under three module settings, and
// its CLI run. npm test builds dist first.
//
// Self-sufficient on a fresh machine: npm runs here with an empty cache of its own and --offline, so the
// test reaches nothing but what `npm ci` put in node_modules. The package's dependencies (and, for the
// consumer, fastify and @types/node) are linked from there; npm installs the tarball and finds them.
// The pack skips scripts: prepack would rebuild dist/ while other test files run it.

const run = promisify(execFile)
const ROOT = join(__dirname, '..')
const TSC = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc')
const ATTW = join(ROOT, 'node_modules', '@arethetypeswrong', 'cli', 'dist', 'index.js')
const manifest = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { dependencies: Record<string, string>, scripts: Record<string, string> }
const npmCache = mkdtempSync(join(tmpdir(), 'cf-access-npm-cache-'))
const env = { ...process.env, npm_config_cache: npmCache, npm_config_offline: 'true', npm_config_audit: 'false', npm_config_fund: 'false', npm_config_update_notifier: 'false' }

// npm pack, npm install, three TypeScript compilations and CLI runs: on a loaded machine the file takes far
// longer than its CPU time.
t.setTimeout(360_000)

let scratch = ''
let tarball = ''
/** `npx fastify-cloudflare-access demo` before fastify was installed (null: it succeeded). */
let withoutFastify: { code: number, stderr: string } | null = null
/** attw's verdict on the tarball: started as soon as it exists, to run alongside the install. */
let attw: Promise<string>

/** `node_modules/<name>` of the scratch project, a link to the one `npm ci` installed here. */
function link (name: string): void {
  const path = join(scratch, 'node_modules', name)
  mkdirSync(dirname(path), { recursive: true })
  symlinkSync(join(ROOT, 'node_modules', name), path, 'dir')
}

t.before(async () => {
  const dir = mkdtempSync(join(tmpdir(), 'cf-access-pack-'))
  t.teardown(() => {
    rmSync(dir, { recursive: true, force: true })
    rmSync(npmCache, { recursive: true, force: true })
  })
  const { stdout } = await run('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', dir], { cwd: ROOT, env })
  tarball = join(dir, (JSON.parse(stdout) as Array<{ filename: string }>)[0]?.filename as string)
  attw = run(process.execPath, [ATTW, tarball, '--format', 'ascii', '--no-color'], { cwd: ROOT, env }).then(() => 'ok', (error: { stdout: string }) => error.stdout)
  scratch = join(dir, 'consumer')
  mkdirSync(scratch)
  writeFileSync(join(scratch, 'package.json'), JSON.stringify({ name: 'consumer', private: true, version: '1.0.0' }))
  for (const name of Object.keys(manifest.dependencies)) link(name)
  await run('npm', ['install', '--offline', '--ignore-scripts', '--no-package-lock', tarball], { cwd: scratch, env })
  // Before the project has fastify: the demo says how to get it.
  withoutFastify = await run('npx', ['--no', 'fastify-cloudflare-access', 'demo'], { cwd: scratch, env }).then(() => null, (error: { code: number, stderr: string }) => error)
  // the consumer's own dependencies, after the install (npm would prune them as extraneous)
  link('fastify')
  link('@types/node')
})

t.test('npm ran offline on an empty cache of its own: the only entries are our tarball', async (t) => {
  const index = join(npmCache, '_cacache', 'index-v5')
  const keys = readdirSync(index, { recursive: true, withFileTypes: true }).filter((entry) => entry.isFile())
    .flatMap((entry) => readFileSync(join(entry.parentPath, entry.name), 'utf8').trim().split('\n'))
    .map((line) => (JSON.parse(line.slice(line.indexOf('\t') + 1)) as { key: string }).key)
  t.ok(keys.length > 0)
  t.same(keys.filter((key) => !key.startsWith('pacote:tarball:file:')), [], 'no package metadata, no registry tarball')
  t.ok(readdirSync(join(scratch, 'node_modules', 'fastify-cloudflare-access', 'dist')).includes('index.js'))
})

t.test('attw: the types resolve for node10, node16 (CommonJS and ESM) and bundler', async (t) => {
  t.equal(await attw, 'ok')
})

t.test('npm pack and npm publish build first: the tarball of a fresh clone holds dist/', async (t) => {
  t.equal(manifest.scripts.prepack, 'npm run build')
})

t.test('the tarball holds only what users need', async (t) => {
  const { stdout } = await run('tar', ['tzf', tarball])
  const files = stdout.trim().split('\n').map((file) => file.replace(/^package\//, '')).sort()
  const lib = readdirSync(join(ROOT, 'lib')).filter((file) => file.endsWith('.ts')).flatMap((file) => [`dist/lib/${file.slice(0, -3)}.js`, `dist/lib/${file.slice(0, -3)}.d.ts`])
  t.same(lib.filter((file) => !files.includes(file)), [], 'every module of lib/, compiled, with its declarations')
  t.ok(['dist/index.js', 'dist/index.d.ts', 'README.md', 'LICENSE', 'CHANGELOG.md', 'package.json'].every((file) => files.includes(file)))
  const unexpected = files.filter((file) => !/^(dist\/index\.(js|d\.ts)|dist\/lib\/[a-z-]+\.(js|d\.ts)|docs\/[a-z-]+\.md|examples\/[a-z-]+\.ts|README\.md|LICENSE|CHANGELOG\.md|package\.json)$/.test(file))
  t.same(unexpected, [], 'no tests, sources, benchmarks or maps: the docs and examples the README links to, and the build')
  // Every relative link of the README and of docs/ opens in the installed package.
  const pages = ['README.md', ...files.filter((file) => file.startsWith('docs/'))]
  for (const page of pages) {
    const text = readFileSync(join(ROOT, page), 'utf8')
    for (const [, target] of text.matchAll(/\]\((?!https?:|#)([^)#]+)(?:#[^)]*)?\)/g)) {
      const resolved = join(dirname(page), target as string).replace(/\\/g, '/')
      t.ok(files.includes(resolved), `${page} links to ${target as string}, which the package holds`)
    }
  }
})

t.test('require() and import of the installed package', async (t) => {
  writeFileSync(join(scratch, 'check.cjs'), `
    const plugin = require('fastify-cloudflare-access')
    const { createAccessEmulator } = require('fastify-cloudflare-access/testing')
    if (typeof plugin !== 'function' || plugin.default !== plugin || typeof createAccessEmulator !== 'function') process.exit(1)
    console.log('cjs ok')`)
  writeFileSync(join(scratch, 'check.mjs'), `
    import plugin, { fastifyCloudflareAccess, isServiceToken, channelNames, cloudflareAccessStatus } from 'fastify-cloudflare-access'
    import { createAccessEmulator } from 'fastify-cloudflare-access/testing'
    import Fastify from 'fastify'
    if (plugin !== fastifyCloudflareAccess || typeof isServiceToken !== 'function' || typeof cloudflareAccessStatus !== 'function' || typeof channelNames.accepted !== 'string') process.exit(1)
    const access = await createAccessEmulator()
    const app = Fastify()
    await app.register(plugin, { teamDomain: access.teamDomain, audience: access.audience })
    app.get('/', async (request) => request.cfAccess.email)
    const res = await app.inject({ url: '/', headers: { 'cf-access-jwt-assertion': access.signToken() } })
    await app.close(); await access.close()
    console.log(res.body === 'user@example.com' ? 'esm ok' : 'esm FAILED')`)
  t.equal((await run(process.execPath, ['check.cjs'], { cwd: scratch, env })).stdout.trim(), 'cjs ok')
  t.equal((await run(process.execPath, ['check.mjs'], { cwd: scratch, env })).stdout.trim(), 'esm ok')
})

const consumer = `import Fastify from 'fastify'
import cloudflareAccess, { isUserToken, requireUser, type CloudflareAccessClaims } from 'fastify-cloudflare-access'
import { createAccessEmulator } from 'fastify-cloudflare-access/testing'

export async function start (): Promise<void> {
  const access = await createAccessEmulator()
  const app = Fastify()
  app.register(async (admin) => {
    await admin.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, allow: { emailDomains: ['acme.com'] } })
    admin.get('/', { config: { cfAccess: { allow: { groups: ['admins'] } } } }, async (request) => {
      const claims: CloudflareAccessClaims | null | undefined = request.cfAccess
      return claims != null && isUserToken(claims) ? claims.email : requireUser(request).email
    })
  }, { prefix: '/admin' })
  await app.ready()
}
`

// The package's own declarations are checked by attw (test:package) and tsd (types/); here, the use of
// them by a consumer, so library checking is skipped to keep three compilations fast.
t.test('a strict TypeScript consumer compiles under module node16, nodenext and bundler', async (t) => {
  await Promise.all(([
    ['node16', { module: 'node16', moduleResolution: 'node16' }],
    ['nodenext', { module: 'nodenext', moduleResolution: 'nodenext' }],
    ['bundler', { module: 'esnext', moduleResolution: 'bundler' }]
  ] as const).map(async ([name, options]) => {
    const dir = join(scratch, `ts-${name}`)
    mkdirSync(dir)
    writeFileSync(join(dir, 'app.ts'), consumer)
    writeFileSync(join(dir, 'tsconfig.json'), JSON.stringify({
      compilerOptions: { ...options, target: 'es2022', strict: true, noEmit: true, esModuleInterop: true, skipLibCheck: true, types: ['node'], typeRoots: [join(scratch, 'node_modules', '@types')] },
      files: ['app.ts']
    }))
    const result = await run(process.execPath, [TSC, '-p', dir], { cwd: dir, env }).then(() => 'ok', (error: { stdout: string }) => error.stdout)
    t.equal(result, 'ok', name)
  }))
})

t.test('the CLI runs from the installed package', async (t) => {
  const bin = join(scratch, 'node_modules', '.bin')
  t.ok(readdirSync(bin).includes('fastify-cloudflare-access'))
  const cli = join(bin, 'fastify-cloudflare-access')
  t.match((await run(cli, ['inspect', '--help'], { cwd: scratch, env })).stdout, /Usage: fastify-cloudflare-access inspect/)
  const access = await createAccessEmulator()
  t.teardown(() => access.close())
  writeFileSync(join(scratch, 'certs.json'), JSON.stringify(access.jwks()))
  const args = ['--team', access.teamDomain, '--aud', access.audience, '--certs', 'certs.json']
  t.match((await run(cli, ['inspect', access.signToken(), ...args], { cwd: scratch, env })).stdout, /VALID: the plugin accepts this token/)
  const rejected = await run(cli, ['inspect', access.signToken({ aud: ['0'.repeat(64)] }), ...args], { cwd: scratch, env }).then(() => null, (error: { code: number, stdout: string }) => error)
  t.equal(rejected?.code, 1)
  t.match(rejected?.stdout, /✗ aud/)
})

t.test('npx fastify-cloudflare-access demo: the main job from the installed package, and what to do without fastify', async (t) => {
  t.equal(withoutFastify?.code, 2, 'without fastify: a usage error')
  t.match(withoutFastify?.stderr, /the demo runs a Fastify app, and this project has no fastify: npm i fastify/)
  const { stdout } = await run('npx', ['--no', 'fastify-cloudflare-access', 'demo'], { cwd: scratch, env })
  t.match(stdout, /11\/11 answers as expected/, 'with fastify: every answer as expected, exit 0')
  t.match(stdout, /← 403 .*FST_CF_ACCESS_FORBIDDEN/)
  t.match((await run('npx', ['--no', 'fastify-cloudflare-access', 'demo', '--help'], { cwd: scratch, env })).stdout, /Usage: fastify-cloudflare-access demo \[--serve\]/)
})
