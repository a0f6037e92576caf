import { createHmac, createPublicKey, randomBytes } from 'node:crypto'
import http from 'node:http'
import Fastify, { type FastifyInstance } from 'fastify'
import t from 'tap'
import cloudflareAccess from '../index'
import { createAccessEmulator, type AccessEmulator } from '../lib/testing'
import { attackerKey, captureLogs, decode, emulator, nowSeconds, rawToken, signingKeys } from './helpers'

// Tokens an attacker crafts: algorithms, embedded keys, claims, encodings, sizes, header against cookie,
// and no token in the logs. One named test per attack, against one app listening on 127.0.0.1 and one
// Access emulator. Every test checks the attack's status and code, then that a valid token still passes
// on the same app. All log output, at trace level, is kept: the last test proves no token ever reached it.

let access: AccessEmulator
let app: FastifyInstance
let base: string
const logs = captureLogs('trace')
const sent: string[] = [] // every token an attack sent, for the log check
const attacker = attackerKey()

t.before(async () => {
  access = await createAccessEmulator({ privateKeys: signingKeys() })
  app = Fastify({ logger: logs.logger })
  app.register(async (admin) => {
    await admin.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience })
    admin.get('/', async (request) => ({ email: request.cfAccess?.email ?? null, common_name: request.cfAccess?.common_name ?? null }))
  }, { prefix: '/admin' })
  base = await app.listen({ host: '127.0.0.1', port: 0 })
})
t.teardown(async () => {
  await app.close()
  await access.close()
})

interface Answer { status: number, body: Record<string, any> }

/** A raw HTTP/1.1 request, so that headers can repeat and be odd. */
function request (headers: Array<[string, string]>): Promise<Answer> {
  return new Promise((resolve, reject) => {
    // rawHeaders format (a flat list) lets a header repeat; Host must then be given by hand
    const raw = [['host', new URL(base).host], ...headers].flat()
    const req = http.request(`${base}/admin`, { agent: false, headers: raw as unknown as http.OutgoingHttpHeaders }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (chunk: Buffer) => chunks.push(chunk))
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString()
        let body: Record<string, any> = {}
        try { body = JSON.parse(text) } catch { body = { text } }
        resolve({ status: res.statusCode as number, body })
      })
    })
    // Node answers an oversized header section with 431 and drops the connection, which the client may
    // see as a reset before it reads the answer: report that as status 0.
    req.on('error', (error: NodeJS.ErrnoException) => error.code === 'ECONNRESET' || error.code === 'EPIPE' ? resolve({ status: 0, body: {} }) : reject(error))
    req.end()
  })
}

function withHeader (token: string): Promise<Answer> {
  sent.push(token)
  return request([['cf-access-jwt-assertion', token]])
}

function withCookie (cookie: string): Promise<Answer> {
  sent.push(cookie)
  return request([['cookie', cookie]])
}

/** Registers one attack: it must get `status` (and `code`), and a valid token must still pass afterwards. */
function attack (name: string, send: () => Promise<Answer>, status: number, code?: string): void {
  t.test(name, async (t) => {
    const answer = await send()
    t.equal(answer.status, status, `answered ${status}`)
    if (code !== undefined) t.equal(answer.body.code, code, code)
    t.notMatch(JSON.stringify(answer.body), /eyJ[A-Za-z0-9_-]{10}/, 'no token text in the answer')
    const valid = await withHeader(access.signToken())
    t.equal(valid.status, 200, 'a valid token still passes')
  })
}

const INVALID = 'FST_CF_ACCESS_TOKEN_INVALID'
const CLAIM = 'FST_CF_ACCESS_CLAIM_INVALID'
const EXPIRED = 'FST_CF_ACCESS_TOKEN_EXPIRED'
const MISSING = 'FST_CF_ACCESS_TOKEN_MISSING'

const claims = (): Record<string, unknown> => decode(access.signToken()).payload
const kid = (): string => access.kids[0] as string
const publicJwk = (): Record<string, string> => access.jwks().keys[0] as Record<string, string>
const publicPem = (): string => createPublicKey({ key: publicJwk(), format: 'jwk' }).export({ type: 'spki', format: 'pem' }) as string
const publicDer = (): Buffer => createPublicKey({ key: publicJwk(), format: 'jwk' }).export({ type: 'spki', format: 'der' })

