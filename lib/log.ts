/** The plugin's own logger: a child of the scope's, honouring Fastify's `logLevel` and `logSerializers` register options. */
import type { FastifyBaseLogger, FastifyInstance } from 'fastify'

const STANDARD_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']

/**
 * Fastify applies `register(plugin, { logLevel, logSerializers })` to the child scope it creates for a
 * plugin; fastify-plugin (which makes our decorators reach the caller's routes) skips that scope, so the
 * plugin applies them itself to its own log lines (the key store's). Throws, naming the option, when the
 * level is not one the app's logger knows or a serializer is not a function.
 */
export function pluginLogger (fastify: FastifyInstance, logLevel: unknown, logSerializers: unknown): FastifyBaseLogger {
  const bindings = { plugin: 'fastify-cloudflare-access' }
  const options: { level?: string, serializers?: Record<string, (value: unknown) => unknown> } = {}
  if (logLevel !== undefined) {
    const known = (fastify.log as { levels?: { values?: Record<string, number> } }).levels?.values
    const levels = known === undefined ? STANDARD_LEVELS : [...Object.keys(known), 'silent']
    if (typeof logLevel !== 'string' || !levels.includes(logLevel)) {
      throw new Error(`fastify-cloudflare-access: option "logLevel" must be one of ${levels.join(', ')}, got ${typeof logLevel === 'string' ? JSON.stringify(logLevel) : typeof logLevel}`)
    }
    options.level = logLevel
  }
  if (logSerializers !== undefined) {
    const valid = logSerializers !== null && typeof logSerializers === 'object' && !Array.isArray(logSerializers) &&
      Object.values(logSerializers).every((serializer) => typeof serializer === 'function')
    if (!valid) throw new Error('fastify-cloudflare-access: option "logSerializers" must be an object of functions, { name: (value) => value }')
    options.serializers = logSerializers as Record<string, (value: unknown) => unknown>
  }
  return fastify.log.child(bindings, options)
}
