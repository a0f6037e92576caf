import t from 'tap'
import { checkStructure, readCookie } from '../lib/token'
import { checkClaims } from '../lib/verify'
import { captureLogs, decode, nowSeconds, setup } from './helpers'

// Every test here drives real HTTP-shaped requests through the plugin against the emulator's real keys.

t.test('a valid user token passes and request.cfAccess holds its claims', async (t) => {
  const { access, get } = await setup(t)
  const token = access.signToken()
  const res = await get(token)
  t.equal(res.statusCode, 200)
  t.same(res.json.claims, decode(token).payload)
  t.notOk(decode(token).header.typ, 'like real Access tokens, the header has no typ')
})

t.test('time claims', async (t) => {
  const { access, get } = await setup(t, { clockTolerance: 30 })
  // Whole seconds against a clock that moves on while the test runs: each case keeps a margin of 10 s or
  // more from the 30 s tolerance (nbf 31 s ahead was once admitted a second later). The boundaries to the
  // millisecond are tested through the verifier's own clock (checkClaims, cache.test.ts).
  const now = nowSeconds()
  const cases: Array<[string, Record<string, unknown>, number, string?]> = [
    ['expired beyond tolerance', { exp: now - 31 }, 401, 'FST_CF_ACCESS_TOKEN_EXPIRED'],
    ['expired within tolerance', { exp: now - 20 }, 200],
    ['not yet valid beyond tolerance', { nbf: now + 40, iat: now }, 401, 'FST_CF_ACCESS_TOKEN_EXPIRED'],
    ['not yet valid within tolerance (origin clock lags)', { nbf: now + 20, iat: now + 20 }, 200],
    ['issued in the future beyond tolerance', { iat: now + 60, nbf: undefined }, 401, 'FST_CF_ACCESS_TOKEN_EXPIRED'],
    ['no nbf', { nbf: undefined }, 200],
    ['no iat', { iat: undefined }, 200],
    ['no exp', { exp: undefined }, 401, 'FST_CF_ACCESS_CLAIM_INVALID'],
    ['exp as a string', { exp: String(now + 60) }, 401, 'FST_CF_ACCESS_CLAIM_INVALID'],
    ['nbf as a string', { nbf: String(now) }, 401, 'FST_CF_ACCESS_CLAIM_INVALID'],
    ['iat as a string', { iat: String(now) }, 401, 'FST_CF_ACCESS_CLAIM_INVALID'],
    ['iat as null', { iat: null }, 401, 'FST_CF_ACCESS_CLAIM_INVALID']
  ]
  for (const [name, claims, status, code] of cases) {
    const res = await get(access.signToken(claims))
    t.equal(res.statusCode, status, name)
    if (code !== undefined) t.equal(res.json.code, code, `${name}: ${code}`)
  }
  // JSON allows numbers that parse to Infinity: a never-expiring token must not pass.
  const payload = JSON.stringify(decode(access.signToken()).payload).replace(/"exp":\d+/, '"exp":1e999')
  const forever = await get(access.signRaw({ alg: 'RS256', kid: access.kids[0] }, payload))
  t.equal(forever.json.code, 'FST_CF_ACCESS_CLAIM_INVALID', 'exp of 1e999 (Infinity) is rejected')
})

t.test('clockTolerance: 0 means zero', async (t) => {
  const { access, get } = await setup(t, { clockTolerance: 0 })
  const now = nowSeconds()
  t.equal((await get(access.signToken({ exp: now - 2 }))).json.code, 'FST_CF_ACCESS_TOKEN_EXPIRED')
  t.equal((await get(access.signToken({ nbf: now + 5 }))).json.code, 'FST_CF_ACCESS_TOKEN_EXPIRED')
  t.equal((await get(access.signToken())).statusCode, 200)
})

