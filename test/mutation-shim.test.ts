import t from 'tap'

// The mutation runner (test/mutation/runner.mjs) runs the test files through this shim of tap's API: a shim
// that passed what tap fails would let mutants survive unseen, one that failed what tap passes would count
// mutants as killed that no test noticed. Each assertion is checked both ways.
const shim = require('./mutation/tap-shim.cjs') as {
  run: (name: string, fn: (t: any) => unknown) => Promise<string[]>
  takeLate: () => string[]
  collect: (load: () => void) => { tests: Array<{ name: string }>, befores: unknown[], teardowns: unknown[] }
  default: any
}

const failuresOf = (fn: (t: any) => unknown) => shim.run('case', fn)

class Custom extends Error { code = 'E_CUSTOM' }

const cases: Array<[string, (t: any) => unknown, (t: any) => unknown]> = [
  ['ok', (s) => s.ok(1), (s) => s.ok(0)],
  ['notOk', (s) => s.notOk(''), (s) => s.notOk('x')],
  ['equal', (s) => s.equal('a', 'a'), (s) => s.equal(1, '1')],
  ['equal is ===', (s) => s.equal(0, -0), (s) => s.equal(NaN, NaN)],
  ['equal on objects', (s) => { const o = {}; s.equal(o, o) }, (s) => s.equal({}, {})],
  ['not', (s) => s.not(1, 2), (s) => s.not('a', 'a')],
  ['same', (s) => s.same({ a: [1, { b: 2 }] }, { a: [1, { b: 2 }] }), (s) => s.same({ a: 1 }, { a: 1, b: undefined, c: 3 })],
  ['same, order of an array', (s) => s.same([1, 2], [1, 2]), (s) => s.same([1, 2], [2, 1])],
  ['strictSame', (s) => s.strictSame([1], [1]), (s) => s.strictSame([1], ['1'])],
  ['match an object pattern', (s) => s.match({ code: 'X', extra: 1 }, { code: 'X' }), (s) => s.match({ code: 'Y' }, { code: 'X' })],
  ['match a RegExp', (s) => s.match('abc', /b/), (s) => s.match('abc', /z/)],
  ['match an Error', (s) => s.match(new Custom('boom'), { message: /boo/, code: 'E_CUSTOM' }), (s) => s.match(new Custom('boom'), { code: 'E_OTHER' })],
  ['notMatch', (s) => s.notMatch('abc', /z/), (s) => s.notMatch('abc', /a/)],
  ['has', (s) => s.has({ a: 1, b: 2 }, { a: 1 }), (s) => s.has({ a: 1 }, { b: 2 })],
  ['type', (s) => { s.type(new Custom('x'), Error); s.type('x', 'string') }, (s) => s.type({}, Error)],
  ['pass and fail', (s) => s.pass('fine'), (s) => s.fail('no')],
  ['throws', (s) => s.throws(() => { throw new TypeError('x') }, TypeError), (s) => s.throws(() => 1)],
  ['throws, a RegExp tests the message', (s) => s.throws(() => { throw new Error('abc') }, /^abc$/), (s) => s.throws(() => { throw new Error('abc') }, /^Error/)],
  ['throws a matching error', (s) => s.throws(() => { throw new Custom('x') }, { code: 'E_CUSTOM' }), (s) => s.throws(() => { throw new Custom('x') }, { code: 'E_OTHER' })],
  ['throws, message only', (s) => s.throws(() => { throw new Error('x') }, 'it throws'), (s) => s.throws(() => undefined, 'it throws')],
  ['rejects, awaited', async (s) => { await s.rejects(Promise.reject(new Custom('x')), { code: 'E_CUSTOM' }) }, async (s) => { await s.rejects(Promise.resolve(1)) }],
  ['rejects, not awaited, is still waited for', (s) => { s.rejects(new Promise((_resolve, reject) => setTimeout(() => reject(new Error('late')), 20))) }, (s) => { s.rejects(new Promise((resolve) => setTimeout(resolve, 20))) }],
  ['rejects, a RegExp tests the message', (s) => s.rejects(Promise.reject(new Error('abc')), /^abc$/), (s) => s.rejects(Promise.reject(new Error('abc')), /^Error/)],
  ['rejects a function', (s) => s.rejects(async () => { throw new Error('x') }), (s) => s.rejects(async () => 1)],
  ['resolves', async (s) => { await s.resolves(Promise.resolve(1)) }, async (s) => { await s.resolves(Promise.reject(new Error('x'))) }],
  ['resolves a function, not awaited, is still waited for', (s) => { s.resolves(async () => { await new Promise((resolve) => setTimeout(resolve, 20)) }) }, (s) => { s.resolves(async () => { await new Promise((resolve) => setTimeout(resolve, 20)); throw new Error('late') }) }],
  ['a subtest', (s) => s.test('inner', async (u: any) => { u.ok(true) }), (s) => s.test('inner', async (u: any) => { u.ok(false) })],
  ['a subtest not awaited, then another', (s) => { s.test('one', async (u: any) => { await new Promise((resolve) => setTimeout(resolve, 10)); u.ok(true) }); s.test('two', async (u: any) => u.ok(true)) }, (s) => { s.test('one', async () => { await new Promise((resolve) => setTimeout(resolve, 10)) }); s.test('two', async (u: any) => { await new Promise((resolve) => setTimeout(resolve, 10)); u.ok(false) }) }],
  ['a test that throws', () => undefined, () => { throw new Error('boom') }],
  ['a test that throws a non-Error', () => undefined, () => { throw 'boom' }], // eslint-disable-line no-throw-literal
  ['an async test that rejects with nothing', async () => undefined, async () => { throw undefined }] // eslint-disable-line no-throw-literal
]

