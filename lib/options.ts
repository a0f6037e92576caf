import { compilePolicy, type CompiledPolicy } from './policy'
import { didYouMean } from './suggest'
import type { CloudflareAccessHook, FastifyCloudflareAccessOptions } from './types'

/** Options after validation: every field present, every value usable as is. */
export interface NormalizedOptions {
  /** `https://<team>.cloudflareaccess.com` (or a loopback `http://` origin): the exact `iss`. */
  issuer: string
  certsUrl: string
  audience: readonly string[]
  hook: CloudflareAccessHook
  /** Whether the scope hook lets CORS preflights through unverified (lib/preflight.ts). */
  corsPreflight: boolean
  /** Whether the plugin's own hook requires a token where the route does not say (lib/optional.ts). */
  required: boolean
  /** Milliseconds (the option is given in seconds). */
  clockToleranceMs: number
  fetchTimeout: number
  refreshInterval: number
  unknownKidCooldown: number
  maxStaleAge: number
  /** The plugin-level policy, or null when neither `allow` nor `authorize` was given. */
  policy: CompiledPolicy | null
  authorizeTimeout: number
  /** Milliseconds `ready()` waits for the first key set; 0: it does not wait. */
  waitForKeys: number
  identityUrl: string
  identityTimeout: number
  identityCacheTtl: number
  identityCacheSize: number
  cacheSize: number
}

export const DEFAULTS = {
  clockTolerance: 30,
  fetchTimeout: 5_000,
  refreshInterval: 600_000,
  unknownKidCooldown: 5_000,
  maxStaleAge: 6 * 3_600_000,
  identityTimeout: 5_000,
  authorizeTimeout: 10_000,
  waitForKeys: 0,
  identityCacheTtl: 300_000,
  identityCacheSize: 1_000,
  cacheSize: 1_000
} as const

const KNOWN_OPTIONS = new Set([
  'teamDomain', 'audience', 'hook', 'clockTolerance',
  'fetchTimeout', 'refreshInterval', 'unknownKidCooldown', 'maxStaleAge',
  'allow', 'authorize', 'authorizeTimeout', 'waitForKeys', 'identityTimeout', 'identityCacheTtl', 'identityCacheSize', 'cacheSize', 'corsPreflight', 'required',
  // Fastify's own register options, which fastify-plugin leaves to the plugin (lib/log.ts applies them)
  'logLevel', 'logSerializers'
])

const TEAM_NAME = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/
const ACCESS_HOST = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.(?:fed\.)?cloudflareaccess\.com$/
const LOOPBACK_V4 = /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/
// Printable ASCII without spaces: anything else in an option is a copy-paste accident.
const PRINTABLE = /^[\x21-\x7e]+$/

const TEAM_DOMAIN_FORMS = "a team name ('acme'), a team domain ('acme.cloudflareaccess.com', " +
  // Stryker disable next-line StringLiteral: message text only (every refusal of a team domain is tested)
  "'acme.fed.cloudflareaccess.com') or its https origin ('https://acme.cloudflareaccess.com'); " +
  'http:// only for loopback hosts (127.0.0.0/8, localhost, [::1])'

function fail (option: string, expected: string, got: string): never {
  throw new Error(`fastify-cloudflare-access: option "${option}" must be ${expected}, got ${got}`)
}

// Stryker disable all: message text only, how a refused value is shown (the refusals are tested)
function describe (value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value.length > 80 ? value.slice(0, 80) + '…' : value)
  if (Array.isArray(value)) return 'an array'
  return value === null ? 'null' : typeof value
}
// Stryker restore all

/** Normalises a team domain to the origin that issues tokens and serves keys, or throws. */
export function normalizeTeamDomain (value: unknown): string {
  if (typeof value !== 'string' || !PRINTABLE.test(value)) {
    return fail('teamDomain', TEAM_DOMAIN_FORMS, describe(value))
  }
  const lower = value.toLowerCase()
  if (TEAM_NAME.test(lower)) return `https://${lower}.cloudflareaccess.com`
  if (ACCESS_HOST.test(lower)) return `https://${lower}`

  let url: URL
  try {
    url = new URL(value)
  } catch {
    return fail('teamDomain', TEAM_DOMAIN_FORMS, describe(value))
  }
  // No credentials, query or fragment anywhere in what was written (stricter than asking URL, which drops an
  // empty '?' or '#'), and no path.
  const plainOrigin = url.pathname === '/' && !value.includes('@') && !value.includes('?') && !value.includes('#')
  if (plainOrigin) {
    if (url.protocol === 'https:' && url.port === '' && ACCESS_HOST.test(url.hostname)) return url.origin
    if (url.protocol === 'http:' && isLoopback(url.hostname)) return url.origin
  }
  return fail('teamDomain', TEAM_DOMAIN_FORMS, describe(value))
}

