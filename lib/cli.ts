#!/usr/bin/env node
/**
 * `fastify-cloudflare-access inspect`: why is this token rejected? Runs the plugin's own verification
 * (createTokenVerifier, the same code the hook runs) against the team's live keys or a saved certs file,
 * and explains the result. `fastify-cloudflare-access emulator`: the test kit's Access emulator, standalone.
 * `fastify-cloudflare-access dev`: a stand-in for Access in front of a local app (lib/dev-proxy.ts).
 * `fastify-cloudflare-access demo`: the main job against the emulator (lib/demo.ts, loaded only then).
 */
import { readFileSync } from 'node:fs'
import { parseArgs } from 'node:util'
import { createDevProxy, DEFAULT_PORT, LOGIN_PATH } from './dev-proxy'
import { KeyStore, parseKeySet, type SigningKey } from './keys'
import { isLoopback, normalizeAudience, normalizeOptions } from './options'
import { COOKIE_NAME, MAX_TOKEN_LENGTH, readCookie } from './token'
import { createAccessEmulator } from './testing'
import { createTokenVerifier, type KeySource } from './verify'

const USAGE = `Usage: fastify-cloudflare-access <command> [options]

Commands:
  demo       watch the plugin verify real tokens against a local Access emulator (needs fastify)
  inspect    explain why a Cloudflare Access token is accepted or rejected
  emulator   run a local Access emulator and print fresh tokens
  dev        run a stand-in for Access in front of your app, with a login page

Run 'fastify-cloudflare-access <command> --help' for a command's options.`

const INSPECT_USAGE = `Usage: fastify-cloudflare-access inspect <token | -> --team <team> --aud <tag> [options]

Verifies the token exactly as the plugin does and prints every check.

  <token | ->        the token, or - to read it from standard input (keeps it out of shell history);
                     either may also be CF_Authorization=<token> or a whole Cookie header
  --team <team>      team name, team domain or https origin (as the plugin's teamDomain)
  --aud <tag>        the application's AUD tag; repeat for several applications
  --at <ISO time>    verify as of this time instead of now (for old tokens, with --certs)
  --certs <file>     a saved copy of <team>/cdn-cgi/access/certs instead of the live keys
  --json             print a machine-readable result
  --help             this text

Exit status: 0 valid, 1 rejected, 2 usage or network error.

Where to find the token: the CF_Authorization cookie is HttpOnly, so scripts (document.cookie) cannot
read it. In the browser's developer tools, open Application → Cookies (Chrome, Edge) or Storage →
Cookies (Firefox, Safari), select your application's origin and copy the value of CF_Authorization; or,
in the Network tab, copy a request's Cookie header and paste it whole. Standard input is read up to 64 KiB.`

const EMULATOR_USAGE = `Usage: fastify-cloudflare-access emulator [--port <n>] [--aud <tag>]

Runs the test kit's Access emulator on 127.0.0.1 until Ctrl-C, and prints its team domain, its
audience, a user token, a service token, and a curl command for an app on port 3000.

  --port <n>    port to listen on (default: any free port)
  --aud <tag>   the AUD tag to issue tokens for, as the plugin's audience (default: a random one)
  --help        this text`

const DEV_USAGE = `Usage: fastify-cloudflare-access dev --upstream <origin> [--public <paths>] [--port <n>] [--aud <tag>] [--allow-remote-upstream]

A stand-in for Cloudflare Access in front of your app, for a browser on this machine: it serves
/cdn-cgi/access/certs, get-identity and logout, a login page where you pick an email and groups (each
a name, or name=id for allow.groupIds) or a service token, and proxies every other request, WebSockets
too, to your app with a freshly signed Cf-Access-Jwt-Assertion (--public paths without a login and
without one). It listens on 127.0.0.1 only. For development only: never in front of production.

  --upstream <origin>      your app, such as http://127.0.0.1:3000 (on this machine: 127.0.0.0/8,
                           localhost or [::1])
  --public <paths>         paths passed on without a login and without a token, as an Access Bypass
                           policy lets them through: /health exactly, /static* every path that
                           starts with /static; comma-separated or repeated (--public /,/health)
  --port <n>               port to listen on (default ${DEFAULT_PORT})
  --aud <tag>              the AUD tag to issue tokens for (default: a fixed development tag)
  --allow-remote-upstream  accept an --upstream on another machine: it receives signed tokens and your
                           browser's cookies for the proxy
  --help                   this text`

