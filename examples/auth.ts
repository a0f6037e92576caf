/**
 * @fastify/auth: Cloudflare Access **or** an API key (a machine that does not pass through Access), and
 * Access **and** an API key, with `hook: false` and `fastify.auth([...])`.
 */
import fastifyAuth from '@fastify/auth'
import createError from '@fastify/error'
import { createHash, timingSafeEqual } from 'node:crypto'
import Fastify, { type FastifyInstance, type FastifyRequest } from 'fastify'
import cloudflareAccess from '../index'

export const ApiKeyError = createError('APP_API_KEY_INVALID', 'Missing or unknown API key', 401)

const digest = (key: string): Buffer => createHash('sha256').update(key).digest()

/** A strategy for @fastify/auth: resolves for a known `x-api-key`, rejects with a 401 otherwise. */
export function apiKeyStrategy (keys: readonly string[]) {
  const known = keys.map(digest)
  return async function apiKey (request: FastifyRequest): Promise<void> {
    const key = request.headers['x-api-key']
    const given = typeof key === 'string' ? digest(key) : null
    // Constant time: compare digests, and every one of them.
    let found = false
    for (const candidate of known) found = (given !== null && timingSafeEqual(candidate, given)) || found
    if (!found) throw new ApiKeyError()
  }
}

export async function buildAuthApp (teamDomain: string, audience: string, keys: readonly string[]): Promise<FastifyInstance> {
  const app = Fastify()
  await app.register(fastifyAuth)
  await app.register(cloudflareAccess, { teamDomain, audience, hook: false })
  const { verify } = app.cfAccess
  const apiKey = apiKeyStrategy(keys)

  // OR: @fastify/auth answers with the error of the last strategy that failed, so Access goes last and a
  // client with neither gets the Access answer (401 FST_CF_ACCESS_*, or 503 while keys are unreachable).
  app.get('/reports', { onRequest: app.auth([apiKey, verify]) }, async (request) => ({
    by: request.cfAccess == null ? 'api key' : request.cfAccess.email ?? request.cfAccess.common_name
  }))

  // AND: @fastify/auth stops at the first failure, so Access goes first for the same reason.
  app.post('/deploy', { onRequest: app.auth([verify, apiKey], { relation: 'and' }) }, async (request) => ({
    by: request.cfAccess?.common_name ?? request.cfAccess?.email
  }))
  return app
}
