/**
 * `npm run bench:cookie`: the cost of finding the token in a Cookie header, per character, for a benign
 * header and for hostile shapes (many pairs without '=', only ';', only '=', a '=' in every tiny pair),
 * each followed by the real cookie so that the whole header must be read. The parser is linear when the
 * cost per character stays the same from 64 KiB to 1 MiB (the last column near 1×).
 */
import { readCookie } from '../lib/token'

const TOKEN = 'CF_Authorization=eyJhbGciOiJSUzI1NiJ9.e30.c2ln'

function nsPerChar (header: string): number {
  const rounds = Math.max(5, Math.floor(40_000_000 / header.length))
  for (let i = 0; i < rounds; i++) readCookie(header) // warm-up
  const start = process.hrtime.bigint()
  for (let i = 0; i < rounds; i++) {
    if (readCookie(header) === undefined) throw new Error('the cookie was not found')
  }
  return Number(process.hrtime.bigint() - start) / rounds / header.length
}

function header (unit: string, size: number): string {
  return `${unit.repeat(Math.ceil(size / unit.length)).slice(0, size)}; ${TOKEN}`
}

const shapes: Record<string, string> = {
  'benign (name=value pairs)': 'session=abcdefghijklmnop; ',
  'many pairs without "=" (a;)': 'a;',
  'only ";"': ';',
  'only "="': '=',
  'a "=" in every tiny pair ( ;=)': ' ;=',
  'the name, then spaces, no "="': 'CF_Authorization      ;',
  'the name in values': 'x=CF_Authorization;'
}

console.log('shape'.padEnd(32), '64 KiB ns/char'.padStart(15), '1 MiB ns/char'.padStart(15), '1 MiB / 64 KiB'.padStart(15))
for (const [name, unit] of Object.entries(shapes)) {
  const small = nsPerChar(header(unit, 64 * 1024))
  const large = nsPerChar(header(unit, 1024 * 1024))
  console.log(name.padEnd(32), small.toFixed(2).padStart(15), large.toFixed(2).padStart(15), `${(large / small).toFixed(2)}×`.padStart(15))
}
