/**
 * The load generator, in its own process (forked by bench/run and bench/profile): receives
 * `{ url, server, workload, duration | amount, connections }` over IPC, sends the workload's tokens (see
 * bench/pools), answers autocannon's numbers and how many requests carried a recurring session token.
 */
import { readFileSync } from 'node:fs'
import autocannon from 'autocannon'
import { WORKLOADS_BY_ID, type Pools, type WorkloadId } from './pools'

export interface LoadRequest {
  url: string
  /** Whose turn: fresh tokens are sent at most once to each server, whatever the workload. */
  server: string
  workload: WorkloadId
  /** Seconds to run, or… */
  duration?: number
  /** … how many requests to send. */
  amount?: number
  connections: number
}

export interface LoadResult {
  requests: number
  rps: number
  p50: number
  p99: number
  errors: number
  statuses: Record<string, number>
  /** Requests that carried one of the workload's recurring session tokens. */
  recurring: number
  /** Requests that found the fresh pool used up (sent without a token). */
  exhausted: number
}

interface Counted { recurring: number, exhausted: number }

/** Per server: where it is in the fresh pool, and in each workload's rotation. */
interface Cursor { fresh: number, sent: Record<string, number> }

/** Which token the next request of `workload` carries (undefined: none). */
function picker (pools: Pools, workload: WorkloadId, cursor: Cursor, counted: Counted): () => string | undefined {
  const { mix } = WORKLOADS_BY_ID[workload]
  switch (workload) {
    case 'a': return () => pools.session
    case 'b': return () => pools.cycled[(cursor.sent.b = (cursor.sent.b ?? 0) + 1) % pools.cycled.length]
    case 'c': return () => pools.invalid[(cursor.sent.c = (cursor.sent.c ?? 0) + 1) % pools.invalid.length]
    case 'd': return () => undefined
    default: {
      const { share } = mix as { share: number }
      const recurring = pools.recurring[workload] as string[]
      let debt = 0
      return () => {
        // Bresenham: exactly `share` of the requests, evenly spread; the sessions in turn.
        debt += share
        if (debt >= 1) {
          debt -= 1
          counted.recurring++
          const turn = (cursor.sent[workload] = (cursor.sent[workload] ?? 0) + 1)
          return recurring[turn % recurring.length]
        }
        const token = pools.fresh[cursor.fresh++]
        if (token === undefined) counted.exhausted++ // sent without a token: a 401 that run reports
        return token
      }
    }
  }
}

const cursors = new Map<string, Cursor>()

function run (pools: Pools, request: LoadRequest): Promise<LoadResult> {
  let cursor = cursors.get(request.server)
  if (cursor === undefined) cursors.set(request.server, cursor = { fresh: 0, sent: {} })
  const counted: Counted = { recurring: 0, exhausted: 0 }
  const next = picker(pools, request.workload, cursor, counted)
  return new Promise((resolve, reject) => {
    autocannon({
      url: request.url,
      connections: request.connections,
      ...(request.amount === undefined ? { duration: request.duration } : { amount: request.amount }),
      requests: [{
        method: 'GET',
        setupRequest: (req: autocannon.Request) => {
          const token = next()
          return token === undefined ? req : { ...req, headers: { 'cf-access-jwt-assertion': token } }
        }
      }]
    }, (error, result) => {
      if (error !== null && error !== undefined) return reject(error)
      const statuses: Record<string, number> = {}
      for (const [code, count] of Object.entries(result.statusCodeStats ?? {})) statuses[code] = (count as { count: number }).count
      resolve({
        requests: result.requests.total,
        rps: result.requests.average,
        p50: result.latency.p50,
        p99: result.latency.p99,
        errors: result.errors + result.timeouts,
        statuses,
        recurring: counted.recurring,
        exhausted: counted.exhausted
      })
    })
  })
}

if (require.main === module) {
  const pools = JSON.parse(readFileSync(process.argv[2] as string, 'utf8')) as Pools
  process.on('message', (request: LoadRequest) => {
    run(pools, request).then((result) => process.send?.(result), (error: unknown) => process.send?.({ error: String(error) }))
  })
  process.send?.({ ready: true })
}
