/**
 * `npm run bench`: this plugin beside the alternatives, each server in its own process on 127.0.0.1, the
 * load generator (autocannon) in another, servers interleaved in rounds so that drift hits all alike.
 * Reports req/s, p50/p99 latency and the server's own CPU per request, each as a ratio to the bare route
 * measured in the same round. Writes bench/results.json and prints a Markdown table.
 *
 *   npm run bench                      the full run (about 4 minutes on 2 cores)
 *   npm run bench -- --quick           one short round, to try the harness
 *   npm run bench -- --servers bare,ours --workloads a,d    a subset (while optimising)
 *   BENCH_CACHE_SIZE=0 npm run bench -- …                  this plugin with another cacheSize
 *
 * @hono/cloudflare-access is not among the servers: it builds its certs URL and issuer from the team name
 * as https://<team>.cloudflareaccess.com, so it cannot be pointed at a loopback emulator without changing
 * its code.
 */
import { fork, spawn, type ChildProcess } from 'node:child_process'
import { generateKeyPairSync, randomBytes } from 'node:crypto'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { cpus, tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { createAccessEmulator, type AccessEmulator } from '../lib/testing'
import type { LoadRequest, LoadResult } from './load'
import { SERVER_KINDS, type BenchConfig, type ServerKind } from './server'

const quick = process.argv.includes('--quick')
function listArgument (name: string): string[] | undefined {
  const index = process.argv.indexOf(name)
  return index === -1 ? undefined : (process.argv[index + 1] ?? '').split(',')
}
const onlyServers = listArgument('--servers')
const onlyWorkloads = listArgument('--workloads')
const ROUNDS = quick ? 1 : 3
const DURATION = quick ? 1 : 3
const CONNECTIONS = 16
const UNIQUE_TOKENS = 10_000

interface Workload { id: 'a' | 'b' | 'c' | 'd', name: string, pool: number }
const ALL_WORKLOADS: Workload[] = [
  { id: 'a', name: '(a) one token repeated', pool: 0 },
  { id: 'b', name: `(b) unique tokens (${UNIQUE_TOKENS} cycled)`, pool: 1 },
  { id: 'c', name: '(c) invalid tokens', pool: 2 },
  { id: 'd', name: '(d) no token', pool: -1 }
]
const WORKLOADS = ALL_WORKLOADS.filter((workload) => onlyWorkloads?.includes(workload.id) ?? true)

interface Server { kind: ServerKind, process: ChildProcess, url: string }
interface Sample { rps: number, p50: number, p99: number, cpuPerRequest: number, requests: number, non2xx: number }

function mintPools (access: AccessEmulator): string[][] {
  const started = Date.now()
  const attacker = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey
  const unique: string[] = []
  for (let i = 0; i < UNIQUE_TOKENS; i++) unique.push(access.signToken({ email: `user${i}@acme.com` }))
  const invalid: string[] = []
  for (let i = 0; i < 300; i++) {
    invalid.push(`${randomBytes(24).toString('base64url')}.${randomBytes(200).toString('base64url')}.${randomBytes(256).toString('base64url')}`)
    invalid.push(access.signToken({}, { key: attacker, kid: randomBytes(32).toString('hex') }))
    invalid.push(access.signToken({ aud: [randomBytes(32).toString('hex')] }))
  }
  console.log(`minted ${unique.length + invalid.length + 1} tokens in ${((Date.now() - started) / 1000).toFixed(1)} s`)
  return [[access.signToken()], unique, invalid]
}

async function startServer (kind: ServerKind, configPath: string): Promise<Server> {
  const child = spawn(process.execPath, [join(__dirname, 'server.js'), kind, configPath], { stdio: ['ignore', 'pipe', 'inherit'] })
  const line = await new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout as NodeJS.ReadableStream }).once('line', resolve)
    child.once('exit', (code) => reject(new Error(`${kind} server exited with ${code}`)))
  })
  const { port } = JSON.parse(line) as { port: number }
  return { kind, process: child, url: `http://127.0.0.1:${port}` }
}

async function stats (server: Server): Promise<{ cpu: number, served: number, heap: number }> {
  return await (await fetch(`${server.url}/__stats`)).json() as { cpu: number, served: number, heap: number }
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
      else resolve(message)
    })
    generator.send(request)
  })
}