function hmac (alg: 'HS256' | 'HS384' | 'HS512', secret: string | Buffer): string {
  const input = rawToken({ alg, kid: kid(), typ: 'JWT' }, claims()).split('.').slice(0, 2).join('.')
  return `${input}.${createHmac(`sha${alg.slice(2)}`, secret).update(input).digest('base64url')}`
}

// — algorithm attacks —
attack('alg none with an empty signature', () => withHeader(rawToken({ alg: 'none', kid: kid() }, claims(), '')), 401, INVALID)
attack('alg none with a signature', () => withHeader(rawToken({ alg: 'none', kid: kid() }, claims())), 401, INVALID)
attack('alg None (case variant of none)', () => withHeader(rawToken({ alg: 'None', kid: kid() }, claims())), 401, INVALID)
attack('HS256 signed with the RSA public key as PEM', () => withHeader(hmac('HS256', publicPem())), 401, INVALID)
attack('HS256 signed with the RSA public key as DER', () => withHeader(hmac('HS256', publicDer())), 401, INVALID)
attack("HS256 signed with the JWK's n", () => withHeader(hmac('HS256', publicJwk().n as string)), 401, INVALID)
attack('HS384 signed with the RSA public key as PEM', () => withHeader(hmac('HS384', publicPem())), 401, INVALID)
attack('HS512 signed with the RSA public key as PEM', () => withHeader(hmac('HS512', publicPem())), 401, INVALID)
attack('an HMAC signature under an RS256 header', () => {
  const input = rawToken({ alg: 'RS256', kid: kid() }, claims()).split('.').slice(0, 2).join('.')
  return withHeader(`${input}.${createHmac('sha256', publicPem()).update(input).digest('base64url')}`)
}, 401, INVALID)
for (const alg of ['RS384', 'RS512', 'PS256', 'ES256', 'EdDSA']) {
  attack(`alg ${alg} header over a genuine RS256 signature`, () => withHeader(access.signRaw({ alg, kid: kid() }, claims())), 401, INVALID)
}
attack('alg missing', () => withHeader(access.signRaw({ kid: kid() }, claims())), 401, INVALID)
attack('alg lower-case rs256', () => withHeader(access.signRaw({ alg: 'rs256', kid: kid() }, claims())), 401, INVALID)
attack('alg as an array', () => withHeader(access.signRaw({ alg: ['RS256'], kid: kid() }, claims())), 401, INVALID)
attack('alg as an object', () => withHeader(access.signRaw({ alg: { name: 'RS256' }, kid: kid() }, claims())), 401, INVALID)

// — key attacks —
attack("an attacker's key under a published kid", () => withHeader(access.signToken({}, { key: attacker })), 401, INVALID)
attack("an attacker's key under the previous key's kid", () => withHeader(access.signToken({}, { key: attacker, kid: access.kids[1] })), 401, INVALID)
attack('kid missing', () => withHeader(access.signToken({}, { kid: null })), 401, INVALID)
attack('kid empty', () => withHeader(access.signToken({}, { kid: '' })), 401, INVALID)
attack('kid numeric', () => withHeader(access.signToken({}, { kid: null, header: { kid: 42 } })), 401, INVALID)
attack('kid an object', () => withHeader(access.signToken({}, { kid: null, header: { kid: { id: kid() } } })), 401, INVALID)
attack('kid very long', () => withHeader(access.signToken({}, { kid: 'a'.repeat(4000) })), 401, INVALID)
for (const name of ['__proto__', 'constructor', 'toString', 'hasOwnProperty', 'valueOf']) {
  attack(`kid ${name}`, () => withHeader(access.signToken({}, { kid: name })), 401, INVALID)
}
attack('kid a path', () => withHeader(access.signToken({}, { kid: '../../../../etc/passwd' })), 401, INVALID)
attack('kid SQL-looking', () => withHeader(access.signToken({}, { kid: "' OR '1'='1' --" })), 401, INVALID)
attack('kid a URL', () => withHeader(access.signToken({}, { kid: 'http://127.0.0.1:1/keys' })), 401, INVALID)
for (const field of ['jwk', 'jku', 'x5u', 'x5c'] as const) {
  t.test(`embedded ${field} is ignored and never fetched`, async (t) => {
    const before = access.requestCount
    const value = {
      jwk: createPublicKey(attacker).export({ format: 'jwk' }),
      jku: `${access.teamDomain}/attacker/jwks.json`,
      x5u: `${access.teamDomain}/attacker/cert.pem`,
      x5c: [randomBytes(300).toString('base64')]
    }[field]
    const forged = await withHeader(access.signToken({}, { key: attacker, kid: randomBytes(32).toString('hex'), header: { [field]: value } }))
    t.equal(forged.status, 401)
    t.equal(forged.body.code, INVALID)
    const genuine = await withHeader(access.signToken({}, { header: { [field]: value } }))
    t.equal(genuine.status, 200, `a genuine token carrying ${field} passes: the field is ignored`)
    t.same(access.requests.slice(before).filter((path) => path.startsWith('/attacker')), [], 'no request to what the token named')
  })
}
attack('crit header naming an extension', () => withHeader(access.signToken({}, { header: { crit: ['exp'], exp: 1 } })), 401, INVALID)
attack('crit header empty', () => withHeader(access.signToken({}, { header: { crit: [] } })), 401, INVALID)

