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
  /** The map key: see hashOf. */
  hash: number
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
  /**
   * Its `nbf` and `iat` in milliseconds, minus the clock tolerance (the later of the two; -Infinity: none):
   * before then (a clock stepped back) the verifier would answer "not valid yet", so the entry does not.
   */
  validFrom: number
  /** The segment the entry is in. */
  segment: Segment
  /** Recency list of the segment: towards the most recently used, and towards the least. */
  newer: Entry | null
  older: Entry | null
}

/** A recency list of entries (most recently used first), linked through the entries themselves. */
class Segment {
  newest: Entry | null = null
  oldest: Entry | null = null
  size = 0

  pushNewest (entry: Entry): void {
    entry.segment = this
    entry.older = this.newest
    if (this.newest === null) this.oldest = entry
    else this.newest.newer = entry
    this.newest = entry
    this.size++
  }

  unlink (entry: Entry): void {
    if (entry.newer === null) this.newest = entry.older
    else entry.newer.older = entry.older
    if (entry.older === null) this.oldest = entry.newer
    else entry.older.newer = entry.newer
    entry.newer = entry.older = null
    this.size--
  }
}

/** Share of the entries the protected segment may hold: the rest is probation. */
const PROTECTED_SHARE = 0.8

/**
 * The verified-token cache's main part: a segmented LRU. Only a byte-identical token hits: entries are
 * found by a hash of the signature's last characters (hashing a whole 1 KB token on every request costs
 * more than the rest of the lookup) and then compared whole. An entry is used only while the token would
 * still pass the clock checks (`exp`, and `nbf` and `iat` should the clock step back) and its key is still
 * the one the key store serves — a key Cloudflare removed
 * takes its cached tokens with it.
 *
 * A token enters *probation*, or *protected* when it is known to recur; a hit in probation moves it to
 * protected (at most 80 % of the entries), whose overflow goes back to probation. When full, probation's
 * least recently used entry goes: tokens seen once, however many, only ever displace each other in
 * probation. Every operation is O(1): a map lookup or write and a few links.
 */
export class VerifiedCache {
  readonly #size: number
  readonly #protectedSize: number
  readonly #entries = new Map<number, Entry>()
  readonly #probation = new Segment()
  readonly #protected = new Segment()

  constructor (size: number) {
    this.#size = size
    this.#protectedSize = Math.floor(size * PROTECTED_SHARE)
  }

  get size (): number {
    return this.#entries.size
  }

  /**
   * The cached decision for `token` — its claims, or a fresh copy of the error for a token rejected for
   * good — if still good at `now` with `currentKey` being the store's key for the entry's kid.
   */
  get (token: string, now: number, currentKey: (kid: string) => SigningKey | undefined): CloudflareAccessClaims | Error | undefined {
    return this.find(hashOf(token), token, now, currentKey)
  }

  /** get, the token's hash already known. */
  find (hash: number, token: string, now: number, currentKey: (kid: string) => SigningKey | undefined): CloudflareAccessClaims | Error | undefined {
    const entry = this.#entries.get(hash)
    if (entry === undefined || entry.token !== token) return undefined
    if (now > entry.expiresAt || now < entry.validFrom || currentKey(entry.key.kid) !== entry.key) {
      this.#remove(entry)
      return undefined
    }
    if (entry.segment === this.#protected) {
      if (entry !== this.#protected.newest) {
        this.#protected.unlink(entry)
        this.#protected.pushNewest(entry)
      }
    } else {
      this.#probation.unlink(entry)
      this.#protect(entry)
    }
    return entry.claims ?? copy(entry.rejection as Error)
  }

  /** Remembers a verified token, good from `validFrom` to `expiresAt`; in protected if it is known to recur. */
  set (token: string, claims: CloudflareAccessClaims, key: SigningKey, expiresAt: number, validFrom = -Infinity, recurs = false): void {
    this.#put(token, claims, null, key, expiresAt, validFrom, recurs)
  }

