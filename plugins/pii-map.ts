/**
 * The personal-data map of a schema: where values marked `"x-pii": true` can
 * sit in a payload. The schema is walked once, at start-up, into a graph of
 * nodes that mirrors the payload (object keys, array positions); per message,
 * one walk over the parsed payload follows that graph and interprets no schema.
 *
 * x-pii counts wherever it sits (CONTRACT §5): named properties, array items
 * (`items`, `prefixItems`, draft-07 tuple `items` and `additionalItems`,
 * `contains`), `additionalProperties`, `patternProperties`, the combinators
 * (`allOf`, `anyOf`, `oneOf`, `if`/`then`/`else`, `dependentSchemas`) and
 * local `$ref`s (`#`, `#/$defs/..`, `#/definitions/..`, any JSON pointer into
 * the same document). The combinators are read as a union: a value is personal
 * when ANY branch marks it, whichever branch the validator picked, so a value
 * is never missed because it also fits an unmarked branch.
 *
 * `$ref` cycles (recursive schemas) terminate because nodes are memoized by
 * schema object identity, and the payload walk uses an explicit stack, so a
 * deep or wide payload cannot exhaust the call stack.
 */

type Schema = Readonly<Record<string, unknown>>

/** One schema object, as written: its own keywords, nothing merged. */
interface RawNode {
  readonly id: number
  pii: boolean
  readonly props: Map<string, RawNode>
  readonly patterns: Array<readonly [RegExp, RawNode]>
  additional: RawNode | null
  readonly tuple: RawNode[]
  rest: RawNode | null
  contains: RawNode | null
  /** schemas that apply to the same value: combinators and $ref */
  readonly also: RawNode[]
}

/** What a payload value meets: the union of every schema that applies to it. */
export interface PiiNode {
  /** the whole value is personal */
  pii: boolean
  /** declared properties; null: declared, nothing personal beneath (still blocks patterns and additionalProperties) */
  readonly props: Map<string, PiiNode | null>
  /**
   * The keys of `props` that lead to personal data (set once the map is pruned): the
   * per-message presence test reads this array, where iterating the Map's entries
   * allocated an iterator and an entry pair per key on every message.
   */
  readonly liveKeys: string[]
  readonly patterns: Array<readonly [RegExp, PiiNode]>
  /** additionalProperties of each branch, with that branch's own patterns (which exempt a key from it) */
  readonly additional: Array<readonly [PiiNode, readonly RegExp[]]>
  readonly tuple: Array<PiiNode | null>
  /** every item past the tuple (and, for `contains`, every item) */
  rest: PiiNode | null
}

export type PiiMap = PiiNode

const COMBINATORS = ['allOf', 'anyOf', 'oneOf'] as const
const SAME_VALUE = ['if', 'then', 'else'] as const

function isSchemaObject (s: unknown): s is Schema {
  return s !== null && typeof s === 'object' && !Array.isArray(s)
}

function decodePointerToken (token: string): string {
  return decodeURIComponent(token).replace(/~1/g, '/').replace(/~0/g, '~')
}

/** Resolves a local `$ref` (`#` or `#/json/pointer`) against the document root. */
function resolveLocal (root: Schema, ref: string, where: string): Schema {
  if (!ref.startsWith('#')) throw new Error(`${where}: $ref '${ref}' points outside this schema (only local references are supported)`)
  let node: unknown = root
  const pointer = ref.slice(1)
  if (pointer !== '') {
    if (!pointer.startsWith('/')) throw new Error(`${where}: $ref '${ref}' is not a JSON pointer`)
    for (const token of pointer.slice(1).split('/')) {
      const key = decodePointerToken(token)
      node = node !== null && typeof node === 'object' ? (node as Record<string, unknown>)[key] : undefined
      // a schema passed through on the way (its own $id a string: a keyword map such as
      // definitions holds schemas, not strings) would be AJV's base for $refs beneath it
      if (isSchemaObject(node) && typeof node.$id === 'string') throw new Error(`${where}: $ref '${ref}' passes through a nested $id ('${node.$id}'): it would resolve elsewhere than the validator resolves it`)
    }
  }
  if (node === true || node === false) return {}
  if (!isSchemaObject(node)) throw new Error(`${where}: $ref '${ref}' does not resolve`)
  return node
}

