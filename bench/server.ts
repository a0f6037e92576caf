/**
 * One benchmark server, in its own process: `node dist/bench/server.js <kind> <config.json>`.
 * Every kind answers `GET /admin` with `{ email }` from a token in `Cf-Access-Jwt-Assertion`, verifying
 * RS256, `iss`, `aud` and `exp` against the emulator's keys (except `bare`, the ceiling), and
 * `GET /__stats` with the process's CPU time, the number of /admin requests served, its memory
 * (`?gc` first collects garbage when the process runs with --expose-gc), and for `ours` the
 * verified-token cache's counters (hits, misses, size).
 * `ours` reads BENCH_CACHE_SIZE and BENCH_REFRESH_INTERVAL from the environment, for experiments and the soak.
 */
import { createPublicKey, verify as rsaVerify, type KeyObject } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { createVerifier } from 'fast-jwt'
import Fastify, { type FastifyInstance, type FastifyPluginCallback, type FastifyReply, type FastifyRequest } from 'fastify'
import cloudflareAccess from '../index'
import type { CacheCounters } from '../lib/cache'
import { kCacheCounters } from '../lib/verify'

export type { CacheCounters }

export type ServerKind = 'bare' | 'ours' | 'jwt-jwks' | 'jose' | 'raw' | 'fast-jwt'
export const SERVER_KINDS: readonly ServerKind[] = ['bare', 'ours', 'jwt-jwks', 'jose', 'raw', 'fast-jwt']

export interface BenchConfig {
  teamDomain: string
  audience: string
  certsUrl: string
}

const HEADER = 'cf-access-jwt-assertion'

function numberFromEnv (name: string): number | undefined {
  const value = process.env[name]
  return value === undefined ? undefined : Number(value)
}

function unauthorized (reply: FastifyReply): FastifyReply {
  return reply.code(401).send({ statusCode: 401, error: 'Unauthorized', message: 'invalid token' })
}

/** This plugin's cache counters, once its server is built. */
let cacheCounters: (() => CacheCounters) | undefined