export function isLoopback (hostname: string): boolean {
  // URL has already canonicalised the host: '127.1' is '127.0.0.1', '[0:0::1]' is '[::1]'.
  return hostname === 'localhost' || hostname === '[::1]' || LOOPBACK_V4.test(hostname)
}

/**
 * A loopback team domain is a local emulator or the dev proxy: tokens are then verified against keys on
 * this machine, not Cloudflare's. Harmless in development, a finding in production: say so at registration.
 */
export function warnIfLoopbackInProduction (log: { warn: (obj: object, msg: string) => void }, issuer: string): void {
  if (process.env.NODE_ENV !== 'production' || !issuer.startsWith('http://')) return
  log.warn(
    { teamDomain: issuer },
    `fastify-cloudflare-access: teamDomain ${issuer} is a loopback origin (a local emulator or the dev proxy) but NODE_ENV is ` +
    "production: tokens are verified against keys served from this machine, not by Cloudflare. Use your team's domain."
  )
}

/** Cloudflare's AUD tags: 64 lowercase hexadecimal characters. */
const AUD_TAG = /^[0-9a-f]{64}$/

/**
 * An audience that does not look like a Cloudflare AUD tag is often a copy-paste of something else (the
 * application's name, its domain, the team name): say so once at registration. Not an error: tags of your
 * own (an emulator's, a test's) stay possible.
 */
export function warnIfAudienceUnusual (log: { warn: (obj: object, msg: string) => void }, audience: readonly string[]): void {
  const unusual = audience.filter((tag) => !AUD_TAG.test(tag))
  if (unusual.length === 0) return
  log.warn(
    { audience: unusual },
    `fastify-cloudflare-access: audience ${unusual.map((tag) => JSON.stringify(tag)).join(', ')} does not look like a Cloudflare Access ` +
    'Application Audience (AUD) tag (64 hexadecimal characters: Zero Trust → Access → Applications → your application → Overview). ' +
    'Tokens carry the tag in aud: npx fastify-cloudflare-access inspect shows it.'
  )
}

export function normalizeAudience (value: unknown): readonly string[] {
  // Stryker disable next-line StringLiteral: message text only (the refusal is tested)
  const expected = 'an Application Audience (AUD) tag or a non-empty array of them (non-empty strings without spaces)'
  const list: unknown[] = Array.isArray(value) ? value : [value]
  // Stryker disable next-line StringLiteral: message text only (the refusal is tested)
  if (list.length === 0) return fail('audience', expected, 'an empty array')
  for (const tag of list) {
    if (typeof tag !== 'string' || !PRINTABLE.test(tag) || tag.length > 256) {
      return fail('audience', expected, describe(tag))
    }
  }
  return Object.freeze([...new Set(list as string[])])
}

function normalizeHook (value: unknown): CloudflareAccessHook {
  if (value === undefined) return 'onRequest'
  if (value === 'onRequest' || value === 'preHandler' || value === false) return value
  return fail('hook', "'onRequest', 'preHandler' or false", describe(value))
}

function normalizeCorsPreflight (value: unknown, hook: CloudflareAccessHook): boolean {
  if (value === undefined || value === false) return false
  if (value !== true) return fail('corsPreflight', 'true or false', describe(value))
  if (hook === false) {
    // Stryker disable next-line StringLiteral: message text only (the refusal is tested)
    return fail('corsPreflight', "used with the plugin's own hook (only that hook lets preflights through; with hook: false there is none, and fastify.cfAccess.verify always verifies)", 'hook: false')
  }
  return true
}