/** whether `"x-pii": true` appears anywhere in this part of a schema document, local $refs followed */
function hasPiiMark (root: Schema, s: unknown, where: string, seen = new Set<unknown>()): boolean {
  if (s === null || typeof s !== 'object' || seen.has(s)) return false
  seen.add(s)
  if (!Array.isArray(s)) {
    const o = s as Record<string, unknown>
    if (o['x-pii'] === true) return true
    if (typeof o.$ref === 'string' && hasPiiMark(root, resolveLocal(root, o.$ref, where), where, seen)) return true
  }
  return Object.values(s).some((v) => hasPiiMark(root, v, where, seen))
}

function compileRaw (root: Schema): RawNode {
  const memo = new Map<Schema, RawNode>()
  let ids = 0
  const where = 'x-pii map'

  function raw (schema: Schema): RawNode {
    const seen = memo.get(schema)
    if (seen) return seen
    // AJV resolves a $ref against the nearest $id; this map resolves it against the document
    // root. A nested $id would make the two disagree on where a $ref leads, and x-pii values
    // behind it would be missed: refused (the catalogue already drops the root's $id)
    if (schema !== root && schema.$id !== undefined) throw new Error(`${where}: a nested $id ('${String(schema.$id)}') is not supported: $ref would resolve elsewhere than the validator resolves it`)
    // a key cannot be sealed, removed or replaced in place: x-pii there would be accepted and never enforced
    if (hasPiiMark(root, schema.propertyNames, where)) throw new Error(`${where}: "x-pii" under propertyNames cannot be enforced (object keys are not sealed); use patternProperties with the values marked`)
    const node: RawNode = { id: ids++, pii: schema['x-pii'] === true, props: new Map(), patterns: [], additional: null, tuple: [], rest: null, contains: null, also: [] }
    // registered before its children, so a $ref back to it ends here
    memo.set(schema, node)
    const sub = (s: unknown): RawNode | null => isSchemaObject(s) ? raw(s) : null
    if (isSchemaObject(schema.properties)) {
      for (const [name, s] of Object.entries(schema.properties)) node.props.set(name, sub(s) ?? raw({}))
    }
    if (isSchemaObject(schema.patternProperties)) {
      for (const [pattern, s] of Object.entries(schema.patternProperties)) {
        const child = sub(s)
        // compiled once; AJV has already checked the pattern (unicode flag, as AJV uses)
        if (child) node.patterns.push([new RegExp(pattern, 'u'), child])
      }
    }
    node.additional = sub(schema.additionalProperties)
    if (Array.isArray(schema.prefixItems)) {
      for (const s of schema.prefixItems) node.tuple.push(sub(s) ?? raw({}))
      node.rest = sub(schema.items)
    } else if (Array.isArray(schema.items)) {
      // draft-07 tuple form
      for (const s of schema.items) node.tuple.push(sub(s) ?? raw({}))
      node.rest = sub(schema.additionalItems)
    } else {
      node.rest = sub(schema.items)
    }
    node.contains = sub(schema.contains)
    for (const key of COMBINATORS) {
      const list = schema[key]
      if (Array.isArray(list)) for (const s of list) { const c = sub(s); if (c) node.also.push(c) }
    }
    for (const key of SAME_VALUE) { const c = sub(schema[key]); if (c) node.also.push(c) }
    for (const key of ['dependentSchemas', 'dependencies'] as const) {
      const deps = schema[key]
      if (isSchemaObject(deps)) for (const s of Object.values(deps)) { const c = sub(s); if (c) node.also.push(c) }
    }
    if (typeof schema.$ref === 'string') node.also.push(raw(resolveLocal(root, schema.$ref, where)))
    return node
  }
  return raw(root)
}

