import type { FastifyRequest } from 'fastify'
import { isServiceToken } from './claims'
import type { CloudflareAccessAuthorize, CloudflareAccessClaims, CloudflareAccessIdentity } from './types'

/** A policy after validation: sets for the lists, nothing left to check at request time but membership. */
export interface CompiledPolicy {
  readonly emails: ReadonlySet<string> | null
  readonly emailDomains: ReadonlySet<string> | null
  readonly groups: ReadonlySet<string> | null
  readonly serviceTokens: ReadonlySet<string> | true | null
  /** Whether `allow` was given: without it every valid token passes the allow step. */
  readonly hasAllow: boolean
  readonly authorize: CloudflareAccessAuthorize | null
}

const ALLOW_KEYS = new Set(['emails', 'emailDomains', 'groups', 'serviceTokens'])
const POLICY_KEYS = new Set(['allow', 'authorize'])
const NO_SPACE = /^[^\s]+$/
const DOMAIN = /^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+$/

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
  return new Set([...list(where, name, value, (entry) => check(entry.toLowerCase()), form)].map((entry) => entry.toLowerCase()))
}

/**
 * Validates `{ allow, authorize }` (the plugin's options or a route's `config.cfAccess`) and compiles it.
 * `where` names the place in the error message. Throws on unknown keys, empty lists and non-strings.
 */
export function compilePolicy (where: string, allow: unknown, authorize: unknown): CompiledPolicy {
  if (authorize !== undefined && typeof authorize !== 'function') fail(where, '"authorize" must be a function (claims, request) => boolean | Promise<boolean>')
  const check = (authorize as CloudflareAccessAuthorize | undefined) ?? null
  if (allow === undefined) {
    return { emails: null, emailDomains: null, groups: null, serviceTokens: null, hasAllow: false, authorize: check }
  }
  if (allow === null || typeof allow !== 'object' || Array.isArray(allow)) fail(where, '"allow" must be an object { emails, emailDomains, groups, serviceTokens }')
  const grants = allow as Record<string, unknown>
  const keys = Object.keys(grants)
  for (const key of keys) {
    if (!ALLOW_KEYS.has(key)) fail(where, `unknown key "allow.${key}"; known: ${[...ALLOW_KEYS].join(', ')}`)
  }
  if (keys.every((key) => grants[key] === undefined)) fail(where, '"allow" needs at least one of emails, emailDomains, groups, serviceTokens')
  const serviceTokens = grants.serviceTokens
  return {
    emails: grants.emails === undefined ? null : lowerList(where, 'allow.emails', grants.emails, (e) => NO_SPACE.test(e) && e.indexOf('@') > 0, 'email addresses'),
    emailDomains: grants.emailDomains === undefined ? null : lowerList(where, 'allow.emailDomains', grants.emailDomains, (d) => DOMAIN.test(d), "domains such as 'acme.com' (no '@')"),
    groups: grants.groups === undefined ? null : list(where, 'allow.groups', grants.groups, (g) => g.trim() !== '', 'group names or ids'),
    serviceTokens: serviceTokens === undefined
      ? null
      : serviceTokens === true ? true : list(where, 'allow.serviceTokens', serviceTokens, (id) => NO_SPACE.test(id), "service token Client IDs ('….access'), or true"),
    hasAllow: true,
    authorize: check
  }
}

/** Validates and compiles a route's `config.cfAccess`. */
export function compileRouteConfig (where: string, value: unknown): CompiledPolicy {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    fail(where, 'config.cfAccess must be false or a policy { allow?, authorize? }')
  }
  const policy = value as Record<string, unknown>
  for (const key of Object.keys(policy)) {
    if (!POLICY_KEYS.has(key)) fail(where, `unknown key "config.cfAccess.${key}"; known: allow, authorize`)
  }
  if (policy.allow === undefined && policy.authorize === undefined) fail(where, 'config.cfAccess needs "allow" or "authorize" (or false to skip verification)')
  return compilePolicy(where, policy.allow, policy.authorize)
}

/**
 * Whether the policy admits the verified claims. The identity endpoint is asked only when a user token
 * reaches the `groups` grant; `authorize` runs last and must return exactly `true`.
 */
export async function admits (
  policy: CompiledPolicy,
  claims: CloudflareAccessClaims,
  request: FastifyRequest,
  identity: () => Promise<CloudflareAccessIdentity>
): Promise<boolean> {
  if (policy.hasAllow && !await allowed(policy, claims, identity)) return false
  return policy.authorize === null || await policy.authorize(claims, request) === true
}

async function allowed (policy: CompiledPolicy, claims: CloudflareAccessClaims, identity: () => Promise<CloudflareAccessIdentity>): Promise<boolean> {
  if (isServiceToken(claims)) {
    return policy.serviceTokens === true || (policy.serviceTokens?.has(claims.common_name) ?? false)
  }
  const email = claims.email.toLowerCase()
  if (policy.emails?.has(email) === true) return true
  if (policy.emailDomains?.has(email.slice(email.lastIndexOf('@') + 1)) === true) return true
  if (policy.groups === null) return false
  const { groups } = await identity()
  for (const group of groups) {
    if (policy.groups.has(group.name) || policy.groups.has(group.id)) return true
  }
  return false
}
