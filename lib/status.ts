/** `fastify.cfAccess.status()` and `cloudflareAccessStatus(app)`: the plugin's health, synchronously, for readiness probes and dashboards. */
import type { FastifyInstance } from 'fastify'
import type { KeyStore } from './keys'
import type { NormalizedOptions } from './options'
import type { TokenVerifier } from './verify'

/** One registration's state. Safe to show on an internal route: no token, no secret. */
export interface CloudflareAccessStatus {
  /** Whether a usable key set is held (fetched, and not older than `maxStaleAge`): requests can be verified. */
  ready: boolean
  /** The team origin (the required `iss`). */
  teamDomain: string
  audience: readonly string[]
  keys: {
    /** The kids of the usable set (empty when not ready). */
    kids: string[]
    /** When the usable set was fetched (ISO time), or null. */
    fetchedAt: string | null
    /** How old the usable set is, in milliseconds, or null. */
    ageMs: number | null
    /** Whether refreshes are failing and the last good set is being served. */
    stale: boolean
    /** Since when refreshes have been failing, in milliseconds, or null. */
    failingForMs: number | null
    /** Consecutive failed fetches (0 after a success). */
    consecutiveFailures: number
    /** Why the last fetch failed, or null: about the endpoint, never a token. */
    lastError: string | null
    /** Fetches made since registration. */
    fetches: number
    maxStaleAgeMs: number
  }
  /** The verified-token cache. */
  cache: { size: number, capacity: number, hits: number, misses: number }
  /** The identity cache. */
  identityCache: { size: number, capacity: number }
}

/** Every registration of an app: `ready` when there is at least one and every one is ready. */
export interface CloudflareAccessAppStatus {
  ready: boolean
  registrations: CloudflareAccessStatus[]
}

// Registrations by the app's HTTP server, which every scope of one app shares: so the root (where a
// readiness route lives) finds the registrations of its child scopes.
const byServer = new WeakMap<object, Array<() => CloudflareAccessStatus>>()

/** Builds a registration's `status()` and records it for {@link cloudflareAccessStatus}. */
export function trackStatus (fastify: FastifyInstance, options: NormalizedOptions, store: KeyStore, verifier: TokenVerifier, identityCache: () => number): () => CloudflareAccessStatus {
  function status (): CloudflareAccessStatus {
    const now = Date.now()
    const keys = store.snapshot()
    const counters = verifier.cacheCounters()
    return {
      ready: keys.ready,
      teamDomain: options.issuer,
      audience: options.audience,
      keys: {
        kids: keys.kids,
        fetchedAt: keys.fetchedAt === null ? null : new Date(keys.fetchedAt).toISOString(),
        ageMs: keys.fetchedAt === null ? null : now - keys.fetchedAt,
        stale: keys.ready && keys.failures > 0,
        failingForMs: keys.failingSince === null ? null : now - keys.failingSince,
        consecutiveFailures: keys.failures,
        lastError: keys.lastError === '' ? null : keys.lastError,
        fetches: keys.fetchCount,
        maxStaleAgeMs: options.maxStaleAge
      },
      cache: { size: counters.size, capacity: options.cacheSize, hits: counters.hits, misses: counters.misses },
      identityCache: { size: identityCache(), capacity: options.identityCacheSize }
    }
  }
  const list = byServer.get(fastify.server) ?? []
  list.push(status)
  byServer.set(fastify.server, list)
  fastify.addHook('onClose', async () => { list.splice(list.indexOf(status), 1) })
  return status
}

/**
 * The state of every registration of the plugin in `app` (any scope of it: the root included), for a
 * readiness route that lives outside the protected scopes. Not ready when nothing is registered.
 */
export function cloudflareAccessStatus (app: FastifyInstance): CloudflareAccessAppStatus {
  const registrations = (byServer.get(app.server) ?? []).map((status) => status())
  return { ready: registrations.length > 0 && registrations.every((status) => status.ready), registrations }
}