/** every raw node that applies to a value reached through these: the closure over `also` */
function closure (start: Iterable<RawNode>): RawNode[] {
  const out = new Map<number, RawNode>()
  const stack = [...start]
  while (stack.length > 0) {
    const n = stack.pop()!
    if (out.has(n.id)) continue
    out.set(n.id, n)
    for (const a of n.also) stack.push(a)
  }
  return [...out.values()].sort((a, b) => a.id - b.id)
}

/**
 * Compiles a schema into its personal-data map, or null when nothing in it is
 * marked x-pii (the topic then costs nothing per message). Throws on a `$ref`
 * that does not resolve inside the document, and on x-pii that marks the whole payload.
 */
export function compilePiiMap (schema: unknown): PiiMap | null {
  if (!isSchemaObject(schema)) return null
  const rootRaw = compileRaw(schema)
  // one merged node per SET of raw nodes (the branches that apply to one value)
  const merged = new Map<string, PiiNode>()
  const all: PiiNode[] = []
  // children of a merged node, kept for the pruning pass
  const edges = new Map<PiiNode, PiiNode[]>()

  function node (rawSet: Iterable<RawNode>): PiiNode | null {
    const set = closure(rawSet)
    if (set.length === 0) return null
    const key = set.map((n) => n.id).join(',')
    const hit = merged.get(key)
    if (hit) return hit
    const out: PiiNode = { pii: set.some((n) => n.pii), props: new Map(), liveKeys: [], patterns: [], additional: [], tuple: [], rest: null }
    merged.set(key, out)
    all.push(out)
    const children: PiiNode[] = []
    edges.set(out, children)
    const keep = (c: PiiNode | null): PiiNode | null => { if (c) children.push(c); return c }

    // a key declared by any branch: each branch contributes its property, or else
    // its matching patterns, or else its additionalProperties (exact per branch)
    const declared = new Set<string>()
    for (const n of set) for (const k of n.props.keys()) declared.add(k)
    for (const k of declared) {
      const forKey: RawNode[] = []
      for (const n of set) {
        // properties and patternProperties both apply to a declared key (JSON Schema, and AJV);
        // additionalProperties only when neither does
        const p = n.props.get(k)
        const matched = n.patterns.filter(([re]) => re.test(k))
        if (p) forKey.push(p)
        for (const [, c] of matched) forKey.push(c)
        if (!p && matched.length === 0 && n.additional) forKey.push(n.additional)
      }
      out.props.set(k, keep(node(forKey)))
    }
    for (const n of set) {
      for (const [re, c] of n.patterns) { const m = keep(node([c])); if (m) out.patterns.push([re, m]) }
      if (n.additional) { const m = keep(node([n.additional])); if (m) out.additional.push([m, n.patterns.map(([re]) => re)]) }
    }
    const tupleLength = Math.max(0, ...set.map((n) => n.tuple.length))
    for (let i = 0; i < tupleLength; i++) {
      const at: RawNode[] = []
      for (const n of set) {
        const t = n.tuple[i] ?? n.rest
        if (t) at.push(t)
        if (n.contains) at.push(n.contains)
      }
      out.tuple.push(keep(node(at)))
    }
    const rest: RawNode[] = []
    for (const n of set) {
      if (n.rest) rest.push(n.rest)
      if (n.contains) rest.push(n.contains)
    }
    out.rest = keep(node(rest))
    return out
  }

  const root = node([rootRaw])
  if (!root) return null
  // Personal data is sealed, removed or replaced in its container; the payload itself
  // has none, so a schema that marks the whole payload (at its root, or through a
  // combinator or $ref there) would have it stored and delivered in clear. Refused at
  // start-up instead (fail closed): mark the properties or items that are personal.
  if (root.pii) throw new Error('"x-pii" marks the whole payload (at the schema\'s root, directly or through a combinator or $ref); mark the properties or items that hold personal data instead')

  // which nodes have personal data at or beneath them: a fixpoint, as $ref may loop
  const live = new Set(all.filter((n) => n.pii))
  for (let changed = true; changed;) {
    changed = false
    for (const n of all) {
      if (live.has(n)) continue
      if (edges.get(n)!.some((c) => live.has(c))) { live.add(n); changed = true }
    }
  }
  if (!live.has(root)) return null
  // prune what leads to nothing personal; declared keys stay (as null) so they still exempt the key
  for (const n of all) {
    for (const [k, c] of n.props) if (c && !live.has(c)) n.props.set(k, null)
    for (let i = n.patterns.length - 1; i >= 0; i--) if (!live.has(n.patterns[i]![1])) n.patterns.splice(i, 1)
    for (let i = n.additional.length - 1; i >= 0; i--) if (!live.has(n.additional[i]![0])) n.additional.splice(i, 1)
    for (let i = 0; i < n.tuple.length; i++) if (n.tuple[i] && !live.has(n.tuple[i]!)) n.tuple[i] = null
    if (n.rest && !live.has(n.rest)) n.rest = null
    if (n.pii) {
      // the whole value is personal: nothing beneath needs a visit
      n.props.clear(); n.patterns.length = 0; n.additional.length = 0; n.tuple.length = 0; n.rest = null
    }
    for (const [k, c] of n.props) if (c) n.liveKeys.push(k)
  }
  return root
}

