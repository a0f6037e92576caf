// A Stryker test runner: the tap test files run in this process, one top-level test at a time (docs/mutation.md).
import Module, { createRequire } from 'node:module'
import { appendFileSync, existsSync, mkdirSync, readFileSync, writeFileSync, writeSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { commonTokens, declareClassPlugin, PluginKind, tokens } from '@stryker-mutator/api/plugin'
import { DryRunStatus, MutantRunStatus, TestStatus, toMutantRunResult } from '@stryker-mutator/api/test-runner'
import { INSTRUMENTER_CONSTANTS } from '@stryker-mutator/api/core'

const here = path.dirname(fileURLToPath(import.meta.url))
const shimPath = path.join(here, 'tap-shim.cjs')
const requireHere = createRequire(import.meta.url)
const shim = requireHere(shimPath)

/** What the dry run learnt, for the mutant runs (other processes): load-time mutants and test times. */
const planFile = () => path.resolve('.stryker-in-process.json')

function ns () {
  const name = INSTRUMENTER_CONSTANTS.NAMESPACE
  globalThis[name] ??= {}
  return globalThis[name]
}

let installed = false
/** TypeScript through `ts.transpileModule` (types belong to tsc), and `tap` resolved to the shim. */
function install () {
  if (installed) return
  installed = true
  const ts = createRequire(path.resolve('package.json'))('typescript')
  const compiled = new Map()
  Module._extensions['.ts'] = function (module, filename) {
    let code = compiled.get(filename)
    if (code === undefined) {
      code = ts.transpileModule(readFileSync(filename, 'utf8'), {
        fileName: filename,
        compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022, esModuleInterop: true }
      }).outputText
      compiled.set(filename, code)
    }
    module._compile(code, filename)
  }
  const resolve = Module._resolveFilename
  Module._resolveFilename = function (request, ...rest) {
    return request === 'tap' ? shimPath : resolve.call(this, request, ...rest)
  }
}

/** Forgets every module of the project (not node_modules), so that the next file loads its own copy of lib/. */
function purgeProjectModules () {
  const root = path.resolve('.') + path.sep
  for (const key of Object.keys(Module._cache)) {
    if (key.startsWith(root) && !key.includes(`${path.sep}node_modules${path.sep}`) && key !== shimPath) delete Module._cache[key]
  }
}

/**
 * Where each named test starts in its file's source (0-based line and column), for Stryker's incremental
 * mode: with a location, a test whose text changed (up to the next located test) counts as a new test, and
 * the mutants it killed or covered run again. Found by its name's literal, in order; a name built at run
 * time gets no location, and then any change to its file counts as a change to it.
 */
function locateTests (source, names) {
  const found = new Map()
  let from = 0
  for (const name of names) {
    if (found.has(name)) continue
    const spellings = [`'${name.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`, JSON.stringify(name), `\`${name}\``]
    const at = Math.min(...spellings.map((text) => source.indexOf(text, from)).filter((index) => index !== -1))
    if (!Number.isFinite(at)) continue
    const before = source.slice(0, at)
    const line = before.split('\n').length - 1
    found.set(name, { line, column: at - (before.lastIndexOf('\n') + 1) })
    from = at + 1
  }
  return found
}

const describe = (error) => (error && error.stack) ? error.stack : String(error)

class InProcessTapRunner {
  static inject = tokens(commonTokens.options, commonTokens.logger)

  #log
  #files
  /** file → { tests: Map<id, fn>, teardowns, loadedWith } */
  #loaded = new Map()
  /** errors nobody caught, while a run goes */
  #strays = []
  #plan = null
  /** test id → mutants it killed in this process */
  #kills = new Map()

  constructor (options, log) {
    this.#log = log
    this.#files = options.tap.testFiles.map((file) => path.resolve(file))
  }

  capabilities () {
    return { reloadEnvironment: true }
  }