t.test('a token whose key is fetched for it gets every check: the first token of a rotated-in key issued in the future is refused', async (t) => {
  const { access, get } = await setup(t, { clockTolerance: 0, unknownKidCooldown: 0 })
  t.equal((await get(access.signToken())).statusCode, 200, 'keys loaded')
  for (const [name, claims, code] of [
    ['issued in the future (our own iat check)', { iat: nowSeconds() + 60, nbf: undefined }, 'FST_CF_ACCESS_TOKEN_EXPIRED'],
    ['not valid yet (fast-jwt)', { nbf: nowSeconds() + 60 }, 'FST_CF_ACCESS_TOKEN_EXPIRED'],
    ['type "org"', { type: 'org' }, 'FST_CF_ACCESS_CLAIM_INVALID']
  ] as Array<[string, Record<string, unknown>, string]>) {
    await access.rotateKeys() // a kid the plugin has not fetched: this request waits for the refetch
    const fetches = access.certsRequestCount
    t.equal((await get(access.signToken(claims))).json.code, code, name)
    t.equal(access.certsRequestCount, fetches + 1, `${name}: the key was fetched for this very token`)
  }
})

t.test('audience and issuer look-alikes are rejected with FST_CF_ACCESS_CLAIM_INVALID', async (t) => {
  const { access, get } = await setup(t)
  const aud = access.audience
  const iss = access.teamDomain
  const cases: Array<[string, Record<string, unknown>]> = [
    ['aud: another application of the same team', { aud: ['f'.repeat(64)] }],
    ['aud: prefix of the tag', { aud: [aud.slice(0, 63)] }],
    ['aud: tag plus suffix', { aud: [aud + 'a'] }],
    ['aud: upper-cased', { aud: [aud.toUpperCase()] }],
    ['aud: empty array', { aud: [] }],
    ['aud: array with a number', { aud: [aud, 7] }],
    ['aud: an object', { aud: { 0: aud } }],
    ['aud: missing', { aud: undefined }],
    ['iss: trailing slash', { iss: iss + '/' }],
    ['iss: prefix', { iss: iss.slice(0, -1) }],
    ['iss: suffix', { iss: iss + '0' }],
    ['iss: upper-cased', { iss: iss.toUpperCase() }],
    ['iss: another team', { iss: 'https://evil.cloudflareaccess.com' }],
    ['iss: in an array', { iss: [iss] }],
    ['iss: missing', { iss: undefined }],
    ['type: org (the global session)', { type: 'org' }],
    ['type: a number', { type: 1 }],
    ['sub: a number', { sub: 5 }],
    ['neither email nor common_name', { email: undefined }],
    ['both email and common_name', { common_name: 'x.access' }],
    ['email not a string', { email: ['a@b.c'] }]
  ]
  for (const [name, claims] of cases) {
    const res = await get(access.signToken(claims))
    t.equal(res.statusCode, 401, name)
    t.equal(res.json.code, 'FST_CF_ACCESS_CLAIM_INVALID', name)
    t.notMatch(res.json.message, /eyJ/, `${name}: no token text in the message`)
  }
  t.equal((await get(access.signServiceToken({ common_name: 42 }))).json.code, 'FST_CF_ACCESS_CLAIM_INVALID', 'common_name not a string')
  t.equal((await get(access.signToken({ type: undefined }))).statusCode, 200, 'a token without type passes')
})

