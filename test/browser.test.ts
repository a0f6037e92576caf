import { accessSync, constants, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { delimiter, join } from 'node:path'
import puppeteer, { type Browser, type HTTPResponse, type Page } from 'puppeteer-core'
import t, { type Test } from 'tap'
import { buildBrowserApp } from '../examples/browser'
import { createDevProxy, LOGIN_PATH } from '../lib/dev-proxy'
import { freePort } from './helpers'

// A real browser (Debian's Chromium, driven by puppeteer-core) through the dev proxy, in front of
// examples/browser.ts: a public page, the login page, a protected page, a fetch, a WebSocket, a page for one
// group by id, the page for a refused user, and logout by link and by form.
//
// CF_ACCESS_BROWSER_TEST: unset, the test runs where a Chromium is found ($CHROMIUM_PATH, or `chromium` on
// PATH) and is skipped with one line elsewhere; `require`: a missing Chromium fails; `skip`: never runs.

const mode = process.env.CF_ACCESS_BROWSER_TEST ?? ''
/** Every wait of the test is bounded by one of these. */
const STEP_MS = 15_000

/** The Chromium to drive: $CHROMIUM_PATH, else `chromium` on PATH; undefined when there is none. */
function chromium (): string | undefined {
  const given = process.env.CHROMIUM_PATH
  const candidates = given !== undefined && given !== '' ? [given] : (process.env.PATH ?? '').split(delimiter).filter((dir) => dir !== '').map((dir) => join(dir, 'chromium'))
  return candidates.find((file) => {
    try {
      accessSync(file, constants.X_OK)
      return true
    } catch {
      return false
    }
  })
}

const executablePath = chromium()
if (!['', 'skip', 'require'].includes(mode)) {
  t.fail(`CF_ACCESS_BROWSER_TEST must be skip or require (or unset), got ${JSON.stringify(mode)}`)
} else if (mode === 'skip') {
  t.plan(0, 'browser test skipped: CF_ACCESS_BROWSER_TEST=skip')
} else if (executablePath === undefined) {
  const where = process.env.CHROMIUM_PATH ? `$CHROMIUM_PATH (${process.env.CHROMIUM_PATH}) is not an executable` : 'no chromium on PATH and $CHROMIUM_PATH unset'
  if (mode === 'require') t.fail(`CF_ACCESS_BROWSER_TEST=require, but ${where}: apt-get install -y chromium, or set CHROMIUM_PATH`)
  else t.plan(0, `browser test skipped: ${where} (apt-get install -y chromium, or set CHROMIUM_PATH; CF_ACCESS_BROWSER_TEST=require makes this a failure)`)
} else {
  // typically 10–30 s (Chromium starts slower on a loaded machine); a bound, not a target
  t.setTimeout(90_000)
  t.test('a browser through the dev proxy: public page, login, page, fetch, WebSocket, group id, refused page, logout by link and form', (t) => flow(t, executablePath))
}

async function flow (t: Test, executable: string): Promise<void> {
  const started = Date.now()
  const appPort = await freePort()
  const proxy = await createDevProxy({ upstream: `http://127.0.0.1:${appPort}`, port: 0, publicPaths: ['/,/health'] })
  t.teardown(() => proxy.close())
  const origin = proxy.origin
  const app = await buildBrowserApp({ teamDomain: origin, audience: proxy.audience, financeGroupId: 'g-finance', origins: [origin] })
  t.teardown(() => app.close())
  await app.listen({ port: appPort, host: '127.0.0.1' })

  const profile = mkdtempSync(join(tmpdir(), 'cf-access-chromium-'))
  const browser: Browser = await puppeteer.launch({
    executablePath: executable,
    headless: true,
    pipe: true,
    userDataDir: profile,
    timeout: 30_000,
    protocolTimeout: 30_000,
    // as root Chromium needs --no-sandbox; the rest keeps it off the network and away from /dev/shm
    args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-proxy-server']
  })
  t.teardown(async () => {
    const closed = browser.close().catch(() => {})
    // bounded: a browser that does not close is killed
    await Promise.race([closed, new Promise((resolve) => setTimeout(resolve, 5000))])
    browser.process()?.kill('SIGKILL')
    rmSync(profile, { recursive: true, force: true })
  })
  const page: Page = await browser.newPage()
  page.setDefaultTimeout(STEP_MS)
  page.setDefaultNavigationTimeout(STEP_MS)

  const text = async (selector: string): Promise<string> => page.$eval(selector, (element) => element.textContent ?? '')
  const path = (): string => new URL(page.url()).pathname
  /** Clicks and waits for the page it leads to. */
  const follow = async (selector: string): Promise<HTTPResponse | null> => {
    const [response] = await Promise.all([page.waitForNavigation(), page.click(selector)])
    return response
  }
  const logIn = async (email: string, groups: string, then?: string): Promise<HTTPResponse | null> => {
    t.equal(path(), LOGIN_PATH, 'on the login page')
    await page.locator('#email').fill(email)
    await page.locator('#groups').fill(groups)
    if (then !== undefined) await page.locator('#redirect_url').fill(then)
    return follow('form[action="/cdn-cgi/access/login"] button')
  }
  const loggedOut = async (): Promise<void> => {
    t.equal(path(), '/cdn-cgi/access/logout', 'at Access\'s logout')
    t.match(await text('h1'), 'You have been logged out')
    t.notOk((await page.cookies()).some((cookie) => cookie.name === 'CF_Authorization'), 'the cookie is gone')
  }

  // a public path: no login
  const home = await page.goto(`${origin}/`)
  t.equal(home?.status(), 200)
  t.equal(path(), '/', 'no login first')
  t.equal(await text('h1'), 'Welcome')

  // the protected page: the proxy's login, then back
  await follow('a[href="/app/"]')
  t.equal(await page.$eval('#redirect_url', (input) => (input as unknown as { value: string }).value), '/app/', 'the login leads back to the page asked for')
  t.equal((await logIn('alice@acme.com', 'finance=g-finance'))?.status(), 200)
  t.equal(path(), '/app/')
  t.equal(await text('h1'), 'Hello, alice@acme.com')

  // the page's own requests: a fetch of a JSON route, a WebSocket
  t.same(await page.evaluate('fetch("/app/me").then((res) => res.json())'), { email: 'alice@acme.com' }, 'fetch sends the cookie, the proxy the token')
  const message = await page.evaluate(`new Promise((resolve, reject) => {
    const ws = new WebSocket(${JSON.stringify(`ws://127.0.0.1:${new URL(origin).port}/app/ws`)})
    ws.onmessage = (event) => { resolve(event.data); ws.close() }
    ws.onerror = () => reject(new Error('WebSocket error'))
    setTimeout(() => reject(new Error('no WebSocket message')), ${STEP_MS})
  })`)
  t.equal(message, 'hello alice@acme.com', 'a WebSocket message')

  // a page for one group, by id: typed as finance=g-finance
  const finance = await page.goto(`${origin}/app/finance`)
  t.equal(finance?.status(), 200)
  t.equal(await text('h1'), 'Finance')
  const login = await page.goto(`${origin}${LOGIN_PATH}`)
  t.equal(login?.status(), 200)
  t.match(await text('body'), 'Logged in as alice@acme.com, with groups finance (id g-finance)', 'the login page shows the ids the identity carries')

  // logout by the greeting's link (the README's recipe), then refused again
  await page.goto(`${origin}/app/`)
  await follow('#logout-link')
  await loggedOut()
  await page.goto(`${origin}/app/`)
  t.equal(path(), LOGIN_PATH, 'logged out: the app asks for a login again')

  // a user outside the group: the group name alone carries another id
  const refused = await logIn('bob@acme.com', 'finance', '/app/finance')
  t.equal(refused?.status(), 403)
  t.equal(path(), '/app/finance')
  t.equal(await text('h1'), 'This page needs more access')
  t.match(await text('body'), 'You are signed in as bob@acme.com, who may not open this page')
  t.same(await page.evaluate('fetch("/app/finance").then(async (res) => [res.status, await res.json()])'),
    [403, { statusCode: 403, code: 'FST_CF_ACCESS_FORBIDDEN', error: 'Forbidden', message: 'This Cloudflare Access identity is not allowed here' }],
    'a fetch from the same page keeps the JSON error')
  await follow('a[href="/cdn-cgi/access/logout"]')
  await loggedOut()
  await page.goto(`${origin}/app/finance`)
  t.equal(path(), LOGIN_PATH, 'refused again: a login first')

  // logout by the greeting's form
  await logIn('bob@acme.com', '', '/app/')
  t.equal(await text('h1'), 'Hello, bob@acme.com')
  await follow('#logout-form button')
  await loggedOut()
  await page.goto(`${origin}/app/`)
  t.equal(path(), LOGIN_PATH, 'logged out by the form: a login first')
  const health = await page.goto(`${origin}/health`)
  t.equal(await health?.text(), 'ok', 'public paths stay public')
  t.comment(`browser flow: ${Date.now() - started} ms`)
}
