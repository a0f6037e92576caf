import t from 'tap'
import { runDemo } from '../examples/demo'

t.test('the demo walks through every case with the expected answers', async (t) => {
  const lines: string[] = []
  const result = await runDemo({ print: (line) => lines.push(line) })
  t.equal(result.ok, true)
  const output = lines.join('\n')
  t.match(output, /11\/11 answers as expected; key endpoint fetched 1 time\(s\)/)
  t.match(output, /← 401 .*FST_CF_ACCESS_TOKEN_MISSING/)
  t.match(output, /← 401 .*FST_CF_ACCESS_TOKEN_EXPIRED/)
  t.match(output, /← 401 .*FST_CF_ACCESS_CLAIM_INVALID/)
  t.match(output, /not authorized\n.*\n.*← 403 .*FST_CF_ACCESS_FORBIDDEN/)
  t.match(output, /key endpoint down after warm-up[^]*← 200/)
  t.notMatch(output, /eyJ[A-Za-z0-9_-]{20}/, 'no token is printed whole')
  t.notMatch(output, /✗/)
})

t.test('--serve keeps listening and prints a ready curl command', async (t) => {
  const lines: string[] = []
  const result = await runDemo({ serve: true, print: (line) => lines.push(line) })
  t.teardown(result.close)
  const curl = lines.find((line) => line.includes('curl -s')) as string
  t.ok(curl)
  const token = /Cf-Access-Jwt-Assertion: ([^']+)'/.exec(curl)?.[1] as string
  const res = await fetch(`${result.url}/admin/me`, { headers: { 'cf-access-jwt-assertion': token } })
  t.equal(res.status, 200, 'the printed token works')
})