  /**
   * Remembers a token whose signature verified but whose claims never will (wrong `aud`, `iss`, `type`,
   * a claim of the wrong type): replaying it costs no RSA. Bounded by `exp` and the key like any entry,
   * since after `exp` the same token is answered "expired" instead.
   */
  reject (token: string, error: Error, key: SigningKey, expiresAt: number, validFrom = -Infinity, recurs = false): void {
    // A copy: the caller's error is answered, and whoever handles it may change it (an error handler
    // annotating it with the request's id or user) — none of that may reach the next request.
    this.#put(token, null, copy(error), key, expiresAt, validFrom, recurs)
  }

  #put (token: string, claims: CloudflareAccessClaims | null, rejection: Error | null, key: SigningKey, expiresAt: number, validFrom: number, recurs: boolean): void {
    // Size 0 keeps nothing: the entry is evicted as soon as it is in (TokenCache never gets here then).
    const hash = hashOf(token)
    const previous = this.#entries.get(hash)
    // The same token verified twice at once (both waited for a key), or another one of the same hash:
    // the new entry takes the old one's place.
    if (previous !== undefined) this.#remove(previous)
    const entry: Entry = { hash, token, claims, rejection, key, expiresAt, validFrom, segment: this.#probation, newer: null, older: null }
    this.#entries.set(hash, entry)
    if (recurs) this.#protect(entry)
    else this.#probation.pushNewest(entry)
    // Protected holds at most 80 % of the entries: probation is never empty when the cache is over.
    if (this.#entries.size > this.#size) this.#remove(this.#probation.oldest as Entry)
  }

  /** Into protected, as its most recent entry; its least recent goes back to probation if it overflows. */
  #protect (entry: Entry): void {
    this.#protected.pushNewest(entry)
    if (this.#protected.size > this.#protectedSize) {
      const demoted = this.#protected.oldest as Entry
      this.#protected.unlink(demoted)
      this.#probation.pushNewest(demoted)
    }
  }

  #remove (entry: Entry): void {
    this.#entries.delete(entry.hash)
    entry.segment.unlink(entry)
  }
}

/**
 * The verified-token cache of a verifier, so that a browser session's repeated token costs one lookup
 * instead of an RSA verify, laid out like W-TinyLFU and robust to floods of tokens seen once:
 *  - a *window* of a few slots (cacheSize / 32, a power of two, at least 1; direct-mapped by hash) takes
 *    each token on its first verification: a write to an array slot, so that a flood of unique tokens
 *    costs no map insertion and leaves nothing behind for the garbage collector to carry;
 *  - a token found in the window on a later request has proven to recur: it moves to the main part
 *    (VerifiedCache, `cacheSize` entries), straight into its protected segment;
 *  - a *doorkeeper* remembers which tokens were verified lately (at least the last 8 × cacheSize): a token
 *    verified again after it left the window (a session whose requests are far apart, under a flood)
 *    goes to the main part's probation, and its next hit to protected.
 * Unique tokens thus only ever displace each other in the window (and, for the doorkeeper's rare false
 * positives, in probation); the tokens that recur stay. O(1) per request, memory bounded by cacheSize
 * (the doorkeeper: 32 bytes per entry, allocated once), no timers.
 */
export class TokenCache {
  readonly #main: VerifiedCache
  readonly #doorkeeper: Doorkeeper
  /** Window slots − 1 (a power of two − 1). */
  readonly #mask: number
  /** cacheSize 0: nothing is remembered. */
  readonly #off: boolean
  // The window, one slot per index: structure of arrays, so that filling a slot allocates nothing.
  readonly #tokens: Array<string | null>
  readonly #claims: Array<CloudflareAccessClaims | null>
  readonly #rejections: Array<Error | null>
  readonly #keys: Array<SigningKey | null>
  readonly #expiries: Float64Array
  readonly #starts: Float64Array
  #windowed = 0
  #hits = 0
  #misses = 0
  /** The last token looked up in vain, and its hash. */
  #missed: string | null = null
  #missedHash = 0

