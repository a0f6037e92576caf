/** "Did you mean …?" for a mistyped option or policy key: the nearest known key, when one is near enough. */

/** Edits (insert, delete, replace, swap two neighbours) from `a` to `b`: the optimal string alignment distance. */
function distance (a: string, b: string): number {
  const rows: number[][] = []
  for (let i = 0; i <= a.length; i++) {
    const row = [i]
    for (let j = 1; j <= b.length; j++) {
      if (i === 0) {
        row.push(j)
        continue
      }
      const cost = a[i - 1] === b[j - 1] ? 0 : 1
      let best = Math.min((rows[i - 1] as number[])[j] as number + 1, row[j - 1] as number + 1, (rows[i - 1] as number[])[j - 1] as number + cost)
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) best = Math.min(best, (rows[i - 2] as number[])[j - 2] as number + 1)
      row.push(best)
    }
    rows.push(row)
  }
  return (rows[a.length] as number[])[b.length] as number
}

/**
 * The known key `typed` most likely meant, or undefined: the same letters in another case, one that
 * contains it or that it contains (`domains` → `emailDomains`), or one a few edits away (a third of its
 * length, at least one: `audiences` → `audience`).
 */
export function nearest (typed: string, known: Iterable<string>): string | undefined {
  const lower = typed.toLowerCase()
  let found: string | undefined
  let best = Math.max(1, Math.floor(typed.length / 3)) + 1
  for (const key of known) {
    const candidate = key.toLowerCase()
    const edits = candidate === lower
      ? 0
      // the closer in length, the likelier (`cache` → `cacheSize`, not `identityCacheTtl`)
      : lower.length >= 3 && (candidate.includes(lower) || lower.includes(candidate)) ? 1 + Math.abs(candidate.length - lower.length) / 100 : distance(lower, candidate)
    if (edits < best) {
      best = edits
      found = key
    }
  }
  return found
}

/** ` did you mean "x"?` for an error message, or nothing. */
export function didYouMean (typed: string, known: Iterable<string>): string {
  const key = nearest(typed, known)
  return key === undefined ? '' : ` did you mean "${key}"?`
}
