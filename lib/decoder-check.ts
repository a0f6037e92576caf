/** Start-up self-check of fast-jwt: the hot path (lib/token.ts, StructureMemo) relies on its decoder refusing characters outside base64url. */
import { createPublicKey } from 'node:crypto'
import { createVerifier } from 'fast-jwt'
import type { FastifyBaseLogger } from 'fastify'

// A token signed once, when this file was written, with a key made for this check alone (its private half
// was never kept), and that key's public half: nothing to generate at start-up. Its signature holds both
// '-' and '_', the characters that base64 (not base64url) spells '+' and '/'.
const N =
  'jOtQV9dfBDzN58ZL1o8QvMNa3LXXVWYAM-94LgsATRXG7ryWK69aH1HoqvAlz3MC1mMECkunv5H7_2RTqiCoz3DN7xxbbcKJskcb' +
  'vNydRPy0_5Y3kHlyhls1UiHTnZB8XuMiIDTe2A5sief8pzwnsuW4Lrjkm3nny-a_hTNcsjgx0Q9-lVyW_JuZFufQwRcp1FShUAUI' +
  'mFQAoy6eAnELalmuT8sH5SYyRnIbzDC2is_tqTLA-clpcWCvM8JrMXEoLumwKM1pbIweQZHs5axUqozRDAqoVBy36EcsdlCGTXsA' +
  '79XdVFM1b8t9jyKWEYhwL19gAL7i93MSJo0Qcmv3Hw'
const TOKEN =
  'eyJhbGciOiJSUzI1NiIsImtpZCI6ImZhc3RpZnktY2xvdWRmbGFyZS1hY2Nlc3Mtc2VsZi1jaGVjayIsInR5cCI6IkpXVCJ9.eyJ' +
  'pc3MiOiJodHRwczovL3NlbGYtY2hlY2suY2xvdWRmbGFyZWFjY2Vzcy5jb20iLCJhdWQiOlsic2VsZi1jaGVjayJdLCJzdWIiOiJ' +
  'zZWxmLWNoZWNrIiwiZW1haWwiOiJzZWxmLWNoZWNrQGV4YW1wbGUuY29tIiwiaWF0IjoxNzY3MjI1NjAwLCJuYmYiOjE3NjcyMjU' +
  '2MDAsImV4cCI6MTc2NzIyOTIwMCwidHlwZSI6ImFwcCJ9.T1tHkdD5x-BAUxOLJhOfwKUvFKtytGf4RNczrVE9WPhjOXvsb2X4rI' +
  'i6FPPaf7UeFJWrV6UZwD4SKvl9UOd96zN2CObolQO6vjpExwvv0CoLwu9JRsaPyhOJkImJG_3vlpv63-vOL5PTnOnq-mOPGc9Bz8' +
  'uRfcXYc3purmKGVEyEniW2Za3T_RC9fE-WJdXq6hU7L8M38bRRQjRjU6zMdUZ_EdVAsXFUM0J5tEcQ7WYVKr260WIkQqiNJkmBNy' +
  'ftT04WrJnbATE03-dI8Xal8FMAHp-vMC8VFmspf7nJu6WocfcqouKkLleBCBO8YGR7aZtTmz6T4U8MB9HB2zSIcg'
/** The token's iat (2026-01-01T00:00:00Z): it is verified as of then, whatever the clock says. */
const ISSUED_AT_MS = 1_767_225_600_000

type CreateVerifier = typeof createVerifier

/**
 * Spellings of the token that are not it: the same bytes for a decoder that skips padding, white space
 * (inside the signature, or trailing: a decoder that trims) or the other base64 alphabet. A token the full
 * structural check refuses must never verify through the hot path, which leaves these characters to
 * fast-jwt's decoder.
 */
function respellings (token: string): string[] {
  const dot = token.lastIndexOf('.')
  const input = token.slice(0, dot + 1)
  const signature = token.slice(dot + 1)
  const middle = Math.floor(signature.length / 2)
  return [
    `${token}==`,
    `${token}=`,
    input + signature.replace(/-/g, '+').replace(/_/g, '/'),
    `${input}${signature.slice(0, middle)} ${signature.slice(middle)}`,
    `${input}${signature.slice(0, middle)}\n${signature.slice(middle)}`,
    `${input}${signature.slice(0, middle)}\t${signature.slice(middle)}`,
    `${token} `
  ]
}

const verdicts = new WeakMap<CreateVerifier, boolean>()

/**
 * Whether fast-jwt's decoder is strict: it verifies the embedded token and refuses every respelling of it.
 * Checked once per fast-jwt (a few RSA verifies). `create` is fast-jwt's `createVerifier`: the one this
 * package resolved, or, in tests, another version's.
 */
export function decoderIsStrict (create: CreateVerifier = createVerifier): boolean {
  let strict = verdicts.get(create)
  if (strict === undefined) {
    const key = createPublicKey({ key: { kty: 'RSA', n: N, e: 'AQAB' }, format: 'jwk' }).export({ type: 'spki', format: 'pem' }) as string
    const verify = create({ key, algorithms: ['RS256'], clockTimestamp: ISSUED_AT_MS, cache: false })
    strict = accepts(verify, TOKEN) && !respellings(TOKEN).some((respelt) => accepts(verify, respelt))
    verdicts.set(create, strict)
  }
  return strict
}

function accepts (verify: (token: string) => unknown, token: string): boolean {
  try {
    verify(token)
    return true
  } catch {
    return false
  }
}

/** Says, once per registration, that the hot path is off and why. */
export function warnDecoderNotStrict (log: Pick<FastifyBaseLogger, 'warn'>): void {
  const { version } = require('fast-jwt/package.json') as { version: string }
  log.warn(
    { fastJwtVersion: version },
    `fastify-cloudflare-access: fast-jwt ${version} accepts a respelt copy of a signed token (base64 padding, white space or the ` +
    "other base64 alphabet in the signature): the verifier's hot path is off, and every token not in the cache gets the full " +
    'structural check first (safe, a little slower). Upgrade fast-jwt to a version whose decoder refuses them (6.3.0 or later).'
  )
}
