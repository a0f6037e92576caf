/**
 * The main job, end to end, with no Cloudflare account (`npx fastify-cloudflare-access demo`, `npm run demo`):
 * a local Access emulator issues real RS256 tokens and serves its keys; an app shaped like Cloudflare's
 * FastAPI tutorial (`/` public, `/admin/*` behind a prefix-scoped registration) answers real HTTP requests.
 * Shipped in the package, and loaded by the CLI only when asked for: it needs Fastify, which an
 * application of this plugin has (the plugin itself does not depend on it).
 */
import Fastify, { type FastifyInstance } from 'fastify'
import cloudflareAccess from '../index'
import { createAccessEmulator, type AccessEmulator } from './testing'

export interface DemoOptions {
  /** Keep the server listening after the walk-through. */
  serve?: boolean
  /** Where lines go (console.log when run as a script). */
  print: (line: string) => void
}

export interface DemoResult {
  /** Whether every answer was the expected one. */
  ok: boolean
  /** The app's address. */
  url: string
  /** Stops the app and the emulator (already done unless `serve`). */
  close: () => Promise<void>
}

/** The tutorial's app: `APIRouter(prefix="/admin", dependencies=[Depends(validate_cloudflare)])`, in Fastify. */
export function buildApp (access: AccessEmulator): FastifyInstance {
  const app = Fastify()
  app.get('/', async () => ({ message: 'public: no token needed' }))
  app.register(async (admin) => {
    await admin.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience })
    admin.get('/', async () => ({ message: 'Hello World' }))
    admin.get('/me', async (request) => request.cfAccess)
    // Authorization on top: only the finance group (by id) may see billing (groups come from the identity endpoint).
    admin.get('/billing', { config: { cfAccess: { allow: { groupIds: ['g-finance'] } } } }, async (request) => ({ invoices: 3, for: request.cfAccess?.email }))
  }, { prefix: '/admin' })
  return app
}

interface Step {
  title: string
  path: string
  headers: Record<string, string>
  before?: () => void | Promise<unknown>
  status: number
  /** What the answer must contain. */
  expect: (body: Record<string, unknown>) => boolean
}

/** Shows a token as its first characters and its length: tokens never go to logs whole. */
function shorten (value: string): string {
  return value.replace(/eyJ[A-Za-z0-9_.-]+/g, (token) => `${token.slice(0, 12)}…(${token.length} chars)`)
}

export async function runDemo (options: DemoOptions): Promise<DemoResult> {
  const { print } = options
  const access = await createAccessEmulator({ email: 'alice@example.com' })
  access.setIdentity('bob@example.com', { name: 'Bob', groups: [{ id: 'g-finance', name: 'finance' }] })
  const app = buildApp(access)
  const url = await app.listen({ host: '127.0.0.1', port: 0 })
  const close = async (): Promise<void> => { await app.close(); await access.close() }

  print(`Access emulator: team ${access.teamDomain}, AUD ${access.audience.slice(0, 8)}…, keys at ${access.certsUrl}`)
  print(`App: ${url}  (/ public, /admin/* protected by a prefix-scoped registration, /admin/billing for the finance group)`)
  print('')

  const header = (token: string): Record<string, string> => ({ 'cf-access-jwt-assertion': token })
  const hour = 3600
  const now = Math.floor(Date.now() / 1000)
  const steps: Step[] = [
    { title: 'public route, no token', path: '/', headers: {}, status: 200, expect: (b) => typeof b.message === 'string' },
    { title: 'protected route, no token', path: '/admin/me', headers: {}, status: 401, expect: (b) => b.code === 'FST_CF_ACCESS_TOKEN_MISSING' },
    { title: 'user token in Cf-Access-Jwt-Assertion', path: '/admin/me', headers: header(access.signToken()), status: 200, expect: (b) => b.email === 'alice@example.com' },
    { title: 'user token in the CF_Authorization cookie (browser)', path: '/admin/me', headers: { cookie: `CF_Authorization=${access.signToken()}` }, status: 200, expect: (b) => b.email === 'alice@example.com' },
    { title: 'service token (machine client)', path: '/admin/me', headers: header(access.signServiceToken({ common_name: 'deploy-bot.access' })), status: 200, expect: (b) => b.common_name === 'deploy-bot.access' && b.sub === '' },
    { title: 'expired token', path: '/admin/me', headers: header(access.signToken({}, { now: now - 2 * hour, expiresIn: hour })), status: 401, expect: (b) => b.code === 'FST_CF_ACCESS_TOKEN_EXPIRED' },
    { title: 'token for another Access application of the same team', path: '/admin/me', headers: header(access.signToken({ aud: ['0'.repeat(64)] })), status: 401, expect: (b) => b.code === 'FST_CF_ACCESS_CLAIM_INVALID' },
    { title: 'valid token, but not in the finance group: authenticated, not authorized', path: '/admin/billing', headers: header(access.signToken()), status: 403, expect: (b) => b.code === 'FST_CF_ACCESS_FORBIDDEN' },
    { title: 'valid token of a finance group member', path: '/admin/billing', headers: header(access.signToken({ email: 'bob@example.com' })), status: 200, expect: (b) => b.for === 'bob@example.com' },
    { title: 'forged: Cf-Access-Authenticated-User-Email alone', path: '/admin/me', headers: { 'cf-access-authenticated-user-email': 'admin@example.com' }, status: 401, expect: (b) => b.code === 'FST_CF_ACCESS_TOKEN_MISSING' },
    {
      title: 'key endpoint down after warm-up: cached keys keep serving',
      path: '/admin/me',
      headers: header(access.signToken()),
      before: () => access.setOutage(true),
      status: 200,
      expect: (b) => b.email === 'alice@example.com'
    }
  ]

  let passed = 0
  for (const [index, step] of steps.entries()) {
    await step.before?.()
    const { headers } = step
    print(`${index + 1}. ${step.title}`)
    const shown = Object.entries(headers).map(([name, value]) => `  ${name}: ${shorten(value)}`).join('')
    print(`   → GET ${step.path}${shown}`)
    const res = await fetch(new URL(step.path, url), { headers })
    const body = await res.json() as Record<string, unknown>
    const ok = res.status === step.status && step.expect(body)
    if (ok) passed++
    print(`   ← ${res.status} ${shorten(JSON.stringify(body))}`)
    /* c8 ignore next: the ✗ shows only when the plugin misbehaves */
    print(`   ${ok ? '✓' : '✗'} expected ${step.status}`)
  }
  access.setOutage(false)
  print('')
  print(`${passed}/${steps.length} answers as expected; key endpoint fetched ${access.certsRequestCount} time(s)`)

  const ok = passed === steps.length
  if (options.serve === true) {
    print('')
    print('Serving. Try:')
    print(`  curl -s ${url}/admin/me -H 'Cf-Access-Jwt-Assertion: ${access.signToken()}'`)
    print('Ctrl-C to stop.')
  } else {
    await close()
  }
  return { ok, url, close }
}
