/**
 * `npm run bench:boot [-- --routes 100,1000,10000 --rounds 5 --boots 5]`: what the plugin adds to `app.ready()`, above
 * all the boot check of lib/unguarded.ts (every route of the app seen from its root, each `config.cfAccess`
 * looked up against the registrations). Each measurement runs in a process of its own, interleaved:
 *  - bare: Fastify alone, the package never loaded (its routes carry the same configs, read by nobody);
 *  - plugin: the package loaded before the app, registered in /admin, no route with `config.cfAccess`;
 *  - policies: the same, half the routes with a route policy (a third of them added before the plugin, in
 *    its scope; the rest after), the others `config.cfAccess: false` outside the scope.
 * It prints the median boot of each, what the plugin and the per-route checks add per 1 000 routes (noisy:
 * a whole boot varies by more than they add), and the boot check's own time per 1 000 routes.
 */
import { execFileSync } from 'node:child_process'

type Kind = 'bare' | 'plugin' | 'policies'

function argument (name: string, fallback: string): string {
  const index = process.argv.indexOf(name)
  return index === -1 ? fallback : String(process.argv[index + 1])
}

/**
 * Boots in a fresh process: the best of `boots` times from building the routes to `ready()` resolved, in
 * milliseconds (the first boot of a process also compiles Fastify's code: the best of a few is the boot).
 */
async function worker (kind: Kind, routes: number, boots: number): Promise<void> {
  // Loaded here, in this order: the bare worker never loads the plugin, the others load it before Fastify
  // creates the app (as an import at the top of the app's file does).
  const plugin = kind === 'bare' ? undefined : require('../index') as typeof import('../index')
  const Fastify = require('fastify') as typeof import('fastify')
  const { createAccessEmulator } = require('../lib/testing') as typeof import('../lib/testing')
  const access = await createAccessEmulator()
  const policy = { allow: { emails: ['cfo@acme.com'] } }
  const withConfig = kind !== 'plugin'
  const inScope = Math.floor(routes / 2)
  let best = Infinity
  let check = Infinity
  for (let boot = 0; boot < boots; boot++) {
    const started = process.hrtime.bigint()
    const app = Fastify.default()
    const checked = plugin === undefined ? undefined : timeCheck(app)
    app.register(async (admin) => {
      const before = Math.floor(inScope / 3)
      for (let i = 0; i < before; i++) admin.get(`/before/${i}`, withConfig ? { config: { cfAccess: policy } } : {}, async () => 'x')
      if (plugin !== undefined) await admin.register(plugin, { teamDomain: access.teamDomain, audience: access.audience })
      for (let i = before; i < inScope; i++) admin.get(`/after/${i}`, withConfig ? { config: { cfAccess: policy } } : {}, async () => 'x')
    }, { prefix: '/admin' })
    for (let i = inScope; i < routes; i++) app.post(`/open/${i}`, withConfig ? { config: { cfAccess: false } } : {}, async () => 'x')
    await app.ready()
    best = Math.min(best, Number(process.hrtime.bigint() - started) / 1e6)
    if (checked !== undefined) check = Math.min(check, await checked)
    await app.close()
  }
  await access.close()
  process.stdout.write(JSON.stringify({ ms: best, check }))
}

/**
 * Times the boot check alone: the root's first `onReady` hook, which the package adds when Fastify creates
 * the app (reached through Fastify's own symbol: a measurement, nothing the plugin does). Resolves once
 * that hook has run, during `ready()`.
 */
function timeCheck (app: object): Promise<number> {
  const kHooks = Object.getOwnPropertySymbols(app).find((symbol) => symbol.description === 'fastify.hooks') as symbol
  const onReady = (app as Record<symbol, { onReady: Array<(this: unknown, done: (error?: Error) => void) => void> }>)[kHooks]?.onReady as Array<(this: unknown, done: (error?: Error) => void) => void>
  const check = onReady[0] as (this: unknown, done: (error?: Error) => void) => void
  if (check.name !== 'cfAccessUnguardedRoutes') throw new Error('the boot check is not the root\'s first onReady hook')
  return new Promise((resolve) => {
    onReady[0] = function (done) {
      const started = process.hrtime.bigint()
      check.call(this, (error) => {
        resolve(Number(process.hrtime.bigint() - started) / 1e6)
        done(error)
      })
    }
  })
}

function median (values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.floor(sorted.length / 2)] as number
}

function main (): void {
  const sizes = argument('--routes', '100,1000,10000').split(',').map(Number)
  const rounds = Number(argument('--rounds', '5'))
  const boots = argument('--boots', '5')
  const kinds: Kind[] = ['bare', 'plugin', 'policies']
  console.log(`app.ready() with N routes (GET also adds HEAD): the median over ${rounds} processes of each process's best of ${boots} boots, interleaved; Node ${process.version}`)
  console.log('routes |   bare ms | plugin ms | policies ms | plugin − bare per 1 000 | policies − plugin per 1 000 | the check per 1 000 | policies / bare')
  for (const routes of sizes) {
    const times: Record<Kind, number[]> = { bare: [], plugin: [], policies: [] }
    const checks: number[] = []
    for (let round = 0; round < rounds; round++) {
      for (const kind of kinds) {
        const out = execFileSync(process.execPath, [__filename, '--worker', kind, String(routes), boots], { encoding: 'utf8' })
        const { ms, check } = JSON.parse(out) as { ms: number, check: number | null }
        times[kind].push(ms)
        if (kind === 'policies' && check !== null) checks.push(check)
      }
    }
    const [bare, plugin, policies] = kinds.map((kind) => median(times[kind])) as [number, number, number]
    const per1000 = (ms: number): string => `${(ms / routes * 1000).toFixed(1).padStart(7)} ms`
    console.log(`${String(routes).padStart(6)} | ${bare.toFixed(1).padStart(9)} | ${plugin.toFixed(1).padStart(9)} | ${policies.toFixed(1).padStart(11)} | ` +
      `${per1000(plugin - bare).padEnd(23)} | ${per1000(policies - plugin).padEnd(27)} | ${per1000(median(checks)).padEnd(20)} | ${(policies / bare).toFixed(2)}×`)
  }
}

const at = process.argv.indexOf('--worker')
if (at === -1) {
  main()
} else {
  worker(process.argv[at + 1] as Kind, Number(process.argv[at + 2]), Number(process.argv[at + 3])).catch((error: unknown) => {
    console.error(error)
    process.exit(1)
  })
}