// — claim attacks —
const aud = (): string => access.audience
const iss = (): string => access.teamDomain
const claimCases: Array<[string, () => Record<string, unknown>, number, string?]> = [
  ['aud: a prefix of the tag', () => ({ aud: [aud().slice(0, -1)] }), 401, CLAIM],
  ['aud: the tag plus a suffix', () => ({ aud: [aud() + '0'] }), 401, CLAIM],
  ['aud: the tag upper-cased', () => ({ aud: [aud().toUpperCase()] }), 401, CLAIM],
  ['aud: the tag with a trailing slash', () => ({ aud: [aud() + '/'] }), 401, CLAIM],
  ['aud: unicode confusables (fullwidth digits)', () => ({ aud: [aud().replace(/[0-9]/g, (d) => String.fromCharCode(0xff10 + Number(d)))] }), 401, CLAIM],
  ['aud: the tag with a zero-width space', () => ({ aud: [aud() + '\u200b'] }), 401, CLAIM],
  ['aud: an array with a number', () => ({ aud: [1, aud()] }), 401, CLAIM],
  ['aud: an array with null', () => ({ aud: [null, aud()] }), 401, CLAIM],
  ['aud: an array inside the array', () => ({ aud: [[aud()]] }), 401, CLAIM],
  ['aud: an object', () => ({ aud: { aud: aud() } }), 401, CLAIM],
  ['aud: empty', () => ({ aud: [] }), 401, CLAIM],
  ['aud: missing', () => ({ aud: undefined }), 401, CLAIM],
  ['iss: a prefix', () => ({ iss: iss().slice(0, -1) }), 401, CLAIM],
  ['iss: a suffix', () => ({ iss: iss() + '0' }), 401, CLAIM],
  ['iss: upper-cased', () => ({ iss: iss().toUpperCase() }), 401, CLAIM],
  ['iss: a trailing slash', () => ({ iss: iss() + '/' }), 401, CLAIM],
  ['iss: a path', () => ({ iss: iss() + '/cdn-cgi/access' }), 401, CLAIM],
  ['iss: unicode confusables (Cyrillic а)', () => ({ iss: iss().replace('http', 'httр') }), 401, CLAIM],
  ['iss: another team', () => ({ iss: 'https://evil.cloudflareaccess.com' }), 401, CLAIM],
  ['iss: in an array', () => ({ iss: [iss()] }), 401, CLAIM],
  ['iss: missing', () => ({ iss: undefined }), 401, CLAIM],
  ['exp: a string', () => ({ exp: String(nowSeconds() + 600) }), 401, CLAIM],
  ['exp: a float in the future is honoured', () => ({ exp: nowSeconds() + 600.5 }), 200],
  ['exp: a float in the past', () => ({ exp: nowSeconds() - 600.5 }), 401, EXPIRED],
  ['exp: negative', () => ({ exp: -1 }), 401, EXPIRED],
  ['exp: zero', () => ({ exp: 0 }), 401, EXPIRED],
  ['exp: missing', () => ({ exp: undefined }), 401, CLAIM],
  ['exp: null', () => ({ exp: null }), 401, CLAIM],
  ['exp: true', () => ({ exp: true }), 401, CLAIM],
  ['nbf: a string', () => ({ nbf: String(nowSeconds()) }), 401, CLAIM],
  ['nbf: huge', () => ({ nbf: 1e15 }), 401, EXPIRED],
  ['nbf: negative (long past) is accepted', () => ({ nbf: -1 }), 200],
  ['nbf: a float just past is accepted', () => ({ nbf: nowSeconds() - 0.5 }), 200],
  ['iat: a string', () => ({ iat: String(nowSeconds()) }), 401, CLAIM],
  ['iat: huge (issued in the future)', () => ({ iat: 1e15, nbf: undefined }), 401, EXPIRED],
  ['iat: negative is accepted', () => ({ iat: -1 }), 200],
  ['iat: missing is accepted', () => ({ iat: undefined }), 200],
  ['type: org (the global session token)', () => ({ type: 'org' }), 401, CLAIM],
  ['type: APP (case)', () => ({ type: 'APP' }), 401, CLAIM],
  ['type: an array', () => ({ type: ['app'] }), 401, CLAIM],
  ['sub: a number', () => ({ sub: 1 }), 401, CLAIM],
  ['email and common_name together', () => ({ common_name: 'x.access' }), 401, CLAIM],
  ['neither email nor common_name', () => ({ email: undefined }), 401, CLAIM],
  ['email an array', () => ({ email: ['admin@acme.com'] }), 401, CLAIM]
]
for (const [name, make, status, code] of claimCases) {
  attack(`claims: ${name}`, () => withHeader(access.signToken(make())), status, code)
}
attack('exp: 1e999 parses to Infinity', () => {
  const payload = JSON.stringify(claims()).replace(/"exp":\d+/, '"exp":1e999')
  return withHeader(access.signRaw({ alg: 'RS256', kid: kid() }, payload))
}, 401, CLAIM)
attack('duplicate keys in the payload: a wrong aud after the right one', () => {
  const payload = JSON.stringify(claims()).replace(/^\{/, `{"aud":["${aud()}"],`).replace(/\}$/, `,"aud":["${'f'.repeat(64)}"]}`)
  return withHeader(access.signRaw({ alg: 'RS256', kid: kid() }, payload))
}, 401, CLAIM)
attack('duplicate keys in the payload: an admin email after the real one', () => {
  const payload = JSON.stringify({ ...claims(), email: 'user@acme.com' }).replace(/\}$/, ',"email":"admin@acme.com"}')
  return withHeader(access.signRaw({ alg: 'RS256', kid: kid() }, payload))
}, 200) // the signer signed both; the last wins for fast-jwt and for the plugin alike
t.test('duplicate keys in the payload: what the handler sees is what was verified (the last)', async (t) => {
  const payload = JSON.stringify({ ...claims(), email: 'user@acme.com' }).replace(/\}$/, ',"email":"admin@acme.com"}')
  const answer = await withHeader(access.signRaw({ alg: 'RS256', kid: kid() }, payload))
  t.equal(answer.body.email, 'admin@acme.com')
})
attack('duplicate keys in the header: alg none after RS256', () => withHeader(access.signRaw(`{"alg":"RS256","kid":"${kid()}","alg":"none"}`, claims())), 401, INVALID)
attack('duplicate keys in the header: an attacker kid after the real one', () => {
  return withHeader(access.signRaw(`{"alg":"RS256","kid":"${kid()}","kid":"${'e'.repeat(64)}"}`, claims(), { key: attacker }))
}, 401, INVALID)

