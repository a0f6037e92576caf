/**
 * The load generator, in its own process (forked by bench/run): receives `{ url, pool, duration,
 * connections }` over IPC, cycles through the named token pool, answers autocannon's numbers.
 */
import { readFileSync } from 'node:fs'
import autocannon from 'autocannon'

export interface LoadRequest {
  url: string
  /** Index into the pools file; -1 sends no token. */
  pool: number
  duration: number
  connections: number
}

export interface LoadResult {
  requests: number
  rps: number
  p50: number
  p99: number
  errors: number
  statuses: Record<string, number>
}

function run (pools: string[][], request: LoadRequest): Promise<LoadResult> {
  const tokens = request.pool >= 0 ? pools[request.pool] as string[] : []
  let next = 0
  return new Promise((resolve, reject) => {
    autocannon({
      url: request.url,
      connections: request.connections,
      duration: request.duration,
      requests: [{
        method: 'GET',
        setupRequest: (req: autocannon.Request) => {
          if (tokens.length === 0) return req
          const token = tokens[next] as string
          next = (next + 1) % tokens.length
          return { ...req, headers: { 'cf-access-jwt-assertion': token } }
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
        statuses
      })
    })
  })
}

if (require.main === module) {
  const pools = JSON.parse(readFileSync(process.argv[2] as string, 'utf8')) as string[][]
  process.on('message', (request: LoadRequest) => {
    run(pools, request).then((result) => process.send?.(result), (error: unknown) => process.send?.({ error: String(error) }))
  })
  process.send?.({ ready: true })
}
