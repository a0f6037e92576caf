import { createVerifier, type TokenError } from 'fast-jwt'
import type { FastifyBaseLogger } from 'fastify'
import { ClaimInvalidError, errorCodes, TokenExpiredError, TokenInvalidError } from './errors'
import type { KeyStore, SigningKey } from './keys'
import type { NormalizedOptions } from './options'
import { TokenCache, type CacheCounters } from './cache'
import { decoderIsStrict, warnDecoderNotStrict } from './decoder-check'
import { deepFreeze } from './freeze'
import { MAX_TOKEN_LENGTH, StructureMemo, type Decoded } from './token'
import type { CloudflareAccessClaims } from './types'

type ClaimsVerifier = (token: string) => Record<string, unknown>

/** Verifies tokens for one registration. */
export interface TokenVerifier {
  /**
   * The verified claims, or the error to answer — both synchronously when no I/O is needed (a cached
   * token, or a key already in the set): rejections are returned, not thrown, because exceptions are slow
   * and rejections are ordinary traffic. A promise (that rejects with the error) when the key must be fetched.
   */
  verify: (token: unknown) => CloudflareAccessClaims | Error | Promise<CloudflareAccessClaims>
  /** The verified-token cache's hits, misses and size. */
  cacheCounters: () => CacheCounters
  /**
   * Whether the hot path is on: only when fast-jwt's decoder refuses characters outside base64url
   * (lib/decoder-check.ts); otherwise every token gets the full structural check.
   */
  hotPath: boolean
}

/**
 * Where the plugin's decorator keeps `TokenVerifier.cacheCounters`, out of its public shape: for the
 * benchmark server (and whatever status API comes to report the cache).
 */
export const kCacheCounters = Symbol('fastify-cloudflare-access.cacheCounters')

/** Where keys come from: the plugin's KeyStore, or a fixed set (the CLI's `--certs`). */
export type KeySource = Pick<KeyStore, 'get' | 'isKnownUnknown' | 'resolve'>

/** What a verifier may be given besides the options and the keys. */
export interface VerifierExtras {
  /** Verify as of this time (milliseconds), instead of now: for the CLI's `--at`; the plugin never sets it. */
  at?: number
  /** Where to say that the hot path is off (the plugin's logger). */
  log?: Pick<FastifyBaseLogger, 'warn'>
  /** fast-jwt's `createVerifier`: the one this package resolved, or, in tests, another version's. */
  createVerifier?: typeof createVerifier
}

/**
 * Verification of one registration: verified-token cache → structure → key by kid → fast-jwt (RS256,
 * signature, aud, iss, exp, nbf) → the checks fast-jwt does not make (iat, claim types, `type`, user or
 * service token). Claims are frozen: one object may serve many requests. The structure is checked in
 * full for a header not seen before; for one seen before, only what fast-jwt's decoder does not check
 * (see StructureMemo), so that a token is decoded once.
 */
