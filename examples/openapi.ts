/**
 * OpenAPI with @fastify/swagger: every route the plugin protects shows the Cloudflare Access security
 * requirement and its 401/403/503 answers; public routes show none.
 */
import fastifyAuth from '@fastify/auth'
import swagger from '@fastify/swagger'
import Fastify, { type FastifyInstance, type FastifyRequest } from 'fastify'
import cloudflareAccess, { cloudflareAccessSecurity, cloudflareAccessSecuritySchemes, cloudflareAccessTransform } from '../index'

export async function buildOpenapiApp (teamDomain: string, audience: string, apiKey: string): Promise<FastifyInstance> {
  const app = Fastify()
  await app.register(swagger, {
    openapi: {
      info: { title: 'Acme', version: '1.0.0' },
      components: {
        securitySchemes: { ...cloudflareAccessSecuritySchemes, apiKey: { type: 'apiKey', in: 'header', name: 'x-api-key' } }
      }
    },
    transform: cloudflareAccessTransform
  })
  await app.register(fastifyAuth)

  // One schema object shared by several routes: the transform copies, never changes it.
  const user = { type: 'object', properties: { email: { type: 'string' } } }

  app.get('/', async () => ({ message: 'public' }))

  // The scope hook protects every route of /admin, except the one that opts out.
  app.register(async (admin) => {
    await admin.register(cloudflareAccess, { teamDomain, audience })
    admin.get('/health', { config: { cfAccess: false } }, async () => 'ok')
    admin.get('/me', { schema: { response: { 200: user } } }, async (request) => ({ email: request.cfAccess?.email }))
  }, { prefix: '/admin' })

  // hook: false: a route-level verify is seen; a wrapper (@fastify/auth) is not, so that route says so itself.
  app.register(async (api) => {
    await api.register(cloudflareAccess, { teamDomain, audience, hook: false })
    const access = api.cfAccess
    api.get('/status', async () => 'ok')
    api.get('/jobs', { onRequest: access.verify, schema: { response: { 200: user } } }, async (request) => ({ email: request.cfAccess?.email }))
    const hasApiKey = async (request: FastifyRequest): Promise<void> => {
      if (request.headers['x-api-key'] !== apiKey) throw Object.assign(new Error('bad API key'), { statusCode: 401 })
    }
    api.get('/reports', {
      onRequest: api.auth([hasApiKey, access.verify]),
      schema: { security: [...cloudflareAccessSecurity, { apiKey: [] }] }
    }, async () => ['q1'])
  }, { prefix: '/api' })
  return app
}
