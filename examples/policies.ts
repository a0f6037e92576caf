/**
 * Authorization on top of authentication: the company's people and one deploy bot under /admin, the
 * billing page for the finance group only, an open health check, and a web hook only a service token
 * may call.
 */
import Fastify, { type FastifyInstance } from 'fastify'
import cloudflareAccess, { isServiceToken, requireClaims } from '../index'

export async function buildPoliciesApp (teamDomain: string, audience: string, deployBot: string): Promise<FastifyInstance> {
  const app = Fastify()

  app.register(async (admin) => {
    await admin.register(cloudflareAccess, {
      teamDomain,
      audience,
      allow: { emailDomains: ['acme.com'], serviceTokens: [deployBot] }
    })
    admin.get('/health', { config: { cfAccess: false } }, async () => 'ok')
    admin.get('/billing', { config: { cfAccess: { allow: { groups: ['finance'] } } } }, async () => ({ invoices: 3 }))
    admin.get('/whoami', async (request) => {
      const claims = requireClaims(request)
      return isServiceToken(claims) ? { service: claims.common_name } : { user: claims.email }
    })
    admin.get('/profile', async (request) => {
      const identity = await request.cfAccessIdentity()
      return { name: identity.name, groups: identity.groups.map((group) => group.name) }
    })
  }, { prefix: '/admin' })

  app.register(async (hooks) => {
    await hooks.register(cloudflareAccess, {
      teamDomain,
      audience,
      allow: { serviceTokens: true },
      // The route's own URL: request.url would carry the query string ('/hooks?x=1').
      authorize: (_claims, request) => request.method === 'POST' && request.routeOptions.url === '/hooks'
    })
    hooks.post('/', async () => ({ queued: true }))
    hooks.get('/', async () => 'never: authorize admits POST only')
  }, { prefix: '/hooks' })

  return app
}
