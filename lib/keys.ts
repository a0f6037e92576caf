import { createPublicKey, type KeyObject } from 'node:crypto'
import { channels } from './channels'
import { KeysUnavailableError } from './errors'
import { FetchError, getJson } from './fetch'
import { KID } from './token'

/** One ready verification key of the team. Replaced, never mutated, when the set changes. */
export interface SigningKey {
  readonly kid: string
  /** SPKI PEM of the public key. */
  readonly pem: string
  readonly key: KeyObject
}

/** The logger subset the store needs (Fastify's logger fits). */
export interface KeyStoreLogger {
  info: (obj: object, msg: string) => void
  warn: (obj: object, msg: string) => void
  error: (obj: object, msg: string) => void
}

export interface KeyStoreOptions {
  /** Fixed at registration: nothing in a token ever chooses where keys come from. */
  certsUrl: string
  fetchTimeout: number
  refreshInterval: number
  unknownKidCooldown: number
  maxStaleAge: number
  log: KeyStoreLogger
  /** Largest accepted response body in bytes. Cloudflare's is about 4 KB. */
  maxResponseBytes?: number
  /** Where the store reads the time and sets its timers: the real clock unless a test gives its own. */
  clock?: KeyStoreClock
}

/**
 * The time as the key store sees it: now, and timers (refresh, retries, `whenReady`'s bound). The fetch's
 * own timeout is not on it: a fetch is real I/O, bounded in real time.
 */
export interface KeyStoreClock {
  /** Milliseconds since the epoch, as `Date.now()`. */
  now: () => number
  /** Calls `callback` once, `ms` from now; the timer never keeps the process alive. */
  setTimeout: (callback: () => void, ms: number) => unknown
  /** Cancels a timer of this clock's `setTimeout` (nothing for one that fired or was cancelled). */
  clearTimeout: (timer: unknown) => void
}

/** The real clock. */
const realClock: KeyStoreClock = {
  now: () => Date.now(),
  setTimeout: (callback, ms) => setTimeout(callback, ms).unref(),
  clearTimeout: (timer) => { clearTimeout(timer as NodeJS.Timeout) }
}

/** What the store holds and how its fetches go: for `status()`. */
export interface KeyStoreSnapshot {
  ready: boolean
  kids: string[]
  /** When the set held now was fetched (epoch ms), or null. */
  fetchedAt: number | null
  /** Consecutive failed fetches (0 after a success). */
  failures: number
  /** When the current run of failures began (epoch ms), or null. */
  failingSince: number | null
  /** Why the last fetch failed ('' after a success): a message about the endpoint, never a token. */
  lastError: string
  fetchCount: number
}

/** Retry delays while fetches fail: from 500 ms doubling, at most this long while the store has no keys. */
const COLD_RETRY_MAX = 4_000
/** ... and at most this long while a good set is still serving. */
const WARM_RETRY_MAX = 60_000
/** What Cloudflare publishes: RSA with a 2048-bit modulus, e = 65537. Anything else is ignored (a huge exponent or modulus would make every forged token's verify expensive). */
const MIN_RSA_BITS = 2048
const MAX_RSA_BITS = 4096
const RSA_EXPONENT = 65537n

/**
 * The team's signing keys, fetched from one fixed URL and mapped by kid.
 *
 * - single flight: concurrent misses share one fetch;
 * - every fetch is bounded (timeout, no redirects, size cap, status and JSON checked);
 * - periodic refresh, and a refetch on an unknown kid at most once per `unknownKidCooldown`;
 * - a successful refresh replaces the whole set; a failed one keeps the last good set for `maxStaleAge`;
 * - while fetches fail, retries back off (every few seconds at most while there are no keys at all).
 */
