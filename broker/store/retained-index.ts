/**
 * Retained messages by topic level, for Aedes' in-memory persistence. That store
 * answers every SUBSCRIBE by testing the filter against every retained message it
 * holds, exact topics included; with one retained configuration per provisioned
 * device, a subscribe then costs time in proportion to the fleet (25 ms with
 * 50,000 devices, on the event loop). Here retained messages live in a tree of
 * topic levels instead of the store's flat map: the literal levels of a filter
 * lead straight to the few candidates, which are then tested exactly as the
 * store tests them, so the answers are the same.
 * Redis needs none of this: aedes-persistence-redis reads exact topics with HGET
 * and scans only a filter's literal prefix.
 */
import memoryPersistence from 'aedes-persistence'
import { Readable } from 'node:stream'
import { QlobberTrue } from 'qlobber'

/** what Aedes hands to storeRetained (an aedes-packet) */
export interface RetainedPacket { readonly topic: string, readonly payload: Buffer | string, readonly [field: string]: unknown }

/** the retained part of an Aedes persistence (aedes-persistence 11) */
export interface RetainedStore {
  storeRetained (packet: RetainedPacket): Promise<void>
  createRetainedStream (pattern: string): Readable
  createRetainedStreamCombi (patterns: string[]): Readable
}

/** Aedes' in-memory persistence (CommonJS: at run time the default import is the factory itself, whatever the typings say) */
export const createMemoryPersistence = memoryPersistence as unknown as () => RetainedStore

// the options aedes-persistence gives its own matcher, so both agree on every filter
const QLOBBER_OPTIONS = { separator: '/', wildcard_one: '+', wildcard_some: '#' }

interface Level {
  readonly children: Map<string, Level>
  packet: RetainedPacket | undefined
}

const newLevel = (): Level => ({ children: new Map(), packet: undefined })

function put (root: Level, topic: string, packet: RetainedPacket): void {
  let node = root
  for (const name of topic.split('/')) {
    let child = node.children.get(name)
    if (child === undefined) {
      child = newLevel()
      node.children.set(name, child)
    }
    node = child
  }
  node.packet = packet
}

function remove (root: Level, topic: string): void {
  const path: Array<[Level, string]> = []
  let node: Level | undefined = root
  for (const name of topic.split('/')) {
    path.push([node, name])
    node = node.children.get(name)
    if (node === undefined) return
  }
  node.packet = undefined
  // prune the levels nothing is retained under any more
  for (let i = path.length - 1; i >= 0; i--) {
    const [parent, name] = path[i]!
    const child = parent.children.get(name)!
    if (child.packet !== undefined || child.children.size > 0) break
    parent.children.delete(name)
  }
}

function * everythingUnder (node: Level): Generator<RetainedPacket> {
  if (node.packet !== undefined) yield node.packet
  for (const child of node.children.values()) yield * everythingUnder(child)
}

/** the messages retained under a filter's literal levels, tested against the whole filter */
function * matching (root: Level, pattern: string): Generator<RetainedPacket> {
  let node: Level | undefined = root
  for (const name of pattern.split('/')) {
    if (name === '+' || name === '#') break
    node = node.children.get(name)
    if (node === undefined) return
  }
  const filter = new QlobberTrue(QLOBBER_OPTIONS)
  filter.add(pattern)
  for (const packet of everythingUnder(node)) {
    if (filter.test(packet.topic)) yield packet
  }
}

function * matchingAll (root: Level, patterns: readonly string[]): Generator<RetainedPacket> {
  // one pattern after the other, as aedes-persistence does (a topic two filters match comes twice)
  for (const pattern of patterns) yield * matching(root, pattern)
}

/** the retained part of any persistence: what indexRetained replaces */
interface RetainedMethods {
  storeRetained (packet: RetainedPacket): Promise<void>
  createRetainedStream (pattern: string): AsyncIterable<unknown>
  createRetainedStreamCombi (patterns: string[]): AsyncIterable<unknown>
}

/**
 * A persistence wrapper (broker/store/wrappers.ts), for the memory store only.
 * Answers: Aedes' memory store tests every retained message on every SUBSCRIBE.
 * Takes over the retained messages (the store's own map stays empty).
 */
export function indexRetained<P extends RetainedMethods> (persistence: P): P {
  const root = newLevel()
  persistence.storeRetained = async function storeRetained (packet) {
    // an empty payload clears the topic [MQTT-3.3.1-10]
    if (packet.payload.length === 0) remove(root, packet.topic)
    else put(root, packet.topic, { ...packet })
  }
  persistence.createRetainedStream = function createRetainedStream (pattern) {
    return Readable.from(matching(root, pattern))
  }
  persistence.createRetainedStreamCombi = function createRetainedStreamCombi (patterns) {
    return Readable.from(matchingAll(root, patterns))
  }
  return persistence
}