async function measure (generator: ChildProcess, server: Server, workload: Workload, duration: number): Promise<Sample> {
  const before = await stats(server)
  const result = await load(generator, { url: `${server.url}/admin`, pool: workload.pool, duration, connections: CONNECTIONS })
  const after = await stats(server)
  const served = after.served - before.served
  const ok = result.statuses['200'] ?? 0
  return {
    rps: result.rps,
    p50: result.p50,
    p99: result.p99,
    cpuPerRequest: (after.cpu - before.cpu) / served,
    requests: served,
    non2xx: served - ok
  }
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

async function main (): Promise<void> {
  const started = Date.now()
  const access = await createAccessEmulator()
  const dir = mkdtempSync(join(tmpdir(), 'cf-access-bench-'))
  const configPath = join(dir, 'config.json')
  const config: BenchConfig = { teamDomain: access.teamDomain, audience: access.audience, certsUrl: access.certsUrl }
  writeFileSync(configPath, JSON.stringify(config))
  const poolsPath = join(dir, 'pools.json')
  writeFileSync(poolsPath, JSON.stringify(mintPools(access)))

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

  // Warm-up: JIT, key sets, caches.
  for (const server of servers) {
    for (const workload of WORKLOADS) await measure(generator, server, workload, 1)
  }

  const samples: Record<string, Record<string, Sample[]>> = {}
  const ratios: Record<string, Record<string, { cpu: number[], rps: number[] }>> = {}
  for (let round = 1; round <= ROUNDS; round++) {
    for (const workload of WORKLOADS) {
      const round: Record<string, Sample> = {}
      for (const server of shuffle(servers)) {
        round[server.kind] = await measure(generator, server, workload, DURATION)
      }
      const bare = round.bare as Sample
      for (const [kind, sample] of Object.entries(round)) {
        ((samples[workload.id] ??= {})[kind] ??= []).push(sample)
        const ratio = ((ratios[workload.id] ??= {})[kind] ??= { cpu: [], rps: [] })
        ratio.cpu.push(bare.cpuPerRequest / sample.cpuPerRequest)
        ratio.rps.push(sample.rps / bare.rps)
      }
    }
    console.log(`round ${round}/${ROUNDS} done (${((Date.now() - started) / 1000).toFixed(0)} s)`)
  }

  generator.kill()
  for (const server of servers) server.process.kill()
  await access.close()

  const report = {
    date: new Date().toISOString(),
    node: process.version,
    cores: cpus().length,
    cpu: cpus()[0]?.model,
    rounds: ROUNDS,
    durationSeconds: DURATION,
    connections: CONNECTIONS,
    excluded,
    workloads: WORKLOADS.map((workload) => ({
      id: workload.id,
      name: workload.name,
      servers: Object.fromEntries(servers.map(({ kind }) => {
        const list = samples[workload.id]?.[kind] as Sample[]
        const ratio = ratios[workload.id]?.[kind] as { cpu: number[], rps: number[] }
        return [kind, {
          cpuRatio: median(ratio.cpu),
          rpsRatio: median(ratio.rps),
          rps: median(list.map((s) => s.rps)),
          p50: median(list.map((s) => s.p50)),
          p99: median(list.map((s) => s.p99)),
          cpuPerRequestUs: median(list.map((s) => s.cpuPerRequest)),
          non2xxShare: median(list.map((s) => s.non2xx / s.requests))
        }]
      }))
    }))
  }
  const complete = onlyServers === undefined && onlyWorkloads === undefined && !quick
  if (complete) writeFileSync(join(__dirname, '..', '..', 'bench', 'results.json'), JSON.stringify(report, null, 2) + '\n')
  console.log('')
  console.log(markdown(report))
  console.log(`\ntotal ${((Date.now() - started) / 1000).toFixed(0)} s${complete ? '; results in bench/results.json' : ' (a partial run: bench/results.json left as it was)'}`)
}

type Report = { date: string, node: string, cores: number, cpu: string | undefined, rounds: number, durationSeconds: number, connections: number, workloads: Array<{ id: string, name: string, servers: Record<string, { cpuRatio: number, rpsRatio: number, rps: number, p50: number, p99: number, cpuPerRequestUs: number }> }> }

const TARGETS: Record<string, number> = { a: 0.9, b: 0.5, c: 0.8, d: 0.9 }

/** The README table: CPU-normalised ratio first (the one that survives a noisy machine). */
export function markdown (report: Report): string {
  const lines = [
    `${report.date.slice(0, 10)} · Node ${report.node} · ${report.cores} cores (${report.cpu ?? 'unknown CPU'}) · ${report.rounds} rounds × ${report.durationSeconds} s × ${report.connections} connections`,
    '',
    '| workload | server | CPU ratio | req/s ratio | req/s | p50 ms | p99 ms | CPU µs/req |',
    '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |'
  ]
  for (const workload of report.workloads) {
    for (const [kind, s] of Object.entries(workload.servers)) {
      const mark = kind === 'ours' ? (s.cpuRatio >= (TARGETS[workload.id] as number) ? ' ✓' : ' ✗') : ''
      lines.push(`| ${workload.name} | ${kind === 'ours' ? '**this plugin**' : kind} | ${s.cpuRatio.toFixed(2)}${mark} | ${s.rpsRatio.toFixed(2)} | ${Math.round(s.rps)} | ${s.p50} | ${s.p99} | ${s.cpuPerRequestUs.toFixed(1)} |`)
    }
  }
  const b = report.workloads.find((w) => w.id === 'b')?.servers
  if (b?.ours !== undefined && b.raw !== undefined && b.bare !== undefined) {
    const added = b.ours.cpuPerRequestUs - b.bare.cpuPerRequestUs
    const floor = b.raw.cpuPerRequestUs - b.bare.cpuPerRequestUs
    lines.push('', `(b) added CPU per request: this plugin ${added.toFixed(1)} µs, raw crypto.verify ${floor.toFixed(1)} µs → ${(added / floor).toFixed(2)}× (target ≤ 1.3×)`)
  }
  return lines.join('\n')
}

if (require.main === module) {
  main().catch((error: unknown) => { console.error(error); process.exit(1) })
}
