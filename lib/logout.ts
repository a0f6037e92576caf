/** `reply.cfAccessLogout()`: sends the browser to Cloudflare Access's logout endpoint on the app's own hostname. */
import type { FastifyInstance, FastifyReply } from 'fastify'

/**
 * Where Access ends a session. Access answers it at the edge, on the application's hostname, so the
 * redirect is relative: never built from the `Host` header or a request parameter (no open redirect).
 */
export const LOGOUT_PATH = '/cdn-cgi/access/logout'

function cfAccessLogout (this: FastifyReply): FastifyReply {
  // 303: whatever the method of the logout route (a GET link, as Access's own logout), the browser follows with a GET.
  return this.header('cache-control', 'no-store').redirect(LOGOUT_PATH, 303)
}

/** Adds `reply.cfAccessLogout()` to the plugin's scope. */
export function decorateLogout (fastify: FastifyInstance): void {
  fastify.decorateReply('cfAccessLogout', cfAccessLogout)
}