const DEMO_USAGE = `Usage: fastify-cloudflare-access demo [--serve]

The plugin's main job, with no Cloudflare account: a local Access emulator issues real RS256 tokens, and
an app with a public route and an /admin scope protected by the plugin answers real HTTP requests — no
token, a user token in the header and in the cookie, a service token, an expired token, another
application's token, a group-restricted route, a forged email header, the key endpoint down. Each
request and answer is printed. It runs a Fastify app: your project needs fastify (npm i fastify).

  --serve   keep the app listening afterwards, and print a ready curl command (Ctrl-C to stop)
  --help    this text

Exit status: 0 every answer as expected, 1 otherwise, 2 usage error or no fastify.`

class UsageError extends Error {}

const ISO_DATE = /^\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})?)?$/

interface Output {
  out: (text: string) => void
  err: (text: string) => void
}

/** Most of standard input `inspect` reads: a token, a cookie or a Cookie header is a few KiB. */
export const MAX_STDIN_BYTES = 64 * 1024

/** Reads standard input, refusing more than MAX_STDIN_BYTES (it stops reading there). */
function readStdin (): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = []
    let size = 0
    process.stdin.on('data', (chunk: Buffer) => {
      size += chunk.length
      if (size > MAX_STDIN_BYTES) {
        process.stdin.destroy()
        reject(new UsageError(`standard input is larger than ${MAX_STDIN_BYTES / 1024} KiB: paste the token, CF_Authorization=<token> or the Cookie header`))
        return
      }
      chunks.push(chunk)
    })
    process.stdin.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')))
    process.stdin.on('error', reject)
  })
}

const COOKIE_LINE = /^cookie\s*:/i
const HEADER_LINE = /^cf-access-jwt-assertion\s*:/i

/**
 * The token in what was pasted: the token itself, `CF_Authorization=<token>`, a Cookie header's value
 * (`a=b; CF_Authorization=<token>`), or a whole `Cookie:` or `Cf-Access-Jwt-Assertion:` header line.
 */
export function tokenFromInput (input: string): string {
  const text = input.trim()
  if (HEADER_LINE.test(text)) return text.slice(text.indexOf(':') + 1).trim()
  const cookie = COOKIE_LINE.test(text) ? text.slice(text.indexOf(':') + 1) : text
  if (!cookie.includes(`${COOKIE_NAME}=`) && !cookie.includes(`${COOKIE_NAME} =`)) return text
  const value = readCookie(cookie)
  if (value === undefined) throw new UsageError(`the pasted cookie has no ${COOKIE_NAME} value`)
  return value
}

/** A fixed key set, from a saved certs document: the verifier's key source for --certs. */
function staticKeys (document: unknown): KeySource {
  const keys = parseKeySet(document, new Map())
  return {
    get: (kid: string): SigningKey | undefined => keys.get(kid),
    isKnownUnknown: (kid: string): boolean => !keys.has(kid),
    resolve: async (kid: string): Promise<SigningKey | undefined> => keys.get(kid)
  }
}

interface Check { name: string, status: 'pass' | 'fail' | 'not reached', detail: string }

/** The order in which the plugin checks: the first failure ends verification. */
const ORDER = ['token', 'structure', 'alg', 'kid', 'signature', 'nbf', 'exp', 'aud', 'iss', 'iat', 'type', 'subject'] as const
type CheckName = typeof ORDER[number]

