import Fastify from 'fastify'
import { expectError, expectType } from 'tsd'
import type { CloudflareAccessIdentity } from 'fastify-cloudflare-access'

// Users declare their identity provider's claims once; request.cfAccess.custom is typed from then on
// (the @fastify/jwt FastifyJWT pattern).
declare module 'fastify-cloudflare-access' {
  interface CloudflareAccessCustomClaims {
    department: string
    clearance?: number
  }
}

const app = Fastify()
app.get('/', async (request) => {
  const claims = request.cfAccess
  if (claims == null || claims.email === undefined) return null
  const custom = claims.custom
  if (custom === undefined) return null
  expectType<string>(custom.department)
  expectType<number | undefined>(custom.clearance)
  expectError(custom.unknownClaim)
  const identity: CloudflareAccessIdentity = await request.cfAccessIdentity()
  expectType<string | undefined>(identity.custom?.department)
  return custom.department
})