// — encoding attacks —
function parts (): [string, string, string] {
  return access.signToken().split('.') as [string, string, string]
}
const encodingCases: Array<[string, () => string]> = [
  ['base64 padding', () => { const [h, p, s] = parts(); return `${h}==.${p}.${s}` }],
  ['+ and / instead of base64url', () => { const [h, p, s] = parts(); return `${h}.${p}.${s.replace(/-/g, '+').replace(/_/g, '/')}+/` }],
  ['whitespace inside', () => { const [h, p, s] = parts(); return `${h}.${p} .${s}` }],
  ['a tab inside', () => { const [h, p, s] = parts(); return `${h}.${p}\t.${s}` }],
  ['a trailing dot', () => `${access.signToken()}.`],
  ['a leading dot', () => `.${access.signToken()}`],
  ['two segments', () => { const [h, p] = parts(); return `${h}.${p}` }],
  ['four segments', () => { const [h, p, s] = parts(); return `${h}.${p}.${s}.${s}` }],
  ['an empty signature', () => { const [h, p] = parts(); return `${h}.${p}.` }],
  ['a non-canonical last character in the signature', () => {
    const [h, p, s] = parts()
    return `${h}.${p}.${s.slice(0, -1)}${String.fromCharCode(s.charCodeAt(s.length - 1) + 1)}`
  }],
  ['a header that is not JSON', () => { const [, p, s] = parts(); return `${Buffer.from('RS256').toString('base64url')}.${p}.${s}` }],
  ['a header that is a JSON array', () => { const [, p, s] = parts(); return `${Buffer.from('["RS256"]').toString('base64url')}.${p}.${s}` }],
  ['a payload that is not JSON', () => access.signRaw({ alg: 'RS256', kid: kid() }, 'not json')],
  ['a payload that is a JSON array', () => access.signRaw({ alg: 'RS256', kid: kid() }, '[1,2,3]')],
  ['a payload that is a JSON string', () => access.signRaw({ alg: 'RS256', kid: kid() }, '"admin"')],
  ['a payload of deeply nested JSON', () => access.signRaw({ alg: 'RS256', kid: kid() }, '['.repeat(3000) + ']'.repeat(3000))],
  ['a header with invalid UTF-8', () => { const [, p, s] = parts(); return `${Buffer.concat([Buffer.from('{"alg":"RS256","kid":"'), Buffer.from([0xc3, 0x28]), Buffer.from('"}')]).toString('base64url')}.${p}.${s}` }],
  ['a signed payload with invalid UTF-8', () => access.signRaw({ alg: 'RS256', kid: kid() }, Buffer.concat([Buffer.from(JSON.stringify(claims()).slice(0, -1) + ',"x":"'), Buffer.from([0xff, 0xfe]), Buffer.from('"}')]))],
  ['a signed header with invalid UTF-8', () => access.signRaw(Buffer.concat([Buffer.from(`{"alg":"RS256","kid":"${kid()}","x":"`), Buffer.from([0xc3, 0x28]), Buffer.from('"}')]), claims())],
  ['garbage', () => 'garbage'],
  ['only dots', () => '..']
]
for (const [name, make] of encodingCases) {
  attack(`encoding: ${name}`, () => withHeader(make()), 401, INVALID)
}
t.test('a signed token with a deeply nested claim is handled without a crash', async (t) => {
  const nested = JSON.stringify(claims()).replace(/\}$/, `,"custom":${'{"a":'.repeat(1500)}1${'}'.repeat(1500)}}`)
  const answer = await withHeader(access.signRaw({ alg: 'RS256', kid: kid() }, nested))
  t.ok(answer.status === 200 || answer.status === 401, `answered ${answer.status}`)
})
for (const [name, send] of [
  ['header', () => withHeader('a'.repeat(1024 * 1024))],
  ['cookie', () => withCookie(`CF_Authorization=${'a'.repeat(1024 * 1024)}`)]
] as const) {
  t.test(`1 MiB through the ${name}: refused by Node before the app (431 or a dropped connection)`, async (t) => {
    const answer = await send()
    t.ok(answer.status === 431 || answer.status === 0, `answered ${answer.status === 0 ? 'by dropping the connection' : answer.status}`)
    t.equal((await withHeader(access.signToken())).status, 200, 'a valid token still passes')
  })
}
attack('12 KiB through the header (under Node\'s limit): refused by the size check', () => withHeader(`${'a'.repeat(6000)}.${'b'.repeat(6000)}.c`), 401, INVALID)
attack('12 KiB through the cookie: refused by the size check', () => withCookie(`CF_Authorization=${'a'.repeat(6000)}.${'b'.repeat(6000)}.c`), 401, INVALID)
t.test('verifyToken refuses 8 KiB + 1 and 1 MiB without parsing them', async (t) => {
  const [h, , s] = parts()
  for (const token of [`${h}.${'A'.repeat(8193 - h.length - s.length - 2)}.${s}`, `${h}.${'A'.repeat(1024 * 1024)}.${s}`]) {
    const scoped = Fastify()
    await scoped.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, hook: false })
    await t.rejects(scoped.cfAccess.verifyToken(token), { statusCode: 401, code: INVALID, message: /longer than 8192/ })
    await scoped.close()
  }
})