  constructor (size: number) {
    this.#main = new VerifiedCache(size)
    this.#doorkeeper = new Doorkeeper(size)
    this.#off = size === 0
    const slots = windowSlots(size)
    this.#mask = slots - 1
    this.#tokens = new Array<string | null>(slots).fill(null)
    // Stryker disable next-line ArrayDeclaration: equivalent, a slot is read only after it is written
    this.#claims = new Array<CloudflareAccessClaims | null>(slots).fill(null)
    // Stryker disable next-line ArrayDeclaration: equivalent, as above
    this.#rejections = new Array<Error | null>(slots).fill(null)
    // Stryker disable next-line ArrayDeclaration: equivalent, as above
    this.#keys = new Array<SigningKey | null>(slots).fill(null)
    this.#expiries = new Float64Array(slots)
    this.#starts = new Float64Array(slots)
  }

  /** How many lookups hit and missed since the cache was made, and how many entries it holds now. */
  counters (): CacheCounters {
    return { hits: this.#hits, misses: this.#misses, size: this.#main.size + this.#windowed }
  }

  /** As VerifiedCache.get, over the window and the main part. */
  get (token: string, now: number, currentKey: (kid: string) => SigningKey | undefined): CloudflareAccessClaims | Error | undefined {
    const hash = hashOf(token)
    const found = this.#main.find(hash, token, now, currentKey) ?? this.#fromWindow(hash, token, now, currentKey)
    if (found === undefined) {
      this.#misses++
      // Most misses are verified and remembered next: keep the hash for #record.
      this.#missed = token
      this.#missedHash = hash
    } else {
      this.#hits++
    }
    return found
  }

  /** Remembers a verified token, good from `validFrom` to `expiresAt` (see the class). */
  set (token: string, claims: CloudflareAccessClaims, key: SigningKey, expiresAt: number, validFrom = -Infinity): void {
    this.#record(token, claims, null, key, expiresAt, validFrom)
  }

  /** Remembers a token rejected for good, as VerifiedCache.reject (a copy of `error`: the caller's is answered). */
  reject (token: string, error: Error, key: SigningKey, expiresAt: number, validFrom = -Infinity): void {
    this.#record(token, null, copy(error), key, expiresAt, validFrom)
  }

  #fromWindow (hash: number, token: string, now: number, currentKey: (kid: string) => SigningKey | undefined): CloudflareAccessClaims | Error | undefined {
    const slot = hash & this.#mask
    if (this.#tokens[slot] !== token) return undefined
    const claims = this.#claims[slot] as CloudflareAccessClaims | null
    const rejection = this.#rejections[slot] as Error | null
    const key = this.#keys[slot] as SigningKey
    const expiresAt = this.#expiries[slot] as number
    const validFrom = this.#starts[slot] as number
    this.#clear(slot)
    if (now > expiresAt || now < validFrom || currentKey(key.kid) !== key) return undefined
    this.#remember(token, claims, rejection, key, expiresAt, validFrom, true)
    return claims ?? copy(rejection as Error)
  }

  #record (token: string, claims: CloudflareAccessClaims | null, rejection: Error | null, key: SigningKey, expiresAt: number, validFrom: number): void {
    if (this.#off) return
    const hash = token === this.#missed ? this.#missedHash : hashOf(token)
    if (this.#doorkeeper.sighted(hash)) {
      this.#remember(token, claims, rejection, key, expiresAt, validFrom, false)
      return
    }
    const slot = hash & this.#mask
    if (this.#tokens[slot] === null) this.#windowed++
    this.#tokens[slot] = token
    this.#claims[slot] = claims
    this.#rejections[slot] = rejection
    this.#keys[slot] = key
    this.#expiries[slot] = expiresAt
    this.#starts[slot] = validFrom
  }

  /** Into the main part. */
  #remember (token: string, claims: CloudflareAccessClaims | null, rejection: Error | null, key: SigningKey, expiresAt: number, validFrom: number, recurs: boolean): void {
    if (claims === null) this.#main.reject(token, rejection as Error, key, expiresAt, validFrom, recurs)
    else this.#main.set(token, claims, key, expiresAt, validFrom, recurs)
  }

  #clear (slot: number): void {
    this.#windowed--
    this.#tokens[slot] = null
    this.#claims[slot] = null
    this.#rejections[slot] = null
    this.#keys[slot] = null
  }
}