function normalizeRequired (options: Record<string, unknown>, hook: CloudflareAccessHook): boolean {
  const value = options.required
  if (value === undefined || value === true) return true
  if (value !== false) return fail('required', 'true or false', describe(value))
  if (hook === false) {
    // Stryker disable next-line StringLiteral: message text only (the refusal is tested)
    return fail('required', "true with hook: false (only the plugin's own hook makes a token optional; fastify.cfAccess.verify always requires one)", 'false')
  }
  if (options.allow !== undefined || options.authorize !== undefined) {
    // Stryker disable next-line StringLiteral: message text only (the refusal is tested)
    return fail('required', 'true when allow or authorize is given (a policy needs a token; public routes say config.cfAccess: false, and optional routes need a registration without a policy, in a scope of their own)', 'false')
  }
  return false
}

function duration (options: Record<string, unknown>, name: keyof typeof DEFAULTS, min: number, max: number, unit: string): number {
  const value = options[name]
  if (value === undefined) return DEFAULTS[name]
  if (typeof value !== 'number' || !Number.isFinite(value) || value < min || value > max) {
    return fail(name, `a number of ${unit} from ${min} to ${max}`, describe(value))
  }
  return value
}

/**
 * Validates the caller's options and returns a new, frozen object; the caller's object is never touched.
 * Throws an Error that names the option and the accepted forms.
 */
export function normalizeOptions (raw: FastifyCloudflareAccessOptions | undefined): NormalizedOptions {
  if (raw === null || typeof raw !== 'object') {
    throw new Error('fastify-cloudflare-access: options are required: { teamDomain, audience }')
  }
  const options = raw as unknown as Record<string, unknown>
  if ('prefix' in options) {
    // Stryker disable StringLiteral: message text only (the refusal is tested)
    throw new Error(
      'fastify-cloudflare-access: do not pass "prefix" to this plugin. fastify-plugin ignores it, so the hook ' +
      'would protect every route of the parent scope. Register the plugin inside a prefixed scope instead: ' +
      "app.register(async (admin) => { await admin.register(cloudflareAccess, { teamDomain, audience }); admin.get('/', handler) }, { prefix: '/admin' })"
    )
    // Stryker restore StringLiteral
  }
  for (const key of Object.keys(options)) {
    if (!KNOWN_OPTIONS.has(key)) {
      throw new Error(`fastify-cloudflare-access: unknown option "${key}";${didYouMean(key, KNOWN_OPTIONS)} known options: ${[...KNOWN_OPTIONS].join(', ')}`)
    }
  }
  const issuer = normalizeTeamDomain(options.teamDomain)
  const fetchTimeout = duration(options, 'fetchTimeout', 1, 60_000, 'milliseconds')
  const hook = normalizeHook(options.hook)
  return Object.freeze({
    issuer,
    certsUrl: `${issuer}/cdn-cgi/access/certs`,
    audience: normalizeAudience(options.audience),
    hook,
    corsPreflight: normalizeCorsPreflight(options.corsPreflight, hook),
    required: normalizeRequired(options, hook),
    clockToleranceMs: duration(options, 'clockTolerance', 0, 600, 'seconds') * 1000,
    fetchTimeout,
    refreshInterval: duration(options, 'refreshInterval', 1_000, 86_400_000, 'milliseconds'),
    unknownKidCooldown: duration(options, 'unknownKidCooldown', 0, 3_600_000, 'milliseconds'),
    maxStaleAge: duration(options, 'maxStaleAge', 1_000, 7 * 86_400_000, 'milliseconds'),
    policy: options.allow === undefined && options.authorize === undefined
      ? null
      : compilePolicy('options', options.allow, options.authorize),
    authorizeTimeout: duration(options, 'authorizeTimeout', 1, 600_000, 'milliseconds'),
    waitForKeys: duration(options, 'waitForKeys', 0, 600_000, 'milliseconds'),
    identityUrl: `${issuer}/cdn-cgi/access/get-identity`,
    identityTimeout: duration(options, 'identityTimeout', 1, 60_000, 'milliseconds'),
    identityCacheTtl: duration(options, 'identityCacheTtl', 0, 86_400_000, 'milliseconds'),
    identityCacheSize: duration(options, 'identityCacheSize', 0, 1_000_000, 'entries'),
    cacheSize: duration(options, 'cacheSize', 0, 1_000_000, 'entries')
  })
}
