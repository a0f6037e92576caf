/**
 * `npm run soak`: this plugin's server (its own process, on 127.0.0.1) under steady mixed load for about
 * 100 s while the Access emulator goes through a key rotation, an outage, a slow endpoint (3 s per
 * answer), an HTML error page, and recovery. Reports, per class of request: how many, how many valid ones
 * were lost, how many invalid ones were admitted, 5xx answers, fetches of the key endpoint, and the
 * server's heap and RSS at the start and the end. Writes bench/soak-results.json.
 */
import { spawn } from 'node:child_process'
import { generateKeyPairSync, randomBytes } from 'node:crypto'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { createAccessEmulator } from '../lib/testing'

type Klass = 'session' | 'unique' | 'rotated-in' | 'invalid'
interface Tally { sent: number, ok: number, unauthorized: number, other4xx: number, fiveXx: number, failed: number }
interface Phase { name: string, seconds: number, enter: () => void | Promise<unknown> }

const CONCURRENCY = 8

async function main (): Promise<void> {
  const started = Date.now()
  const access = await createAccessEmulator()
  const dir = mkdtempSync(join(tmpdir(), 'cf-access-soak-'))
  const configPath = join(dir, 'config.json')
  writeFileSync(configPath, JSON.stringify({ teamDomain: access.teamDomain, audience: access.audience, certsUrl: access.certsUrl }))
  const server = spawn(process.execPath, ['--expose-gc', join(__dirname, 'server.js'), 'ours', configPath], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, BENCH_REFRESH_INTERVAL: '3000' }
  })
  const { port } = JSON.parse(await new Promise<string>((resolve) => createInterface({ input: server.stdout as NodeJS.ReadableStream }).once('line', resolve))) as { port: number }
  const url = `http://127.0.0.1:${port}`
  const stats = async (): Promise<{ heap: number, rss: number }> => await (await fetch(`${url}/__stats?gc`)).json() as { heap: number, rss: number }

  // Token pools: a session's token, unique tokens, and invalid ones of every kind.
  const attacker = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey
  const session = access.signToken({ email: 'session@acme.com' })
  const unique = Array.from({ length: 2000 }, (_, i) => access.signToken({ email: `user${i}@acme.com` }))
  const invalid = [
    ...Array.from({ length: 100 }, () => `${randomBytes(30).toString('base64url')}.${randomBytes(90).toString('base64url')}.${randomBytes(256).toString('base64url')}`),
    ...Array.from({ length: 100 }, () => access.signToken({}, { key: attacker, kid: randomBytes(32).toString('hex') })),
    ...Array.from({ length: 100 }, () => access.signToken({}, { key: attacker })),
    ...Array.from({ length: 50 }, () => access.signToken({ aud: [randomBytes(32).toString('hex')] })),
    ...Array.from({ length: 50 }, () => access.signToken({ exp: Math.floor(Date.now() / 1000) - 60 }))
  ]
  let rotatedIn: string[] = []
  let rotatedAt = 0
  let rotatedInPickedUpMs: number | null = null

  const tallies: Record<Klass, Tally> = {
    session: { sent: 0, ok: 0, unauthorized: 0, other4xx: 0, fiveXx: 0, failed: 0 },
    unique: { sent: 0, ok: 0, unauthorized: 0, other4xx: 0, fiveXx: 0, failed: 0 },
    'rotated-in': { sent: 0, ok: 0, unauthorized: 0, other4xx: 0, fiveXx: 0, failed: 0 },
    invalid: { sent: 0, ok: 0, unauthorized: 0, other4xx: 0, fiveXx: 0, failed: 0 }
  }
  const phaseLog: Array<{ phase: string, tallies: Record<string, Tally> }> = []
  let phaseTallies: Record<string, Tally> = {}

  function pick (n: number): [Klass, string] {
    const roll = n % 10
    if (roll < 4) return ['session', session]
    if (roll < 6 && rotatedIn.length > 0) return ['rotated-in', rotatedIn[n % rotatedIn.length] as string]
    if (roll < 7) return ['unique', unique[n % unique.length] as string]
    return ['invalid', invalid[n % invalid.length] as string]
  }

  function count (klass: Klass, status: number): void {
    for (const tally of [tallies[klass], (phaseTallies[klass] ??= { sent: 0, ok: 0, unauthorized: 0, other4xx: 0, fiveXx: 0, failed: 0 })]) {
      tally.sent++
      if (status === 200) tally.ok++
      else if (status === 401) tally.unauthorized++
      else if (status >= 500) tally.fiveXx++
      else if (status >= 400) tally.other4xx++
      else tally.failed++
    }
    if (klass === 'rotated-in' && status === 200 && rotatedInPickedUpMs === null) rotatedInPickedUpMs = Date.now() - rotatedAt
  }

  const state = { running: true }
  let n = 0
  async function worker (): Promise<void> {
    while (state.running) {
      const [klass, token] = pick(n++)
      try {
        const res = await fetch(`${url}/admin`, { headers: { 'cf-access-jwt-assertion': token }, signal: AbortSignal.timeout(10_000) })
        await res.arrayBuffer()
        count(klass, res.status)
      } catch {
        count(klass, 0)
      }
    }
  }

  const phases: Phase[] = [
    { name: 'steady', seconds: 15, enter: () => {} },
    {
      name: 'key rotation',
      seconds: 15,
      enter: async () => {
        await access.rotateKeys()
        rotatedAt = Date.now()
        rotatedIn = Array.from({ length: 200 }, (_, i) => access.signToken({ email: `new${i}@acme.com` }))
      }
    },
    { name: 'endpoint outage (503 HTML)', seconds: 15, enter: () => access.setOutage(true) },
    { name: 'slow endpoint (3 s per answer)', seconds: 15, enter: () => { access.setOutage(false); access.setLatency(3000) } },
    { name: 'HTML error page with status 200', seconds: 15, enter: () => { access.setLatency(0); access.setOutage('html') } },
    { name: 'recovery', seconds: 15, enter: () => access.setOutage(false) }
  ]

  // Warm up with every token once (the verified-token cache fills), then measure from a collected heap.
  for (const token of [session, ...unique, ...invalid]) {
    await (await fetch(`${url}/admin`, { headers: { 'cf-access-jwt-assertion': token } })).arrayBuffer()
  }
  const before = await stats()
  const fetchesBefore = access.certsRequestCount
  const workers = Array.from({ length: CONCURRENCY }, () => worker())
  for (const phase of phases) {
    await phase.enter()
    phaseTallies = {}
    await new Promise((resolve) => setTimeout(resolve, phase.seconds * 1000))
    phaseLog.push({ phase: phase.name, tallies: phaseTallies })
    console.log(`${phase.name}: ${Object.entries(phaseTallies).map(([k, v]) => `${k} ${v.ok}/${v.sent} ok`).join(', ')}`)
  }
  state.running = false
  await Promise.all(workers)
  const after = await stats()
  const fetches = access.certsRequestCount - fetchesBefore
  server.kill()
  await access.close()

  const mib = (bytes: number): string => (bytes / 1024 / 1024).toFixed(1)
  const valid: Klass[] = ['session', 'unique']
  const report = {
    date: new Date().toISOString(),
    node: process.version,
    seconds: phases.reduce((sum, phase) => sum + phase.seconds, 0),
    tallies,
    phases: phaseLog,
    validLost: valid.reduce((sum, klass) => sum + tallies[klass].sent - tallies[klass].ok, 0),
    invalidAdmitted: tallies.invalid.ok,
    // With keys cached, a valid token never gets a 5xx; an unknown kid does while the endpoint fails (it
    // may be a key rotated in meanwhile: 503, "try again", rather than 401, "log in again").
    fiveXxCached: valid.reduce((sum, klass) => sum + tallies[klass].fiveXx, 0),
    fiveXxOther: tallies['rotated-in'].fiveXx + tallies.invalid.fiveXx,
    rotatedInFirstAcceptedAfterMs: rotatedInPickedUpMs,
    rotatedInRejected: tallies['rotated-in'].sent - tallies['rotated-in'].ok,
    keyFetches: fetches,
    heapMiB: { start: mib(before.heap), end: mib(after.heap) },
    rssMiB: { start: mib(before.rss), end: mib(after.rss) }
  }
  writeFileSync(join(__dirname, '..', '..', 'bench', 'soak-results.json'), JSON.stringify(report, null, 2) + '\n')
  console.log('')
  console.log(soakMarkdown(report))
  console.log(`\ntotal ${((Date.now() - started) / 1000).toFixed(0)} s; results in bench/soak-results.json`)
}

