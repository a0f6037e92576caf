/**
 * `npm run bench:profile [-- --workload b --server ours --seconds 10 --top 25]`: one benchmark server
 * (this plugin's by default) under one workload of `npm run bench`, run with `node --cpu-prof`; prints
 * the profile's top entries by self time and by total time (shares of the busy samples, idle excluded),
 * for the whole server and, for this plugin, inside its hook; leaves the .cpuprofile in bench/results/
 * (git-ignored) for Chrome DevTools.
 */
import { fork, spawn } from 'node:child_process'
import { generateKeyPairSync, type KeyObject } from 'node:crypto'
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { basename, join } from 'node:path'
import { createInterface } from 'node:readline'
import { createAccessEmulator } from '../lib/testing'
import type { LoadRequest, LoadResult } from './load'
import { mintPools, WORKLOADS_BY_ID, type WorkloadId } from './pools'
import { SERVER_KINDS, type BenchConfig, type ServerKind } from './server'

/** The plugin's per-request entry point, as the profile names it. */
const HOOK = 'authenticate lib/plugin.js'

function argument (name: string, fallback: string): string {
  const index = process.argv.indexOf(name)
  return index === -1 ? fallback : (process.argv[index + 1] ?? fallback)
}

interface ProfileNode {
  id: number
  callFrame: { functionName: string, url: string, lineNumber: number }
  hitCount?: number
  children?: number[]
}