t.test('malformed and oversized tokens are rejected before any key lookup', async (t) => {
  const { access, get, app } = await setup(t)
  const valid = access.signToken()
  const [h, p, s] = valid.split('.') as [string, string, string]
  const cases: Array<[string, string]> = [
    ['garbage', 'garbage'],
    ['two segments', `${h}.${p}`],
    ['four segments', `${valid}.${s}`],
    ['trailing dot', `${valid}.`],
    ['empty signature', `${h}.${p}.`],
    ['padding', `${h}=.${p}.${s}`],
    ['standard base64 alphabet', `${h}.${p}.${s.replace(/-/g, '+').replace(/_/g, '/')}+/`],
    ['whitespace inside', `${h}. ${p}.${s}`],
    ['header not JSON', `${Buffer.from('nope').toString('base64url')}.${p}.${s}`],
    ['header a JSON array', `${Buffer.from('["RS256"]').toString('base64url')}.${p}.${s}`],
    ['header JSON null', `${Buffer.from('null').toString('base64url')}.${p}.${s}`],
    ['header broken JSON object', `${Buffer.from('{"alg":"RS256",').toString('base64url')}.${p}.${s}`],
    ['payload not JSON', `${h}.${Buffer.from('nope').toString('base64url')}.${s}`],
    ['payload a JSON array', `${h}.${Buffer.from('[1]').toString('base64url')}.${s}`],
    ['8 KiB + 1', `${h}.${'A'.repeat(8193 - h.length - s.length - 2)}.${s}`],
    ['one-character segment', `${h}.${p}.${s}A`.replace(/\.[^.]*$/, '.A')]
  ]
  t.equal((await get(valid)).statusCode, 200, 'keys loaded')
  const fetchesBefore = access.certsRequestCount
  for (const [name, token] of cases) {
    const res = await get(token)
    t.equal(res.statusCode, 401, name)
    t.equal(res.json.code, 'FST_CF_ACCESS_TOKEN_INVALID', name)
  }
  t.equal(access.certsRequestCount, fetchesBefore, 'no malformed token caused a key fetch')
  // Under a kid the team does not publish, a malformed token that got past the structure check would cost
  // a key fetch (the kid may have been rotated in): each must be refused before that.
  const unpublished = Buffer.from(JSON.stringify({ alg: 'RS256', kid: 'not-published' })).toString('base64url')
  for (const [name, token] of [
    ['a character outside base64url before the header', `!${unpublished}.${p}.${s}`],
    ['a fourth segment', `${unpublished}.${p}.${s}.${s}`],
    ['a character outside base64url after the signature', `${unpublished}.${p}.${s}!`],
    ['two characters outside base64url after the signature', `${unpublished}.${p}.${s}!!`],
    ['the word undefined', 'undefined'],
    ['segments named undefined', 'undefined.undefined.undefined']
  ]) {
    const res = await get(token as string)
    t.equal(res.json.code, 'FST_CF_ACCESS_TOKEN_INVALID', `unpublished kid, ${name}`)
    t.equal(access.certsRequestCount, fetchesBefore, `unpublished kid, ${name}: no key fetch`)
  }
  t.equal((await get(`${unpublished}.${p}.${s}`)).json.code, 'FST_CF_ACCESS_TOKEN_INVALID', 'unpublished kid, well formed')
  t.equal(access.certsRequestCount, fetchesBefore + 1, 'unpublished kid, well formed: the one key fetch')
  const big = await app.inject({ url: '/admin/me', headers: { cookie: `CF_Authorization=${'a'.repeat(9000)}.b.c` } })
  t.equal(big.json().code, 'FST_CF_ACCESS_TOKEN_INVALID', 'an oversized cookie')
  t.equal((await get(valid)).statusCode, 200)
})

t.test('the size cap is exactly 8 KiB: 8192 characters pass, 8193 do not, through the full check and the hot path', async (t) => {
  const { access, get } = await setup(t)
  const claims = decode(access.signToken()).payload
  const header = { alg: 'RS256', kid: access.kids[0] }
  const b64 = (value: unknown): number => Buffer.from(JSON.stringify(value)).toString('base64url').length
  const signatureLength = 342 // 256 bytes of RSA-2048 signature
  // base64url turns n bytes into ceil(4n/3) characters: find the padding for an exact length, then sign once
  // (`n` makes the tokens of each pass differ, so that the second pass is not answered by the cache)
  const sized = (length: number, n: number): string | undefined => {
    for (let pad = 0; pad < length; pad++) {
      const payload = { ...claims, n, pad: 'x'.repeat(pad) }
      const total = b64(header) + b64(payload) + signatureLength + 2
      if (total === length) return access.signRaw(header, payload)
      if (total > length) return undefined
    }
  }
  const pass = async (name: string, n: number): Promise<void> => {
    const tokens = [8191, 8192, 8193, 8194].map((length) => sized(length, n)).filter((token): token is string => token !== undefined)
    t.ok(tokens.length >= 3, `${name}: three of four consecutive lengths are reachable`)
    for (const token of tokens) {
      const res = await get(token)
      if (token.length <= 8192) t.equal(res.statusCode, 200, `${name}: ${token.length} characters pass`)
      else t.match(res.json.message, /longer than 8192/, `${name}: ${token.length} characters are rejected`)
    }
  }
  await pass('the full check (no header remembered yet)', 1)
  // The key set at hand and this header remembered: the hot path.
  t.equal((await get(access.signRaw(header, { ...claims, n: 3 }))).statusCode, 200, 'warm-up')
  await pass('the hot path', 2)
})