// — transport attacks —
attack('several Cf-Access-Jwt-Assertion headers', () => {
  const valid = access.signToken()
  sent.push(valid)
  return request([['cf-access-jwt-assertion', valid], ['cf-access-jwt-assertion', valid]])
}, 401, INVALID)
t.test('header and cookie disagree: the header wins', async (t) => {
  const header = access.signToken({ email: 'header@acme.com' })
  const cookie = access.signToken({ email: 'cookie@acme.com' })
  sent.push(header, cookie)
  const answer = await request([['cf-access-jwt-assertion', header], ['cookie', `CF_Authorization=${cookie}`]])
  t.equal(answer.body.email, 'header@acme.com')
  const bad = await request([['cf-access-jwt-assertion', 'garbage'], ['cookie', `CF_Authorization=${cookie}`]])
  t.equal(bad.status, 401, 'a bad header is not rescued by a good cookie')
})
attack('cookie: percent-encoded token', () => withCookie(`CF_Authorization=${encodeURIComponent(access.signToken()).replace(/\./g, '%2E')}`), 401, INVALID)
attack('cookie: name in another case', () => withCookie(`cf_authorization=${access.signToken()}`), 401, MISSING)
attack('cookie: name with a prefix', () => withCookie(`__Host-CF_Authorization=${access.signToken()}`), 401, MISSING)
attack('cookie: a forged token before a valid one (the first wins)', () => withCookie(`CF_Authorization=${access.signToken({}, { key: attacker })}; CF_Authorization=${access.signToken()}`), 401, INVALID)
attack('cookie: token with surrounding spaces and quotes is read', () => withCookie(`a=1;  CF_Authorization = "${access.signToken()}" ; b=2`), 200)
attack('cookie: empty value', () => withCookie('CF_Authorization='), 401, MISSING)
attack('cookie: several Cookie headers', () => {
  const valid = access.signToken()
  sent.push(valid)
  return request([['cookie', 'a=1'], ['cookie', `CF_Authorization=${valid}`]])
}, 200)
t.test('a hostile Cookie header (1 MiB of ";" or of "a;") gets 401 without a token, and the real cookie after them is still found', async (t) => {
  const team = await emulator(t)
  const server = Fastify()
  t.teardown(() => server.close())
  await server.register(cloudflareAccess, { teamDomain: team.teamDomain, audience: team.audience })
  server.get('/', async (request) => request.cfAccess?.email)
  await server.ready()
  const token = team.signToken()
  for (const filler of [';'.repeat(1 << 20), 'a;'.repeat(1 << 19), ' ;='.repeat(1 << 18), 'x=1;'.repeat(1 << 18)]) {
    t.equal((await server.inject({ url: '/', headers: { cookie: filler } })).statusCode, 401)
    const res = await server.inject({ url: '/', headers: { cookie: `${filler}; CF_Authorization=${token}` } })
    t.equal(res.statusCode, 200, 'the cookie after the filler is found')
  }
})
attack('a forged Cf-Access-Authenticated-User-Email alone', () => request([['cf-access-authenticated-user-email', 'admin@acme.com']]), 401, MISSING)
attack('a forged Cf-Access-Authenticated-User-Email beside a garbage token', () => request([['cf-access-authenticated-user-email', 'admin@acme.com'], ['cf-access-jwt-assertion', 'x.y.z']]), 401, INVALID)

// — what the logs saw —
t.test('no token, nor any 20-character piece of one, appears in any log line', async (t) => {
  const everything = JSON.stringify(logs.lines)
  t.ok(logs.lines.length > 100, `${logs.lines.length} log lines captured at trace level`)
  let leaks = 0
  for (const token of sent) {
    for (const segment of token.split(/[.=; ]/)) {
      for (let i = 0; i + 20 <= segment.length; i += 10) {
        const piece = segment.slice(i, i + 20)
        if (/^[a-zA-Z]+$/.test(piece) && new Set(piece).size < 4) continue // filler such as 'aaaa…' is no secret
        if (everything.includes(piece)) leaks++
      }
    }
  }
  t.equal(leaks, 0, `checked ${sent.length} tokens`)
  const rejections = logs.lines.filter((line) => line.err?.code?.startsWith('FST_CF_ACCESS_'))
  t.ok(rejections.every((line) => line.level === 30), 'rejections are logged at info')
  t.ok(rejections.every((line) => line.err.code === MISSING || (typeof line.err.message === 'string' && line.err.message.includes(': '))), 'with the code and the reason')
})
