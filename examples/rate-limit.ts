/**
 * Rate limiting with @fastify/rate-limit: anonymous traffic by client IP before verification (so that
 * floods of bad tokens are limited too), and each verified user or service token after it.
 */
import rateLimit from '@fastify/rate-limit'
import Fastify, { type FastifyInstance, type FastifyRequest } from 'fastify'
import cloudflareAccess, { isServiceToken } from '../index'

/**
 * The peers allowed to say who the client is: cloudflared on this host behind Cloudflare Tunnel. (An
 * origin exposed to Cloudflare directly lists Cloudflare's published IP ranges in `trustProxy` instead,
 * and keys on `request.ip`.)
 */
const TRUSTED_PROXIES = ['127.0.0.1', '::1']

/**
 * The visitor's address. Cloudflare sends it in `CF-Connecting-IP`; believe that header only from a
 * trusted proxy — anyone who reaches the origin another way can send any value, and would get a fresh
 * bucket with every request. From anyone else, the socket's own address.
 */
export function clientIp (request: FastifyRequest): string {
  const header = request.headers['cf-connecting-ip']
  const peer = request.socket.remoteAddress
  if (peer !== undefined && TRUSTED_PROXIES.includes(peer) && typeof header === 'string' && header !== '') return header
  return request.ip
}

/** The verified subject — never a header, never a claim of an unverified token; by address until verified. */
export function subjectKey (request: FastifyRequest): string {
  const claims = request.cfAccess
  if (claims == null) return `ip:${clientIp(request)}`
  return isServiceToken(claims) ? `service:${claims.common_name}` : `user:${claims.email}`
}

export async function buildRateLimitedApp (teamDomain: string, audience: string, limits: { anonymous: number, user: number }): Promise<FastifyInstance> {
  // trustProxy makes request.ip (and the log lines) the visitor's address from X-Forwarded-For, which
  // Cloudflare sets too — from the trusted proxies only.
  const app = Fastify({ trustProxy: TRUSTED_PROXIES })

  // 1. Before verification: a hook at the root runs before the hooks of every scope below it.
  await app.register(rateLimit, { global: false })
  app.addHook('onRequest', app.rateLimit({ max: limits.anonymous, timeWindow: 60_000, keyGenerator: clientIp }))

  app.register(async (admin) => {
    await admin.register(cloudflareAccess, { teamDomain, audience })
    // 2. After verification: a second registration in the protected scope adds its hook to each route,
    //    and route hooks run after the scope's, so request.cfAccess is verified by then.
    await admin.register(rateLimit, { max: limits.user, timeWindow: 60_000, keyGenerator: subjectKey })
    admin.get('/report', async (request) => ({ for: subjectKey(request) }))
  }, { prefix: '/admin' })
  return app
}