t.test('fast-jwt errors never leak token text', async (t) => {
  const { access, get } = await setup(t)
  const res = await get(access.signToken({ exp: nowSeconds() - 3600 }))
  t.equal(res.json.message, 'Cloudflare Access token is not valid now: expired (exp)', 'no date from the token either')
})

t.test('non-canonical base64url is rejected: the same bytes spelt differently are not the same token', async (t) => {
  const { access, get } = await setup(t)
  const valid = access.signToken()
  t.equal((await get(valid)).statusCode, 200)
  const [h, p, s] = valid.split('.') as [string, string, string]
  // 342 signature characters carry 4 unused bits: the last character can change without changing the bytes
  const last = s.slice(-1)
  const sameBytes = 'AQgw'.includes(last) ? String.fromCharCode(last.charCodeAt(0) + 1) : 'B'
  const respelt = `${h}.${p}.${s.slice(0, -1)}${sameBytes}`
  t.same(Buffer.from(respelt.split('.')[2] as string, 'base64url'), Buffer.from(s, 'base64url'), 'the bytes are the same')
  const res = await get(respelt)
  t.equal(res.statusCode, 401)
  t.match(res.json.message, /not canonical base64url/)
  for (const segment of [0, 1]) {
    const parts = [h, p, s]
    const text = parts[segment] as string
    if (text.length % 4 === 0) continue
    parts[segment] = text.slice(0, -1) + (text.length % 4 === 2 ? 'B' : 'B')
    t.equal((await get(parts.join('.'))).statusCode, 401, `segment ${segment} respelt`)
  }
})

t.test('readCookie trims what String.prototype.trim trims around the name, and unquotes a quoted value', async (t) => {
  const spaces = [32, 9, 10, 11, 12, 13, 0xa0, 0xfeff, 0x1680, 0x2000, 0x2005, 0x200a, 0x2028, 0x2029, 0x202f, 0x205f, 0x3000]
  for (const code of spaces) {
    const s = String.fromCharCode(code)
    t.equal(readCookie(`a=b;${s}CF_Authorization${s}=${s}token${s}`), 'token', `U+${code.toString(16).padStart(4, '0')} around the name`)
  }
  for (const code of [0x1fff, 0x200b, 0x2027, 0x3001, 0x5f]) {
    const s = String.fromCharCode(code)
    t.equal(readCookie(`a=b;${s}CF_Authorization=token`), undefined, `U+${code.toString(16).padStart(4, '0')} before the name makes another name`)
    t.equal(readCookie(`CF_Authorization${s}=token`), undefined, `U+${code.toString(16).padStart(4, '0')} after the name makes another name`)
  }
  t.equal(readCookie('CF_Authorization="quoted"'), 'quoted')
  t.equal(readCookie('CF_Authorization=""'), undefined, 'two quotes: an empty value, no token')
  t.equal(readCookie('CF_Authorization="'), '"', 'one quote is a value, not a quoted empty one')
})

