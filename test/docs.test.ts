import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'

// docs/benchmarks.md holds measurements: its code blocks are plain output (```text), which no test runs;
// commands are given inline. A block of code would have to be type-checked or run, as the README's are.

const ROOT = join(__dirname, '..')

t.test('docs/benchmarks.md: every code block is plain output, and the README links to it', async (t) => {
  const docs = readFileSync(join(ROOT, 'docs', 'benchmarks.md'), 'utf8')
  const fences = [...docs.matchAll(/^```(\S*)$/gm)].map((match) => match[1])
  t.ok(fences.length >= 2 && fences.length % 2 === 0, `${fences.length / 2} blocks, each closed`)
  t.same(fences.filter((_, index) => index % 2 === 0).filter((language) => language !== 'text'), [], 'every block opens with ```text')
  t.match(readFileSync(join(ROOT, 'README.md'), 'utf8'), /\]\(docs\/benchmarks\.md\)/)
})