/** `name file:line` of a profile node: what the tables list. */
function frameName ({ callFrame }: ProfileNode): string {
  const { functionName, url, lineNumber } = callFrame
  if (url === '') return functionName === '' ? '(anonymous)' : functionName
  const file = url.replace(/^file:\/\//, '').replace(/^.*\/node_modules\//, '').replace(/^.*\/dist\//, '')
  return `${functionName === '' ? '(anonymous)' : functionName} ${file}:${lineNumber + 1}`
}

export interface ProfileSummary {
  samples: number
  self: Array<[string, number]>
  total: Array<[string, number]>
}

/**
 * Self and total (inclusive) shares of the busy samples (idle excluded), by function. Total counts a
 * function once per stack, however deep it recurses. With `focus`, only the samples under a frame whose
 * name starts with it count (the plugin's hook, say), and shares are of those.
 */
export function summarize (profile: { nodes: ProfileNode[] }, top: number, focus?: string): ProfileSummary {
  const byId = new Map(profile.nodes.map((node) => [node.id, node]))
  const self = new Map<string, number>()
  const total = new Map<string, number>()
  let busy = 0
  const root = profile.nodes[0] as ProfileNode
  // Inclusive hits per node, then credited to each distinct function on the way down.
  const inclusive = new Map<number, number>()
  const count = (node: ProfileNode): number => {
    let hits = node.hitCount ?? 0
    for (const child of node.children ?? []) hits += count(byId.get(child) as ProfileNode)
    inclusive.set(node.id, hits)
    return hits
  }
  count(root)
  const walk = (node: ProfileNode, active: Set<string>, inside: boolean): void => {
    const name = frameName(node)
    if (name === '(idle)') return
    if (!inside && focus !== undefined && !name.startsWith(focus)) {
      for (const child of node.children ?? []) walk(byId.get(child) as ProfileNode, active, false)
      return
    }
    const hits = node.hitCount ?? 0
    busy += hits
    self.set(name, (self.get(name) ?? 0) + hits)
    const entered = !active.has(name)
    if (entered) {
      total.set(name, (total.get(name) ?? 0) + (inclusive.get(node.id) as number))
      active.add(name)
    }
    for (const child of node.children ?? []) walk(byId.get(child) as ProfileNode, active, true)
    if (entered) active.delete(name)
  }
  for (const child of root.children ?? []) walk(byId.get(child) as ProfileNode, new Set(), focus === undefined)
  const ranked = (map: Map<string, number>): Array<[string, number]> =>
    [...map].sort((a, b) => b[1] - a[1]).slice(0, top).map(([name, hits]) => [name, hits / busy])
  return { samples: busy, self: ranked(self), total: ranked(total) }
}

export function formatSummary (summary: ProfileSummary, title: string): string {
  const table = (title: string, rows: Array<[string, number]>): string[] =>
    [title, ...rows.map(([name, share]) => `${(share * 100).toFixed(1).padStart(5)} %  ${name}`)]
  return [
    `${title}: ${summary.samples} samples`,
    '',
    ...table('self time', summary.self),
    '',
    ...table('total time', summary.total)
  ].join('\n')
}

async function main (): Promise<void> {
  const workload = WORKLOADS_BY_ID[argument('--workload', 'b') as WorkloadId]
  if (workload === undefined) throw new Error(`--workload: one of ${Object.keys(WORKLOADS_BY_ID).join(', ')}`)
  const kind = argument('--server', 'ours') as ServerKind
  if (!SERVER_KINDS.includes(kind)) throw new Error(`--server: one of ${SERVER_KINDS.join(', ')}`)
  const seconds = Number(argument('--seconds', '10'))
  const top = Number(argument('--top', '25'))
  const keys: [KeyObject, KeyObject] = [generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey, generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey]
  const access = await createAccessEmulator({ privateKeys: keys })
  const dir = mkdtempSync(join(tmpdir(), 'cf-access-profile-'))
  const configPath = join(dir, 'config.json')
  const config: BenchConfig = { teamDomain: access.teamDomain, audience: access.audience, certsUrl: access.certsUrl }
  writeFileSync(configPath, JSON.stringify(config))
  const poolsPath = join(dir, 'pools.json')
  writeFileSync(poolsPath, JSON.stringify(await mintPools(access, keys[0].export({ type: 'pkcs8', format: 'pem' }) as string, [workload], workload.mix === undefined ? 0 : seconds * 15_000)))

  const out = join(__dirname, '..', '..', 'bench', 'results')
  mkdirSync(out, { recursive: true })
  const before = new Set(readdirSync(out))
  const server = spawn(process.execPath, ['--cpu-prof', '--cpu-prof-interval', '250', '--cpu-prof-dir', out, join(__dirname, 'server.js'), kind, configPath], { stdio: ['ignore', 'pipe', 'inherit'] })
  const { port } = JSON.parse(await new Promise<string>((resolve) => createInterface({ input: server.stdout as NodeJS.ReadableStream }).once('line', resolve))) as { port: number }
  const generator = fork(join(__dirname, 'load.js'), [poolsPath], { stdio: 'inherit' })
  await new Promise((resolve) => generator.once('message', resolve))
  const run = (request: LoadRequest): Promise<LoadResult> => new Promise((resolve) => {
    generator.once('message', resolve)
    generator.send(request)
  })
  const result = await run({ url: `http://127.0.0.1:${port}/admin`, server: kind, workload: workload.id, duration: seconds, connections: 16 })
  generator.kill()
  await new Promise((resolve) => { server.once('exit', resolve); server.kill('SIGTERM') })
  await access.close()

  const file = readdirSync(out).find((name) => name.endsWith('.cpuprofile') && !before.has(name))
  if (file === undefined) throw new Error('the server wrote no profile')
  console.log(`${kind}, ${workload.name}: ${result.requests} requests in ${seconds} s (${JSON.stringify(result.statuses)}); profile bench/results/${basename(file)}\n`)
  const profile = JSON.parse(readFileSync(join(out, file), 'utf8')) as { nodes: ProfileNode[], startTime: number, endTime: number, samples: number[] }
  const all = summarize(profile, top)
  const interval = (profile.endTime - profile.startTime) / profile.samples.length
  console.log(formatSummary(all, `the whole server (busy samples, ${(all.samples * interval / result.requests).toFixed(1)} µs per request)`))
  if (kind === 'ours') {
    const hook = summarize(profile, top, HOOK)
    console.log(`\nthe plugin's hook: ${(hook.samples / all.samples * 100).toFixed(1)} % of the busy samples\n`)
    console.log(formatSummary(hook, 'inside the plugin\'s hook'))
  }
}

if (require.main === module) {
  main().catch((error: unknown) => { console.error(error); process.exit(1) })
}