t.test('checkStructure: nothing is a missing token, anything else not a string an invalid one; each refusal says what is wrong', async (t) => {
  for (const value of [undefined, null, '']) t.match(checkStructure(value), { code: 'FST_CF_ACCESS_TOKEN_MISSING' }, String(value))
  for (const value of [5, {}, ['a.b.c']]) t.match(checkStructure(value), { code: 'FST_CF_ACCESS_TOKEN_INVALID' }, JSON.stringify(value))
  const b64 = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url')
  const payload = b64({ sub: 'x' })
  t.match(checkStructure(`${b64({ alg: 'RS256' })}.${payload}.AAAA`), { message: /no key id/ })
  t.match(checkStructure(`${b64({ alg: 'RS256', kid: 5 })}.${payload}.AAAA`), { message: /malformed key id/ })
  t.match(checkStructure(`${b64({ alg: 'HS256', kid: 'k' })}.${payload}.AAAA`), { message: /not RS256/ })
  // '{"alg":"RS256","kid":"k"}' encodes to a segment whose last character carries unused bits: spell it otherwise.
  const header = b64({ alg: 'RS256', kid: 'kk' })
  const last = header.at(-1) as string
  const sibling = String.fromCharCode(last.charCodeAt(0) + 1)
  t.equal(Buffer.from(header.slice(0, -1) + sibling, 'base64url').equals(Buffer.from(header, 'base64url')), true, 'the same bytes spelt otherwise')
  t.match(checkStructure(`${header.slice(0, -1)}${sibling}.${payload}.AAAA`), { message: /not canonical/ }, 'a header spelt otherwise')
  const body = payload // 11 bytes: 15 characters, the last with 2 unused bits
  const bodySibling = String.fromCharCode((body.at(-1) as string).charCodeAt(0) + 1)
  t.equal(Buffer.from(body.slice(0, -1) + bodySibling, 'base64url').equals(Buffer.from(body, 'base64url')), true)
  t.match(checkStructure(`${header}.${body.slice(0, -1)}${bodySibling}.AAAA`), { message: /not canonical/ }, 'a payload spelt otherwise')
})

t.test('a signed payload with invalid UTF-8 far into it is refused: the whole payload is checked', async (t) => {
  const { access, get } = await setup(t)
  const { header, payload } = decode(access.signToken())
  const json = JSON.stringify({ ...payload, pad: 'x'.repeat(5000) })
  t.equal((await get(access.signRaw(header, Buffer.from(json)))).statusCode, 200, 'the same token with valid UTF-8 is admitted')
  const bytes = Buffer.concat([Buffer.from(json.slice(0, -2)), Buffer.from([0xff]), Buffer.from(json.slice(-2))])
  const res = await get(access.signRaw(header, bytes))
  t.equal(res.statusCode, 401, `an invalid byte at ${bytes.length - 3} of ${bytes.length}`)
  t.equal(res.json.code, 'FST_CF_ACCESS_TOKEN_INVALID')
})

t.test('tokens of the current and the previous key, alternately, all verify (one verifier per key, kept)', async (t) => {
  const { access, get } = await setup(t)
  for (const [i, key] of (['current', 'previous', 'current', 'previous'] as const).entries()) {
    t.equal((await get(access.signToken({ email: `u${i}@acme.com` }, { key }))).statusCode, 200, `${key} key, token ${i}`)
  }
})

t.test('which identity claims a token may carry: sub may be absent; a user token has a string email, a service token a string common_name, never both', async (t) => {
  const { access, get } = await setup(t)
  const cases: Array<[string, Record<string, unknown>, number]> = [
    ['no sub', { sub: undefined }, 200],
    ['a numeric email beside a common_name', { email: 5, common_name: 'svc.access' }, 401],
    ['a numeric common_name beside an email', { common_name: 5 }, 401],
    ['an email and a common_name', { common_name: 'svc.access' }, 401]
  ]
  for (const [name, claims, status] of cases) {
    const res = await get(access.signToken(claims))
    t.equal(res.statusCode, status, name)
    if (status === 401) t.equal(res.json.code, 'FST_CF_ACCESS_CLAIM_INVALID', `${name}: CLAIM_INVALID`)
  }
})

