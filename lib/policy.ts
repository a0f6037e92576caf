import type { FastifyRequest } from 'fastify'
import { isServiceToken } from './claims'
import { AuthorizeFailedError, AuthorizeTimeoutError, toError } from './errors'
import { didYouMean } from './suggest'
import { membershipOf } from './identity'
import type { CloudflareAccessAuthorize, CloudflareAccessClaims, CloudflareAccessIdentity } from './types'

/** A policy after validation: sets for the lists, nothing left to check at request time but membership. */
export interface CompiledPolicy {
  /** ASCII-lowercased. */
  readonly emails: ReadonlySet<string> | null
  /** ASCII-lowercased. */
  readonly emailDomains: ReadonlySet<string> | null
  /** Group names, exact. */
  readonly groups: ReadonlySet<string> | null
  /** Group ids, exact. */
  readonly groupIds: ReadonlySet<string> | null
  readonly serviceTokens: ReadonlySet<string> | true | null
  /** Whether `allow` was given: without it every valid token passes the allow step. */
  readonly hasAllow: boolean
  readonly authorize: CloudflareAccessAuthorize | null
  /** Which grant kinds `allow` has, for the 403 log line ("why was I denied"). */
  readonly grantKinds: readonly string[]
}

const ALLOW_KEYS = new Set(['emails', 'emailDomains', 'groups', 'groupIds', 'serviceTokens'])
const NO_SPACE = /^[^\s]+$/
/** A domain as `allow.emailDomains` takes it: lowercase ASCII labels, two or more (the dev proxy's login checks emails with it). */
export const DOMAIN = /^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+$/
const ASCII_UPPER = /[A-Z]/g
// Stryker disable StringLiteral,ObjectLiteral: message text only (each refusal is tested)
/** What each list must hold, for the refusal message. */
const EXPECTED = {
  emails: 'email addresses',
  emailDomains: "domains such as 'acme.com' (no '@')",
  groups: 'group names',
  groupIds: 'group ids',
  serviceTokens: "service token Client IDs ('….access'), or true"
}
// Stryker restore StringLiteral,ObjectLiteral

/**
 * Lowercases A–Z only. `toLowerCase()` folds far more (U+212A KELVIN SIGN becomes `k`, so
 * `user@\u212Araken.io` would pass `kraken.io`): email addresses and domains compare by ASCII case only.
 */
export function asciiLower (value: string): string {
  return value.replace(ASCII_UPPER, lowerChar)
}

function lowerChar (char: string): string {
  return String.fromCharCode(char.charCodeAt(0) | 0x20)
}

function fail (where: string, message: string): never {
  throw new Error(`fastify-cloudflare-access: ${where}: ${message}`)
}

function list (where: string, name: string, value: unknown, check: (entry: string) => boolean, form: string): Set<string> {
  if (!Array.isArray(value) || value.length === 0) fail(where, `"${name}" must be a non-empty array of ${form}`)
  for (const entry of value) {
    if (typeof entry !== 'string' || !check(entry)) fail(where, `"${name}" must be a non-empty array of ${form}, got ${JSON.stringify(entry) ?? typeof entry}`)
  }
  return new Set(value as string[])
}

function lowerList (where: string, name: string, value: unknown, check: (entry: string) => boolean, form: string): Set<string> {
  return new Set([...list(where, name, value, (entry) => check(asciiLower(entry)), form)].map(asciiLower))
}

const nonBlank = (entry: string): boolean => entry.trim() !== ''

/**
 * Validates `{ allow, authorize }` (the plugin's options or a route's `config.cfAccess`) and compiles it.
 * `where` names the place in the error message. Throws on unknown keys, empty lists and non-strings.
 */
