/**
 * `npm run bench:micro [-- --tokens 4000 --rounds 15]`: the cold path without HTTP. Verifies the same
 * unique tokens with this plugin's verifier (a new one each round, so that nothing is cached) and with
 * the raw crypto.verify hook of bench/server (its work, minus the HTTP), interleaved, and prints the CPU
 * time per token of each and their ratio, round by round: the figure (b)'s added-CPU ratio measures
 * through HTTP, with less noise.
 */
import { createPublicKey, generateKeyPairSync, verify as rsaVerify, type KeyObject } from 'node:crypto'
import { KeyStore } from '../lib/keys'
import { normalizeOptions } from '../lib/options'
import { createAccessEmulator } from '../lib/testing'
import { createTokenVerifier } from '../lib/verify'
import { mintFresh } from './pools'

function argument (name: string, fallback: number): number {
  const index = process.argv.indexOf(name)
  return index === -1 ? fallback : Number(process.argv[index + 1])
}

/** bench/server's raw hook, without the request and reply: the floor of a cold verify. */
function rawVerifier (byKid: Map<string, KeyObject>, issuer: string, audience: string): (token: string) => unknown {
  return (token) => {
    const parts = token.split('.')
    if (parts.length !== 3) return null
    try {
      const [header, payload, signature] = parts as [string, string, string]
      const { alg, kid } = JSON.parse(Buffer.from(header, 'base64url').toString())
      const key = byKid.get(kid)
      if (alg !== 'RS256' || key === undefined) return null
      if (!rsaVerify('sha256', Buffer.from(`${header}.${payload}`), key, Buffer.from(signature, 'base64url'))) return null
      const claims = JSON.parse(Buffer.from(payload, 'base64url').toString())
      const aud = Array.isArray(claims.aud) ? claims.aud : [claims.aud]
      if (claims.iss !== issuer || !aud.includes(audience) || !(claims.exp * 1000 > Date.now())) return null
      return claims
    } catch {
      return null
    }
  }
}

/** CPU microseconds per call of `fn` over `tokens`; throws if any is rejected. */
function cpuPerToken (tokens: string[], fn: (token: string) => unknown): number {
  const start = process.cpuUsage()
  for (const token of tokens) {
    const result = fn(token)
    if (result === null || result instanceof Error || result instanceof Promise) throw new Error('a valid token was not verified synchronously')
  }
  const used = process.cpuUsage(start)
  return (used.user + used.system) / tokens.length
}

function median (values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.floor(sorted.length / 2)] as number
}

async function main (): Promise<void> {
  const count = argument('--tokens', 4000)
  const rounds = argument('--rounds', 15)
  const keys: [KeyObject, KeyObject] = [generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey, generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey]
  const access = await createAccessEmulator({ privateKeys: keys })
  const tokens = await mintFresh(access, keys[0].export({ type: 'pkcs8', format: 'pem' }) as string, count)
  const options = normalizeOptions({ teamDomain: access.teamDomain, audience: access.audience })
  const store = new KeyStore({ ...options, log: { info () {}, warn () {}, error () {} } })
  await store.resolve(access.kids[0] as string)
  const byKid = new Map(access.jwks().keys.map((jwk) => [jwk.kid as string, createPublicKey({ key: jwk, format: 'jwk' })]))
  const raw = rawVerifier(byKid, access.teamDomain, access.audience)

  // Interleaved in batches, so that what else the machine does weighs on both alike; a pass is one go
  // through the tokens with a new verifier (nothing cached), and the first pass is warm-up.
  const batch = argument('--batch', 100)
  const ours: number[] = []
  const floor: number[] = []
  const ratios: number[] = []
  console.log(`${count} unique tokens, ${rounds} passes (after one warm-up), batches of ${batch}; CPU µs per token`)
  console.log(' pass   ours    raw   ratio')
  for (let pass = 0; pass <= rounds; pass++) {
    const verifier = createTokenVerifier(options, store)
    let o = 0
    let r = 0
    for (let start = 0; start < tokens.length; start += batch) {
      const slice = tokens.slice(start, start + batch)
      if ((start / batch + pass) % 2 === 0) {
        o += cpuPerToken(slice, verifier.verify) * slice.length
        r += cpuPerToken(slice, raw) * slice.length
      } else {
        r += cpuPerToken(slice, raw) * slice.length
        o += cpuPerToken(slice, verifier.verify) * slice.length
      }
    }
    if (pass === 0) continue
    o /= tokens.length
    r /= tokens.length
    ours.push(o)
    floor.push(r)
    ratios.push(o / r)
    console.log(`${String(pass).padStart(5)} ${o.toFixed(1).padStart(6)} ${r.toFixed(1).padStart(6)} ${(o / r).toFixed(3).padStart(7)}`)
  }
  console.log(`median ${median(ours).toFixed(1).padStart(6)} ${median(floor).toFixed(1).padStart(6)} ${median(ratios).toFixed(3).padStart(7)}  (ratio range ${Math.min(...ratios).toFixed(3)}–${Math.max(...ratios).toFixed(3)})`)
  store.close()
  await access.close()
}

main().catch((error: unknown) => { console.error(error); process.exit(1) })
