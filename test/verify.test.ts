import { createHmac } from 'node:crypto'
import t from 'tap'
import { attackerKey, decode, nowSeconds, rawToken, setup } from './helpers'

// Every test here drives real HTTP-shaped requests through the plugin against the emulator's real keys.

function expect (code: string) {
  return (res: { statusCode: number, json: Record<string, any> }) => res.statusCode === 401 && res.json.code === code
}

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
  const now = nowSeconds()
  const cases: Array<[string, Record<string, unknown>, number, string?]> = [
    ['expired beyond tolerance', { exp: now - 31 }, 401, 'FST_CF_ACCESS_TOKEN_EXPIRED'],
    ['expired within tolerance', { exp: now - 20 }, 200],
    ['not yet valid beyond tolerance', { nbf: now + 31, iat: now }, 401, 'FST_CF_ACCESS_TOKEN_EXPIRED'],
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

t.test('attacks on the algorithm and the key are rejected with FST_CF_ACCESS_TOKEN_INVALID', async (t) => {
  const { access, get } = await setup(t)
  const kid = access.kids[0] as string
  const claims = decode(access.signToken()).payload
  const publicPem = access.jwks().keys[0] as Record<string, string>

  const none = rawToken({ alg: 'none', kid }, claims, '')
  t.ok(expect('FST_CF_ACCESS_TOKEN_INVALID')(await get(none + 'x')), 'alg none with a junk signature')
  t.ok(expect('FST_CF_ACCESS_TOKEN_INVALID')(await get(none.slice(0, -1))), 'alg none, two segments')

  const { createPublicKey } = await import('node:crypto')
  const pem = createPublicKey({ key: publicPem, format: 'jwk' }).export({ type: 'spki', format: 'pem' }) as string
  for (const secret of [pem, publicPem.n as string]) {
    const input = rawToken({ alg: 'HS256', kid }, claims).split('.').slice(0, 2).join('.')
    const hs = `${input}.${createHmac('sha256', secret).update(input).digest('base64url')}`
    t.ok(expect('FST_CF_ACCESS_TOKEN_INVALID')(await get(hs)), 'HS256 signed with the public key')
    const input2 = rawToken({ alg: 'RS256', kid }, claims).split('.').slice(0, 2).join('.')
    const hsAsRs = `${input2}.${createHmac('sha256', secret).update(input2).digest('base64url')}`
    t.ok(expect('FST_CF_ACCESS_TOKEN_INVALID')(await get(hsAsRs)), 'an HMAC signature under an RS256 header')
  }
  for (const alg of ['RS384', 'RS512', 'PS256', 'ES256', 'EdDSA', 'rs256', ['RS256'], { RS256: true }, undefined]) {
    const res = await get(rawToken({ alg, kid }, claims, decode(access.signToken()).signature))
    t.ok(expect('FST_CF_ACCESS_TOKEN_INVALID')(res), `alg ${JSON.stringify(alg)}`)
  }

  t.ok(expect('FST_CF_ACCESS_TOKEN_INVALID')(await get(access.signToken({}, { key: attackerKey() }))), "an attacker's key under a published kid")
  t.ok(expect('FST_CF_ACCESS_TOKEN_INVALID')(await get(access.signToken({}, { key: attackerKey(), kid: 'a'.repeat(64) }))), "an attacker's key under an unknown kid")
  t.ok(expect('FST_CF_ACCESS_TOKEN_INVALID')(await get(access.signToken({}, { kid: access.kids[1] }))), "the current key's signature under the previous kid")

  for (const badKid of [null, '', 5, { a: 1 }, ['x'], 'k'.repeat(129), '../../etc/passwd', "1' OR '1'='1", '__proto__', 'constructor', 'toString']) {
    const token = access.signToken({}, { kid: null, header: { kid: badKid } })
    t.ok(expect('FST_CF_ACCESS_TOKEN_INVALID')(await get(token)), `kid ${JSON.stringify(badKid)}`)
  }
  const noKid = access.signToken({}, { kid: null })
  t.match((await get(noKid)).json.message, /no key id/, 'a missing kid is named in the message')

  const valid = access.signToken()
  const [h, p, s] = valid.split('.') as [string, string, string]
  const tampered = Buffer.from(JSON.stringify({ ...decode(valid).payload, email: 'admin@acme.com' })).toString('base64url')
  t.ok(expect('FST_CF_ACCESS_TOKEN_INVALID')(await get(`${h}.${tampered}.${s}`)), 'a tampered payload')
  t.ok(expect('FST_CF_ACCESS_TOKEN_INVALID')(await get(`${h}.${p}.${s.slice(0, -2)}`)), 'a truncated signature')
  t.equal((await get(valid)).statusCode, 200, 'the untouched token still passes')
})

t.test('embedded jwk, jku, x5u and x5c are ignored and never fetched', async (t) => {
  const { access, get } = await setup(t)
  await get(access.signToken()) // warm
  const before = access.requestCount
  const evil = attackerKey()
  const { createPublicKey } = await import('node:crypto')
  const jwk = createPublicKey(evil).export({ format: 'jwk' })
  for (const header of [{ jwk }, { jku: `${access.teamDomain}/evil-jwks` }, { x5u: `${access.teamDomain}/evil-cert` }, { x5c: ['MIIB'] }]) {
    const forged = access.signToken({}, { key: evil, kid: 'e'.repeat(64), header })
    t.ok(expect('FST_CF_ACCESS_TOKEN_INVALID')(await get(forged)), `forged with ${Object.keys(header)[0]}`)
    const honest = access.signToken({}, { header })
    t.equal((await get(honest)).statusCode, 200, `a genuine token with ${Object.keys(header)[0]} passes: the field is ignored`)
  }
  t.same(access.requests.slice(before).filter((path) => path !== '/cdn-cgi/access/certs'), [], 'no request went anywhere but the certs endpoint')
})

t.test('crit headers are not understood and are rejected', async (t) => {
  const { access, get } = await setup(t)
  const res = await get(access.signToken({}, { header: { crit: ['exp'], exp: 1 } }))
  t.ok(expect('FST_CF_ACCESS_TOKEN_INVALID')(res))
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
    ['payload not JSON', `${h}.${Buffer.from('nope').toString('base64url')}.${s}`],
    ['payload a JSON array', `${h}.${Buffer.from('[1]').toString('base64url')}.${s}`],
    ['8 KiB + 1', `${h}.${'A'.repeat(8193 - h.length - s.length - 2)}.${s}`]
  ]
  t.equal((await get(valid)).statusCode, 200, 'keys loaded')
  const fetchesBefore = access.certsRequestCount
  for (const [name, token] of cases) {
    const res = await get(token)
    t.equal(res.statusCode, 401, name)
    t.equal(res.json.code, 'FST_CF_ACCESS_TOKEN_INVALID', name)
  }
  t.equal(access.certsRequestCount, fetchesBefore, 'no malformed token caused a key fetch')
  const big = await app.inject({ url: '/admin/me', headers: { cookie: `CF_Authorization=${'a'.repeat(9000)}.b.c` } })
  t.equal(big.json().code, 'FST_CF_ACCESS_TOKEN_INVALID', 'an oversized cookie')
  t.equal((await get(valid)).statusCode, 200)
})

