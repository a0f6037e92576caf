/**
 * Optional authentication: pages everyone may see that show more to a signed-in user. No token → the
 * request goes on with `request.cfAccess === null`; a token that fails → 401, as everywhere.
 */
import Fastify, { type FastifyInstance } from 'fastify'
import cloudflareAccess, { requireUser } from '../index'

export async function buildOptionalApp (teamDomain: string, audience: string): Promise<FastifyInstance> {
  const app = Fastify()

  // The whole scope optional; one route that requires a token after all.
  app.register(async (site) => {
    await site.register(cloudflareAccess, { teamDomain, audience, required: false })
    site.get('/', async (request) => {
      const claims = request.cfAccess
      if (claims == null) return { hello: 'guest' }
      return { hello: claims.email ?? claims.common_name }
    })
    site.get('/account', { config: { cfAccess: { required: true } } }, async (request) => ({ email: requireUser(request).email }))
  }, { prefix: '/site' })

  // A protected scope with one optional route.
  app.register(async (admin) => {
    await admin.register(cloudflareAccess, { teamDomain, audience })
    admin.get('/status', { config: { cfAccess: { required: false } } }, async (request) => ({ signedIn: request.cfAccess != null }))
    admin.get('/reports', async (request) => ({ for: requireUser(request).email }))
  }, { prefix: '/admin' })
  return app
}
