const { createAccessEmulator } = require('./dist/lib/testing')
const { createTokenVerifier } = require('./dist/lib/verify')
const { KeyStore } = require('./dist/lib/keys')
const { normalizeOptions } = require('./dist/lib/options')
const crypto = require('crypto')
;(async () => {
  const access = await createAccessEmulator()
  const tokens = Array.from({ length: 3000 }, (_, i) => access.signToken({ email: `u${i}@a.co` }))
  const log = { info () {}, warn () {}, error () {} }
  const keys = new Map(access.jwks().keys.map((k) => [k.kid, crypto.createPublicKey({ key: k, format: 'jwk' })]))
  function raw (token) {
    const [h, p, s] = token.split('.')
    const { kid } = JSON.parse(Buffer.from(h, 'base64url').toString())
    if (!crypto.verify('sha256', Buffer.from(`${h}.${p}`), keys.get(kid), Buffer.from(s, 'base64url'))) throw new Error('x')
    const c = JSON.parse(Buffer.from(p, 'base64url').toString())
    if (c.iss !== access.teamDomain || !c.aud.includes(access.audience) || c.exp * 1000 < Date.now()) throw new Error('y')
    return c
  }
  const variants = {}
  for (const cacheSize of [1000, 0]) {
    const options = normalizeOptions({ teamDomain: access.teamDomain, audience: access.audience, cacheSize })
    const store = new KeyStore({ ...options, log })
    await store.resolve(access.kids[0])
    const v = createTokenVerifier(options, store)
    variants['ours cache ' + cacheSize] = (t) => v.verify(t)
  }
  variants.raw = raw
  for (let rep = 0; rep < 3; rep++) {
    for (const [name, fn] of Object.entries(variants)) {
      for (const t of tokens.slice(0, 300)) fn(t)
      const start = process.cpuUsage()
      for (const t of tokens) { const r = fn(t); if (r instanceof Error) throw r }
      const u = process.cpuUsage(start)
      console.log(name.padEnd(16), ((u.user + u.system) / tokens.length).toFixed(1), 'µs')
    }
  }
  await access.close()
})()
