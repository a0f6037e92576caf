/**
 * `npm run bench`: this plugin beside the alternatives, each server in its own process on 127.0.0.1, the
 * load generator (autocannon) in another, servers interleaved in rounds so that drift hits all alike.
 * Reports req/s, p50/p99 latency and the server's own CPU per request, each as a ratio to the bare route
 * measured in the same round; for this plugin, the verified-token cache's hit ratio (from its own
 * counters); and (b)'s added CPU per request over the raw crypto.verify hook's, round by round. Writes
 * bench/results.json (a complete run only) and prints a Markdown table.
 *
 *   npm run bench                      3 rounds (under 5 minutes on 2 cores); (e) and (f) on bare, ours, raw
 *   npm run bench -- --full            5 rounds, every server in every workload: the docs' table
 *   npm run bench -- --quick           one short round, to try the harness
 *   npm run bench -- --servers bare,ours,raw --workloads b,f    a subset (while optimising)
 *   npm run bench -- --rounds 10 …                            more rounds (a partial run, unless --full)
 *   BENCH_CACHE_SIZE=0 npm run bench -- …                      this plugin with another cacheSize
 *
 * @hono/cloudflare-access is not among the servers: it builds its certs URL and issuer from the team name
 * as https://<team>.cloudflareaccess.com, so it cannot be pointed at a loopback emulator without changing
 * its code.
 */
import { fork, spawn, type ChildProcess } from 'node:child_process'
import { generateKeyPairSync, type KeyObject } from 'node:crypto'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { cpus, tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { createAccessEmulator, type AccessEmulator } from '../lib/testing'
import type { LoadRequest, LoadResult } from './load'
import { mintPools, WORKLOADS as ALL_WORKLOADS, type Workload } from './pools'
import { SERVER_KINDS, type BenchConfig, type CacheCounters, type ServerKind } from './server'

const quick = process.argv.includes('--quick')
const full = process.argv.includes('--full')
function listArgument (name: string): string[] | undefined {
  const index = process.argv.indexOf(name)
  return index === -1 ? undefined : (process.argv[index + 1] ?? '').split(',')
}
const onlyServers = listArgument('--servers')
const onlyWorkloads = listArgument('--workloads')
const ROUNDS = Number(listArgument('--rounds')?.[0] ?? (quick ? 1 : full ? 5 : 3))
/** Seconds per measurement of (a)–(d). */
const DURATION = quick ? 1 : full ? 4 : 2
/** Requests per measurement of (e) and (f), which spend fresh tokens. */
const AMOUNT = quick ? 5_000 : full ? 15_000 : 10_000
const CONNECTIONS = 16
/**
 * Who runs what outside --full: (e) and (f) ask this plugin's cache, so bare and raw frame it; the
 * fast-jwt hook (raw with fast-jwt in place of crypto.verify) answers one question, (b)'s: how much of
 * the cold path is fast-jwt's own. --full runs every server in every workload.
 */
function runs (kind: ServerKind, workload: Workload): boolean {
  if (full || kind === 'bare' || kind === 'ours' || kind === 'raw') return true
  return kind === 'fast-jwt' ? workload.id === 'b' : workload.mix === undefined
}

const WORKLOADS = ALL_WORKLOADS.filter((workload) => onlyWorkloads?.includes(workload.id) ?? true)

/** Requests that show every recurring token of a mix twice before any measurement (see `measure`). */
function warmUpAmount ({ share, recurring }: { share: number, recurring: number }): number {
  return Math.ceil((2 * recurring + 2 * CONNECTIONS) / share)
}

interface Server { kind: ServerKind, process: ChildProcess, url: string }
interface Sample {
  rps: number
  p50: number
  p99: number
  cpuPerRequest: number
  requests: number
  non2xx: number
  /** This plugin only: cache hits during the measurement, and the requests they are counted against. */
  hits?: number
  lookups?: number
}
interface Stats { cpu: number, served: number, heap: number, cache?: CacheCounters }

async function startServer (kind: ServerKind, configPath: string): Promise<Server> {
  const child = spawn(process.execPath, [join(__dirname, 'server.js'), kind, configPath], { stdio: ['ignore', 'pipe', 'inherit'] })
  const line = await new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout as NodeJS.ReadableStream }).once('line', resolve)
    child.once('exit', (code) => reject(new Error(`${kind} server exited with ${code}`)))
  })
  const { port } = JSON.parse(line) as { port: number }
  return { kind, process: child, url: `http://127.0.0.1:${port}` }
}

async function stats (server: Server): Promise<Stats> {
  return await (await fetch(`${server.url}/__stats`)).json() as Stats
}

