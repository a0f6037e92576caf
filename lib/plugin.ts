import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { errorCodes } from './errors'
import { KeyStore } from './keys'
import { normalizeOptions } from './options'
import { readToken } from './token'
import type { CloudflareAccessClaims, CloudflareAccessDecorator, FastifyCloudflareAccessOptions } from './types'
import { createTokenVerifier } from './verify'

/** Seconds a client should wait before retrying a 503. */
const RETRY_AFTER = '5'

/**
 * The plugin body (wrapped by fastify-plugin in index.ts): validates the options, builds the key store
 * and the verifier once, decorates, and adds the hook.
 */
export async function cloudflareAccess (fastify: FastifyInstance, rawOptions: FastifyCloudflareAccessOptions): Promise<void> {
  const options = normalizeOptions(rawOptions)
  if (fastify.hasDecorator('cfAccess')) {
    throw new Error(
      'fastify-cloudflare-access is already registered in this scope or a parent scope. Register it once per ' +
      'protected scope; give one registration several audiences with audience: [...] instead of registering twice.'
    )
  }

  const store = new KeyStore({
    certsUrl: options.certsUrl,
    fetchTimeout: options.fetchTimeout,
    refreshInterval: options.refreshInterval,
    unknownKidCooldown: options.unknownKidCooldown,
    maxStaleAge: options.maxStaleAge,
    log: fastify.log.child({ plugin: 'fastify-cloudflare-access' })
  })
  const verifyToken = createTokenVerifier(options, store)

  async function verify (request: FastifyRequest, reply: FastifyReply): Promise<void> {
    try {
      request.cfAccess = await verifyToken(readToken(request.headers))
    } catch (error) {
      if ((error as { code?: unknown }).code === errorCodes.KEYS_UNAVAILABLE) reply.header('retry-after', RETRY_AFTER)
      throw error
    }
  }

  const decorator: CloudflareAccessDecorator = {
    verify,
    verifyToken: verifyToken as (token: string) => Promise<CloudflareAccessClaims>
  }
  fastify.decorate('cfAccess', decorator)
  fastify.decorateRequest('cfAccess', null)
  if (options.hook !== false) fastify.addHook(options.hook, verify)

  fastify.addHook('onReady', async () => { store.start() })
  fastify.addHook('onClose', async () => { store.close() })
}
