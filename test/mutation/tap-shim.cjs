// The part of tap's API the in-process test files use, run in one process by the mutation runner (runner.mjs).
'use strict'

const { same, strict, match, has } = require('tcompare')

/** The file loaded last: its top-level tests, `t.before` and `t.teardown` callbacks. */
let loading = null

/** Failures reported after their test ended (a late callback), charged to whatever runs now. */
const late = []

class Test {
  constructor (name, parent) {
    this.name = name
    this.fullname = parent && parent.fullname ? `${parent.fullname} > ${name}` : name
    this.failures = []
    this.teardowns = []
    this.pending = []
    this.chain = Promise.resolve()
    this.ended = false
  }

  fail (message, detail) {
    const text = `${this.fullname}: ${message || 'failed'}${detail ? `\n${detail}` : ''}`
    if (this.ended) late.push(text)
    else this.failures.push(text)
    return false
  }

  pass () { return true }

  #check (ok, message, detail) { return ok ? true : this.fail(message, detail) }

  ok (value, message = 'expected truthy') { return this.#check(Boolean(value), message) }
  notOk (value, message = 'expected falsy') { return this.#check(!value, message) }
  equal (found, wanted, message = 'should be equal') {
    return this.#check(found === wanted, message, `found ${show(found)}, wanted ${show(wanted)}`)
  }

  not (found, notWanted, message = 'should not be equal') {
    return this.#check(found !== notWanted, message, `found ${show(found)}`)
  }

  same (found, wanted, message = 'should be equivalent') { return this.#compare(same, true, found, wanted, message) }
  strictSame (found, wanted, message = 'should be strictly equivalent') { return this.#compare(strict, true, found, wanted, message) }
  has (found, wanted, message = 'should have the properties') { return this.#compare(has, true, found, wanted, message) }
  match (found, wanted, message = 'should match pattern') { return this.#compare(match, true, found, wanted, message) }
  notMatch (found, wanted, message = 'should not match pattern') { return this.#compare(match, false, found, wanted, message) }

  #compare (compare, expected, found, wanted, message) {
    const result = compare(found, wanted)
    return this.#check(result.match === expected, message, expected ? result.diff : `found ${show(found)}`)
  }

  type (value, type, message = 'type is ' + (typeof type === 'function' ? type.name : type)) {
    const ok = typeof type === 'function'
      ? value instanceof type || (value !== null && value !== undefined && Object(value) instanceof type)
      : typeOf(value) === type || (value !== null && value !== undefined && value.constructor && value.constructor.name === type)
    return this.#check(ok, message)
  }

  throws (fn, wanted, message) {
    if (typeof wanted === 'string' && message === undefined) [wanted, message] = [undefined, wanted]
    try {
      fn()
    } catch (error) {
      if (wanted !== undefined) this.#compare(match, true, wanted instanceof RegExp ? error?.message : error, wanted, message || 'expected to throw a matching error')
      return error
    }
    return this.fail(message || 'expected to throw')
  }

  rejects (promiseOrFn, wanted, message) {
    if (typeof wanted === 'string' && message === undefined) [wanted, message] = [undefined, wanted]
    const settled = (async () => {
      try {
        await (typeof promiseOrFn === 'function' ? promiseOrFn() : promiseOrFn)
      } catch (error) {
        if (wanted !== undefined) this.#compare(match, true, wanted instanceof RegExp ? error?.message : error, wanted, message || 'expected to reject with a matching error')
        return
      }
      this.fail(message || 'expected to reject')
    })()
    this.pending.push(settled)
    return settled
  }

  resolves (promiseOrFn, message) {
    const settled = (async () => {
      try {
        await (typeof promiseOrFn === 'function' ? promiseOrFn() : promiseOrFn)
      } catch (error) {
        this.fail(message || `expected to resolve, rejected: ${error?.message ?? error}`)
      }
    })()
    this.pending.push(settled)
    return settled
  }

  teardown (fn) {
    if (this === root) loading.teardowns.push(fn)
    else this.teardowns.push(fn)
  }

  before (fn) {
    if (this !== root) throw new Error('t.before is supported at the top level only')
    loading.befores.push(fn)
  }

  test (name, options, fn) {
    if (typeof options === 'function') fn = options
    if (this === root) {
      loading.tests.push({ name, fn })
      return Promise.resolve()
    }
    const child = new Test(name, this)
    const done = this.chain.then(() => runTest(child, fn)).then(() => {
      this.failures.push(...child.failures)
      return child.failures.length === 0
    })
    this.chain = done
    this.pending.push(done)
    return done
  }
}

const root = new Test('', null)

function typeOf (value) { return typeof value }

function show (value) {
  try {
    const text = typeof value === 'string' ? JSON.stringify(value) : String(value)
    return text.length > 200 ? `${text.slice(0, 200)}…` : text
  } catch {
    return Object.prototype.toString.call(value)
  }
}

/** Runs one test to its end: its function, its subtests and pending assertions, then its teardowns. */
async function runTest (test, fn) {
  try {
    await fn(test)
  } catch (error) {
    test.fail('threw', error && error.stack ? error.stack : show(error))
  }
  for (let seen = 0; seen < test.pending.length;) {
    const batch = test.pending.slice(seen)
    seen = test.pending.length
    await Promise.allSettled(batch)
  }
  test.ended = true
  for (const teardown of test.teardowns) {
    try {
      await teardown()
    } catch (error) {
      test.failures.push(`${test.fullname}: teardown threw ${error && error.stack ? error.stack : show(error)}`)
    }
  }
  return test
}

/**
 * Collects a test file's top-level tests while `load` requires it; top-level teardowns registered later (by
 * its `t.before` callbacks, which run next) still go to this file.
 */
function collect (load) {
  loading = { tests: [], befores: [], teardowns: [] }
  load()
  return loading
}

/** Runs one top-level test; the failures, none when it passed. */
async function run (name, fn) {
  const test = await runTest(new Test(name, null), fn)
  return test.failures
}

function takeLate () { return late.splice(0) }

module.exports = { __esModule: true, default: root, t: root, Test, collect, run, takeLate }