async function status (server: Server, token?: string): Promise<number> {
  const res = await fetch(`${server.url}/admin`, { headers: token === undefined ? {} : { 'cf-access-jwt-assertion': token } })
  await res.arrayBuffer()
  return res.status
}

/** Valid → 200; forged, expired, wrong audience, none → 401. A server that fails is excluded. */
async function sane (server: Server, access: AccessEmulator): Promise<string | null> {
  if (server.kind === 'bare') return (await status(server)) === 200 ? null : 'bare route does not answer 200'
  const attacker = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey
  const checks: Array<[string, string | undefined, number]> = [
    ['valid', access.signToken(), 200],
    ['forged (attacker key under a real kid)', access.signToken({}, { key: attacker }), 401],
    ['expired', access.signToken({ exp: Math.floor(Date.now() / 1000) - 3600 }), 401],
    ['wrong audience', access.signToken({ aud: ['f'.repeat(64)] }), 401],
    ['wrong issuer', access.signToken({ iss: 'https://evil.cloudflareaccess.com' }), 401],
    ['no token', undefined, 401]
  ]
  for (const [name, token, expected] of checks) {
    const got = await status(server, token)
    if (got !== expected) return `${name}: expected ${expected}, got ${got}`
  }
  return null
}

function load (generator: ChildProcess, request: LoadRequest): Promise<LoadResult> {
  return new Promise((resolve, reject) => {
    generator.once('message', (message: LoadResult & { error?: string }) => {
      if (message.error !== undefined) reject(new Error(message.error))
      else if (message.exhausted > 0) reject(new Error(`${request.server} ${request.workload}: ran out of fresh tokens`))
      else resolve(message)
    })
    generator.send(request)
  })
}

/**
 * One measurement. The hit ratio is counted by the plugin's own cache counters: (e) and (f) count hits
 * against the requests that carried a recurring token (fresh tokens cannot hit, and the warm-up has shown
 * every recurring token twice: first sightings are excluded); the others against every lookup.
 */
async function measure (generator: ChildProcess, server: Server, workload: Workload, size: { duration?: number, amount?: number }): Promise<Sample> {
  const before = await stats(server)
  const result = await load(generator, { url: `${server.url}/admin`, server: server.kind, workload: workload.id, connections: CONNECTIONS, ...size })
  const after = await stats(server)
  const served = after.served - before.served
  const ok = result.statuses['200'] ?? 0
  const sample: Sample = {
    // autocannon ends a run of a given number of requests on a whole second: no req/s for those
    rps: size.amount === undefined ? result.rps : NaN,
    p50: result.p50,
    p99: result.p99,
    cpuPerRequest: (after.cpu - before.cpu) / served,
    requests: served,
    non2xx: served - ok
  }
  if (after.cache !== undefined && before.cache !== undefined) {
    sample.hits = after.cache.hits - before.cache.hits
    sample.lookups = workload.mix === undefined ? sample.hits + after.cache.misses - before.cache.misses : result.recurring
  }
  return sample
}

function median (values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  const middle = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[middle] as number : ((sorted[middle - 1] as number) + (sorted[middle] as number)) / 2
}

function shuffle<T> (list: T[]): T[] {
  const copy = [...list]
  for (let i = copy.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1))
    ;[copy[i], copy[j]] = [copy[j] as T, copy[i] as T]
  }
  return copy
}

function serversOf (workload: Workload, servers: Server[]): Server[] {
  return servers.filter((server) => runs(server.kind, workload))
}

/** Fresh tokens a server spends at most: the warm-ups, then every round of (e) and (f). */
function freshNeeded (workloads: readonly Workload[]): number {
  let total = 0
  for (const { mix } of workloads) {
    if (mix === undefined) continue
    total += Math.ceil((warmUpAmount(mix) + ROUNDS * AMOUNT + 4 * CONNECTIONS) * (1 - mix.share))
  }
  return total
}

