import { createPrivateKey, type KeyObject } from 'node:crypto'
import diagnosticsChannel from 'node:diagnostics_channel'
import { readFileSync } from 'node:fs'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify'
import type { Test } from 'tap'
import cloudflareAccess from '../index'
import { createAccessEmulator, type AccessEmulator, type AccessEmulatorOptions } from '../lib/testing'
import { channelNames, type KeyFetchEndMessage } from '../lib/channels'
import type { KeyStoreClock } from '../lib/keys'
import type { FastifyCloudflareAccessOptions } from '../lib/types'

export const HEADER = 'cf-access-jwt-assertion'

interface TestKeys {
  current: string
  previous: string
  attacker: string
  /** Keys outside what Cloudflare publishes: an exponent other than 65537, a modulus above 4096 bits. */
  odd: Record<string, string>
  /** Public keys only, of sizes the key store refuses or takes. */
  publicJwks: Record<'rsa-1024' | 'rsa-4096', Record<string, string>>
}

let testKeys: TestKeys | undefined
/**
 * RSA keys generated once, in test/fixtures/test-keys.json, for tests only: an RSA key costs about 0.5 s
 * of CPU to generate (a 4096-bit one, seconds), which dozens of test files would otherwise pay each.
 */
export function fixtureKeys (): TestKeys {
  testKeys ??= JSON.parse(readFileSync(join(__dirname, 'fixtures', 'test-keys.json'), 'utf8')) as TestKeys
  return testKeys
}

/** A fixture private key (PEM) as a KeyObject. */
export function privateKey (pem: string): KeyObject {
  return createPrivateKey(pem)
}

let keyPair: [KeyObject, KeyObject] | undefined
/** The emulators' current and previous signing keys: the fixture's (published under kids of each emulator's own). */
export function signingKeys (): [KeyObject, KeyObject] {
  keyPair ??= [privateKey(fixtureKeys().current), privateKey(fixtureKeys().previous)]
  return keyPair
}

/**
 * Starts an emulator that the test closes when it ends. Emulators share one pair of RSA keys (published
 * under kids of their own), which keeps key generation out of most tests.
 */
export async function emulator (t: Test, options?: AccessEmulatorOptions): Promise<AccessEmulator> {
  const access = await createAccessEmulator({ privateKeys: signingKeys(), ...options })
  t.teardown(() => access.close())
  return access
}

export interface Setup {
  access: AccessEmulator
  app: FastifyInstance
  /** GET `url` with the token in the Cf-Access-Jwt-Assertion header (none when undefined). */
  get: (token?: string, url?: string) => Promise<{ statusCode: number, json: Record<string, any>, headers: Record<string, unknown> }>
}

/**
 * The tutorial's shape: `/admin/*` protected by a prefix-scoped registration, `/public` open.
 * `/admin/me` echoes `request.cfAccess`.
 */
export async function setup (
  t: Test,
  options: Partial<FastifyCloudflareAccessOptions> = {},
  extra: { access?: AccessEmulator, fastify?: FastifyServerOptions, ready?: boolean } = {}
): Promise<Setup> {
  const access = extra.access ?? await emulator(t)
  const app = Fastify(extra.fastify)
  t.teardown(() => app.close())
  app.register(async (admin) => {
    await admin.register(cloudflareAccess, { teamDomain: access.teamDomain, audience: access.audience, ...options })
    admin.get('/me', async (request) => ({ claims: request.cfAccess }))
  }, { prefix: '/admin' })
  app.get('/public', async (request) => ({ claims: request.cfAccess ?? null }))
  if (extra.ready !== false) await app.ready()
  return {
    access,
    app,
    async get (token, url = '/admin/me') {
      const res = await app.inject({ url, headers: token === undefined ? {} : { [HEADER]: token } })
      return { statusCode: res.statusCode, json: res.json(), headers: res.headers }
    }
  }
}

/** A compact JWS from raw parts: for tokens no honest signer makes. */
export function rawToken (header: unknown, payload: unknown, signature = 'c2lnbmF0dXJl'): string {
  const encode = (part: unknown): string => typeof part === 'string' ? Buffer.from(part).toString('base64url') : Buffer.from(JSON.stringify(part)).toString('base64url')
  return `${encode(header)}.${encode(payload)}.${signature}`
}

/** The header and payload of a token, decoded. */
export function decode (token: string): { header: Record<string, unknown>, payload: Record<string, unknown>, signature: string } {
  const [header, payload, signature] = token.split('.') as [string, string, string]
  return {
    header: JSON.parse(Buffer.from(header, 'base64url').toString()),
    payload: JSON.parse(Buffer.from(payload, 'base64url').toString()),
    signature
  }
}

