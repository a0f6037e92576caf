/**
 * WebSockets with @fastify/websocket: the upgrade request is verified like any other request (header or
 * cookie), the handler has the claims, an upgrade from a browser must come from an allowed Origin, and
 * the socket is closed when the token expires.
 */
import websocket, { type WebSocket } from '@fastify/websocket'
import Fastify, { type FastifyInstance, type FastifyRequest } from 'fastify'
import cloudflareAccess, { requireClaims, isServiceToken } from '../index'

/** Close code sent when the token expires (4000–4999 are the application's). */
export const TOKEN_EXPIRED_CLOSE = 4401

/** Longest delay setTimeout honours; a longer one fires at once. Access sessions may last a month. */
const MAX_TIMER = 2_147_483_647

/** Closes the socket when `exp` (seconds since the epoch) passes. */
export function closeAtExpiry (socket: WebSocket, exp: number): void {
  let timer: NodeJS.Timeout | undefined
  const arm = (): void => {
    const left = exp * 1000 - Date.now()
    if (left <= 0) socket.close(TOKEN_EXPIRED_CLOSE, 'Cloudflare Access token expired')
    else timer = setTimeout(arm, Math.min(left, MAX_TIMER))
  }
  arm()
  socket.on('close', () => clearTimeout(timer))
}

/**
 * Cross-site WebSocket hijacking: a page on another site can open a WebSocket to this origin and the
 * browser sends the CF_Authorization cookie with it. Browsers always send `Origin`; behind Cloudflare the
 * Access header is added to cookie-authenticated upgrades too, so check every upgrade that has an Origin.
 */
export function allowOrigins (origins: readonly string[]) {
  const allowed = new Set(origins)
  return async function sameOrigin (request: FastifyRequest): Promise<void> {
    const origin = request.headers.origin
    if (origin !== undefined && !allowed.has(origin)) {
      throw Object.assign(new Error('WebSocket upgrade from a foreign Origin'), { statusCode: 403, code: 'WS_ORIGIN_FORBIDDEN' })
    }
  }
}

export async function buildWebsocketApp (teamDomain: string, audience: string, origins: readonly string[]): Promise<FastifyInstance> {
  const app = Fastify()
  await app.register(websocket)
  app.register(async (live) => {
    await live.register(cloudflareAccess, { teamDomain, audience })
    live.get('/feed', { websocket: true, onRequest: allowOrigins(origins) }, (socket, request) => {
      // The scope hook verified the upgrade request before this handler ran.
      const claims = requireClaims(request)
      socket.send(JSON.stringify({ hello: isServiceToken(claims) ? claims.common_name : claims.email }))
      closeAtExpiry(socket, claims.exp)
      socket.on('message', (data) => socket.send(`echo ${String(data)}`))
    })
  }, { prefix: '/live' })
  return app
}
