/**
 * MQTT topic-filter algebra, as the authorization rules need it. Filters and topics
 * are split into levels (`a/+/#` → ['a', '+', '#']). `+` matches exactly one level
 * (an empty one included); `#` matches any number of levels, none included, so
 * `a/#` also matches `a` [MQTT-4.7.1-2]. Topics beginning with `$` are not this
 * module's business: the chain settles them first (broker/reserved-topics.ts).
 */

export type Levels = readonly string[]

/** Whether `filter` matches the concrete topic `topic` (both split into levels). */
export function matches (filter: Levels, topic: Levels): boolean {
  for (let i = 0; i < filter.length; i++) {
    const f = filter[i]
    if (f === '#') return true
    const t = topic[i]
    if (t === undefined) return false
    if (f === '+') continue
    if (f !== t) return false
  }
  return filter.length === topic.length
}

const SLASH = 0x2f

/**
 * `matches` on the topic as it arrives, without splitting it: no allocation, and
 * literal levels compared character by character, for the checks that run per
 * message and per subscriber.
 */
export function matchesTopic (filter: Levels, topic: string): boolean {
  const n = topic.length
  // where the topic level compared next starts; n + 1 once every level was consumed
  let pos = 0
  for (let i = 0; i < filter.length; i++) {
    const f = filter[i]!
    if (f === '#') return true
    if (pos > n) return false
    if (f === '+') {
      const slash = topic.indexOf('/', pos)
      pos = slash === -1 ? n + 1 : slash + 1
      continue
    }
    const end = pos + f.length
    if (end > n) return false
    for (let j = 0; j < f.length; j++) {
      if (topic.charCodeAt(pos + j) !== f.charCodeAt(j)) return false
    }
    // the level must end where the literal does
    if (end !== n && topic.charCodeAt(end) !== SLASH) return false
    pos = end + 1
  }
  return pos === n + 1
}

/** Whether every topic `inner` can match is matched by `outer`. */
export function covers (outer: Levels, inner: Levels): boolean {
  for (let i = 0; i < outer.length; i++) {
    const o = outer[i]
    if (o === '#') return true
    const s = inner[i]
    if (s === undefined || s === '#') return false
    if (o === '+') continue
    if (s === '+' || o !== s) return false
  }
  return outer.length === inner.length
}

/** The filter matching exactly the topics both filters match, or null when they share none. */
export function intersect (a: Levels, b: Levels): string[] | null {
  const out: string[] = []
  for (let i = 0; ; i++) {
    const x = a[i]
    const y = b[i]
    // `#` takes whatever the other filter says from here on, its end included
    if (x === '#') return out.concat(b.slice(i))
    if (y === '#') return out.concat(a.slice(i))
    if (x === undefined || y === undefined) return x === y ? out : null
    if (x === '+') out.push(y)
    else if (y === '+' || x === y) out.push(x)
    else return null
  }
}

/**
 * The filter with its last level widened to `#`: `devices/+/telemetry` →
 * `devices/+/#`. A filter already ending in `#`, or of one level, is its own scope.
 */
export function scopeOf (filter: Levels): string[] {
  // slice and concat size the array exactly: a spread grows it with room to spare, and
  // every connected identity keeps its scopes
  if (filter.length < 2 || filter[filter.length - 1] === '#') return filter.slice()
  return filter.slice(0, -1).concat('#')
}

/** steps of the union check before it gives up (a few thousand for any realistic policy) */
const MAX_COVER_STEPS = 10_000

/**
 * Whether every topic `filter` can match is matched by at least one of `filters`
 * (a union, where `covers` asks about one filter). Exact: `+` and `#` levels are
 * tried with each literal the filters name at that level and with one value none
 * of them names. When a pathological set of filters exhausts the step budget the
 * answer is `true`, which callers treat as the cautious side.
 */
export function coveredByAny (filter: Levels, filters: readonly Levels[]): boolean {
  if (filters.length === 0) return false
  return coveredFrom(filter, 0, filters, { steps: MAX_COVER_STEPS })
}

interface Budget { steps: number }

/** the level `filter` asks for at `i`; a trailing `#` stands for every level after it too */
function levelAt (filter: Levels, i: number): string | undefined {
  const last = filter.length - 1
  return i >= last && filter[last] === '#' ? '#' : filter[i]
}

/** `filter`'s topics agree with every one of `filters` on the levels before `i`: are the rest covered? */
function coveredFrom (filter: Levels, i: number, filters: readonly Levels[], budget: Budget): boolean {
  if (--budget.steps < 0) return true
  if (filters.length === 0) return false
  if (filters.some((f) => f[i] === '#')) return true
  const level = levelAt(filter, i)
  // the topic ends before level i: a filter covers it only if it ends there too
  const endsHere = (): boolean => filters.some((f) => f.length === i)
  if (level === undefined) return endsHere()
  if (level === '#') return (i === 0 || endsHere()) && everyValueCovered(filter, i, filters, budget)
  if (level === '+') return everyValueCovered(filter, i, filters, budget)
  return coveredFrom(filter, i + 1, filters.filter((f) => f[i] === level || f[i] === '+'), budget)
}

/** level `i` takes any value: each literal the filters name there, and one value none of them names */
function everyValueCovered (filter: Levels, i: number, filters: readonly Levels[], budget: Budget): boolean {
  const literals = new Set<string>()
  for (const f of filters) {
    const l = f[i]
    if (l !== undefined && l !== '+' && l !== '#') literals.add(l)
  }
  for (const literal of literals) {
    if (!coveredFrom(filter, i + 1, filters.filter((f) => f[i] === literal || f[i] === '+'), budget)) return false
  }
  return coveredFrom(filter, i + 1, filters.filter((f) => f[i] === '+'), budget)
}
