'use strict'
// Smoke test of the built package as CommonJS users load it (by its own name, through "exports").
const assert = require('node:assert/strict')
const Fastify = require('fastify')
const cloudflareAccess = require('fastify-cloudflare-access')
const { createAccessEmulator } = require('fastify-cloudflare-access/testing')

assert.equal(typeof cloudflareAccess, 'function', 'require() returns the plugin itself')
assert.equal(cloudflareAccess.default, cloudflareAccess)
assert.equal(cloudflareAccess.fastifyCloudflareAccess, cloudflareAccess)
assert.equal(cloudflareAccess[Symbol.for('skip-override')], true, 'wrapped with fastify-plugin')
assert.equal(cloudflareAccess[Symbol.for('plugin-meta')].name, 'fastify-cloudflare-access')
assert.equal(new cloudflareAccess.TokenMissingError().code, cloudflareAccess.errorCodes.TOKEN_MISSING)

async function main () {
  const access = await createAccessEmulator()
  const app = Fastify()
  app.register(async (admin) => {
    await admin.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience })
    admin.get('/', async (request) => ({ email: request.cfAccess.email }))
  }, { prefix: '/admin' })
  const denied = await app.inject('/admin')
  assert.equal(denied.statusCode, 401)
  const allowed = await app.inject({ url: '/admin', headers: { 'cf-access-jwt-assertion': access.signToken() } })
  assert.deepEqual(allowed.json(), { email: 'user@example.com' })
  await app.close()
  await access.close()
  console.log('smoke (require): ok')
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
