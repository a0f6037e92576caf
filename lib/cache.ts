import type { SigningKey } from './keys'
import type { CloudflareAccessClaims } from './types'

/** What the verified-token cache has done: for benchmarks and operations. */
export interface CacheCounters {
  /** Lookups answered from the cache. */
  hits: number
  /** Lookups that were not (a token never seen, evicted, expired, or whose key left the set). */
  misses: number
  /** Entries held now. */
  size: number
}

interface Entry {
  /** The map key: see slotOf. */
  slot: string
  /** The whole token: only a byte-identical token hits. */
  token: string
  /** The verified claims; null for a token rejected for good (see `reject`). */
  claims: CloudflareAccessClaims | null
  /** The error a token rejected for good was answered with; each hit answers a copy. */
  rejection: Error | null
  /** The key that verified the token: the entry is good only while the store still serves this very key. */
  key: SigningKey
  /** The token's `exp` in milliseconds, plus the clock tolerance: the same bound the verifier applies. */
  expiresAt: number
  /** Recency list: towards the most recently used, and towards the least. */
  newer: Entry | null
  older: Entry | null
}

/**
 * Verified tokens, so that a browser session's repeated token costs one lookup instead of an RSA verify.
 * Only a byte-identical token hits: entries are found by the signature's last characters (hashing a
 * whole 1 KB token on every request costs more than the rest of the lookup) and then compared whole.
 * Bounded, least recently used first out (a map plus a linked recency list: a hit costs one map lookup,
 * an insertion one map write and at most one delete). An entry is used only while the token would still
 * pass the clock check and its key is still the one the key store serves — a key Cloudflare removed
 * takes its cached tokens with it.
 */
export class VerifiedCache {
  readonly #size: number
  readonly #entries = new Map<string, Entry>()
  #newest: Entry | null = null
  #oldest: Entry | null = null
  #hits = 0
  #misses = 0

  constructor (size: number) {
    this.#size = size
  }

  get size (): number {
    return this.#entries.size
  }

  /** How many lookups hit and missed since the cache was made, and how many entries it holds now. */
  counters (): CacheCounters {
    return { hits: this.#hits, misses: this.#misses, size: this.#entries.size }
  }

  /**
   * The cached decision for `token` — its claims, or a fresh copy of the error for a token rejected for
   * good — if still good at `now` with `currentKey` being the store's key for the entry's kid.
   */
  get (token: string, now: number, currentKey: (kid: string) => SigningKey | undefined): CloudflareAccessClaims | Error | undefined {
    const entry = this.#entries.get(slotOf(token))
    if (entry === undefined || entry.token !== token) {
      this.#misses++
      return undefined
    }
    if (now > entry.expiresAt || currentKey(entry.key.kid) !== entry.key) {
      this.#remove(entry)
      this.#misses++
      return undefined
    }
    this.#hits++
    if (entry !== this.#newest) {
      this.#unlink(entry)
      this.#pushNewest(entry)
    }
    return entry.claims ?? copy(entry.rejection as Error)
  }

  /** Remembers a verified token. */
  set (token: string, claims: CloudflareAccessClaims, key: SigningKey, expiresAt: number): void {
    this.#put(token, claims, null, key, expiresAt)
  }

  /**
   * Remembers a token whose signature verified but whose claims never will (wrong `aud`, `iss`, `type`,
   * a claim of the wrong type): replaying it costs no RSA. Bounded by `exp` and the key like any entry,
   * since after `exp` the same token is answered "expired" instead.
   */
  reject (token: string, error: Error, key: SigningKey, expiresAt: number): void {
    this.#put(token, null, error, key, expiresAt)
  }

  #put (token: string, claims: CloudflareAccessClaims | null, rejection: Error | null, key: SigningKey, expiresAt: number): void {
    if (this.#size === 0) return
    const slot = slotOf(token)
    const previous = this.#entries.get(slot)
    if (previous !== undefined) this.#remove(previous)
    const entry: Entry = { slot, token, claims, rejection, key, expiresAt, newer: null, older: null }
    this.#entries.set(slot, entry)
    this.#pushNewest(entry)
    if (this.#entries.size > this.#size) this.#remove(this.#oldest as Entry)
  }

  #remove (entry: Entry): void {
    this.#entries.delete(entry.slot)
    this.#unlink(entry)
  }

  #unlink (entry: Entry): void {
    if (entry.newer === null) this.#newest = entry.older
    else entry.newer.older = entry.older
    if (entry.older === null) this.#oldest = entry.newer
    else entry.older.newer = entry.newer
    entry.newer = entry.older = null
  }

  #pushNewest (entry: Entry): void {
    entry.older = this.#newest
    if (this.#newest === null) this.#oldest = entry
    else this.#newest.newer = entry
    this.#newest = entry
  }
}

/**
 * The map key of a token: its last 32 characters, which are signature bytes (192 bits of an RSA
 * signature). Two tokens sharing them share a slot, and the later one replaces the earlier: a miss, never
 * a wrong answer, since a hit compares the whole token.
 */
function slotOf (token: string): string {
  return token.slice(-32)
}

/** A new error like the first answer (its prototype, code, status and message), for the next request. */
function copy (error: Error): Error {
  return Object.assign(Object.create(Object.getPrototypeOf(error) as object) as Error, error)
}
