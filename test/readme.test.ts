import { execFile } from 'node:child_process'
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { promisify } from 'node:util'
import t from 'tap'

// Every TypeScript block of the README is type-checked, as a module of its own, against the built
// package (resolved by its name, as users import it). Names a block uses without defining — `app`,
// `admin`, a handler of the reader's — are declared for it; nothing else is added.

const ROOT = join(__dirname, '..')
const DIR = join(ROOT, '.snippets')
const TSC = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc')

const DECLARATIONS: Record<string, string> = {
  app: "declare const app: import('fastify').FastifyInstance",
  admin: "declare const admin: import('fastify').FastifyInstance",
  billingHandler: 'declare function billingHandler (): Promise<string>',
  invoices: 'declare function invoices (): Promise<unknown[]>',
  enqueue: 'declare function enqueue (body: unknown): Promise<void>',
  isSuspended: 'declare function isSuspended (id: string | undefined): Promise<boolean>',
  // the plugin a migration starts from (its own typings describe its CommonJS export as a default export)
  fastifyJwtJwks: "import type { FastifyJwtJwksOptions } from 'fastify-jwt-jwks'\ndeclare const fastifyJwtJwks: import('fastify').FastifyPluginCallback<FastifyJwtJwksOptions>",
  Fastify: "import Fastify from 'fastify'",
  cloudflareAccess: "import cloudflareAccess from 'fastify-cloudflare-access'"
}

t.test('every TypeScript block of the README and docs/ type-checks', async (t) => {
  // The README and every page of docs/: each TypeScript block there is checked the same way.
  const pages = ['README.md', ...readdirSync(join(ROOT, 'docs')).filter((name) => name.endsWith('.md')).map((name) => join('docs', name))]
  const readme = pages.map((page) => readFileSync(join(ROOT, page), 'utf8')).join('\n')
  const blocks = [...readme.matchAll(/```ts\n([\s\S]*?)```/g)].map((match) => match[1] as string)
  t.ok(blocks.length >= 10, `${blocks.length} blocks`)
  rmSync(DIR, { recursive: true, force: true })
  mkdirSync(DIR)
  const files: string[] = []
  blocks.forEach((block, index) => {
    const lines = block.split('\n')
    const imports = lines.filter((line) => line.startsWith('import '))
    const body = lines.filter((line) => !line.startsWith('import ')).join('\n')
    const needed = Object.entries(DECLARATIONS)
      .filter(([name]) => new RegExp(`\\b${name}\\b`).test(body) && !new RegExp(`(const|let|function) ${name}\\b|import [^\\n]*\\b${name}\\b`).test(block))
      .map(([, declaration]) => declaration)
    const file = join(DIR, `block-${index}.mts`)
    writeFileSync(file, [...imports, ...needed, body, 'export {}'].join('\n'))
    files.push(file)
  })
  writeFileSync(join(DIR, 'tsconfig.json'), JSON.stringify({
    compilerOptions: { module: 'nodenext', moduleResolution: 'nodenext', target: 'es2022', strict: true, noEmit: true, skipLibCheck: true, types: ['node'] },
    files
  }))
  const env = process.env
  const output = await promisify(execFile)(process.execPath, [TSC, '-p', DIR], { cwd: ROOT, env }).then(() => '', (error: { stdout: string }) => error.stdout)
  t.equal(output, '', 'no type errors')
  // kept where a block failed, to read; otherwise no scratch folder is left in the repository
  if (output === '') rmSync(DIR, { recursive: true, force: true })
})
