import type { SigningKey } from './keys'
import type { CloudflareAccessClaims } from './types'

interface Entry {
  claims: CloudflareAccessClaims
  /** The key that verified the token: the entry is good only while the store still serves this very key. */
  key: SigningKey
  /** The token's `exp` in milliseconds, plus the clock tolerance: the same bound the verifier applies. */
  expiresAt: number
}

/**
 * Verified tokens, so that a browser session's repeated token costs one lookup instead of an RSA verify.
 * Keyed on the whole token string (only a byte-identical token hits), bounded (least recently used go
 * first), and an entry is used only while the token would still pass the clock check and its key is
 * still the one the key store serves — a key Cloudflare removed takes its cached tokens with it.
 */
export class VerifiedCache {
  readonly #size: number
  readonly #entries = new Map<string, Entry>()

  constructor (size: number) {
    this.#size = size
  }

  get size (): number {
    return this.#entries.size
  }

  /** The cached claims for `token`, if still good at `now` with `currentKey` being the store's key for the entry's kid. */
  get (token: string, now: number, currentKey: (kid: string) => SigningKey | undefined): CloudflareAccessClaims | undefined {
    const entry = this.#entries.get(token)
    if (entry === undefined) return undefined
    this.#entries.delete(token)
    if (now > entry.expiresAt || currentKey(entry.key.kid) !== entry.key) return undefined
    this.#entries.set(token, entry)
    return entry.claims
  }

  set (token: string, claims: CloudflareAccessClaims, key: SigningKey, expiresAt: number): void {
    if (this.#size === 0) return
    this.#entries.set(token, { claims, key, expiresAt })
    if (this.#entries.size > this.#size) {
      this.#entries.delete(this.#entries.keys().next().value as string)
    }
  }
}