  async init () {
    install()
    process.on('uncaughtException', (error) => this.#strays.push(`uncaught exception: ${describe(error)}`))
    process.on('unhandledRejection', (error) => this.#strays.push(`unhandled rejection: ${describe(error)}`))
  }

  async dispose () {
    for (const file of [...this.#loaded.keys()]) await this.#unload(file)
  }

  #id (file, name) {
    return `${path.relative(path.resolve('.'), file)} > ${name}`
  }

  /** Requires a test file (with its own lib/) and runs its `t.before` callbacks; coverage goes to `load:<file>`. */
  async #load (file, mutant) {
    const state = ns()
    const active = state.activeMutant
    state.activeMutant = mutant
    state.currentTestId = `load:${file}`
    const entry = { tests: new Map(), locations: new Map(), teardowns: [], loadedWith: mutant, error: null }
    this.#loaded.set(file, entry)
    try {
      purgeProjectModules()
      const collected = shim.collect(() => createRequire(file)(file))
      entry.teardowns = collected.teardowns
      const located = locateTests(readFileSync(file, 'utf8'), collected.tests.map(({ name }) => name))
      for (const { name, fn } of collected.tests) {
        let id = this.#id(file, name)
        // A name given twice: the second test has no location of its own (the first's is taken).
        let startPosition = located.get(name)
        for (let n = 2; entry.tests.has(id); n++) {
          id = `${this.#id(file, name)} #${n}`
          startPosition = undefined
        }
        entry.tests.set(id, fn)
        entry.locations.set(id, startPosition)
      }
      for (const before of collected.befores) await before()
    } catch (error) {
      entry.error = `loading ${path.basename(file)} failed: ${describe(error)}`
    } finally {
      state.currentTestId = undefined
      state.activeMutant = active
    }
    return entry
  }

  async #unload (file) {
    const entry = this.#loaded.get(file)
    this.#loaded.delete(file)
    for (const teardown of entry?.teardowns ?? []) {
      try { await teardown() } catch {}
    }
  }

  async #runOne (id, fn, coverage) {
    const state = ns()
    if (coverage) state.currentTestId = id
    const started = performance.now()
    if (process.env.MUTATION_TRACE) writeSync(2, `${id}\n`)
    this.#strays.length = 0
    shim.takeLate()
    let failures
    try {
      failures = await shim.run(id, fn)
    } finally {
      state.currentTestId = undefined
    }
    // A callback that fails after its test ended, or an error nobody caught, fails the test that ran.
    await new Promise((resolve) => setImmediate(resolve))
    failures = [...failures, ...shim.takeLate(), ...this.#strays.splice(0)]
    const timeSpentMs = Math.round(performance.now() - started)
    return failures.length === 0
      ? { id, name: id, status: TestStatus.Success, timeSpentMs }
      : { id, name: id, status: TestStatus.Failed, timeSpentMs, failureMessage: failures.join('\n').slice(0, 4000) }
  }

  async dryRun (options) {
    const tests = []
    const loadCoverage = new Map()
    for (const file of this.#files) {
      const entry = await this.#load(file, undefined)
      if (entry.error) return { status: DryRunStatus.Error, errorMessage: entry.error }
      for (const [id, fn] of entry.tests) {
        const result = await this.#runOne(id, fn, true)
        // fileName: Stryker maps it back from the sandbox and keeps the file's source to diff next time.
        tests.push({ ...result, fileName: file, startPosition: entry.locations.get(id) })
        if (result.status !== TestStatus.Success && !options.disableBail) break
      }
      loadCoverage.set(file, [...entry.tests.keys()])
    }
    const coverage = ns().mutantCoverage ?? { static: {}, perTest: {} }
    // A file's tests all depend on what its loading ran (its copy of lib/, its `t.before`): they cover it.
    const loadTime = new Set()
    for (const [file, ids] of loadCoverage) {
      const loaded = coverage.perTest[`load:${file}`] ?? {}
      delete coverage.perTest[`load:${file}`]
      for (const mutant of Object.keys(loaded)) loadTime.add(mutant)
      for (const id of ids) {
        const own = coverage.perTest[id] ??= {}
        for (const [mutant, hits] of Object.entries(loaded)) own[mutant] = (own[mutant] ?? 0) + hits
      }
    }
    const times = Object.fromEntries(tests.map((test) => [test.id, test.timeSpentMs]))
    writeFileSync(planFile(), JSON.stringify({ loadTime: [...loadTime], times }))
    return { status: DryRunStatus.Complete, tests, mutantCoverage: coverage }
  }

  #readPlan () {
    if (this.#plan === null) {
      const plan = existsSync(planFile()) ? JSON.parse(readFileSync(planFile(), 'utf8')) : { loadTime: [], times: {} }
      this.#plan = { loadTime: new Set(plan.loadTime), times: plan.times }
    }
    return this.#plan
  }