export function createTokenVerifier (options: NormalizedOptions, store: KeySource, extra: VerifierExtras = {}): TokenVerifier {
  const { at, log, createVerifier: create = createVerifier } = extra
  // One fast-jwt verifier per key, built the first time the key is used and dropped with the key.
  const verifiers = new WeakMap<SigningKey, ClaimsVerifier>()
  const cache = new TokenCache(options.cacheSize)
  const hotPath = decoderIsStrict(create)
  const shapes = new StructureMemo(hotPath)
  if (!hotPath && log !== undefined) warnDecoderNotStrict(log)
  const { clockToleranceMs } = options
  // The `aud` of nearly every token is one configured audience, alone: shared, frozen once, since freezing
  // an array costs more than all the rest of freezing the claims.
  const audiences = new Map(options.audience.map((aud) => [aud, Object.freeze([aud])]))
  const currentKey = (kid: string): SigningKey | undefined => store.get(kid)
  // What a 401 for another application's token carries for the log line (never in its message, which the client gets).
  const audienceHelp: AudienceHelp = Object.freeze({
    expectedAudiences: options.audience,
    help: 'the token names another Access application: npx fastify-cloudflare-access inspect shows its aud beside these'
  })

  // The last key used, and its verifier: nearly every token is signed with the current key.
  let lastKey: SigningKey | undefined
  let lastVerifier: ClaimsVerifier | undefined

  function verifierFor (key: SigningKey): ClaimsVerifier {
    if (key === lastKey) return lastVerifier as ClaimsVerifier
    let verifier = verifiers.get(key)
    if (verifier === undefined) {
      verifier = create({
        key: key.pem,
        algorithms: ['RS256'],
        // Plain strings only: fast-jwt matches RegExp audiences unanchored.
        allowedAud: [...options.audience],
        allowedIss: [options.issuer],
        requiredClaims: ['exp', 'iss', 'aud'],
        clockTolerance: clockToleranceMs,
        clockTimestamp: at,
        cache: false
      }) as ClaimsVerifier
      verifiers.set(key, verifier)
    }
    lastKey = key
    lastVerifier = verifier
    return verifier
  }

  /** Deeply, `aud` replaced by the same audience's shared array when it is one. */
  function freeze (claims: CloudflareAccessClaims): void {
    const { aud } = claims
    if (Array.isArray(aud) && aud.length === 1) {
      const shared = audiences.get(aud[0] as string)
      if (shared !== undefined) (claims as { aud: readonly string[] }).aud = shared
    }
    deepFreeze(claims)
  }

  /** Until when a decision about a token with this `exp` may be reused: the verifier's own bound. */
  function reusableUntil (exp: unknown): number {
    return typeof exp === 'number' ? exp * 1000 + clockToleranceMs : Infinity
  }

  /**
   * From when a decision about a token with these claims may be reused: the verifier's own lower bounds
   * (`nbf`, and `iat` as checkClaims checks it). A clock does step back (NTP, a restored VM): a token
   * verified just after it was issued is then not valid yet, cached or not.
   */
  function reusableFrom (claims: Record<string, unknown>): number {
    const { nbf, iat } = claims
    const from = typeof nbf === 'number' ? nbf * 1000 - clockToleranceMs : -Infinity
    return typeof iat === 'number' ? Math.max(from, iat * 1000 - clockToleranceMs) : from
  }

  /** fast-jwt's verification of a token with a key (StructureMemo runs it, with its rules). */
  function fastJwt (key: SigningKey, token: string): Record<string, unknown> {
    return verifierFor(key)(token)
  }

  /** The answer for a decoded token: the claims, or the error (remembered when a signed token is wrong for good). */
  function finish (token: string, decoded: Decoded<SigningKey>, now: number): CloudflareAccessClaims | Error {
    if (decoded.error !== undefined) return decoded.error
    const { key, payload } = decoded as { key: SigningKey, payload?: Record<string, unknown>, refused?: unknown }
    if (payload === undefined) {
      const rejection = translate((decoded as { refused: TokenError }).refused, audienceHelp)
      // A signed token for another application stays wrong: remember that, so that replaying it costs no RSA.
      if (rejection.code === errorCodes.CLAIM_INVALID) {
        const claims = payloadOf(token)
        cache.reject(token, rejection, key, reusableUntil(claims.exp), reusableFrom(claims))
      }
      return rejection
    }
    const claims = checkClaims(payload, now, clockToleranceMs)
    if (claims instanceof Error) {
      if (claims.code === errorCodes.CLAIM_INVALID) cache.reject(token, claims, key, reusableUntil(payload.exp), reusableFrom(payload))
      return claims
    }
    freeze(claims)
    cache.set(token, claims, key, reusableUntil(claims.exp), reusableFrom(payload))
    return claims
  }

  function verifyWithResolvedKey (token: string, key: SigningKey | undefined): CloudflareAccessClaims {
    const result = key === undefined ? new TokenInvalidError('unknown key id (kid)') : finish(token, shapes.decodeWithKey(token, key, fastJwt), at ?? Date.now())
    if (result instanceof Error) throw result
    return result
  }

  return {
    cacheCounters: () => cache.counters(),
    hotPath,
    verify (token: unknown): CloudflareAccessClaims | Error | Promise<CloudflareAccessClaims> {
      const now = at ?? Date.now()
      if (typeof token === 'string' && token.length <= MAX_TOKEN_LENGTH) {
        const cached = cache.get(token, now, currentKey)
        if (cached !== undefined) return cached
      }
      // Structure, key and fast-jwt, the hot path's rules kept by StructureMemo.
      const decoded = shapes.decode(token, currentKey, fastJwt)
      if (decoded.kid === undefined) return finish(token as string, decoded, now)
      if (store.isKnownUnknown(decoded.kid)) return new TokenInvalidError('unknown key id (kid)')
      return store.resolve(decoded.kid).then((resolved) => verifyWithResolvedKey(token as string, resolved))
    }
  }
}

/** The payload of a token fast-jwt has already decoded without error. */
function payloadOf (token: string): Record<string, unknown> {
  return JSON.parse(Buffer.from(token.slice(token.indexOf('.') + 1, token.lastIndexOf('.')), 'base64url').toString('utf8'))
}

