/**
 * `npm run bench:memory [-- --tokens N]`: sends N unique valid tokens (default 1 000 000) through the
 * plugin's verifier and prints the heap after each checkpoint: it must stay bounded by the verified-token
 * cache, however many tokens pass. Tokens are signed by two worker threads (RSA signing is the slow part:
 * about 0.5 ms each here) and verified in the main thread, exactly as a request would verify them.
 */
import { createPrivateKey, generateKeyPairSync, randomBytes, randomUUID } from 'node:crypto'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads'
import { KeyStore } from '../lib/keys'
import { normalizeOptions } from '../lib/options'
import { signJwt } from '../lib/testing'
import { createTokenVerifier } from '../lib/verify'

interface Job { pem: string, kid: string, issuer: string, audience: string, from: number, to: number }
const BATCH = 1000

function signer (): void {
  const job = workerData as Job
  const key = createPrivateKey(job.pem)
  const now = Math.floor(Date.now() / 1000)
  for (let start = job.from; start < job.to; start += BATCH) {
    const batch: string[] = []
    for (let i = start; i < Math.min(start + BATCH, job.to); i++) {
      batch.push(signJwt({ alg: 'RS256', kid: job.kid }, {
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
      }, key))
    }
    parentPort?.postMessage(batch)
  }
}

function heapMiB (): number {
  (globalThis as { gc?: () => void }).gc?.()
  return process.memoryUsage().heapUsed / 1024 / 1024
}

async function main (): Promise<void> {
  const index = process.argv.indexOf('--tokens')
  const total = index === -1 ? 1_000_000 : Number(process.argv[index + 1])
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 })
  const kid = randomBytes(32).toString('hex')
  const jwks = JSON.stringify({ keys: [{ ...publicKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' }] })
  const server = http.createServer((_req, res) => res.writeHead(200, { 'content-type': 'application/json' }).end(jwks))
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const issuer = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  const audience = randomBytes(32).toString('hex')

  const options = normalizeOptions({ teamDomain: issuer, audience })
  const log = { info () {}, warn () {}, error () {} }
  const store = new KeyStore({ ...options, log })
  await store.resolve(kid)
  const verifier = createTokenVerifier(options, store)

  const checkpoints = [0, 1_000, 10_000, 50_000, 100_000, 250_000, 500_000, 750_000, 1_000_000].filter((n) => n <= total)
  if (!checkpoints.includes(total)) checkpoints.push(total)
  const started = Date.now()
  console.log(`verifying ${total} unique valid tokens (cacheSize ${options.cacheSize}); heap after a full GC:`)
  console.log(`${'tokens'.padStart(9)}  heap MiB`)
  console.log(`${'0'.padStart(9)}  ${heapMiB().toFixed(1)}`)
  let verified = 0
  let next = 1
  const pem = privateKey.export({ type: 'pkcs8', format: 'pem' }) as string
  const half = Math.ceil(total / 2)
  const ranges: Array<[number, number]> = [[0, half], [half, total]]
  const workers = ranges.map(([from, to]) => new Worker(__filename, { workerData: { pem, kid, issuer, audience, from, to } satisfies Job }))
  await new Promise<void>((resolve, reject) => {
    for (const worker of workers) {
      worker.on('error', reject)
      worker.on('message', (batch: string[]) => {
        for (const token of batch) {
          const claims = verifier.verify(token)
          if (claims instanceof Error || claims instanceof Promise) return reject(new Error('a valid token did not verify synchronously'))
          verified++
          if (verified === checkpoints[next]) {
            console.log(`${String(verified).padStart(9)}  ${heapMiB().toFixed(1)}`)
            next++
          }
        }
        if (verified === total) resolve()
      })
    }
  })
  await Promise.all(workers.map((worker) => worker.terminate()))
  store.close()
  server.close()
  console.log(`done in ${((Date.now() - started) / 1000).toFixed(0)} s`)
}

if (isMainThread) {
  main().catch((error: unknown) => { console.error(error); process.exit(1) })
} else {
  signer()
}