export function compilePolicy (where: string, allow: unknown, authorize: unknown): CompiledPolicy {
  if (authorize !== undefined && typeof authorize !== 'function') fail(where, '"authorize" must be a function (claims, request) => boolean | Promise<boolean>')
  const check = (authorize as CloudflareAccessAuthorize | undefined) ?? null
  if (allow === undefined) {
    return { emails: null, emailDomains: null, groups: null, groupIds: null, serviceTokens: null, hasAllow: false, authorize: check, grantKinds: [] }
  }
  if (allow === null || typeof allow !== 'object' || Array.isArray(allow)) fail(where, '"allow" must be an object { emails, emailDomains, groups, groupIds, serviceTokens }')
  const grants = allow as Record<string, unknown>
  const keys = Object.keys(grants)
  for (const key of keys) {
    // Stryker disable next-line ArrayDeclaration,StringLiteral: message text only (the refusal is tested)
    if (!ALLOW_KEYS.has(key)) fail(where, `unknown key "allow.${key}";${didYouMean(key, ALLOW_KEYS)} known: ${[...ALLOW_KEYS].join(', ')}`)
  }
  const grantKinds = Object.freeze(keys.filter((key) => grants[key] !== undefined))
  if (grantKinds.length === 0) fail(where, '"allow" needs at least one of emails, emailDomains, groups, groupIds, serviceTokens')
  const serviceTokens = grants.serviceTokens
  return {
    emails: grants.emails === undefined ? null : lowerList(where, 'allow.emails', grants.emails, (e) => NO_SPACE.test(e) && e.indexOf('@') > 0, EXPECTED.emails),
    emailDomains: grants.emailDomains === undefined ? null : lowerList(where, 'allow.emailDomains', grants.emailDomains, (d) => DOMAIN.test(d), EXPECTED.emailDomains),
    groups: grants.groups === undefined ? null : list(where, 'allow.groups', grants.groups, nonBlank, EXPECTED.groups),
    groupIds: grants.groupIds === undefined ? null : list(where, 'allow.groupIds', grants.groupIds, nonBlank, EXPECTED.groupIds),
    serviceTokens: serviceTokens === undefined
      ? null
      : serviceTokens === true ? true : list(where, 'allow.serviceTokens', serviceTokens, (id) => NO_SPACE.test(id), EXPECTED.serviceTokens),
    hasAllow: true,
    authorize: check,
    grantKinds
  }
}

/**
 * The identity of the token being verified, for the group grants and `authorize`: looked up on first use
 * (the identity client caches it per token, so the grants and `authorize` share one lookup), and every
 * lookup remembered, so that one that failed refuses the request whatever `authorize` made of it.
 */
export class IdentityLookups {
  readonly #lookup: () => Promise<CloudflareAccessIdentity>
  readonly #asked: Array<Promise<CloudflareAccessIdentity>> = []

  constructor (lookup: () => Promise<CloudflareAccessIdentity>) {
    this.#lookup = lookup
  }

  /** What `authorize`'s `identity()` and `request.cfAccessIdentity()` answer while the policy runs. */
  readonly get = (): Promise<CloudflareAccessIdentity> => {
    const pending = this.#lookup()
    // Handled here too: a lookup that `authorize` never awaits must not become an unhandled rejection.
    pending.catch(noop)
    this.#asked.push(pending)
    return pending
  }

  /** Refuses the request with `error` whatever `authorize` makes of it: for a question that could not be answered. */
  refuse (error: Error): Promise<never> {
    const refused = Promise.reject(error)
    refused.catch(noop)
    this.#asked.push(refused)
    return refused
  }