async function main (): Promise<void> {
  const started = Date.now()
  const keys: [KeyObject, KeyObject] = [generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey, generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey]
  const access = await createAccessEmulator({ privateKeys: keys })
  const dir = mkdtempSync(join(tmpdir(), 'cf-access-bench-'))
  const configPath = join(dir, 'config.json')
  const config: BenchConfig = { teamDomain: access.teamDomain, audience: access.audience, certsUrl: access.certsUrl }
  writeFileSync(configPath, JSON.stringify(config))
  const poolsPath = join(dir, 'pools.json')
  const pem = keys[0].export({ type: 'pkcs8', format: 'pem' }) as string
  writeFileSync(poolsPath, JSON.stringify(await mintPools(access, pem, WORKLOADS, freshNeeded(WORKLOADS))))

  const servers: Server[] = []
  const excluded: Record<string, string> = {}
  for (const kind of SERVER_KINDS.filter((name) => name === 'bare' || (onlyServers?.includes(name) ?? true))) {
    const server = await startServer(kind, configPath)
    const problem = await sane(server, access)
    if (problem === null) {
      servers.push(server)
    } else {
      excluded[kind] = problem
      console.log(`excluded ${kind}: ${problem}`)
      server.process.kill()
    }
  }
  const generator = fork(join(__dirname, 'load.js'), [poolsPath], { stdio: 'inherit' })
  await new Promise((resolve) => generator.once('message', resolve))

  // Warm-up: JIT, key sets, caches; for (e) and (f), every recurring token seen twice.
  for (const workload of WORKLOADS) {
    for (const server of serversOf(workload, servers)) {
      await measure(generator, server, workload, workload.mix === undefined ? { duration: 1 } : { amount: warmUpAmount(workload.mix) })
    }
  }

  const samples: Record<string, Record<string, Sample[]>> = {}
  const ratios: Record<string, Record<string, { cpu: number[], rps: number[] }>> = {}
  /** (b), round by round: CPU per request above the bare route's, over raw's (this plugin; the fast-jwt hook). */
  const added: Record<'ours' | 'fast-jwt', number[]> = { ours: [], 'fast-jwt': [] }
  for (let round = 1; round <= ROUNDS; round++) {
    for (const workload of WORKLOADS) {
      const round: Record<string, Sample> = {}
      for (const server of shuffle(serversOf(workload, servers))) {
        round[server.kind] = await measure(generator, server, workload, workload.mix === undefined ? { duration: DURATION } : { amount: AMOUNT })
      }
      const bare = round.bare as Sample
      for (const [kind, sample] of Object.entries(round)) {
        ((samples[workload.id] ??= {})[kind] ??= []).push(sample)
        const ratio = ((ratios[workload.id] ??= {})[kind] ??= { cpu: [], rps: [] })
        ratio.cpu.push(bare.cpuPerRequest / sample.cpuPerRequest)
        ratio.rps.push(sample.rps / bare.rps)
      }
      const raw = round.raw
      if (workload.id === 'b' && raw !== undefined) {
        for (const kind of ['ours', 'fast-jwt'] as const) {
          const sample = round[kind]
          if (sample !== undefined) added[kind].push((sample.cpuPerRequest - bare.cpuPerRequest) / (raw.cpuPerRequest - bare.cpuPerRequest))
        }
      }
    }
    console.log(`round ${round}/${ROUNDS} done (${((Date.now() - started) / 1000).toFixed(0)} s)`)
  }

  generator.kill()
  for (const server of servers) server.process.kill()
  await access.close()

  const report: Report = {
    date: new Date().toISOString(),
    node: process.version,
    cores: cpus().length,
    cpu: cpus()[0]?.model,
    mode: full ? 'full' : quick ? 'quick' : 'default',
    rounds: ROUNDS,
    durationSeconds: DURATION,
    amount: AMOUNT,
    connections: CONNECTIONS,
    cacheSize: process.env.BENCH_CACHE_SIZE === undefined ? 'default' : Number(process.env.BENCH_CACHE_SIZE),
    excluded,
    addedOverRaw: Object.fromEntries(Object.entries(added).filter(([, list]) => list.length > 0).map(([kind, list]) => [kind, { median: median(list), min: Math.min(...list), max: Math.max(...list), rounds: list }])),
    workloads: WORKLOADS.map((workload) => ({
      id: workload.id,
      name: workload.name,
      servers: Object.fromEntries(serversOf(workload, servers).map(({ kind }) => {
        const list = samples[workload.id]?.[kind] as Sample[]
        const ratio = ratios[workload.id]?.[kind] as { cpu: number[], rps: number[] }
        const hits = list.reduce((sum, s) => sum + (s.hits ?? 0), 0)
        const lookups = list.reduce((sum, s) => sum + (s.lookups ?? 0), 0)
        return [kind, {
          cpuRatio: median(ratio.cpu),
          cpuRatioRange: [Math.min(...ratio.cpu), Math.max(...ratio.cpu)] as [number, number],
          rpsRatio: median(ratio.rps),
          rps: median(list.map((s) => s.rps)),
          p50: median(list.map((s) => s.p50)),
          p99: median(list.map((s) => s.p99)),
          cpuPerRequestUs: median(list.map((s) => s.cpuPerRequest)),
          non2xxShare: median(list.map((s) => s.non2xx / s.requests)),
          ...(lookups > 0 ? { hitRatio: hits / lookups, hits, lookups } : {})
        }]
      }))
    }))
  }
  const complete = onlyServers === undefined && onlyWorkloads === undefined && !quick && (full || !process.argv.includes('--rounds'))
  if (complete) writeFileSync(join(__dirname, '..', '..', 'bench', full ? 'results-full.json' : 'results.json'), JSON.stringify(report, null, 2) + '\n')
  console.log('')
  console.log(markdown(report))
  console.log(`\ntotal ${((Date.now() - started) / 1000).toFixed(0)} s${complete ? `; results in bench/${full ? 'results-full.json' : 'results.json'}` : ' (a partial run: no results file written)'}`)
}

