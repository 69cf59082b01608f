#!/usr/bin/env node
// Prints every failed assertion of the last tap run, with its file and diagnostics, from the
// per-file results tap keeps in .tap/test-results. CI shows only the head and the tail of a long
// log; without this a red run ends on `fail: 1` and says nothing of which test failed.
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs'
import { join, relative } from 'node:path'

const root = '.tap/test-results'
if (!existsSync(root)) {
  console.log(`tap-failures: ${root} missing: tap wrote no results`)
  process.exit(0)
}

/** @param {string} dir @returns {string[]} */
const files = (dir) =>
  readdirSync(dir).flatMap((name) => {
    const p = join(dir, name)
    return statSync(p).isDirectory() ? files(p) : p.endsWith('.tap') ? [p] : []
  })

const MAX_LINES = 400
let printed = 0
let failed = 0
for (const file of files(root).sort()) {
  const lines = readFileSync(file, 'utf8').split('\n')
  for (let i = 0; i < lines.length; i++) {
    if (!/^\s*not ok /.test(lines[i] ?? '')) continue
    failed++
    // the assertion line, then its YAML diagnostics (`  ---` … `  ...`), when it has them
    const block = [lines[i] ?? '']
    if ((lines[i + 1] ?? '').trim() === '---') {
      for (let j = i + 1; j < lines.length && j < i + 60; j++) {
        block.push(lines[j] ?? '')
        if ((lines[j] ?? '').trim() === '...') break
      }
    }
    if (printed + block.length + 1 > MAX_LINES) continue
    console.log(`== ${relative('.', file)}`)
    for (const l of block) console.log(l)
    printed += block.length + 1
  }
}
console.log(`tap-failures: ${failed} 'not ok' line(s) (a failed subtest counts with its parents)`)