t.test('the size cap is exactly 8 KiB: 8192 characters pass, 8193 do not', async (t) => {
  const { access, get } = await setup(t)
  const claims = decode(access.signToken()).payload
  const header = { alg: 'RS256', kid: access.kids[0] }
  const b64 = (value: unknown): number => Buffer.from(JSON.stringify(value)).toString('base64url').length
  const signatureLength = 342 // 256 bytes of RSA-2048 signature
  // base64url turns n bytes into ceil(4n/3) characters: find the padding for an exact length, then sign once
  const sized = (length: number): string | undefined => {
    for (let pad = 0; pad < length; pad++) {
      const payload = { ...claims, pad: 'x'.repeat(pad) }
      const total = b64(header) + b64(payload) + signatureLength + 2
      if (total === length) return access.signRaw(header, payload)
      if (total > length) return undefined
    }
  }
  const tokens = [8191, 8192, 8193, 8194].map(sized).filter((token): token is string => token !== undefined)
  t.ok(tokens.length >= 3, 'three of four consecutive lengths are reachable')
  for (const token of tokens) {
    const res = await get(token)
    if (token.length <= 8192) t.equal(res.statusCode, 200, `${token.length} characters pass`)
    else t.match(res.json.message, /longer than 8192/, `${token.length} characters are rejected`)
  }
})

t.test('duplicate JSON keys: the last one wins for both the plugin and the signature check', async (t) => {
  const { access, get } = await setup(t)
  const now = nowSeconds()
  const base = `"iss":"${access.teamDomain}","exp":${now + 600},"iat":${now},"email":"a@b.c","type":"app"`
  const wrongThenRight = `{${base},"aud":["${'f'.repeat(64)}"],"aud":["${access.audience}"]}`
  const rightThenWrong = `{${base},"aud":["${access.audience}"],"aud":["${'f'.repeat(64)}"]}`
  const header = `{"alg":"HS256","alg":"RS256","kid":"${access.kids[0]}"}`
  t.equal((await get(access.signRaw(header, wrongThenRight))).statusCode, 200, 'the last aud is the one checked')
  t.equal((await get(access.signRaw(header, rightThenWrong))).json.code, 'FST_CF_ACCESS_CLAIM_INVALID', 'an earlier right aud does not rescue a later wrong one')
  const algLast = `{"alg":"RS256","kid":"${access.kids[0]}","alg":"none"}`
  t.equal((await get(access.signRaw(algLast, wrongThenRight))).json.code, 'FST_CF_ACCESS_TOKEN_INVALID', 'a later alg none wins and is rejected')
})

t.test('fast-jwt errors never leak token text', async (t) => {
  const { access, get } = await setup(t)
  const res = await get(access.signToken({ exp: nowSeconds() - 3600 }))
  t.equal(res.json.message, 'Cloudflare Access token is not valid now: expired (exp)', 'no date from the token either')
})