  async mutantRun (options) {
    const mutant = options.activeMutant.id
    const plan = this.#readPlan()
    // Tests that killed mutants before first (mutants next to each other tend to fall to the same test),
    // then the fastest: a killed mutant costs the tests run up to the first failure.
    const kills = this.#kills
    const wanted = options.testFilter
      ? [...new Set(options.testFilter)].sort((a, b) => ((kills.get(b) ?? 0) - (kills.get(a) ?? 0)) || ((plan.times[a] ?? 1e9) - (plan.times[b] ?? 1e9)))
      : undefined
    const files = wanted
      ? this.#files.filter((file) => wanted.some((id) => id.startsWith(this.#id(file, ''))))
      : this.#files
    const state = ns()
    state.activeMutant = mutant
    if (options.hitLimit !== undefined) {
      state.hitLimit = options.hitLimit
      state.hitCount = 0
    }
    try {
      // A file loaded with another mutant active, or a mutant that acts while a file loads: load it afresh.
      const reload = options.reloadEnvironment || plan.loadTime.has(mutant)
      const fns = new Map()
      const tests = []
      for (const file of files) {
        let entry = this.#loaded.get(file)
        if (entry !== undefined && (reload || (entry.loadedWith !== undefined && entry.loadedWith !== mutant))) {
          await this.#unload(file)
          entry = undefined
        }
        if (entry === undefined) entry = await this.#load(file, reload ? mutant : undefined)
        if (entry.error) {
          // The file's tests fail, as under tap: named by its first test that was asked for (a test the dry run
          // knows, so that the incremental file can reuse this kill).
          const id = wanted?.find((wantedId) => wantedId.startsWith(this.#id(file, ''))) ?? this.#id(file, '(load)')
          tests.push({ id, name: id, status: TestStatus.Failed, timeSpentMs: 0, failureMessage: entry.error })
          await this.#unload(file)
          if (!options.disableBail) return toMutantRunResult({ status: DryRunStatus.Complete, tests })
          continue
        }
        for (const [id, fn] of entry.tests) fns.set(id, fn)
      }
      for (const id of wanted ?? fns.keys()) {
        const fn = fns.get(id)
        if (fn === undefined) continue
        const result = await this.#runOne(id, fn, false)
        tests.push(result)
        if (state.hitCount !== undefined && state.hitCount > state.hitLimit) {
          return { status: MutantRunStatus.Timeout, reason: `hit limit reached (${state.hitCount}/${state.hitLimit})` }
        }
        if (result.status !== TestStatus.Success) {
          kills.set(id, (kills.get(id) ?? 0) + 1)
          if (!options.disableBail) break
        }
      }
      return toMutantRunResult({ status: DryRunStatus.Complete, tests })
    } finally {
      state.activeMutant = undefined
      state.hitLimit = undefined
      state.hitCount = undefined
    }
  }
}

/**
 * A reporter that appends each mutant's result as it comes (reports/mutation/live.jsonl): a long run can be
 * read, and its survivors worked on, before it ends; and what it found survives an interrupted run.
 */
class LiveReporter {
  static inject = tokens()
  #file = path.resolve('reports', 'mutation', 'live.jsonl')

  onDryRunCompleted () {
    mkdirSync(path.dirname(this.#file), { recursive: true })
    writeFileSync(this.#file, '')
  }

  onMutantTested (result) {
    const { id, fileName, mutatorName, replacement, location, status, statusReason, killedBy, coveredBy } = result
    const line = { id, file: path.relative(path.resolve('.'), fileName), line: location.start.line, column: location.start.column + 1, mutatorName, replacement, status, statusReason: status === 'Killed' ? undefined : statusReason, killedBy: killedBy?.[0], covering: coveredBy?.length }
    appendFileSync(this.#file, JSON.stringify(line) + '\n')
  }
}

export const strykerPlugins = [
  declareClassPlugin(PluginKind.TestRunner, 'tap-in-process', InProcessTapRunner),
  declareClassPlugin(PluginKind.Reporter, 'live', LiveReporter)
]
