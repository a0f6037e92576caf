import { setMaxListeners } from 'node:events'
import { channels } from './channels'
import { IdentityUnavailableError, TokenInvalidError } from './errors'
import { getJson, type FetchError } from './fetch'
import { deepFreezeBounded } from './freeze'
import type { CloudflareAccessIdentity } from './types'

export interface IdentityClientOptions {
  /** `<origin>/cdn-cgi/access/get-identity`, fixed at registration. */
  url: string
  timeout: number
  /** Longest an identity is kept, in milliseconds; never beyond the token's `exp`. */
  ttl: number
  /** Most identities kept; the least recently used go first. */
  size: number
  /** Largest accepted answer, in bytes. Default 64 KiB. */
  maxBytes?: number
}

/** Nesting deeper than this in an identity document is refused (Cloudflare's is about 4 levels deep). */
const MAX_DEPTH = 32
/** The statuses by which Access says it refuses the session itself (revoked, expired): the client must log in again. */
const REFUSED: ReadonlySet<number | undefined> = new Set([400, 401, 403])

/**
 * What the group grants match: every string group id and every string group name the identity document
 * lists, each on its own (an entry with an id but no name still counts for `groupIds`). The application's
 * `identity.groups` keeps only the entries that have both, as typed.
 */
export interface GroupMembership {
  readonly ids: ReadonlySet<string>
  readonly names: ReadonlySet<string>
}

const NO_GROUPS: GroupMembership = Object.freeze({ ids: new Set<string>(), names: new Set<string>() })
/** The membership of each identity the client returned. */
const memberships = new WeakMap<CloudflareAccessIdentity, GroupMembership>()

/** The group ids and names of an identity the identity client returned (none for any other object). */
export function membershipOf (identity: CloudflareAccessIdentity): GroupMembership {
  return memberships.get(identity) ?? NO_GROUPS
}

interface Entry {
  identity: CloudflareAccessIdentity
  expiresAt: number
}

/**
 * Looks up users' identities at the team's identity endpoint: cached per token (bounded LRU, never beyond
 * the token's `exp`; failures are not cached), one request at a time per token, every request bounded.
 */
export class IdentityClient {
  readonly #opts: Required<IdentityClientOptions>
  readonly #cache = new Map<string, Entry>()
  readonly #inflight = new Map<string, Promise<CloudflareAccessIdentity>>()
  /** Aborted when the app closes: ends every lookup under way. */
  readonly #closing = new AbortController()
  /** Lookups sent to the endpoint, for tests and diagnostics. */
  fetchCount = 0

  constructor (options: IdentityClientOptions) {
    this.#opts = { maxBytes: 64 * 1024, ...options }
    // Each lookup under way listens for the close, and removes its listener when it ends: as many as the
    // tokens looked up at once, which is no leak (Node warns of one past 10).
    setMaxListeners(0, this.#closing.signal)
  }

  /** Identities cached now. */
  get size (): number {
    return this.#cache.size
  }

  /** Ends every lookup under way (each rejects with a 503 error): the app is closing. */
  close (): void {
    this.#closing.abort()
  }

  /** The identity for a verified user token whose `exp` (seconds) is given. */
  get (token: string, exp: number): Promise<CloudflareAccessIdentity> {
    const now = Date.now()
    const cached = this.#cache.get(token)
    if (cached !== undefined) {
      this.#cache.delete(token)
      if (now < cached.expiresAt) {
        this.#cache.set(token, cached)
        channels.identity.hasSubscribers && channels.identity.publish({ cached: true, ok: true, durationMs: 0 })
        return Promise.resolve(cached.identity)
      }
    }
    let pending = this.#inflight.get(token)
    if (pending === undefined) {
      pending = this.#lookup(token, exp).finally(() => this.#inflight.delete(token))
      this.#inflight.set(token, pending)
    }
    return pending
  }

  /** One lookup at the endpoint, reported on the identity channel. */
  async #lookup (token: string, exp: number): Promise<CloudflareAccessIdentity> {
    const started = Date.now()
    try {
      const identity = await this.#fetch(token, exp)
      channels.identity.hasSubscribers && channels.identity.publish({ cached: false, ok: true, durationMs: Date.now() - started })
      return identity
    } catch (error) {
      channels.identity.hasSubscribers && channels.identity.publish({ cached: false, ok: false, durationMs: Date.now() - started, code: (error as { code: string }).code })
      throw error
    }
  }

  async #fetch (token: string, exp: number): Promise<CloudflareAccessIdentity> {
    this.fetchCount++
    let body: unknown
    try {
      body = await getJson(this.#opts.url, {
        timeout: this.#opts.timeout,
        maxBytes: this.#opts.maxBytes,
        name: 'identity endpoint',
        headers: { cookie: `CF_Authorization=${token}` },
        signal: this.#closing.signal
      })
    } catch (error) {
      const { status, message } = error as FetchError
      // Only these mean that Access itself no longer accepts this token (a revoked session, for example);
      // 404, 408, 429, 5xx, redirects and garbage are outages: the client should retry, not log in again.
      if (REFUSED.has(status)) throw new TokenInvalidError('the identity endpoint refused the token')
      throw new IdentityUnavailableError(message)
    }
    const identity = body as CloudflareAccessIdentity
    // Any JSON value but null has properties to read: a number, a string or an array has no string email.
    if (identity === null || typeof identity.email !== 'string') {
      // Stryker disable next-line StringLiteral: message text only (the 503 is tested)
      throw new IdentityUnavailableError('the identity endpoint answered an unexpected document')
    }
    // null has no properties; any other JSON value without a string id or name counts for nothing.
    const groups: Array<Partial<Record<'id' | 'name', unknown>> | null> = Array.isArray(identity.groups) ? identity.groups : []
    const ids = new Set<string>()
    const names = new Set<string>()
    for (const group of groups) {
      if (typeof group?.id === 'string') ids.add(group.id)
      if (typeof group?.name === 'string') names.add(group.name)
    }
    identity.groups = groups.filter((group) => typeof group?.id === 'string' && typeof group.name === 'string') as CloudflareAccessIdentity['groups']
    // Shared by every request of the token: nobody may change it.
    if (!deepFreezeBounded(identity, MAX_DEPTH)) {
      // Stryker disable next-line StringLiteral: message text only (the 503 is tested)
      throw new IdentityUnavailableError(`the identity endpoint answered a document nested deeper than ${MAX_DEPTH} levels`)
    }
    memberships.set(identity, { ids, names })
    const expiresAt = Math.min(Date.now() + this.#opts.ttl, exp * 1000)
    this.#cache.set(token, { identity, expiresAt })
    if (this.#cache.size > this.#opts.size) {
      this.#cache.delete(this.#cache.keys().next().value as string)
    }
    return identity
  }
}
