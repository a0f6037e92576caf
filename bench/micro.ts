/**
 * `npm run bench:micro [-- --tokens 4000 --rounds 15]`: the cold path without HTTP. Verifies the same
 * unique tokens with this plugin's verifier (a new one each pass, so that nothing is cached), with
 * fast-jwt alone (set up as the plugin sets it up), and with the raw crypto.verify hook of bench/server
 * (its work, minus the HTTP), interleaved in small batches, and prints the CPU time per token of each and
 * the ratios to raw, pass by pass: what (b)'s added-CPU ratio measures through HTTP, with less noise, and
 * how much of the gap is fast-jwt's own.
 */
import { createPublicKey, generateKeyPairSync, verify as rsaVerify, type KeyObject } from 'node:crypto'
import { createVerifier } from 'fast-jwt'
import { KeyStore, type SigningKey } from '../lib/keys'
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

function format (value: number, width = 7, digits = 1): string {
  return value.toFixed(digits).padStart(width)
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

  // fast-jwt alone, as lib/verify sets it up: what this plugin adds is the rest.
  const key = store.get(access.kids[0] as string) as SigningKey
  const fastJwt = createVerifier({ key: key.pem, algorithms: ['RS256'], allowedAud: [access.audience], allowedIss: [access.teamDomain], requiredClaims: ['exp', 'iss', 'aud'], clockTolerance: 0, cache: false }) as (token: string) => unknown

  // Interleaved in batches, in turns, so that what else the machine does weighs on all alike; a pass is
  // one go through the tokens with a new verifier (nothing cached), and the first pass is warm-up.
  const batch = argument('--batch', 100)
  const names = ['ours', 'fast-jwt', 'raw'] as const
  const results: Record<(typeof names)[number], number[]> = { ours: [], 'fast-jwt': [], raw: [] }
  console.log(`${count} unique tokens, ${rounds} passes (after one warm-up), batches of ${batch}; CPU µs per token`)
  console.log(' pass    ours  fast-jwt     raw   ours/raw  fast-jwt/raw')
  for (let pass = 0; pass <= rounds; pass++) {
    const verifier = createTokenVerifier(options, store)
    const fns = { ours: verifier.verify, 'fast-jwt': fastJwt, raw }
    const sums = { ours: 0, 'fast-jwt': 0, raw: 0 }
    for (let start = 0, turn = pass; start < tokens.length; start += batch, turn++) {
      const slice = tokens.slice(start, start + batch)
      for (let i = 0; i < names.length; i++) {
        const name = names[(turn + i) % names.length] as (typeof names)[number]
        sums[name] += cpuPerToken(slice, fns[name]) * slice.length
      }
    }
    if (pass === 0) continue
    for (const name of names) results[name].push(sums[name] / tokens.length)
    console.log(`${String(pass).padStart(5)} ${format(sums.ours / tokens.length)} ${format(sums['fast-jwt'] / tokens.length, 9)} ${format(sums.raw / tokens.length)} ${format(sums.ours / sums.raw, 10, 3)} ${format(sums['fast-jwt'] / sums.raw, 13, 3)}`)
  }
  const ours = results.ours
  const ratio = (a: number[], b: number[]): number[] => a.map((value, i) => value / (b[i] as number))
  console.log(`median ${format(median(ours))} ${format(median(results['fast-jwt']), 9)} ${format(median(results.raw))} ${format(median(ratio(ours, results.raw)), 10, 3)} ${format(median(ratio(results['fast-jwt'], results.raw)), 13, 3)}`)
  const spread = ratio(ours, results.raw)
  console.log(`ours/raw over the passes: ${Math.min(...spread).toFixed(3)}–${Math.max(...spread).toFixed(3)}`)
  store.close()
  await access.close()
}

main().catch((error: unknown) => { console.error(error); process.exit(1) })
