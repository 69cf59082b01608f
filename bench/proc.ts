/**
 * What a process costs, read from /proc (Linux): CPU time and resident memory.
 * Works for any child, Node or not (Mosquitto), so every broker is measured alike.
 */
import { readdirSync, readFileSync } from 'node:fs'

/** USER_HZ: the unit of utime/stime in /proc/<pid>/stat (100 on Linux x86/arm) */
const TICKS_PER_SECOND = 100

export interface ProcUsage {
  /** user + system CPU time, milliseconds */
  readonly cpuMs: number
  /** resident set size, bytes */
  readonly rssBytes: number
}

export function procUsage (pid: number): ProcUsage | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    // the command name may hold spaces: fields are counted after its closing parenthesis
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    const utime = Number(fields[11])
    const stime = Number(fields[12])
    const status = readFileSync(`/proc/${pid}/status`, 'utf8')
    const rssKb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0)
    return { cpuMs: ((utime + stime) * 1000) / TICKS_PER_SECOND, rssBytes: rssKb * 1024 }
  } catch {
    return null
  }
}

/** CPU use between two readings, in percent of one core */
export function cpuPercent (before: { cpuMs: number }, after: { cpuMs: number }, wallMs: number): number {
  return wallMs > 0 ? (100 * (after.cpuMs - before.cpuMs)) / wallMs : 0
}

/** This process (the load generator with all its worker threads). */
export function selfUsage (): ProcUsage {
  const u = process.cpuUsage()
  return { cpuMs: (u.user + u.system) / 1000, rssBytes: process.memoryUsage().rss }
}

/** Machine-wide CPU ticks from /proc/stat: `steal` is time the hypervisor gave to someone else. */
export function machineTicks (): { steal: number, total: number } {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0] ?? ''
    const f = line.trim().split(/\s+/).slice(1, 9).map(Number)
    return { steal: f[7] ?? 0, total: f.reduce((a, b) => a + b, 0) }
  } catch {
    return { steal: 0, total: 0 }
  }
}

/** share of the machine's CPU time stolen by the hypervisor between two readings, percent */
export function stealPercent (a: { steal: number, total: number }, b: { steal: number, total: number }): number {
  const total = b.total - a.total
  return total > 0 ? (100 * (b.steal - a.steal)) / total : 0
}

/**
 * A process and its children together (a cluster's primary and its workers):
 * each live one's CPU time and RSS, plus the CPU time of children it has already
 * reaped (cutime/cstime), so a worker that died and was restarted still counts.
 */
export function treeUsage (pid: number): ProcUsage | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    // utime, stime, cutime, cstime (fields 14-17 of proc(5))
    const ticks = [11, 12, 13, 14].reduce((sum, i) => sum + Number(fields[i]), 0)
    let cpuMs = (ticks * 1000) / TICKS_PER_SECOND
    let rssBytes = procUsage(pid)?.rssBytes ?? 0
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      let children = ''
      try {
        children = readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8')
      } catch {
        continue
      }
      for (const child of children.trim().split(/\s+/).filter(Boolean)) {
        const u = procUsage(Number(child))
        if (u === null) continue
        cpuMs += u.cpuMs
        rssBytes += u.rssBytes
      }
    }
    return { cpuMs, rssBytes }
  } catch {
    return null
  }
}