/** true when `data` is an object that only declared properties could make personal, and none of those is there */
function nothingDeclaredPresent (map: PiiMap, data: unknown): boolean {
  if (data === null || typeof data !== 'object' || Array.isArray(data)) return false
  if (map.patterns.length > 0 || map.additional.length > 0) return false
  const keys = map.liveKeys
  for (let i = 0; i < keys.length; i++) {
    if (Object.prototype.hasOwnProperty.call(data, keys[i]!)) return false
  }
  return true
}

/**
 * What an undeclared key of an object at `n` meets: every pattern it matches, and the
 * additionalProperties of each branch none of whose own patterns it matches.
 */
function pushUndeclared (n: PiiNode, key: string, into: PiiNode[]): void {
  for (const [re, c] of n.patterns) if (re.test(key)) into.push(c)
  for (const [c, own] of n.additional) if (!own.some((re) => re.test(key))) into.push(c)
}

/** A container and the key (or index) of one personal value in it. */
export type PiiVisitor = (container: Record<string, unknown> | unknown[], key: string | number, value: unknown) => void

/**
 * Calls `visit` once for every personal value of `data`, outermost first:
 * nothing beneath a personal value is visited (so a value already replaced by an
 * envelope is never looked into). Returns how many were found. The visitor may
 * replace or delete the value it is given.
 */