const NUMERIC_DATES = ['exp', 'nbf', 'iat'] as const

type Rejection = Error & { code: string }

/** The checks beyond fast-jwt's, on claims whose signature, aud, iss, exp and nbf already passed. */
export function checkClaims (claims: Record<string, unknown>, now: number, toleranceMs: number): CloudflareAccessClaims | Rejection {
  for (const name of NUMERIC_DATES) {
    const value = claims[name]
    // Number.isFinite is false for anything but a finite number (it does not convert)
    if (value !== undefined && !Number.isFinite(value)) {
      // Stryker disable next-line StringLiteral: message text only (the refusal and its code are tested)
      return new ClaimInvalidError(`${name} is not a finite number`)
    }
  }
  if (typeof claims.iat === 'number' && claims.iat * 1000 > now + toleranceMs) {
    return new TokenExpiredError('issued in the future (iat)')
  }
  if (claims.type !== undefined && claims.type !== 'app') {
    return new ClaimInvalidError('type is not "app"')
  }
  if (claims.sub !== undefined && typeof claims.sub !== 'string') {
    // Stryker disable next-line StringLiteral: message text only (the refusal and its code are tested)
    return new ClaimInvalidError('sub is not a string')
  }
  const isUser = typeof claims.email === 'string'
  const isService = typeof claims.common_name === 'string'
  if (isUser === isService || (!isUser && claims.email !== undefined) || (!isService && claims.common_name !== undefined)) {
    // Stryker disable next-line StringLiteral: message text only (the refusal and its code are tested)
    return new ClaimInvalidError('neither a user token (email) nor a service token (common_name)')
  }
  return claims as unknown as CloudflareAccessClaims
}

const CLAIM_IN_MESSAGE = /\b(aud|iss|exp|nbf|iat)\b/

/** The fields of a 401 for a token of another audience, for the log line. */
interface AudienceHelp {
  readonly expectedAudiences: readonly string[]
  readonly help: string
}

/**
 * Maps a fast-jwt error to one of ours, keeping only the claim name: no token text ever leaves. A token for
 * another application also gets `audienceHelp`'s fields.
 */
function translate (error: TokenError, audienceHelp: AudienceHelp): Rejection {
  // fast-jwt formats the failing time into its message; a date beyond what Date can hold (an nbf far in
  // the future, an exp far in the past) makes that throw a RangeError instead.
  // Stryker disable next-line StringLiteral: message text only (the refusal and its code are tested)
  if (error instanceof RangeError) return new TokenExpiredError('a time claim is out of range')
  // Stryker disable next-line all: message text only, the claim a refusal names (the refusals and codes are tested)
  const claim = CLAIM_IN_MESSAGE.exec(String(error.message))?.[1] ?? 'a claim'
  switch (error.code) {
    case 'FAST_JWT_EXPIRED':
      return new TokenExpiredError('expired (exp)')
    case 'FAST_JWT_INACTIVE':
      // Stryker disable next-line StringLiteral: message text only (the refusal and its code are tested)
      return new TokenExpiredError('not valid yet (nbf)')
    case 'FAST_JWT_INVALID_CLAIM_VALUE':
      if (claim === 'aud') return Object.assign(new ClaimInvalidError('aud does not name this application'), audienceHelp)
      // Stryker disable next-line StringLiteral: message text only (the refusal and its code are tested)
      return new ClaimInvalidError(`${claim} is not the configured value`)
    // Stryker disable next-line ConditionalExpression: equivalent but for the message, this case falls through to the next one's error class and code
    case 'FAST_JWT_INVALID_CLAIM_TYPE':
      // Stryker disable next-line StringLiteral: message text only (the refusal and its code are tested)
      return new ClaimInvalidError(`${claim} has the wrong type`)
    case 'FAST_JWT_MISSING_REQUIRED_CLAIM':
      // Stryker disable next-line StringLiteral: message text only (the refusal and its code are tested)
      return new ClaimInvalidError(`${claim} is missing`)
    // Stryker disable next-line ConditionalExpression,StringLiteral: message text only, without this case the default answers the same error class and code
    case 'FAST_JWT_INVALID_SIGNATURE':
      // Stryker disable next-line StringLiteral: message text only (the refusal and its code are tested)
      return new TokenInvalidError('signature does not verify')
    default:
      // Stryker disable next-line StringLiteral: message text only (the refusal and its code are tested)
      return new TokenInvalidError('not a valid RS256 JWT')
  }
}
