/**
 * Whose budget a remote address spends, for the per-address limits of CONTRACT §11
 * (pending connections and connects per address at accept, provisioning requests
 * per address): an IPv4 address its own; an IPv6 address the /64 it lies in,
 * because one host is usually given a whole /64 and may use any of its 2^64
 * addresses, so keying on the full address would give it that many budgets; an
 * IPv4-mapped IPv6 address (a dual-stack listener's view of an IPv4 client) the
 * IPv4 address. Audit lines keep the full address: this is only the key.
 */
import { isIPv6 } from 'node:net'

export function budgetKeyOf (address: string): string {
  // the common case first, and without work: an IPv4 address has no colon
  if (!address.includes(':')) return address
  // a zone (fe80::1%eth0) names the interface, not the host
  const bare = address.split('%', 1)[0]!.toLowerCase()
  if (!isIPv6(bare)) return address
  const mapped = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/.exec(bare)
  if (mapped) return mapped[1]!
  return `${firstFourGroups(bare)}::/64`
}

/** the first four 16-bit groups of a valid IPv6 address, each without leading zeros */
function firstFourGroups (address: string): string {
  const [head = '', tail] = address.split('::', 2)
  const left = head === '' ? [] : head.split(':')
  // with `::`, the groups it stands for are zeros; the tail only matters when the head has fewer than four
  let groups = left
  if (tail !== undefined && left.length < 4) {
    // an embedded IPv4 tail (::ffff:0:1.2.3.4 and the like) is two groups
    const right = tail === '' ? [] : tail.split(':').flatMap((g) => g.includes('.') ? ['0', '0'] : [g])
    groups = [...left, ...Array<string>(8 - left.length - right.length).fill('0'), ...right]
  }
  return groups.slice(0, 4).map((g) => g.replace(/^0+(?=.)/, '')).join(':')
}
