/**
 * CORS with @fastify/cors and a protected API. Browsers send preflights (`OPTIONS` with `Origin` and
 * `Access-Control-Request-Method`) without credentials; with Cloudflare's "bypass OPTIONS requests to
 * origin" setting they reach the origin without a token, and must be answered without one.
 */
import cors from '@fastify/cors'
import Fastify, { type FastifyInstance } from 'fastify'
import cloudflareAccess, { requireUser } from '../index'

const ORIGINS = ['https://app.acme.com']

/**
 * @fastify/cors at the root (or in the scope, registered before the plugin): its hook runs before the
 * plugin's, so preflights are answered before verification, and the 401s carry CORS headers that the
 * browser app can read. With `preflight: true` (its default) @fastify/cors answers every OPTIONS itself.
 */
export async function buildCorsAtRoot (teamDomain: string, audience: string): Promise<FastifyInstance> {
  const app = Fastify()
  await app.register(cors, { origin: ORIGINS, credentials: true })
  app.register(async (api) => {
    await api.register(cloudflareAccess, { teamDomain, audience })
    api.get('/data', async (request) => ({ for: requireUser(request).email }))
  }, { prefix: '/api' })
  return app
}

/**
 * @fastify/cors after the plugin (later in the scope, or in a child scope): `corsPreflight: true` lets
 * real preflights through the plugin's hook for @fastify/cors to answer. Everything else is verified
 * first, so a 401 carries no CORS headers here; a "preflight" that nothing answered is refused with 401
 * before the body is read or a handler runs.
 */
export async function buildCorsInScope (teamDomain: string, audience: string): Promise<FastifyInstance> {
  const app = Fastify()
  app.register(async (api) => {
    await api.register(cloudflareAccess, { teamDomain, audience, corsPreflight: true })
    await api.register(cors, { origin: ORIGINS, credentials: true })
    api.get('/data', async (request) => ({ for: requireUser(request).email }))
  }, { prefix: '/api' })
  return app
}