function soakMarkdown (r: {
  date: string,
  node: string,
  seconds: number,
  tallies: Record<string, Tally>,
  validLost: number,
  invalidAdmitted: number,
  fiveXxCached: number,
  fiveXxOther: number,
  rotatedInFirstAcceptedAfterMs: number | null,
  rotatedInRejected: number,
  keyFetches: number,
  heapMiB: { start: string, end: string },
  rssMiB: { start: string, end: string }
}): string {
  const lines = [
    `${r.date.slice(0, 10)} · Node ${r.node} · ${r.seconds} s: steady, key rotation, outage, slow endpoint, HTML error page, recovery`,
    '',
    '| class | requests | 200 | 401 | other 4xx | 5xx | failed |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: |'
  ]
  for (const [klass, t] of Object.entries(r.tallies)) {
    lines.push(`| ${klass} | ${t.sent} | ${t.ok} | ${t.unauthorized} | ${t.other4xx} | ${t.fiveXx} | ${t.failed} |`)
  }
  lines.push(
    '',
    '| measure | value | target |',
    '| --- | ---: | --- |',
    `| valid requests lost (session + unique tokens, keys cached) | ${r.validLost} | 0 |`,
    `| invalid requests admitted | ${r.invalidAdmitted} | 0 |`,
    `| 5xx answers to tokens whose key is cached | ${r.fiveXxCached} | 0 (warm start) |`,
    `| 503 answers to unknown kids while the endpoint fails | ${r.fiveXxOther} | any (by design) |`,
    `| rotated-in key: first accepted after | ${r.rotatedInFirstAcceptedAfterMs ?? 'never'} ms | seconds |`,
    `| rotated-in key: requests refused before it was fetched | ${r.rotatedInRejected} | few |`,
    `| fetches of the key endpoint | ${r.keyFetches} | bounded |`,
    `| heap after GC, start → end | ${r.heapMiB.start} → ${r.heapMiB.end} MiB | flat |`,
    `| RSS, start → end | ${r.rssMiB.start} → ${r.rssMiB.end} MiB | flat |`
  )
  return lines.join('\n')
}

if (require.main === module) {
  main().catch((error: unknown) => { console.error(error); process.exit(1) })
}
