/**
 * Unknown routes under a protected prefix: the scope's own not-found handler runs the scope's hooks, so
 * an anonymous client gets 401 for every path and cannot tell which /admin routes exist.
 */
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify'
import cloudflareAccess from '../index'

function notFound (request: FastifyRequest, reply: FastifyReply): void {
  reply.code(404).send({ statusCode: 404, error: 'Not Found', message: `Route ${request.method}:${request.url} not found` })
}

export async function buildNotFoundApp (teamDomain: string, audience: string): Promise<FastifyInstance> {
  const app = Fastify()
  app.get('/', async () => 'public')

  // The scope hook: a not-found handler set inside the scope runs after it.
  app.register(async (admin) => {
    await admin.register(cloudflareAccess, { teamDomain, audience })
    admin.setNotFoundHandler(notFound)
    admin.get('/reports', async () => ['q1'])
  }, { prefix: '/admin' })

  // hook: false: give the not-found handler the verify hook itself.
  app.register(async (api) => {
    await api.register(cloudflareAccess, { teamDomain, audience, hook: false })
    const { verify } = api.cfAccess
    api.setNotFoundHandler({ preHandler: verify }, notFound)
    api.get('/jobs', { onRequest: verify }, async () => ['build'])
  }, { prefix: '/api' })
  return app
}