let attacker: KeyObject | undefined
/** An RSA key nobody publishes (a fixture key no emulator uses). */
export function attackerKey (): KeyObject {
  attacker ??= privateKey(fixtureKeys().attacker)
  return attacker
}

export function nowSeconds (): number {
  return Math.floor(Date.now() / 1000)
}

/**
 * Runs `fn` with `Date.now()` fixed at `at` (milliseconds). The verifier, its cache and fast-jwt read
 * Date.now: a test of expiry, tolerance or a clock stepped back goes through their clock this way instead
 * of sleeping, and no scheduler delay moves the instant (nothing in `fn` may wait for time to pass).
 */
export async function atTime<T> (at: number, fn: () => Promise<T>): Promise<T> {
  const realNow = Date.now
  Date.now = () => at
  try {
    return await fn()
  } finally {
    Date.now = realNow
  }
}

export function sleep (ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

/** A Fastify logger option that keeps every line, parsed. */
export function captureLogs (level = 'info'): { logger: { level: string, stream: { write: (line: string) => void } }, lines: Array<Record<string, any>> } {
  const lines: Array<Record<string, any>> = []
  return { logger: { level, stream: { write: (line: string) => { lines.push(JSON.parse(line)) } } }, lines }
}

/** Polls `check` every 50 ms until it holds or `ms` pass; resolves whether it held. */
export async function eventually (check: () => boolean | Promise<boolean>, ms: number): Promise<boolean> {
  const end = Date.now() + ms
  while (Date.now() < end) {
    if (await check()) return true
    await sleep(50)
  }
  return check()
}

/**
 * How many TCP servers of this process listen (Node's own count), once it holds still: a server lets go of
 * its handle shortly after its close callback. Proves which listeners something opened.
 */
export async function listeners (): Promise<number> {
  let count = -1
  for (;;) {
    await sleep(25)
    const now = process.getActiveResourcesInfo().filter((resource) => resource === 'TCPServerWrap').length
    if (now === count) return now
    count = now
  }
}

/** A port of 127.0.0.1 that was free a moment ago: nothing listens there, until someone takes it. */
export async function freePort (): Promise<number> {
  const server = http.createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  await new Promise((resolve) => server.close(resolve))
  return port
}

/**
 * A clock that moves only when told: for the key store (its `clock` option), so that a test of refresh
 * intervals, retries, cooldowns and staleness waits on no real timer. `advance(ms)` moves the time
 * forward and fires each timer that falls due, in order of due time, each at its own time (a timer a
 * callback sets fires in the same advance if it falls due within it).
 */
export class ManualClock implements KeyStoreClock {
  #now: number
  #timers: Array<{ at: number, seq: number, callback: () => void }> = []
  #seq = 0

  constructor (start = Date.now()) {
    this.#now = start
  }

  now = (): number => this.#now

  setTimeout = (callback: () => void, ms: number): unknown => {
    const timer = { at: this.#now + Math.max(0, ms), seq: this.#seq++, callback }
    this.#timers.push(timer)
    return timer
  }

  clearTimeout = (timer: unknown): void => {
    this.#timers = this.#timers.filter((pending) => pending !== timer)
  }

  /** Timers set and not yet fired or cleared. */
  get pending (): number {
    return this.#timers.length
  }

  /** The delays, from now, of the pending timers, soonest first. */
  get delays (): number[] {
    return this.#timers.map((timer) => timer.at - this.#now).sort((a, b) => a - b)
  }

  advance (ms: number): void {
    const end = this.#now + ms
    for (;;) {
      const next = this.#timers.reduce<{ at: number, seq: number, callback: () => void } | undefined>((soonest, timer) =>
        soonest === undefined || timer.at < soonest.at || (timer.at === soonest.at && timer.seq < soonest.seq) ? timer : soonest, undefined)
      if (next === undefined || next.at > end) break
      this.#timers = this.#timers.filter((timer) => timer !== next)
      this.#now = next.at
      next.callback()
    }
    this.#now = end
  }
}

/**
 * Resolves once the next key fetch from `url` has ended and its store is done with it (the set installed
 * or the failure counted, the next timer set): with the fetch's end message. Subscribe before the fetch.
 */
export function keyFetchEnd (url: string): Promise<KeyFetchEndMessage> {
  return new Promise((resolve) => {
    const listener = (message: unknown): void => {
      if ((message as KeyFetchEndMessage).url !== url) return
      diagnosticsChannel.unsubscribe(channelNames.keyFetchEnd, listener)
      // the store's own handlers of that fetch run in the same turn: after them
      setImmediate(() => resolve(message as KeyFetchEndMessage))
    }
    diagnosticsChannel.subscribe(channelNames.keyFetchEnd, listener)
  })
}