/** Which check a rejection of the plugin is about, from its code and reason. */
export function failedCheck (code: string, reason: string): CheckName {
  if (code === 'FST_CF_ACCESS_TOKEN_MISSING') return 'token'
  if (code === 'FST_CF_ACCESS_KEYS_UNAVAILABLE') return 'kid'
  const rules: Array<[RegExp, CheckName]> = [
    [/algorithm/, 'alg'], [/key id/, 'kid'], [/signature|not a valid RS256 JWT/, 'signature'],
    [/\(nbf\)|nbf /, 'nbf'], [/\(exp\)|exp |time claim/, 'exp'], [/\(iat\)|iat /, 'iat'],
    [/^aud /, 'aud'], [/^iss /, 'iss'], [/^type /, 'type'], [/sub |email|common_name/, 'subject']
  ]
  for (const [pattern, check] of rules) if (pattern.test(reason)) return check
  return 'structure'
}

function short (value: string): string {
  return value.length > 12 ? `${value.slice(0, 4)}…${value.slice(-4)}` : value
}

// Characters a token may carry that a terminal would act on rather than show: C0 controls (ESC starts
// escape sequences), DEL, C1 controls (U+009B is a one-character CSI), and the invisible format
// characters that reorder or hide text (bidi overrides and isolates, zero-width characters).
// eslint-disable-next-line no-control-regex
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u00ad\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]/g

/** A line for the terminal: every character a token could use to write escapes is shown as \uXXXX. */
export function printable (text: string): string {
  return text.replace(UNSAFE, escapeChar)
}

/** JSON for the terminal: the same, but its own line breaks kept (inside strings JSON.stringify escaped C0 already). */
const UNSAFE_IN_JSON = /[\u007f-\u009f\u00ad\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]/g
function printableJson (value: unknown): string {
  return JSON.stringify(value, null, 2).replace(UNSAFE_IN_JSON, escapeChar)
}

function escapeChar (char: string): string {
  return `\\u${char.charCodeAt(0).toString(16).padStart(4, '0')}`
}

/** A claim time (seconds) as an ISO date, or a plain note when Date cannot hold it. */
function isoTime (seconds: number): string {
  const date = new Date(seconds * 1000)
  return Number.isNaN(date.getTime()) ? `${seconds} (out of range)` : date.toISOString()
}

function ago (seconds: number, now: number): string {
  const delta = Math.round(now / 1000 - seconds)
  const abs = Math.abs(delta)
  const text = abs < 90 ? `${abs} s` : abs < 5400 ? `${Math.round(abs / 60)} min` : abs < 172_800 ? `${Math.round(abs / 3600)} h` : `${Math.round(abs / 86_400)} d`
  return delta >= 0 ? `${text} ago` : `in ${text}`
}

function decodePart (part: string | undefined): Record<string, unknown> | undefined {
  try {
    const value = JSON.parse(Buffer.from(part ?? '', 'base64url').toString('utf8')) as unknown
    return value !== null && typeof value === 'object' && !Array.isArray(value) ? value as Record<string, unknown> : undefined
  } catch {
    return undefined
  }
}

/** What each check looked at, in words, whatever the verdict: for the report only. */
function details (token: string, claims: Record<string, unknown> | undefined, header: Record<string, unknown> | undefined, issuer: string, audience: readonly string[], now: number): Record<CheckName, string> {
  const time = (name: string): string => {
    const value = claims?.[name]
    return typeof value === 'number' ? `${isoTime(value)} (${ago(value, now)})` : value === undefined ? 'absent' : `not a number (${typeof value})`
  }
  const aud = claims?.aud
  // JSON.stringify, not String(): a token's `{"toString": 1}` makes String() throw.
  const tokenAud = (Array.isArray(aud) ? aud : [aud]).map((tag) => typeof tag === 'string' ? short(tag) : JSON.stringify(tag)).join(', ')
  const audMatches = (Array.isArray(aud) ? aud : [aud]).some((tag) => typeof tag === 'string' && audience.includes(tag))
  return {
    token: token === '' ? 'nothing was given (empty input)' : 'present',
    structure: 'three base64url segments, canonical, UTF-8 JSON header, at most 8192 characters',
    alg: `header alg ${JSON.stringify(header?.alg)} (only RS256 is accepted)`,
    kid: `header kid ${typeof header?.kid === 'string' ? short(header.kid) : JSON.stringify(header?.kid)}`,
    signature: 'RS256 over header.payload with the key of that kid',
    nbf: `not before ${time('nbf')}`,
    exp: `expires ${time('exp')}`,
    aud: audMatches
      ? `token is for ${tokenAud}`
      : `expected ${audience.map(short).join(' or ')}, token has ${tokenAud || 'none'} — a token for another Access application?`,
    iss: claims?.iss === issuer ? `issued by ${issuer}` : `expected ${issuer}, token has ${JSON.stringify(claims?.iss)} — a token of another team?`,
    iat: `issued ${time('iat')}`,
    type: `type ${JSON.stringify(claims?.type)} (app, or absent)`,
    subject: typeof claims?.email === 'string' ? `user ${claims.email}` : typeof claims?.common_name === 'string' ? `service token ${claims.common_name}` : 'neither email nor common_name'
  }
}