export class KeyStore {
  readonly #opts: Required<KeyStoreOptions>
  readonly #clock: KeyStoreClock
  #keys = new Map<string, SigningKey>()
  /** When the current set was fetched (0: never). */
  #fetchedAt = 0
  /** When the last fetch caused by an unknown kid started (-Infinity: never). */
  #unknownKidFetchAt = -Infinity
  #inflight: Promise<void> | null = null
  #lastError = ''
  #failures = 0
  #failingSince: number | null = null
  #timer: unknown = null
  #closed = false
  /** Aborted by close(): ends a fetch under way. */
  readonly #closing = new AbortController()
  /** Number of fetches started, for tests and diagnostics. */
  fetchCount = 0

  constructor (options: KeyStoreOptions) {
    this.#opts = { maxResponseBytes: 256 * 1024, clock: realClock, ...options }
    this.#clock = this.#opts.clock
  }

  /** The key for `kid` if the current set has it and is not too stale. Synchronous: no I/O. */
  get (kid: string): SigningKey | undefined {
    return this.ready ? this.#keys.get(kid) : undefined
  }

  /**
   * Whether `kid` is unknown and asking would not fetch: a usable set without it, within the unknown-kid
   * cooldown (armed only by a successful refetch), no fetch under way. Such a kid is answered 401 at once,
   * synchronously.
   */
  isKnownUnknown (kid: string): boolean {
    return this.#inflight === null && this.ready && !this.#keys.has(kid) &&
      this.#clock.now() - this.#unknownKidFetchAt < this.#opts.unknownKidCooldown
  }

  /** Whether the store holds a usable key set. */
  get ready (): boolean {
    return this.#keys.size > 0 && !this.#isTooStale()
  }

