import Fastify from 'fastify'
import t from 'tap'
import cloudflareAccess from '../index'
import { emulator } from './helpers'

// The README's recipe for an application that logs request headers: pino's redact keeps the token out.
t.test('the log redaction recipe keeps the header and the cookie out of request logs', async (t) => {
  const access = await emulator(t)
  const lines: string[] = []
  const app = Fastify({
    logger: {
      stream: { write: (line: string) => { lines.push(line) } },
      // the recipe, as in the README:
      redact: ['req.headers["cf-access-jwt-assertion"]', 'req.headers.cookie'],
      serializers: {
        req: (request) => ({ method: request.method, url: request.url, headers: request.headers })
      }
    }
  })
  t.teardown(() => app.close())
  await app.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience })
  app.get('/', async () => 'ok')
  const token = access.signToken()
  const res = await app.inject({ url: '/', headers: { 'cf-access-jwt-assertion': token, cookie: `CF_Authorization=${token}; theme=dark` } })
  t.equal(res.statusCode, 200)
  const output = lines.join('')
  t.match(output, /"cf-access-jwt-assertion":"\[Redacted\]"/)
  t.match(output, /"cookie":"\[Redacted\]"/)
  t.notOk(output.includes(token.slice(-30)), 'no part of the token in the logs')
})