async function inspect (argv: string[], io: Output): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      team: { type: 'string' },
      aud: { type: 'string', multiple: true },
      at: { type: 'string' },
      certs: { type: 'string' },
      json: { type: 'boolean' },
      help: { type: 'boolean' }
    }
  })
  if (values.help === true) {
    io.out(INSPECT_USAGE)
    return 0
  }
  if (positionals.length !== 1) throw new UsageError('inspect takes one token, or - to read it from standard input')
  if (values.team === undefined) throw new UsageError('--team is required')
  if (values.aud === undefined) throw new UsageError('--aud is required (repeat it for several applications)')
  let at: number | undefined
  if (values.at !== undefined) {
    // ISO only: Date.parse reads '0' as the year 2000. Token times are seconds after 1970, and fast-jwt
    // reads a clock of 0 as "now".
    at = ISO_DATE.test(values.at) ? Date.parse(values.at) : Number.NaN
    if (Number.isNaN(at) || at < 1000) throw new UsageError(`--at must be an ISO time after 1970 such as 2026-01-31T12:00:00Z, got ${JSON.stringify(values.at)}`)
  }
  let options
  try {
    options = normalizeOptions({ teamDomain: values.team, audience: values.aud, cacheSize: 0 })
  } catch (error) {
    throw new UsageError((error as Error).message.replace('fastify-cloudflare-access: option "teamDomain"', '--team').replace('option "audience"', '--aud'))
  }
  const token = tokenFromInput(positionals[0] === '-' ? await readStdin() : positionals[0] as string)

  let keys: KeySource
  let store: KeyStore | undefined
  if (values.certs !== undefined) {
    let document: unknown
    try {
      document = JSON.parse(readFileSync(values.certs, 'utf8'))
      keys = staticKeys(document)
    } catch (error) {
      throw new UsageError(`--certs ${values.certs}: ${(error as Error).message}`)
    }
  } else {
    store = new KeyStore({ ...options, log: { info () {}, warn () {}, error () {} } })
    keys = store
  }

  const now = at ?? Date.now()
  const verifier = createTokenVerifier(options, keys, { at })
  let verdict: Record<string, unknown> | Error
  try {
    const result = await verifier.verify(token)
    verdict = result as Record<string, unknown> | Error
  } catch (error) {
    verdict = error as Error
  } finally {
    store?.close()
  }

  // Only a token short enough to be verified is decoded for the report: a longer one could nest deeper than
  // JSON.stringify can recurse.
  const [headerPart, payloadPart] = token.length <= MAX_TOKEN_LENGTH ? token.split('.') : []
  const header = decodePart(headerPart)
  const claims = decodePart(payloadPart)
  const said = details(token, claims, header, options.issuer, options.audience, now)
  const error = verdict instanceof Error ? verdict as Error & { code: string } : undefined
  const reason = error?.message.slice(error.message.indexOf(': ') + 2) ?? ''
  const failed = error === undefined ? undefined : failedCheck(error.code, reason)
  const failedAt = failed === undefined ? ORDER.length : ORDER.indexOf(failed)
  const checks: Check[] = ORDER.map((name, index) => ({
    name,
    status: index < failedAt ? 'pass' : index === failedAt ? 'fail' : 'not reached',
    detail: index === failedAt ? `${reason} — ${said[name]}` : said[name]
  }))
  const networkError = error?.code === 'FST_CF_ACCESS_KEYS_UNAVAILABLE'

  if (values.json === true) {
    // JSON.stringify escapes C0 controls already; the rest of UNSAFE is escaped the same JSON way.
    io.out(printableJson({
      valid: error === undefined,
      code: error?.code ?? null,
      reason: error === undefined ? null : reason,
      at: new Date(now).toISOString(),
      header: header ?? null,
      claims: claims ?? null,
      checks
    }))
  } else {
    const out = io.out
    io = { ...io, out: (text: string) => out(printable(text)) }
    io.out(`Token (${token.length} characters; the signature is not shown)`)
    if (header !== undefined) io.out(`  header  ${JSON.stringify(header)}`)
    if (claims !== undefined) {
      for (const [name, value] of Object.entries(claims)) {
        const readable = ['exp', 'nbf', 'iat'].includes(name) && typeof value === 'number' ? `  (${isoTime(value)}, ${ago(value, now)})` : ''
        io.out(`  ${name.padEnd(15)} ${JSON.stringify(value)}${readable}`)
      }
    }
    io.out('')
    io.out(`Checks (as of ${new Date(now).toISOString()}, team ${options.issuer}):`)
    for (const check of checks) {
      const mark = check.status === 'pass' ? '✓' : check.status === 'fail' ? '✗' : '·'
      io.out(`  ${mark} ${check.name.padEnd(9)} ${check.status === 'not reached' ? '(not reached) ' : ''}${check.detail}`)
    }
    io.out('')
    io.out(error === undefined ? 'VALID: the plugin accepts this token.' : `REJECTED: ${error.code} (${reason})`)
  }
  if (error === undefined) return 0
  return networkError ? 2 : 1
}

