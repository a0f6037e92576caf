/**
 * `hook: false` and route-level hooks: protect some routes of a scope, choose the hook per route.
 */
import Fastify, { type FastifyInstance } from 'fastify'
import cloudflareAccess from '../index'

export async function buildRouteLevelApp (teamDomain: string, audience: string): Promise<FastifyInstance> {
  const app = Fastify()
  await app.register(cloudflareAccess, { teamDomain, audience, hook: false })

  app.get('/health', async () => 'ok') // open
  app.get('/admin', { onRequest: app.cfAccess.verify }, async (request) => request.cfAccess)
  app.post('/admin/jobs', { preHandler: app.cfAccess.verify }, async (request) => ({ by: request.cfAccess?.email }))
  return app
}