  /** The kids of the usable set. */
  get kids (): string[] {
    return this.ready ? [...this.#keys.keys()] : []
  }

  /** A copy of the store's state, cheap: no I/O. */
  snapshot (): KeyStoreSnapshot {
    const ready = this.ready
    return {
      ready,
      kids: ready ? [...this.#keys.keys()] : [],
      fetchedAt: ready ? this.#fetchedAt : null,
      failures: this.#failures,
      failingSince: this.#failingSince,
      lastError: this.#lastError,
      fetchCount: this.fetchCount
    }
  }

  /**
   * Resolves once a usable set is held (fetching now if need be), or rejects after `timeout` ms with the
   * last fetch error: for `waitForKeys`.
   */
  whenReady (timeout: number): Promise<void> {
    if (this.ready) return Promise.resolve()
    return new Promise((resolve, reject) => {
      let done = false
      // No guard needed: a promise settles once, and clearing a timer twice does nothing.
      const finish = (error?: Error): void => {
        done = true
        this.#clock.clearTimeout(timer)
        if (error === undefined) resolve()
        else reject(error)
      }
      const timer = this.#clock.setTimeout(() => finish(new KeysUnavailableError(`no key set within ${timeout} ms${this.#lastError === '' ? '' : ` (${this.#lastError})`}`)), timeout)
      const attempt = (): void => {
        if (done) return
        this.#refresh().then(() => finish(), () => { this.#clock.setTimeout(attempt, 250) })
      }
      attempt()
    })
  }

  /**
   * The key for `kid`, fetching when needed. Resolves `undefined` for a kid the team does not publish
   * (or one asked about during the unknown-kid cooldown); rejects with a 503 error when there are no
   * usable keys and none can be fetched now.
   */
  async resolve (kid: string): Promise<SigningKey | undefined> {
    const known = this.get(kid)
    if (known !== undefined) return known

    if (this.ready) {
      // An unknown kid: a key rotated in, or an attacker's guess. Refetch, but at most once per cooldown
      // (counted from the last successful such refetch only: a periodic refresh does not delay a
      // rotated-in key, and a failed one proves nothing about the kid).
      if (this.isKnownUnknown(kid)) return undefined
      const joining = this.#inflight !== null
      // While the endpoint fails and a retry is scheduled, do not fetch per request (any kid may be sent).
      // (after a failure a retry is always scheduled, unless the store is closed: then there is nothing to wait for)
      if (!joining && this.#failures > 0) throw new KeysUnavailableError(this.#lastError)
      const startedAt = this.#clock.now()
      try {
        await this.#refresh('unknown-kid')
      } catch {
        // The kid may well be a key rotated in during the outage: "try again later", not "log in again".
        throw new KeysUnavailableError(this.#lastError)
      }
      if (!joining) this.#unknownKidFetchAt = startedAt
      return this.get(kid)
    }

    // No usable keys. Join a fetch under way, or start one unless a retry is already scheduled.
    if (this.#inflight === null && this.#failures > 0) {
      throw new KeysUnavailableError(this.#lastError)
    }
    try {
      await this.#refresh()
    } catch {
      throw new KeysUnavailableError(this.#lastError)
    }
    return this.get(kid)
  }

  /** Starts the background refresh: a warm-up fetch now, then one every `refreshInterval`. */
  start (): void {
    // A fetch under way is joined by #refresh; a scheduled one stays as it is.
    if (this.#closed || this.#timer !== null) return
    this.#refresh().catch(noop)
  }

  /** Stops every timer and aborts a fetch under way: nothing of the store keeps the process alive. */
  close (): void {
    this.#closed = true
    this.#clearTimer()
    this.#closing.abort()
  }

  #isTooStale (): boolean {
    const ageMs = this.#clock.now() - this.#fetchedAt
    if (ageMs <= this.#opts.maxStaleAge) return false
    this.#opts.log.error({ certsUrl: this.#opts.certsUrl, staleForMs: ageMs },
      'cloudflare access: key set older than maxStaleAge dropped; requests get 503 until a fetch succeeds')
    channels.keyDropped.hasSubscribers && channels.keyDropped.publish({ ageMs })
    this.#keys = new Map()
    return true
  }

  /** One fetch, shared by everyone who asks while it runs. Rejects when it fails. */
  #refresh (reason: 'refresh' | 'unknown-kid' = 'refresh'): Promise<void> {
    if (this.#inflight !== null) return this.#inflight
    this.#clearTimer()
    this.fetchCount++
    const url = this.#opts.certsUrl
    const started = this.#clock.now()
    channels.keyFetchStart.hasSubscribers && channels.keyFetchStart.publish({ url, reason })
    const run = fetchKeySet(this.#opts.certsUrl, this.#opts.fetchTimeout, this.#opts.maxResponseBytes, this.#closing.signal)
      .then((jwks) => {
        this.#install(parseKeySet(jwks, this.#keys))
        channels.keyFetchEnd.hasSubscribers && channels.keyFetchEnd.publish({ url, ok: true, durationMs: this.#clock.now() - started, kids: [...this.#keys.keys()] })
      })
      .catch((error: unknown) => {
        channels.keyFetchEnd.hasSubscribers && channels.keyFetchEnd.publish({ url, ok: false, durationMs: this.#clock.now() - started, error: (error as Error).message })
        this.#fail(error)
      })
      .finally(() => {
        this.#inflight = null
        this.#schedule()
      })
    this.#inflight = run
    return run
  }

  /** Swaps in a whole new set: a kid Cloudflare no longer publishes stops verifying now. */
  #install (next: Map<string, SigningKey>): void {
    // Stryker disable next-line StringLiteral: message text only (the refusal of such a set is tested)
    if (next.size === 0) throw new FetchError('no RSA/RS256 signing key in the response')
    const previous = this.#keys
    const wasFailing = this.#failures > 0
    this.#keys = next
    this.#fetchedAt = this.#clock.now()
    this.#failures = 0
    this.#failingSince = null
    this.#lastError = ''
    const added = [...next.keys()].filter((kid) => !previous.has(kid))
    const removed = [...previous.keys()].filter((kid) => !next.has(kid))
    if (wasFailing) {
      this.#opts.log.info({ certsUrl: this.#opts.certsUrl, kids: [...next.keys()] }, 'cloudflare access: key endpoint recovered')
    }
    if (previous.size > 0 && (added.length > 0 || removed.length > 0)) {
      this.#opts.log.info({ added, removed }, 'cloudflare access: key rotation seen')
      channels.keyRotation.hasSubscribers && channels.keyRotation.publish({ added, removed })
    }
  }

  #fail (error: unknown): never {
    this.#lastError = (error as Error).message
    if (this.#closed) throw error // aborted by close(): nothing to report
    this.#failures++
    this.#failingSince ??= this.#clock.now()
    const level = this.ready ? 'warn' : 'error'
    if (level === 'warn' && channels.keyStale.hasSubscribers) channels.keyStale.publish({ ageMs: this.#clock.now() - this.#fetchedAt, failures: this.#failures })
    // Stryker disable StringLiteral: message text only (the level and the fields are tested)
    this.#opts.log[level]({ certsUrl: this.#opts.certsUrl, failures: this.#failures, reason: this.#lastError },
      this.ready
        ? 'cloudflare access: key refresh failed; the last good key set keeps serving'
        : 'cloudflare access: cannot fetch signing keys; requests get 503')
    // Stryker restore StringLiteral
    throw error
  }

  #schedule (): void {
    if (this.#closed) return
    let delay = this.#opts.refreshInterval
    if (this.#failures > 0) {
      const cap = this.ready ? WARM_RETRY_MAX : COLD_RETRY_MAX
      delay = Math.min(500 * 2 ** Math.min(this.#failures - 1, 10), cap, this.#opts.refreshInterval)
    }
    this.#timer = this.#clock.setTimeout(() => {
      this.#timer = null
      this.#refresh().catch(noop)
    }, delay)
  }

  #clearTimer (): void {
    this.#clock.clearTimeout(this.#timer)
    this.#timer = null
  }
}

function noop (): void {}

/**
 * Builds the kid map from a JWKS response. Keeps only RSA keys meant for RS256 signatures, and reuses
 * the entry of a kid whose key did not change (so that anything derived from it survives the refresh).
 */
export function parseKeySet (jwks: unknown, previous: ReadonlyMap<string, SigningKey>): Map<string, SigningKey> {
  const keys = new Map<string, SigningKey>()
  const list = (jwks as { keys?: unknown } | null | undefined)?.keys
  if (!Array.isArray(list)) throw new FetchError('response has no "keys" array')
  for (const jwk of list) {
    // null has no properties; any other JSON value that is not an RSA JWK fails the checks below.
    if (jwk === null) continue
    const { kty, alg, use, kid, n, e } = jwk as Record<string, unknown>
    if (kty !== 'RSA' || typeof kid !== 'string' || !KID.test(kid) || typeof n !== 'string' || typeof e !== 'string') continue
    if ((alg !== undefined && alg !== 'RS256') || (use !== undefined && use !== 'sig') || keys.has(kid)) continue
    // Node accepts any base64 here; a junk n or e shows as a short modulus or a tiny exponent.
    const key = createPublicKey({ key: { kty, n, e }, format: 'jwk' })
    const { modulusLength, publicExponent } = key.asymmetricKeyDetails as { modulusLength: number, publicExponent: bigint }
    if (modulusLength < MIN_RSA_BITS || modulusLength > MAX_RSA_BITS || publicExponent !== RSA_EXPONENT) continue
    const pem = key.export({ type: 'spki', format: 'pem' }) as string
    const old = previous.get(kid)
    keys.set(kid, old?.pem === pem ? old : Object.freeze({ kid, pem, key }))
  }
  return keys
}

/** GET the key set: bounded in time and size, no redirects, status 200 and JSON required. */
export function fetchKeySet (url: string, timeout: number, maxBytes: number, signal?: AbortSignal): Promise<unknown> {
  return getJson(url, { timeout, maxBytes, name: 'key endpoint', signal })
}
