/**
 * Testing an application with the Access emulator: real keys, real RS256 tokens, no Cloudflare account.
 * Run it: `npm run build && node dist/examples/testing-your-app.js`.
 */
import Fastify from 'fastify'
import cloudflareAccess from '../index'
import { createAccessEmulator } from '../lib/testing'

export async function testMyApp (): Promise<{ anonymous: number, alice: number, email: unknown }> {
  const access = await createAccessEmulator()
  const app = Fastify()
  app.register(async (admin) => {
    await admin.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience })
    admin.get('/me', async (request) => request.cfAccess)
  }, { prefix: '/admin' })

  const anonymous = await app.inject({ url: '/admin/me' })
  const alice = await app.inject({
    url: '/admin/me',
    headers: { 'cf-access-jwt-assertion': access.signToken({ email: 'alice@acme.com' }) }
  })

  await app.close()
  await access.close()
  return { anonymous: anonymous.statusCode, alice: alice.statusCode, email: alice.json().email }
}

/* c8 ignore start */
if (require.main === module) {
  testMyApp().then((result) => console.log(result), (error: unknown) => { console.error(error); process.exitCode = 1 })
}
/* c8 ignore stop */