t.test('checkClaims: iat may be up to the tolerance ahead of now, to the millisecond', async (t) => {
  const claims = { iat: 100, email: 'a@acme.com' }
  t.notOk(checkClaims(claims, 100_000, 0) instanceof Error, 'iat exactly now')
  t.notOk(checkClaims(claims, 99_000, 1000) instanceof Error, 'iat exactly the tolerance ahead')
  t.match(checkClaims(claims, 98_999, 1000), { code: 'FST_CF_ACCESS_TOKEN_EXPIRED' }, 'a millisecond more')
  t.match(checkClaims(claims, 99_999, 0), { code: 'FST_CF_ACCESS_TOKEN_EXPIRED' }, 'no tolerance, a millisecond ahead')
})

t.test('a half-quoted cookie value is taken as it is, not unquoted', async (t) => {
  const { access, app } = await setup(t)
  const token = access.signToken()
  for (const value of [`"${token}`, `${token}"`, `"${token}X`, `X${token}"`]) {
    const res = await app.inject({ url: '/admin/me', headers: { cookie: `CF_Authorization=${value}` } })
    t.equal(res.statusCode, 401, JSON.stringify(value.slice(0, 3) + '…' + value.slice(-3)))
  }
  t.equal((await app.inject({ url: '/admin/me', headers: { cookie: `CF_Authorization="${token}"` } })).statusCode, 200, 'quoted: unquoted')
})

t.test('a token for another application: the 401 carries the expected audiences for the log line, never in its answer', async (t) => {
  const logs = captureLogs('info')
  const { access, get } = await setup(t, {}, { fastify: { logger: logs.logger } })
  const other = access.signToken({ aud: ['f'.repeat(64)] })
  for (const pass of ['first', 'cached']) {
    const res = await get(other)
    t.same([res.statusCode, res.json.code, res.json.message], [401, 'FST_CF_ACCESS_CLAIM_INVALID', 'Cloudflare Access token rejected: aud does not name this application'], `${pass}: the answer`)
    t.notMatch(JSON.stringify(res.json), access.audience, `${pass}: the configured audience is not in the answer`)
  }
  const lines = logs.lines.filter((line) => line.err?.code === 'FST_CF_ACCESS_CLAIM_INVALID')
  t.equal(lines.length, 2)
  for (const line of lines) {
    t.same(line.err.expectedAudiences, [access.audience], 'the log line names what this registration expects')
    t.match(line.err.help, /npx fastify-cloudflare-access inspect/, 'and points at inspect')
    t.notMatch(line.err.message, access.audience)
  }
  const wrongIssuer = await get(access.signToken({ iss: 'https://evil.cloudflareaccess.com' }))
  t.equal(wrongIssuer.statusCode, 401)
  const issuerLine = logs.lines.filter((line) => line.err?.code === 'FST_CF_ACCESS_CLAIM_INVALID').at(-1)
  t.equal(issuerLine?.err.expectedAudiences, undefined, 'only a token for another audience gets them')
})

t.test('an audience that does not look like an AUD tag: one warning at registration, not an error', async (t) => {
  const tag = '0123456789abcdef'.repeat(4)
  const cases: Array<[string | string[], boolean]> = [
    [['my-app.acme.com', 'acme'], true], [tag, false], ['A'.repeat(64), true],
    [`x${tag}`, true], [`${tag}x`, true], [tag.slice(1), true], [[tag, 'acme'], true]
  ]
  for (const [audience, warned] of cases) {
    const logs = captureLogs('warn')
    const { app } = await setup(t, { audience: audience as string | string[] }, { fastify: { logger: logs.logger } })
    const lines = logs.lines.filter((line) => /does not look like a Cloudflare Access Application Audience/.test(line.msg))
    t.equal(lines.length, warned ? 1 : 0, `${JSON.stringify(audience)}: ${warned ? 'one warning' : 'none'}`)
    if (warned) {
      const unusual = [audience].flat().filter((value) => value !== tag)
      t.same(lines[0]?.audience, unusual, 'naming each unusual tag, and only those')
      t.match(lines[0]?.msg, `audience ${unusual.map((value) => JSON.stringify(value)).join(', ')} does not look like`, 'in the message too')
      t.match(lines[0]?.msg, /npx fastify-cloudflare-access inspect/)
    }
    t.ok(app.hasRoute({ method: 'GET', url: '/admin/me' }), 'the app booted')
  }
})