interface ServerResult {
  cpuRatio: number
  cpuRatioRange: [number, number]
  rpsRatio: number
  rps: number
  p50: number
  p99: number
  cpuPerRequestUs: number
  non2xxShare: number
  hitRatio?: number
  hits?: number
  lookups?: number
}

interface Report {
  date: string
  node: string
  cores: number
  cpu: string | undefined
  mode: 'full' | 'quick' | 'default'
  rounds: number
  durationSeconds: number
  amount: number
  connections: number
  cacheSize: number | 'default'
  excluded: Record<string, string>
  /** (b): CPU per request above the bare route's, over the raw hook's, round by round, by server. */
  addedOverRaw: Record<string, { median: number, min: number, max: number, rounds: number[] }>
  workloads: Array<{ id: string, name: string, servers: Record<string, ServerResult> }>
}

/** Targets of this plugin: CPU ratio to the bare route for (a), (c), (d); hit ratio for (e), (f). */
const CPU_TARGETS: Record<string, number> = { a: 0.9, c: 0.8, d: 0.9 }
const HIT_TARGET = 0.99
const ADDED_TARGET = 1.1

function mark (ok: boolean): string {
  return ok ? ' ✓' : ' ✗'
}

/** The docs' table: CPU-normalised ratio first (the one that survives a noisy machine). */
export function markdown (report: Report): string {
  const lines = [
    `${report.date.slice(0, 10)} · Node ${report.node} · ${report.cores} cores (${report.cpu ?? 'unknown CPU'}) · ${report.rounds} rounds × (${report.durationSeconds} s, or ${report.amount} requests for (e) and (f): no req/s for those) × ${report.connections} connections · cacheSize ${report.cacheSize}`,
    '',
    '| workload | server | CPU ratio (min–max) | req/s ratio | req/s | p50 ms | p99 ms | CPU µs/req | cache hit ratio |',
    '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |'
  ]
  for (const workload of report.workloads) {
    for (const [kind, s] of Object.entries(workload.servers)) {
      const ours = kind === 'ours'
      const cpuTarget = CPU_TARGETS[workload.id]
      const cpuMark = ours && cpuTarget !== undefined ? mark(s.cpuRatio >= cpuTarget) : ''
      const mixed = workload.id === 'e' || workload.id === 'f'
      const hits = s.hitRatio === undefined ? '' : `${(s.hitRatio * 100).toFixed(2)} % (${s.hits}/${s.lookups})${mixed ? mark(s.hitRatio >= HIT_TARGET) : ''}`
      const range = `${s.cpuRatioRange[0].toFixed(2)}–${s.cpuRatioRange[1].toFixed(2)}`
      const rps = Number.isNaN(s.rps) ? '— | —' : `${s.rpsRatio.toFixed(2)} | ${Math.round(s.rps)}`
      lines.push(`| ${workload.name} | ${ours ? '**this plugin**' : kind} | ${s.cpuRatio.toFixed(2)}${cpuMark} (${range}) | ${rps} | ${s.p50} | ${s.p99} | ${s.cpuPerRequestUs.toFixed(1)} | ${hits} |`)
    }
  }
  const { ours, 'fast-jwt': fastJwt } = report.addedOverRaw
  if (ours !== undefined) {
    lines.push('', `(b) CPU per request above the bare route's, over the raw crypto.verify hook's (per round): this plugin ${ours.median.toFixed(2)}×${mark(ours.median <= ADDED_TARGET)} (target ≤ ${ADDED_TARGET.toFixed(2)}×; rounds ${ours.rounds.map((r) => r.toFixed(2)).join(', ')})`)
  }
  if (fastJwt !== undefined) {
    lines.push(`fast-jwt alone in the raw hook: ${fastJwt.median.toFixed(2)}× (rounds ${fastJwt.rounds.map((r) => r.toFixed(2)).join(', ')})`)
  }
  return lines.join('\n')
}

if (require.main === module) {
  main().catch((error: unknown) => { console.error(error); process.exit(1) })
}