export function visitPersonalData (map: PiiMap, data: unknown, visit: PiiVisitor): number {
  // the hot path's common case (telemetry without its optional personal field): an
  // object where no declared property that leads to personal data is present
  if (nothingDeclaredPresent(map, data)) return 0
  type Container = Record<string, unknown> | unknown[]
  const stack: Array<[unknown, PiiNode, number]> = [[data, map, 0]]
  const targets: Array<[Container, string | number, number]> = []
  // first parent of each container reached, to tell whether a target lies beneath
  // another one (two patterns, or two branches, can lead into the same value)
  const parents = new Map<object, object>()
  function reach (container: Container, key: string | number, nodes: readonly PiiNode[], depth: number): void {
    if (nodes.some((n) => n.pii)) { targets.push([container, key, depth]); return }
    const value = (container as Record<string | number, unknown>)[key]
    if (value === null || typeof value !== 'object') return
    if (!parents.has(value)) parents.set(value, container)
    for (const n of nodes) stack.push([value, n, depth + 1])
  }
  const one: PiiNode[] = []
  while (stack.length > 0) {
    const [value, n, depth] = stack.pop()!
    if (Array.isArray(value)) {
      if (n.tuple.length === 0 && n.rest === null) continue
      for (let i = 0; i < value.length; i++) {
        const c = i < n.tuple.length ? n.tuple[i] : n.rest
        if (c) { one[0] = c; reach(value, i, one, depth) }
      }
    } else if (value !== null && typeof value === 'object') {
      if (n.props.size === 0 && n.patterns.length === 0 && n.additional.length === 0) continue
      const obj = value as Record<string, unknown>
      for (const k of Object.keys(obj)) {
        const declared = n.props.get(k)
        if (declared !== undefined) {
          if (declared) { one[0] = declared; reach(obj, k, one, depth) }
          continue
        }
        if (n.patterns.length === 0 && n.additional.length === 0) continue
        const nodes: PiiNode[] = []
        pushUndeclared(n, k, nodes)
        if (nodes.length > 0) reach(obj, k, nodes, depth)
      }
    }
  }
  if (targets.length === 0) return 0
  // outermost first; a target beneath one already visited is gone with it
  targets.sort((a, b) => a[2] - b[2])
  const claimed = new Set<object>()
  const seen = new Map<object, Set<string | number>>()
  // Depth order settles every claim above a container before any target in it is
  // reached, so an answer once known stays true: remembered along the whole path
  // (a linear walk, also for a 20,000-level recursive payload).
  const known = new Map<object, boolean>()
  function beneathClaimed (container: object): boolean {
    const path: object[] = []
    let up: object | undefined = container
    let answer = false
    while (up !== undefined) {
      if (claimed.has(up)) { answer = true; break }
      const k = known.get(up)
      if (k !== undefined) { answer = k; break }
      path.push(up)
      up = parents.get(up)
    }
    for (const p of path) known.set(p, answer)
    return answer
  }
  let found = 0
  for (const [container, key] of targets) {
    let keys = seen.get(container)
    if (!keys) { keys = new Set(); seen.set(container, keys) }
    if (keys.has(key)) continue
    keys.add(key)
    if (beneathClaimed(container)) continue
    const value = (container as Record<string | number, unknown>)[key]
    if (value !== null && typeof value === 'object') claimed.add(value)
    found++
    visit(container, key, value)
  }
  return found
}

/**
 * A JSON pointer into a payload (a validation error's instancePath) with every
 * segment beneath a personal value written '*'. Error reports go to
 * `devices/<id>/errors`, which services without `pii` read, and the keys of an x-pii
 * object are its contents (`/guests/Jane Roe`). The descent follows the map as
 * visitPersonalData does; a numeric segment is tried as an array index and as a
 * key alike, so the answer can only hide more.
 */
export function maskBeneathPersonal (map: PiiMap | null, pointer: string): string {
  if (map === null || pointer === '') return pointer
  const segments = pointer.split('/').slice(1)
  let nodes: PiiNode[] = [map]
  for (let i = 0; i < segments.length; i++) {
    if (nodes.some((n) => n.pii)) return '/' + [...segments.slice(0, i), ...segments.slice(i).map(() => '*')].join('/')
    const key = segments[i]!.replace(/~1/g, '/').replace(/~0/g, '~')
    const next: PiiNode[] = []
    for (const n of nodes) {
      if (/^(0|[1-9][0-9]*)$/.test(key)) {
        const index = Number(key)
        const c = index < n.tuple.length ? n.tuple[index] : n.rest
        if (c) next.push(c)
      }
      const declared = n.props.get(key)
      if (declared !== undefined) {
        if (declared) next.push(declared)
        continue
      }
      pushUndeclared(n, key, next)
    }
    // nothing personal at or beneath this point: the rest of the path names no personal value
    if (next.length === 0) return pointer
    nodes = next
  }
  return pointer
}
