import http from 'node:http'
import https from 'node:https'

/** A failed bounded fetch; the message is safe to show (it names no token). */
export class FetchError extends Error {
  /** The HTTP status, when the server answered. */
  readonly status: number | undefined
  constructor (message: string, status?: number) {
    super(message)
    this.status = status
  }
}

export interface GetJsonOptions {
  /** Time limit for the whole exchange, headers and body, in milliseconds. */
  timeout: number
  /** Largest accepted body, in bytes. */
  maxBytes: number
  /** What to call the endpoint in messages, e.g. 'key endpoint'. */
  name: string
  headers?: Record<string, string>
  /** Ends the exchange at once (the app is closing): rejects, and leaves no socket or timer behind. */
  signal?: AbortSignal
}

/**
 * GET a JSON document, bounded: a timer of its own per call, no redirects followed, a size cap, status 200
 * and valid JSON required. Rejects with a {@link FetchError}.
 */
export function getJson (url: string, options: GetJsonOptions): Promise<unknown> {
  const { name } = options
  return new Promise((resolve, reject) => {
    const get = url.startsWith('https:') ? https.get : http.get
    const headers = { accept: 'application/json', 'user-agent': 'fastify-cloudflare-access', ...options.headers }
    // A connection of its own (agent: false): fetches are minutes apart, and a pooled idle connection the
    // server has just closed would fail the next fetch as unreachable.
    const req = get(url, { headers, agent: false }, (res) => {
      if (res.statusCode !== 200) {
        res.resume()
        return done(new FetchError(`${name} answered HTTP ${res.statusCode}`, res.statusCode))
      }
      const chunks: Buffer[] = []
      let size = 0
      res.on('data', (chunk: Buffer) => {
        size += chunk.length
        if (size > options.maxBytes) {
          done(new FetchError(`${name} answered more than ${options.maxBytes} bytes`))
        } else {
          chunks.push(chunk)
        }
      })
      res.on('end', () => {
        try {
          done(null, JSON.parse(Buffer.concat(chunks).toString('utf8')))
        } catch {
          // Stryker disable next-line StringLiteral: message text only (the rejection is tested)
          done(new FetchError(`${name} answered something that is not JSON`))
        }
      })
      // Stryker disable next-line StringLiteral: message text only (a cut connection is tested by its rejection)
      res.on('error', () => done(new FetchError(`connection to ${name} failed`)))
    })
    const timer = setTimeout(() => done(new FetchError(`${name} did not answer within ${options.timeout} ms`)), options.timeout)
    req.on('error', () => done(new FetchError(`${name} unreachable`)))
    const { signal } = options
    const abort = (): void => done(new FetchError(`${name} request aborted: the app is closing`))
    signal?.addEventListener('abort', abort)
    // Called once or more (an error after the answer, a timeout after an abort): everything here is idempotent.
    function done (error: FetchError | null, value?: unknown): void {
      clearTimeout(timer)
      signal?.removeEventListener('abort', abort)
      req.destroy()
      if (error === null) resolve(value)
      else reject(error)
    }
    if (signal?.aborted === true) abort()
  })
}