async function build (kind: ServerKind, config: BenchConfig): Promise<FastifyInstance> {
  const app = Fastify({ logger: false })
  switch (kind) {
    case 'bare':
      app.get('/admin', async () => ({ email: 'nobody' }))
      break
    case 'ours':
      app.register(async (admin) => {
        await admin.register(cloudflareAccess, {
          teamDomain: config.teamDomain,
          audience: config.audience,
          cacheSize: numberFromEnv('BENCH_CACHE_SIZE'),
          refreshInterval: numberFromEnv('BENCH_REFRESH_INTERVAL')
        })
        cacheCounters = (admin.cfAccess as unknown as Record<symbol, () => CacheCounters>)[kCacheCounters]
        admin.get('/', async (request) => ({ email: request.cfAccess?.email }))
      }, { prefix: '/admin' })
      break
    case 'jwt-jwks': {
      // The CommonJS export is the plugin itself; its types describe it as a default export.
      const jwtJwks = (await import('fastify-jwt-jwks')).default as unknown as FastifyPluginCallback<Record<string, unknown>>
      app.register(async (admin) => {
        await admin.register(jwtJwks, {
          jwksUrl: config.certsUrl,
          audience: config.audience,
          issuer: config.teamDomain,
          extractToken: (request: FastifyRequest) => request.headers[HEADER] as string | undefined
        })
        admin.addHook('onRequest', admin.authenticate)
        admin.get('/', async (request) => ({ email: (request as unknown as { user: { email: string } }).user.email }))
      }, { prefix: '/admin' })
      break
    }
    case 'jose': {
      // Cloudflare's documented Node approach: createRemoteJWKSet + jwtVerify.
      const { createRemoteJWKSet, jwtVerify } = await import('jose')
      const jwks = createRemoteJWKSet(new URL(config.certsUrl))
      app.register(async (admin) => {
        admin.decorateRequest('claims', null) // as a plugin would: no new property on each request
        admin.addHook('onRequest', async (request, reply) => {
          const token = request.headers[HEADER]
          if (typeof token !== 'string') return unauthorized(reply)
          try {
            const { payload } = await jwtVerify(token, jwks, { issuer: config.teamDomain, audience: config.audience, algorithms: ['RS256'] })
            ;(request as unknown as { claims: unknown }).claims = payload
          } catch {
            return unauthorized(reply)
          }
        })
        admin.get('/', async (request) => ({ email: (request as unknown as { claims: { email: string } }).claims.email }))
      }, { prefix: '/admin' })
      break
    }
    case 'raw': {
      // The physical floor of a cold verify: one crypto.verify with a key built beforehand.
      const res = await fetch(config.certsUrl)
      const { keys } = await res.json() as { keys: Array<{ kid: string, n: string, e: string, kty: 'RSA' }> }
      const byKid = new Map<string, KeyObject>(keys.map((jwk) => [jwk.kid, createPublicKey({ key: jwk, format: 'jwk' })]))
      app.register(async (admin) => {
        admin.decorateRequest('claims', null) // as a plugin would: no new property on each request
        admin.addHook('onRequest', (request, reply, done) => {
          const token = request.headers[HEADER]
          const parts = typeof token === 'string' ? token.split('.') : []
          if (parts.length !== 3) return unauthorized(reply)
          try {
            const [header, payload, signature] = parts as [string, string, string]
            const { alg, kid } = JSON.parse(Buffer.from(header, 'base64url').toString())
            const key = byKid.get(kid)
            if (alg !== 'RS256' || key === undefined) return unauthorized(reply)
            if (!rsaVerify('sha256', Buffer.from(`${header}.${payload}`), key, Buffer.from(signature, 'base64url'))) return unauthorized(reply)
            const claims = JSON.parse(Buffer.from(payload, 'base64url').toString())
            const aud = Array.isArray(claims.aud) ? claims.aud : [claims.aud]
            if (claims.iss !== config.teamDomain || !aud.includes(config.audience) || !(claims.exp * 1000 > Date.now())) return unauthorized(reply)
            ;(request as unknown as { claims: unknown }).claims = claims
            done()
          } catch {
            unauthorized(reply)
          }
        })
        admin.get('/', async (request) => ({ email: (request as unknown as { claims: { email: string } }).claims.email }))
      }, { prefix: '/admin' })
      break
    }
    case 'fast-jwt': {
      // The raw hook with fast-jwt, set up as this plugin sets it up, in place of crypto.verify: between
      // raw and this plugin, it shows how much of the plugin's cost is fast-jwt's own.
      const res = await fetch(config.certsUrl)
      const { keys } = await res.json() as { keys: Array<{ kid: string, n: string, e: string, kty: 'RSA' }> }
      const byKid = new Map(keys.map((jwk) => [jwk.kid, createVerifier({
        key: createPublicKey({ key: jwk, format: 'jwk' }).export({ type: 'spki', format: 'pem' }) as string,
        algorithms: ['RS256'],
        allowedAud: [config.audience],
        allowedIss: [config.teamDomain],
        requiredClaims: ['exp', 'iss', 'aud'],
        cache: false
      })]))
      app.register(async (admin) => {
        admin.decorateRequest('claims', null)
        admin.addHook('onRequest', (request, reply, done) => {
          const token = request.headers[HEADER]
          if (typeof token !== 'string') return unauthorized(reply)
          try {
            const { kid } = JSON.parse(Buffer.from(token.slice(0, token.indexOf('.')), 'base64url').toString())
            const verify = byKid.get(kid)
            if (verify === undefined) return unauthorized(reply)
            ;(request as unknown as { claims: unknown }).claims = verify(token)
            done()
          } catch {
            unauthorized(reply)
          }
        })
        admin.get('/', async (request) => ({ email: (request as unknown as { claims: { email: string } }).claims.email }))
      }, { prefix: '/admin' })
      break
    }
  }
  return app
}

async function main (): Promise<void> {
  const [kind, configPath] = process.argv.slice(2) as [ServerKind, string]
  const config = JSON.parse(readFileSync(configPath, 'utf8')) as BenchConfig
  const app = await build(kind, config)
  let served = 0
  app.get('/__stats', async (request) => {
    if ((request.query as { gc?: string }).gc !== undefined) (globalThis as { gc?: () => void }).gc?.()
    const cpu = process.cpuUsage()
    const memory = process.memoryUsage()
    return { cpu: cpu.user + cpu.system, served, heap: memory.heapUsed, rss: memory.rss, cache: cacheCounters?.() }
  })
  await app.listen({ host: '127.0.0.1', port: 0 })
  app.server.on('request', (req) => { if (req.url !== '/__stats') served++ })
  const address = app.server.address() as { port: number }
  process.stdout.write(JSON.stringify({ port: address.port }) + '\n')
  process.on('SIGTERM', () => { app.close().then(() => process.exit(0), () => process.exit(1)) })
}

if (require.main === module) {
  main().catch((error: unknown) => { console.error(error); process.exit(1) })
}
