// Smoke test of the built package as ES module users load it (by its own name, through "exports").
import assert from 'node:assert/strict'
import Fastify from 'fastify'
import cloudflareAccess, { fastifyCloudflareAccess, errorCodes, TokenInvalidError, requireServiceToken, cloudflareAccessTransform, channelNames } from 'fastify-cloudflare-access'
import { createAccessEmulator } from 'fastify-cloudflare-access/testing'

assert.equal(typeof cloudflareAccess, 'function', 'the default import is the plugin')
assert.equal(fastifyCloudflareAccess, cloudflareAccess, 'the named export is the plugin')
assert.equal(new TokenInvalidError('x').code, errorCodes.TOKEN_INVALID)
assert.equal(typeof cloudflareAccessTransform, 'function', 'named exports past the first ones load too')
assert.equal(typeof channelNames, 'object')

const access = await createAccessEmulator()
const app = Fastify()
app.register(async (admin) => {
  await admin.register(fastifyCloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience })
  admin.get('/', async (request) => ({ id: requireServiceToken(request).common_name }))
}, { prefix: '/admin' })
assert.equal((await app.inject('/admin')).statusCode, 401)
const res = await app.inject({ url: '/admin', headers: { cookie: `CF_Authorization=${access.signServiceToken({ common_name: 'ci.access' })}` } })
assert.deepEqual(res.json(), { id: 'ci.access' })
await app.close()
await access.close()
console.log('smoke (import): ok')