/** --port: a port number, or undefined when not given. */
function portFlag (value: string | undefined): number | undefined {
  if (value === undefined) return undefined
  const port = Number(value)
  if (value === '' || !Number.isInteger(port) || port < 0 || port > 65535) throw new UsageError(`--port must be a port number, got ${JSON.stringify(value)}`)
  return port
}

/** --aud, checked as the plugin checks its audience option, with the plugin's message naming the flag. */
function audienceFlag (value: string | undefined): string | undefined {
  if (value === undefined) return undefined
  try {
    normalizeAudience(value)
  } catch (error) {
    throw new UsageError((error as Error).message.replace('fastify-cloudflare-access: option "audience"', '--aud'))
  }
  return value
}

/** Output for the terminal: each line with control and bidi characters escaped, as inspect prints tokens. */
function terminal (io: Output): (text: string) => void {
  return (text) => io.out(text.split('\n').map(printable).join('\n'))
}

async function emulator (argv: string[], io: Output): Promise<number> {
  const { values } = parseArgs({ args: argv, options: { port: { type: 'string' }, aud: { type: 'string' }, help: { type: 'boolean' } } })
  if (values.help === true) {
    io.out(EMULATOR_USAGE)
    return 0
  }
  const access = await createAccessEmulator({ port: portFlag(values.port), audience: audienceFlag(values.aud) })
  const out = terminal(io)
  const token = access.signToken()
  out(`Access emulator listening: ${access.teamDomain}`)
  out(`  teamDomain  ${access.teamDomain}`)
  out(`  audience    ${access.audience}`)
  out(`  certs       ${access.certsUrl}`)
  out('')
  out(`User token (user@example.com, 24 h):\n${token}`)
  out(`\nService token:\n${access.signServiceToken()}`)
  out(`\nTry an app on port 3000 registered with the values above:\n  curl -s http://127.0.0.1:3000/ -H 'Cf-Access-Jwt-Assertion: ${token}'`)
  out('\nCtrl-C to stop.')
  await untilSignal()
  await access.close()
  return 0
}

function untilSignal (): Promise<void> {
  return new Promise<void>((resolve) => {
    process.once('SIGINT', resolve)
    process.once('SIGTERM', resolve)
  })
}