  /** Rejects with the error of the first lookup that failed, once all have settled. */
  async settled (): Promise<void> {
    for (const pending of this.#asked) await pending
  }
}

function noop (): void {}

/** A verification under way on a request: the token whose policies run, and its identity lookups. */
export interface Verification {
  readonly token: string
  readonly identity: IdentityLookups
}

/**
 * `request.cfAccessIdentity()` while policies run on the request (`authorize` asking, usually): the identity
 * of the token being verified, looked up for every verification under way (each refuses if it fails). Where
 * it cannot tell which token the caller means — verifications of different tokens overlap, or the request
 * was admitted with another token than the one `verifyToken(token, request)` verifies — it answers no
 * identity: it rejects, and refuses every verification under way. `identity()`, `authorize`'s third
 * argument, is never ambiguous.
 */
export function identityWhileVerifying (under: readonly Verification[], admitted: string | null): Promise<CloudflareAccessIdentity> {
  const token = admitted ?? (under[0] as Verification).token
  if (under.every((verification) => verification.token === token)) {
    return under.map((verification) => verification.identity.get())[0] as Promise<CloudflareAccessIdentity>
  }
  const error = new AuthorizeFailedError(
    // Stryker disable next-line StringLiteral: message text only (the refusal and its pointer to identity() are tested)
    'request.cfAccessIdentity() cannot tell which token it is asked about while another token is verified on the same request ' +
    '(verifyToken(token, request)): inside authorize, use identity(), its third argument'
  )
  return under.map((verification) => verification.identity.refuse(error))[0] as Promise<never>
}

/** What a policy check needs besides the claims. */
export interface PolicyContext {
  request: FastifyRequest
  /** The user's identity, looked up only when a `groups`/`groupIds` grant is reached or `authorize` asks. */
  identity: IdentityLookups
  /** Longest `authorize` may take, in milliseconds. */
  authorizeTimeout: number
}

/**
 * Whether the policy admits the verified claims. The identity endpoint is asked only when a user token
 * reaches a group grant or `authorize` asks for it; `authorize` runs last and must return exactly `true`.
 * Rejects with an Error only: whatever `authorize` throws (or never settling) never reads as "admitted"
 * or "no error", and an identity lookup that failed while `authorize` ran refuses the request with its own
 * error (401, 403 or 503), whatever `authorize` returned or threw.
 */
export async function admits (policy: CompiledPolicy, claims: CloudflareAccessClaims, context: PolicyContext): Promise<boolean> {
  if (policy.hasAllow && !await allowed(policy, claims, context.identity)) return false
  if (policy.authorize === null) return true
  const outcome = await runAuthorize(policy.authorize, claims, context).then((value) => ({ value }), (error: Error) => ({ error }))
  await context.identity.settled()
  if ('error' in outcome) throw outcome.error
  return outcome.value === true
}

/**
 * Runs `authorize` with every thrown value turned into an Error; a promise it returns is bounded by
 * `authorizeTimeout` (a synchronous answer needs no timer).
 */
function runAuthorize (authorize: CloudflareAccessAuthorize, claims: CloudflareAccessClaims, context: PolicyContext): Promise<unknown> {
  let result: unknown
  try {
    result = authorize(claims, context.request, { identity: context.identity.get })
    if (!isThenable(result)) return Promise.resolve(result)
  } catch (error) {
    return Promise.reject(toError(error))
  }
  const pending = result
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new AuthorizeTimeoutError(context.authorizeTimeout)), context.authorizeTimeout)
    timer.unref()
    Promise.resolve(pending).then(
      (value) => { clearTimeout(timer); resolve(value) },
      (error: unknown) => { clearTimeout(timer); reject(toError(error)) }
    )
  })
}

function isThenable (value: unknown): value is PromiseLike<unknown> {
  return typeof (value as { then?: unknown } | null | undefined)?.then === 'function'
}

/**
 * The domain of an email claim, ASCII-lowercased: what follows its last `@` (RFC 5321 allows `@` in a
 * quoted local part), or undefined for a claim with no `@` after at least one character, which is no
 * address and matches no email grant.
 */
function domainOf (email: string): string | undefined {
  const at = email.lastIndexOf('@')
  return at < 1 ? undefined : email.slice(at + 1)
}

async function allowed (policy: CompiledPolicy, claims: CloudflareAccessClaims, identity: IdentityLookups): Promise<boolean> {
  if (isServiceToken(claims)) {
    return policy.serviceTokens === true || (policy.serviceTokens?.has(claims.common_name) ?? false)
  }
  const email = asciiLower(claims.email)
  const domain = domainOf(email)
  if (domain !== undefined && policy.emails?.has(email) === true) return true
  if (domain !== undefined && policy.emailDomains?.has(domain) === true) return true
  if (policy.groups === null && policy.groupIds === null) return false
  const { ids, names } = membershipOf(await identity.get())
  for (const name of names) if (policy.groups?.has(name) === true) return true
  for (const id of ids) if (policy.groupIds?.has(id) === true) return true
  return false
}
