/**
 * The app a browser meets behind Access (or the dev proxy): a public home page, a greeting page with a logout
 * link and a logout form, a JSON route, a WebSocket, a page for one Access group (by id), and — in place of
 * the JSON error — a page for a user the policy refuses, while API clients keep the JSON.
 */
import websocket from '@fastify/websocket'
import Fastify, { type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify'
import cloudflareAccess, { requireClaims, requireUser, isServiceToken } from '../index'
import { allowOrigins } from './websocket'

/** Text for HTML: every value that came from a token (an email is whatever the identity provider signed). */
export function escapeHtml (text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`)
}

function html (reply: FastifyReply, body: string): FastifyReply {
  return reply.type('text/html; charset=utf-8').send(`<!DOCTYPE html><meta charset="utf-8">${body}`)
}

/**
 * The README's recipe for refused users: a 403 to a page request is a page that says who is signed in, that
 * this page needs more, and how to switch account; every other answer (and every API client's 403) stays
 * Fastify's JSON error.
 */
export function refusedPage (error: FastifyError & { subject?: string }, request: FastifyRequest, reply: FastifyReply): FastifyReply {
  if (error.code === 'FST_CF_ACCESS_FORBIDDEN' && String(request.headers.accept).includes('text/html')) {
    return html(reply.code(403), `<title>Not allowed</title><h1>This page needs more access</h1>
<p>You are signed in as <strong>${escapeHtml(error.subject ?? 'someone')}</strong>, who may not open this page.</p>
<p><a href="/cdn-cgi/access/logout">Log out</a> to sign in with another account.</p>`)
  }
  return reply.send(error)
}

export interface BrowserAppOptions {
  teamDomain: string
  audience: string
  /** The id of the Access group that may open `/app/finance`. */
  financeGroupId: string
  /** The origins the app's pages are served from, for its WebSocket (cross-site WebSocket hijacking). */
  origins: readonly string[]
}

export async function buildBrowserApp (options: BrowserAppOptions): Promise<FastifyInstance> {
  const app = Fastify()
  await app.register(websocket)
  app.setErrorHandler(refusedPage)
  app.get('/', async (request, reply) => html(reply, '<title>Home</title><h1>Welcome</h1><p>This page is public.</p><p><a href="/app/">Open the app</a></p>'))
  app.get('/health', async () => 'ok')
  app.register(async (admin) => {
    await admin.register(cloudflareAccess, { teamDomain: options.teamDomain, audience: options.audience })
    admin.get('/', async (request, reply) => {
      const claims = requireClaims(request)
      const who = isServiceToken(claims) ? claims.common_name : claims.email
      return html(reply, `<title>App</title><h1>Hello, ${escapeHtml(who)}</h1>
<p><a href="/app/finance">Finance</a> · <a id="logout-link" href="/app/logout">Log out</a></p>
<form id="logout-form" method="get" action="/app/logout"><button>Log out</button></form>`)
    })
    admin.get('/me', async (request) => ({ email: requireUser(request).email }))
    admin.get('/ws', { websocket: true, onRequest: allowOrigins(options.origins) }, (socket, request) => {
      socket.send(`hello ${requireUser(request).email}`)
    })
    admin.get('/finance', { config: { cfAccess: { allow: { groupIds: [options.financeGroupId] } } } }, async (request, reply) =>
      html(reply, `<title>Finance</title><h1>Finance</h1><p>Welcome, ${escapeHtml(requireUser(request).email)}.</p>`))
    admin.get('/logout', { config: { cfAccess: false } }, async (request, reply) => reply.cfAccessLogout())
  }, { prefix: '/app' })
  return app
}