t.test('each assertion passes what tap passes and fails what tap fails', async (t) => {
  for (const [name, passing, failing] of cases) {
    await t.test(`${name}: tap itself passes the passing case`, async (t) => { await passing(t) })
    t.same(await failuresOf(passing), [], `${name}: passes`)
    const failures = await failuresOf(failing)
    t.equal(failures.length, 1, `${name}: fails once`)
    t.match(failures[0], /^case/, `${name}: the failure names the test`)
  }
})

t.test('teardowns run after the test and its subtests, also when it throws; a throwing teardown fails the test', async (t) => {
  const order: string[] = []
  const failures = await failuresOf((s) => {
    s.teardown(() => { order.push('teardown') })
    s.test('sub', async (u: any) => { await new Promise((resolve) => setTimeout(resolve, 10)); order.push('sub'); u.ok(true) })
    throw new Error('boom')
  })
  t.same(order, ['sub', 'teardown'])
  t.equal(failures.length, 1)
  t.match(await failuresOf((s) => { s.teardown(() => { throw new Error('in teardown') }) }), [/teardown threw/])
})

t.test('an assertion after its test ended is a late failure, charged to what runs next', async (t) => {
  let later: any
  t.same(await failuresOf((s) => { later = s }), [])
  t.same(shim.takeLate(), [])
  later.equal(1, 2, 'too late')
  t.match(shim.takeLate(), [/too late/])
  t.same(shim.takeLate(), [], 'taken once')
})

t.test('loading a file collects its top-level tests, before and teardown callbacks without running them', async (t) => {
  let ran = false
  const collected = shim.collect(() => {
    shim.default.test('first', () => { ran = true })
    shim.default.test('second', { timeout: 1 }, () => { ran = true })
    shim.default.before(() => { ran = true })
    shim.default.teardown(() => { ran = true })
  })
  t.same(collected.tests.map((test) => test.name), ['first', 'second'])
  t.equal(collected.befores.length, 1)
  t.equal(collected.teardowns.length, 1)
  t.notOk(ran)
})
