import { execFile } from 'node:child_process'
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import t from 'tap'
import { createAccessEmulator } from '../lib/testing'

// The package as users get it: `npm pack`, then installed into a scratch project offline (from npm's
// cache, filled by `npm ci`), required, imported, compiled by a strict TypeScript consumer under three
// module settings, and its CLI run. npm test builds dist first.

const run = promisify(execFile)
const ROOT = join(__dirname, '..')
const TSC = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc')
const env = process.env
const version = (name: string): string => (JSON.parse(readFileSync(join(ROOT, 'node_modules', name, 'package.json'), 'utf8')) as { version: string }).version

let scratch = ''
let tarball = ''

t.before(async () => {
  const dir = mkdtempSync(join(tmpdir(), 'cf-access-pack-'))
  const { stdout } = await run('npm', ['pack', '--json', '--pack-destination', dir], { cwd: ROOT, env })
  tarball = join(dir, (JSON.parse(stdout) as Array<{ filename: string }>)[0]?.filename as string)
  scratch = join(dir, 'consumer')
  mkdirSync(scratch)
  writeFileSync(join(scratch, 'package.json'), JSON.stringify({ name: 'consumer', private: true, version: '1.0.0' }))
  await run('npm', ['install', '--offline', '--no-audit', '--no-fund', '--ignore-scripts', tarball,
    `fastify@${version('fastify')}`, `@types/node@${version('@types/node')}`], { cwd: scratch, env })
})

t.test('the tarball holds only what users need', async (t) => {
  const { stdout } = await run('tar', ['tzf', tarball])
  const files = stdout.trim().split('\n').map((file) => file.replace(/^package\//, '')).sort()
  t.ok(files.includes('dist/index.js') && files.includes('dist/index.d.ts') && files.includes('dist/lib/testing.js') && files.includes('dist/lib/cli.js'))
  t.ok(['README.md', 'LICENSE', 'CHANGELOG.md', 'package.json'].every((file) => files.includes(file)))
  const unexpected = files.filter((file) => !/^(dist\/index\.(js|d\.ts)|dist\/lib\/[a-z]+\.(js|d\.ts)|README\.md|LICENSE|CHANGELOG\.md|package\.json)$/.test(file))
  t.same(unexpected, [], 'no tests, sources, benchmarks, examples or maps')
})

t.test('require() and import of the installed package', async (t) => {
  writeFileSync(join(scratch, 'check.cjs'), `
    const plugin = require('fastify-cloudflare-access')
    const { createAccessEmulator } = require('fastify-cloudflare-access/testing')
    if (typeof plugin !== 'function' || plugin.default !== plugin || typeof createAccessEmulator !== 'function') process.exit(1)
    console.log('cjs ok')`)
  writeFileSync(join(scratch, 'check.mjs'), `
    import plugin, { fastifyCloudflareAccess, isServiceToken } from 'fastify-cloudflare-access'
    import { createAccessEmulator } from 'fastify-cloudflare-access/testing'
    import Fastify from 'fastify'
    if (plugin !== fastifyCloudflareAccess || typeof isServiceToken !== 'function') process.exit(1)
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
import cloudflareAccess, { isUserToken, type CloudflareAccessClaims } from 'fastify-cloudflare-access'
import { createAccessEmulator } from 'fastify-cloudflare-access/testing'

export async function start (): Promise<void> {
  const access = await createAccessEmulator()
  const app = Fastify()
  app.register(async (admin) => {
    await admin.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, allow: { emailDomains: ['acme.com'] } })
    admin.get('/', { config: { cfAccess: { allow: { groups: ['admins'] } } } }, async (request) => {
      const claims: CloudflareAccessClaims | null = request.cfAccess
      return claims !== null && isUserToken(claims) ? claims.email : null
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
