import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { KeyStore, parseKeySet } from '../lib/keys'
import { normalizeOptions } from '../lib/options'
import { createTokenVerifier, type KeySource } from '../lib/verify'

// Every other test runs against the project's own emulator: a mismatch with real Cloudflare Access would go
// unseen there. This one takes a key set and a token that Cloudflare Access itself produced, published in
// a public repository (see the fixture's "source"), and verifies the token as of its own time, through the
// verifier's clock: the shapes Access really sends, checked by the plugin's code.

interface Fixture { source: string, teamDomain: string, audience: string, certs: { keys: Array<{ kid: string }> }, token: string }
const fixture = JSON.parse(readFileSync(join(__dirname, 'fixtures', 'cloudflare-access-that-test.json'), 'utf8')) as Fixture
const [header, payload, signature] = fixture.token.split('.') as [string, string, string]
const claims = JSON.parse(Buffer.from(payload, 'base64url').toString()) as Record<string, unknown> & { iat: number, exp: number }
const keys = parseKeySet(fixture.certs, new Map())
const source: KeySource = { get: (kid) => keys.get(kid), isKnownUnknown: (kid) => !keys.has(kid), resolve: async (kid) => keys.get(kid) }

/** The plugin's verifier for the recorded team, as of `at` (milliseconds). */
function verifyAt (at: number, token = fixture.token, audience = fixture.audience): unknown {
  const verifier = createTokenVerifier(normalizeOptions({ teamDomain: 'that-test', audience, cacheSize: 0 }), source, { at })
  return verifier.verify(token)
}

function code (result: unknown): unknown {
  return result instanceof Error ? (result as { code?: string }).code : 'admitted'
}

t.test('the recorded token is what Access issues: RS256, a 64-hex kid, the claims the plugin reads', async (t) => {
  t.same(JSON.parse(Buffer.from(header, 'base64url').toString()), { alg: 'RS256', kid: fixture.certs.keys[0]?.kid })
  t.same(Object.keys(claims).sort(), ['aud', 'country', 'email', 'exp', 'iat', 'identity_nonce', 'iss', 'nbf', 'sub', 'type'])
  t.equal(claims.iss, fixture.teamDomain)
  t.same(claims.aud, [fixture.audience])
  t.equal(normalizeOptions({ teamDomain: 'that-test', audience: fixture.audience }).issuer, fixture.teamDomain, 'the team name normalises to the token\'s issuer')
  t.same([...keys.keys()], fixture.certs.keys.map((key) => key.kid), 'both recorded keys are usable: RSA, e = 65537, 2048 bits')
})

t.test('verified as of its iat, the recorded token is admitted with its claims, frozen', async (t) => {
  const result = verifyAt(claims.iat * 1000 + 60_000)
  t.same(result, claims)
  t.ok(Object.isFrozen(result))
  t.equal(code(verifyAt(claims.exp * 1000 - 1)), 'admitted', 'up to its exp')
  t.equal(code(verifyAt(claims.exp * 1000 + 30_000)), 'admitted', 'and within the 30 s clock tolerance after it')
})

t.test('the recorded token is refused when tampered, for another application, before nbf or after exp', async (t) => {
  const iat = claims.iat * 1000 + 60_000
  const encode = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url')
  const cases: Array<[string, unknown, string]> = [
    ['another email in the payload', verifyAt(iat, `${header}.${encode({ ...claims, email: 'admin@cloudflare.com' })}.${signature}`), 'FST_CF_ACCESS_TOKEN_INVALID'],
    ['another exp in the payload', verifyAt(iat, `${header}.${encode({ ...claims, exp: claims.exp + 86_400 })}.${signature}`), 'FST_CF_ACCESS_TOKEN_INVALID'],
    ['one signature character changed', verifyAt(iat, `${header}.${payload}.${signature.startsWith('A') ? 'B' : 'A'}${signature.slice(1)}`), 'FST_CF_ACCESS_TOKEN_INVALID'],
    ['the other recorded key\'s kid', verifyAt(iat, `${encode({ alg: 'RS256', kid: fixture.certs.keys[1]?.kid })}.${payload}.${signature}`), 'FST_CF_ACCESS_TOKEN_INVALID'],
    ['an unknown kid', verifyAt(iat, `${encode({ alg: 'RS256', kid: 'f'.repeat(64) })}.${payload}.${signature}`), 'FST_CF_ACCESS_TOKEN_INVALID'],
    ['another application\'s audience configured', verifyAt(iat, fixture.token, 'f'.repeat(64)), 'FST_CF_ACCESS_CLAIM_INVALID'],
    ['another team configured', createTokenVerifier(normalizeOptions({ teamDomain: 'acme', audience: fixture.audience, cacheSize: 0 }), source, { at: iat }).verify(fixture.token), 'FST_CF_ACCESS_CLAIM_INVALID'],
    ['before nbf, beyond the tolerance', verifyAt(claims.iat * 1000 - 31_000), 'FST_CF_ACCESS_TOKEN_EXPIRED'],
    ['after exp, beyond the tolerance', verifyAt(claims.exp * 1000 + 31_000), 'FST_CF_ACCESS_TOKEN_EXPIRED'],
    ['today', createTokenVerifier(normalizeOptions({ teamDomain: 'that-test', audience: fixture.audience, cacheSize: 0 }), source).verify(fixture.token), 'FST_CF_ACCESS_TOKEN_EXPIRED']
  ]
  for (const [name, result, expected] of cases) t.equal(code(await result), expected, name)
})

t.test('the recorded certs document, served over HTTP as Cloudflare serves it, feeds the key store', async (t) => {
  const body = JSON.stringify(fixture.certs)
  const server = http.createServer((_req, res) => { res.setHeader('content-type', 'application/json').end(body) })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()) }))
  const silent = { info () {}, warn () {}, error () {} }
  const store = new KeyStore({ certsUrl: `http://127.0.0.1:${(server.address() as AddressInfo).port}/cdn-cgi/access/certs`, fetchTimeout: 2000, refreshInterval: 600_000, unknownKidCooldown: 5000, maxStaleAge: 600_000, log: silent })
  t.teardown(() => store.close())
  const verifier = createTokenVerifier(normalizeOptions({ teamDomain: 'that-test', audience: fixture.audience }), store, { at: claims.iat * 1000 + 60_000 })
  t.same(await verifier.verify(fixture.token), claims, 'the key fetched for the token\'s kid verifies it')
  t.same(store.kids, fixture.certs.keys.map((key) => key.kid), 'public_cert and public_certs are ignored, both keys kept')
})