/** Window slots for a cache of `size`: the largest power of two up to size / 32, at least 1. */
function windowSlots (size: number): number {
  let slots = 1
  while (slots * 2 <= size / 32) slots *= 2
  return slots
}

/**
 * Which tokens were verified recently, cached or not: two generations of a Bloom filter over token hashes
 * (every `8 × size` insertions the older one is forgotten and a new one started). A token counts as seen
 * when either generation holds it, so it is remembered for at least `8 × size` verifications, whatever
 * the cache evicted meanwhile. 16 bits and three probes per insertion keep false positives — a token seen
 * once taken for a recurring one — under 0.5 %. Memory: 32 bytes per cache entry, allocated once.
 */
export class Doorkeeper {
  /** Insertions a generation takes before it becomes the older one. */
  readonly #generation: number
  readonly #mask: number
  #current: Uint32Array
  #previous: Uint32Array
  #inserted = 0

  constructor (size: number) {
    this.#generation = Math.max(64, 8 * size)
    const bits = nextPowerOfTwo(16 * this.#generation)
    this.#mask = bits - 1
    this.#current = new Uint32Array(bits / 32)
    this.#previous = new Uint32Array(bits / 32)
  }

  /** Memory held by the two generations, outside the JavaScript heap. */
  get bytes (): number {
    return this.#current.byteLength + this.#previous.byteLength
  }

  /** Records a sighting of the token of this hash; whether it was seen before (maybe: see the false positives). */
  sighted (hash: number): boolean {
    const a = hash & this.#mask
    const b = Math.imul(hash, 0x9e3779b1) >>> 7 & this.#mask
    const c = Math.imul(hash ^ (hash >>> 13), 0x85ebca6b) >>> 5 & this.#mask
    if (has(this.#current, a) && has(this.#current, b) && has(this.#current, c)) return true
    const seen = has(this.#previous, a) && has(this.#previous, b) && has(this.#previous, c)
    if (++this.#inserted > this.#generation) {
      const older = this.#previous
      this.#previous = this.#current
      this.#current = older.fill(0)
      this.#inserted = 1
    }
    add(this.#current, a)
    add(this.#current, b)
    add(this.#current, c)
    return seen
  }
}

function has (bits: Uint32Array, index: number): boolean {
  return ((bits[index >>> 5] as number) & (1 << (index & 31))) !== 0
}

function add (bits: Uint32Array, index: number): void {
  bits[index >>> 5] = (bits[index >>> 5] as number) | (1 << (index & 31))
}

function nextPowerOfTwo (n: number): number {
  let power = 1024
  while (power < n) power *= 2
  return power
}

/** Characters of the token's end that the hash reads: RSA signature characters (66 bits of them). */
const HASHED = 12

/**
 * The map key of a token: a 30-bit hash (a small integer, cheap to hash again) of its last 12
 * characters, which are signature characters. Two tokens sharing it share an entry, and the later one
 * replaces the earlier: a miss, never a wrong answer, since a hit compares the whole token. Nobody but
 * the signer chooses the signature of a token that verifies, so nobody can aim at another's entry.
 */
export function hashOf (token: string): number {
  let hash = 0x811c9dc5
  for (let i = Math.max(0, token.length - HASHED); i < token.length; i++) {
    hash = Math.imul(hash ^ token.charCodeAt(i), 0x01000193)
  }
  return (hash ^ (hash >>> 15)) & 0x3fffffff
}

/** A new error like the first answer (its prototype, code, status and message), for the next request. */
function copy (error: Error): Error {
  return Object.assign(Object.create(Object.getPrototypeOf(error) as object) as Error, error)
}
