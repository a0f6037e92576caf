/**
 * The caller in one typed line: requireUser, requireServiceToken and requireClaims return the verified
 * claims, narrowed, and fail closed (401 without verified claims, 403 for the other kind of token).
 */
import Fastify, { type FastifyInstance } from 'fastify'
import cloudflareAccess, { isServiceToken, requireClaims, requireServiceToken, requireUser } from '../index'

export async function buildTypedApp (teamDomain: string, audience: string): Promise<FastifyInstance> {
  const app = Fastify()
  app.get('/', async (request) => ({ outside: request.cfAccess === undefined })) // no plugin here

  app.register(async (admin) => {
    await admin.register(cloudflareAccess, { teamDomain, audience })
    admin.get('/me', async (request) => {
      const { email, country } = requireUser(request) // email: string — a service token gets 403
      return { email, country }
    })
    admin.post('/deploy', async (request) => ({ by: requireServiceToken(request).common_name }))
    admin.get('/whoami', async (request) => {
      const claims = requireClaims(request)
      return isServiceToken(claims) ? { service: claims.common_name } : { user: claims.email }
    })
    admin.get('/health', { config: { cfAccess: false } }, async (request) => ({ verified: request.cfAccess !== null }))
  }, { prefix: '/admin' })
  return app
}
