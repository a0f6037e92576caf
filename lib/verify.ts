import { createVerifier, type TokenError } from 'fast-jwt'
import { ClaimInvalidError, TokenExpiredError, TokenInvalidError } from './errors'
import type { KeyStore, SigningKey } from './keys'
import type { NormalizedOptions } from './options'
import { VerifiedCache } from './cache'
import { deepFreeze } from './freeze'
import { checkStructure, MAX_TOKEN_LENGTH } from './token'
import type { CloudflareAccessClaims } from './types'

type ClaimsVerifier = (token: string) => Record<string, unknown>

/** Verifies tokens for one registration. */
export interface TokenVerifier {
  /**
   * The verified claims — synchronously when no I/O is needed (a cached token, or a key already in the
   * set), as a promise when the key must be fetched. Throws (or rejects with) one of the plugin's errors.
   */
  verify: (token: unknown) => CloudflareAccessClaims | Promise<CloudflareAccessClaims>
}

/**
 * Verification of one registration: verified-token cache → structure → key by kid → fast-jwt (RS256,
 * signature, aud, iss, exp, nbf) → the checks fast-jwt does not make (iat, claim types, `type`, user or
 * service token). Claims are frozen: one object may serve many requests.
 */
export function createTokenVerifier (options: NormalizedOptions, store: KeyStore): TokenVerifier {
  // One fast-jwt verifier per key, built the first time the key is used and dropped with the key.
  const verifiers = new WeakMap<SigningKey, ClaimsVerifier>()
  const cache = new VerifiedCache(options.cacheSize)
  const { clockToleranceMs } = options
  const currentKey = (kid: string): SigningKey | undefined => store.get(kid)

  function verifierFor (key: SigningKey): ClaimsVerifier {
    let verifier = verifiers.get(key)
    if (verifier === undefined) {
      verifier = createVerifier({
        key: key.pem,
        algorithms: ['RS256'],
        // Plain strings only: fast-jwt matches RegExp audiences unanchored.
        allowedAud: [...options.audience],
        allowedIss: [options.issuer],
        requiredClaims: ['exp', 'iss', 'aud'],
        clockTolerance: clockToleranceMs,
        cache: false
      }) as ClaimsVerifier
      verifiers.set(key, verifier)
    }
    return verifier
  }

  function verifyWithKey (token: string, key: SigningKey): CloudflareAccessClaims {
    let payload: Record<string, unknown>
    try {
      payload = verifierFor(key)(token)
    } catch (error) {
      throw translate(error as TokenError)
    }
    const claims = checkClaims(payload, Date.now(), clockToleranceMs)
    deepFreeze(claims)
    cache.set(token, claims, key, claims.exp * 1000 + clockToleranceMs)
    return claims
  }

  function verifyWithResolvedKey (token: string, key: SigningKey | undefined): CloudflareAccessClaims {
    if (key === undefined) throw new TokenInvalidError('unknown key id (kid)')
    return verifyWithKey(token, key)
  }

  return {
    verify (token: unknown): CloudflareAccessClaims | Promise<CloudflareAccessClaims> {
      if (typeof token === 'string' && token.length <= MAX_TOKEN_LENGTH) {
        const cached = cache.get(token, Date.now(), currentKey)
        if (cached !== undefined) return cached
      }
      const kid = checkStructure(token)
      const key = store.get(kid)
      if (key !== undefined) return verifyWithKey(token as string, key)
      return store.resolve(kid).then((resolved) => verifyWithResolvedKey(token as string, resolved))
    }
  }
}

const NUMERIC_DATES = ['exp', 'nbf', 'iat'] as const

/** The checks beyond fast-jwt's, on claims whose signature, aud, iss, exp and nbf already passed. */
export function checkClaims (claims: Record<string, unknown>, now: number, toleranceMs: number): CloudflareAccessClaims {
  for (const name of NUMERIC_DATES) {
    const value = claims[name]
    if (value !== undefined && (typeof value !== 'number' || !Number.isFinite(value))) {
      throw new ClaimInvalidError(`${name} is not a finite number`)
    }
  }
  if (typeof claims.iat === 'number' && claims.iat * 1000 > now + toleranceMs) {
    throw new TokenExpiredError('issued in the future (iat)')
  }
  if (claims.type !== undefined && claims.type !== 'app') {
    throw new ClaimInvalidError('type is not "app"')
  }
  if (claims.sub !== undefined && typeof claims.sub !== 'string') {
    throw new ClaimInvalidError('sub is not a string')
  }
  const isUser = typeof claims.email === 'string'
  const isService = typeof claims.common_name === 'string'
  if (isUser === isService || (!isUser && claims.email !== undefined) || (!isService && claims.common_name !== undefined)) {
    throw new ClaimInvalidError('neither a user token (email) nor a service token (common_name)')
  }
  return claims as unknown as CloudflareAccessClaims
}

const CLAIM_IN_MESSAGE = /\b(aud|iss|exp|nbf|iat)\b/

/** Maps a fast-jwt error to one of ours, keeping only the claim name: no token text ever leaves. */
function translate (error: TokenError): Error {
  const claim = CLAIM_IN_MESSAGE.exec(String(error.message))?.[1] ?? 'a claim'
  switch (error.code) {
    case 'FAST_JWT_EXPIRED':
      return new TokenExpiredError('expired (exp)')
    case 'FAST_JWT_INACTIVE':
      return new TokenExpiredError('not valid yet (nbf)')
    case 'FAST_JWT_INVALID_CLAIM_VALUE':
      return new ClaimInvalidError(claim === 'aud' ? 'aud does not name this application' : `${claim} is not the configured value`)
    case 'FAST_JWT_INVALID_CLAIM_TYPE':
      return new ClaimInvalidError(`${claim} has the wrong type`)
    case 'FAST_JWT_MISSING_REQUIRED_CLAIM':
      return new ClaimInvalidError(`${claim} is missing`)
    case 'FAST_JWT_INVALID_SIGNATURE':
      return new TokenInvalidError('signature does not verify')
    default:
      return new TokenInvalidError('not a valid RS256 JWT')
  }
}
