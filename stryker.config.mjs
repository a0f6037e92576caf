// StrykerJS configuration: mutation testing of the security core and the dev proxy (docs/mutation.md says how and why).

// The tap runner starts each test file with plain `node`; tap's own TypeScript loader compiles it. Stryker's
// instrumented sources carry `// @ts-nocheck`, and type checking belongs to `tsc`, so transpile only.
process.env.TS_NODE_TRANSPILE_ONLY = '1'

/** @type {import('@stryker-mutator/api/core').PartialStrykerOptions} */
export default {
  // Our own runner (test/mutation/runner.mjs): the same tap test files, in one process, test by test.
  plugins: ['@stryker-mutator/*', './test/mutation/runner.mjs'],
  testRunner: 'tap-in-process',
  tap: {
    // Only tests that run lib/ in this process can see a mutant: cli, package and readme spawn dist/.
    testFiles: [
      'test/authorization.test.ts',
      'test/cache.test.ts',
      'test/cloudflare-fixture.test.ts',
      'test/dev-proxy.test.ts',
      'test/emulator.test.ts',
      'test/examples.test.ts',
      'test/hostile-tokens.test.ts',
      'test/hotpath.test.ts',
      'test/identity.test.ts',
      'test/integrations.test.ts',
      'test/keys.test.ts',
      'test/operations.test.ts',
      'test/options.test.ts',
      'test/plugin.test.ts',
      'test/properties.test.ts',
      'test/route-config.test.ts',
      'test/unguarded.test.ts',
      'test/verify.test.ts'
    ],
    nodeArgs: ['--import=@tapjs/typescript/import', '-r', '{{hookFile}}', '{{testFile}}']
  },
  coverageAnalysis: 'perTest',
  // Only the mutated sources get `// @ts-nocheck` (not dist/*.d.ts, which Babel cannot parse).
  disableTypeChecks: 'lib/**/*.ts',
  // The security core: every module that takes part in admitting a request.
  mutate: [
    'lib/policy.ts',
    'lib/scopes.ts',
    'lib/routes.ts',
    'lib/route-config.ts',
    'lib/suggest.ts',
    'lib/unguarded.ts',
    'lib/optional.ts',
    'lib/preflight.ts',
    'lib/claims.ts',
    'lib/identity.ts',
    'lib/fetch.ts',
    'lib/options.ts',
    'lib/keys.ts',
    'lib/plugin.ts',
    'lib/token.ts',
    'lib/decoder-check.ts',
    'lib/verify.ts',
    'lib/cache.ts',
    // and the dev proxy's checks: Host, login CSRF, header and cookie stripping, request targets, paths
    'lib/dev-proxy.ts'
  ],
  // Four test processes on two cores: each runs its tests one at a time, and many wait on real timers
  // (refresh intervals, cooldowns, expiries), so that two processes kept the cores only a third busy.
  concurrency: 4,
  incremental: true,
  incrementalFile: 'reports/stryker-incremental.json',
  // live: each result as it comes, in reports/mutation/live.jsonl (test/mutation/runner.mjs)
  reporters: ['clear-text', 'progress', 'html', 'json', 'live'],
  htmlReporter: { fileName: 'reports/mutation/mutation.html' },
  jsonReporter: { fileName: 'reports/mutation/mutation.json' },
  clearTextReporter: { allowColor: false, logTests: false },
  // Module-level code runs at load: such mutants run their covering tests after a reload (runner.mjs).
  ignoreStatic: true,
  // Many tests wait on real timers (refresh intervals, cooldowns): a mutant that stretches one is a timeout.
  timeoutMS: 10000,
  tempDirName: '.stryker-tmp',
  cleanTempDir: true
}