/** The demo module, which needs Fastify: a project without it is told how to get it. */
function loadDemo (): typeof import('./demo') {
  try {
    return require('./demo') as typeof import('./demo')
  } catch (error) {
    if ((error as { code?: unknown }).code === 'MODULE_NOT_FOUND' && /['"]fastify['"]/.test((error as Error).message)) {
      throw new UsageError('the demo runs a Fastify app, and this project has no fastify: npm i fastify')
    }
    throw error
  }
}

async function demo (argv: string[], io: Output): Promise<number> {
  const { values } = parseArgs({ args: argv, options: { serve: { type: 'boolean' }, help: { type: 'boolean' } } })
  if (values.help === true) {
    io.out(DEMO_USAGE)
    return 0
  }
  const serve = values.serve === true
  const result = await loadDemo().runDemo({ serve, print: io.out })
  if (serve) {
    await untilSignal()
    await result.close()
  }
  return result.ok ? 0 : 1
}

async function dev (argv: string[], io: Output): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: { upstream: { type: 'string' }, public: { type: 'string', multiple: true }, port: { type: 'string' }, aud: { type: 'string' }, 'allow-remote-upstream': { type: 'boolean' }, help: { type: 'boolean' } }
  })
  if (values.help === true) {
    io.out(DEV_USAGE)
    return 0
  }
  if (values.upstream === undefined) throw new UsageError('--upstream is required: the address of your app, such as http://127.0.0.1:3000')
  const publicPaths = values.public ?? []
  const options = { upstream: values.upstream, port: portFlag(values.port), audience: audienceFlag(values.aud), allowRemoteUpstream: values['allow-remote-upstream'] === true, publicPaths }
  let proxy
  try {
    proxy = await createDevProxy(options)
  } catch (error) {
    throw new UsageError((error as Error).message)
  }
  const out = terminal(io)
  out(`Access dev proxy: ${proxy.origin} → ${proxy.upstream}`)
  if (!isLoopback(new URL(proxy.upstream).hostname)) out(`${proxy.upstream} is not on this machine (--allow-remote-upstream): it receives signed tokens and the proxy's cookies.`)
  if (publicPaths.length > 0) out(`Public, without a login or a token (as an Access Bypass policy): ${publicPaths.join(',').split(',').map((path) => path.trim()).join(', ')}`)
  out(`Open ${proxy.origin}/ in a browser; log in at ${proxy.origin}${LOGIN_PATH}, log out at ${proxy.origin}/cdn-cgi/access/logout.`)
  out('')
  out('Register the plugin in your app with:')
  out(`  teamDomain: '${proxy.origin}',`)
  out(`  audience: '${proxy.audience}'`)
  out(`or, read from the environment as in the README: CF_ACCESS_TEAM_DOMAIN=${proxy.origin} CF_ACCESS_AUD=${proxy.audience}`)
  out('')
  out('For development only. Ctrl-C to stop.')
  await untilSignal()
  await proxy.close()
  return 0
}

export async function main (argv: string[], io: Output): Promise<number> {
  const [command, ...rest] = argv
  try {
    if (command === 'demo') return await demo(rest, io)
    if (command === 'inspect') return await inspect(rest, io)
    if (command === 'emulator') return await emulator(rest, io)
    if (command === 'dev') return await dev(rest, io)
    if (command === undefined) {
      io.err(USAGE)
      return 2
    }
    if (command === '--help' || command === 'help') {
      io.out(USAGE)
      return 0
    }
    throw new UsageError(`unknown command ${JSON.stringify(command)}`)
  } catch (error) {
    // parseArgs reports unknown or malformed flags with ERR_PARSE_ARGS_* codes
    if (error instanceof UsageError || String((error as { code?: unknown }).code).startsWith('ERR_PARSE_ARGS')) {
      const usages: Record<string, string> = { demo: DEMO_USAGE, inspect: INSPECT_USAGE, emulator: EMULATOR_USAGE, dev: DEV_USAGE }
      const usage = usages[command as string] ?? USAGE
      io.err(`fastify-cloudflare-access: ${printable((error as Error).message)}\n\n${usage}`)
      return 2
    }
    throw error
  }
}

if (require.main === module) {
  main(process.argv.slice(2), { out: (text) => console.log(text), err: (text) => console.error(text) })
    .then((code) => { process.exitCode = code }, (error: unknown) => {
      console.error(error)
      process.exitCode = 2
    })
}
