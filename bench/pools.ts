/**
 * The benchmark's workloads and their tokens: what each workload sends, and the token pools minted for
 * them before a run (fresh unique tokens signed by worker threads, since RSA signing is the slow part).
 */
import { generateKeyPairSync, randomBytes, randomUUID } from 'node:crypto'
import { availableParallelism } from 'node:os'
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads'
import { signJwt, type AccessEmulator } from '../lib/testing'

export type WorkloadId = 'a' | 'b' | 'c' | 'd' | 'e' | 'f'

export interface Workload {
  id: WorkloadId
  name: string
  /**
   * For (e) and (f): the share of requests that carry one of `recurring` session tokens (taken in turn,
   * so each comes back every `recurring / share` requests); every other request carries a fresh token,
   * minted for the run and sent at most once to each server.
   */
  mix?: { share: number, recurring: number }
}

/**
 * Unique tokens of (b), cycled: so many that each comes back only after the doorkeeper (which remembers
 * the last 8 to 16 × cacheSize verified tokens, default cacheSize 1000) has forgotten it, as it would
 * forget a token seen once: each is new to every part of the cache, and to every other server's.
 */
export const CYCLED_TOKENS = 20_000

export const WORKLOADS: readonly Workload[] = [
  { id: 'a', name: '(a) one token repeated' },
  { id: 'b', name: `(b) unique tokens (${CYCLED_TOKENS} cycled)` },
  { id: 'c', name: '(c) invalid tokens' },
  { id: 'd', name: '(d) no token' },
  { id: 'e', name: '(e) mixed: 90 % from 200 sessions, 10 % fresh', mix: { share: 0.9, recurring: 200 } },
  { id: 'f', name: '(f) flood: 99 % fresh, 1 % from 50 sessions', mix: { share: 0.01, recurring: 50 } }
]
export const WORKLOADS_BY_ID = Object.fromEntries(WORKLOADS.map((workload) => [workload.id, workload])) as Record<WorkloadId, Workload>

/** Every token a run sends, by pool. `fresh` tokens are each sent at most once to a server. */
export interface Pools {
  session: string
  cycled: string[]
  invalid: string[]
  recurring: Record<string, string[]>
  fresh: string[]
}

interface SignJob { pem: string, kid: string, issuer: string, audience: string, from: number, to: number }

/** A user's application token as Cloudflare issues it (the emulator's `signToken` shape). */
function userToken (job: SignJob, i: number, key: string): string {
  const now = Math.floor(Date.now() / 1000)
  return signJwt({ alg: 'RS256', kid: job.kid }, {
    aud: [job.audience],
    email: `user${i}@acme.com`,
    exp: now + 86_400,
    iat: now,
    nbf: now,
    iss: job.issuer,
    type: 'app',
    identity_nonce: randomBytes(12).toString('base64url'),
    sub: randomUUID(),
    country: 'US'
  }, key)
}

function signer (): void {
  const job = workerData as SignJob
  const tokens: string[] = []
  for (let i = job.from; i < job.to; i++) tokens.push(userToken(job, i, job.pem))
  parentPort?.postMessage(tokens)
}

/** `count` valid user tokens, each with its own `sub` and nonce, signed by the emulator's current key. */
export async function mintFresh (access: AccessEmulator, privateKeyPem: string, count: number): Promise<string[]> {
  const threads = Math.max(1, Math.min(availableParallelism(), 4))
  const per = Math.ceil(count / threads)
  const jobs = Array.from({ length: threads }, (_, t): SignJob => ({
    pem: privateKeyPem,
    kid: access.kids[0] as string,
    issuer: access.teamDomain,
    audience: access.audience,
    from: t * per,
    to: Math.min(count, (t + 1) * per)
  }))
  const parts = await Promise.all(jobs.map((job) => new Promise<string[]>((resolve, reject) => {
    const worker = new Worker(__filename, { workerData: job })
    worker.once('message', resolve)
    worker.once('error', reject)
  })))
  return parts.flat()
}

/**
 * Mints what `workloads` need: (b) CYCLED_TOKENS unique tokens, (c) 900 invalid ones, (e) and (f) their
 * recurring session tokens, and `fresh` unique tokens. The emulator must sign with `privateKeyPem`.
 */
export async function mintPools (access: AccessEmulator, privateKeyPem: string, workloads: readonly Workload[], fresh: number): Promise<Pools> {
  const started = Date.now()
  const ids = new Set(workloads.map((workload) => workload.id))
  const pools: Pools = { session: access.signToken(), cycled: [], invalid: [], recurring: {}, fresh: [] }
  if (ids.has('b')) pools.cycled = await mintFresh(access, privateKeyPem, CYCLED_TOKENS)
  if (ids.has('c')) {
    const attacker = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey
    for (let i = 0; i < 300; i++) {
      pools.invalid.push(`${randomBytes(24).toString('base64url')}.${randomBytes(200).toString('base64url')}.${randomBytes(256).toString('base64url')}`)
      pools.invalid.push(access.signToken({}, { key: attacker, kid: randomBytes(32).toString('hex') }))
      pools.invalid.push(access.signToken({ aud: [randomBytes(32).toString('hex')] }))
    }
  }
  for (const { id, mix } of workloads) {
    if (mix !== undefined) pools.recurring[id] = Array.from({ length: mix.recurring }, (_, i) => access.signToken({ email: `session${i}@acme.com` }))
  }
  if (fresh > 0) pools.fresh = await mintFresh(access, privateKeyPem, fresh)
  const count = 1 + pools.cycled.length + pools.invalid.length + Object.values(pools.recurring).flat().length + pools.fresh.length
  console.log(`minted ${count} tokens in ${((Date.now() - started) / 1000).toFixed(1)} s`)
  return pools
}

if (!isMainThread && (workerData as Partial<SignJob> | null)?.pem !== undefined) signer()
