/**
 * Development PKI: one root, five CAs beneath it (device, claim, service,
 * manufacturer, admin) and the leaves a local broker, its test clients and an
 * operator's CLI need.
 * Everything is generated natively in-process; no openssl binary is involved.
 *
 *   node dist/certs-dev/generate.js [--out DIR] [--rsa] [--days N] [--add-device-ca]
 */
import { existsSync } from 'node:fs'
import { chmod, mkdir, open, readFile, rename, rm, stat, writeFile } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { pathToFileURL } from 'node:url'
import { issueCertificate, loadIssuer, type IssueOptions, type Issuer } from '../pki/certificate.js'
import { generateKeyPairAsync, privateKeyToPem, type KeyPair } from '../pki/keys.js'

export interface DevPkiOptions {
  outDir: string
  /** RSA-2048 for every key instead of EC P-256 */
  rsa?: boolean
  /** leaf validity (default 825); CAs get 3650 days, or this if it is longer */
  validityDays?: number
}

export interface DevPkiResult {
  /** absolute */
  outDir: string
  /** absolute paths of every file written */
  files: string[]
}

const CA_NAMES = ['root-ca', 'device-ca', 'claim-ca', 'service-ca', 'manufacturer-ca', 'admin-ca'] as const
const CLIENT_LEAVES = [
  { name: 'claim', issuer: 'claim-ca', commonName: 'claim-dev' },
  { name: 'service', issuer: 'service-ca', commonName: 'backend-dev' },
  { name: 'manufacturer-device', issuer: 'manufacturer-ca', commonName: 'mfg-0001' },
  { name: 'admin', issuer: 'admin-ca', commonName: 'admin-dev' }
] as const
/** what an older dev PKI (before the admin API) lacks; added under its existing root */
const ADMIN_FILES = ['admin-ca.pem', 'admin-ca.key', 'admin.pem', 'admin.key', 'admin-chain.pem']

export const DEV_PKI_FILES: readonly string[] = Object.freeze([
  ...CA_NAMES.flatMap((n) => [`${n}.pem`, `${n}.key`]),
  ...CLIENT_LEAVES.flatMap((l) => [`${l.name}.pem`, `${l.name}.key`, `${l.name}-chain.pem`]),
  'server.pem', 'server.key', 'ca-bundle.pem'
])

const ORGANIZATION = 'aedes-jitp development'
const LOCK_FILE = '.generate.lock'
const LOCK_STALE_MS = 60_000

export function devPkiComplete (dir: string): boolean {
  return DEV_PKI_FILES.every((f) => existsSync(join(dir, f)))
}

export async function generateDevPki (opts: DevPkiOptions): Promise<DevPkiResult> {
  const outDir = resolve(opts.outDir)
  await mkdir(outDir, { recursive: true })
  // two brokers (or test workers) starting on one empty CERTS_DIR must not interleave
  // their files: a root from one run and a CA from the other would never verify
  const waited = await acquireLock(outDir)
  try {
    if (waited && devPkiComplete(outDir)) return { outDir, files: DEV_PKI_FILES.map((f) => join(outDir, f)) }
    // a dev PKI from before the admin API: keep its devices' certificates valid, add only the admin part
    const onlyAdminMissing = DEV_PKI_FILES.every((f) => ADMIN_FILES.includes(f) || f === 'ca-bundle.pem' || existsSync(join(outDir, f)))
    const contents = onlyAdminMissing ? await buildAdminPart(outDir, opts) : await buildDevPki(opts)
    return { outDir, files: await writeAll(outDir, contents) }
  } finally {
    await rm(join(outDir, LOCK_FILE), { force: true })
  }
}

export interface AddDeviceCaResult {
  /** absolute paths of the files written */
  files: string[]
  /** where the previous device-ca.key went */
  oldKeyFile: string
  /** PEM of the new signing CA (now first in device-ca.pem) */
  deviceCaPem: string
}

/**
 * A device CA rollover for trying it out (CONTRACT §2, docs/PKI.md): a new device CA
 * under the existing dev root goes FIRST in device-ca.pem (it signs from now on),
 * the CAs already there stay after it (still trusted), device-ca.key becomes the
 * new key and the previous one is kept as device-ca.key.<n>.old (n = 1, 2, …, the
 * first free), and ca-bundle.pem gains the new CA. A running broker picks it up
 * by itself (broker/cert-reload.ts).
 */
export async function addDeviceCa (opts: DevPkiOptions): Promise<AddDeviceCaResult> {
  const outDir = resolve(opts.outDir)
  if (!devPkiComplete(outDir)) throw new Error(`${outDir} holds no complete development PKI: run certs dev first`)
  await acquireLock(outDir)
  try {
    const read = (f: string): Promise<string> => readFile(join(outDir, f), 'utf8')
    const [rootPem, rootKeyPem, currentCas, currentKey, bundle] = await Promise.all(
      ['root-ca.pem', 'root-ca.key', 'device-ca.pem', 'device-ca.key', 'ca-bundle.pem'].map(read))
    const root = loadIssuer(rootPem!, rootKeyPem!)
    const keys = await generateKeyPairAsync(opts.rsa === true ? 'rsa' : 'ec')
    let n = 1
    while (existsSync(join(outDir, `device-ca.key.${n}.old`))) n++
    const ca = issueCertificate({
      organization: ORGANIZATION, commonName: `aedes-jitp dev device CA ${n + 1}`, publicKey: keys.publicKey, issuer: root,
      validityDays: Math.max(3650, opts.validityDays ?? 825), isCa: true, pathLength: 0
    })
    const oldKeyFile = `device-ca.key.${n}.old`
    // the old key first: at no moment is it lost; then the CA file and its key, as close together as a rename allows
    const written = await writeAll(outDir, [
      [oldKeyFile, currentKey!],
      ['device-ca.pem', ca.pem + currentCas!],
      ['device-ca.key', privateKeyToPem(keys.privateKey)],
      ['ca-bundle.pem', bundle! + ca.pem]
    ])
    return { files: written, oldKeyFile: join(outDir, oldKeyFile), deviceCaPem: ca.pem }
  } finally {
    await rm(join(outDir, LOCK_FILE), { force: true })
  }
}

/** write-then-rename each file, so a reader (the broker's watcher) never sees a half-written one */
async function writeAll (outDir: string, contents: Iterable<[string, string]>): Promise<string[]> {
  const files: string[] = []
  for (const [name, text] of contents) {
    const path = join(outDir, name)
    const isKey = name.includes('.key')
    const tmp = `${path}.${process.pid}.tmp`
    await writeFile(tmp, text, { mode: isKey ? 0o600 : 0o644 })
    if (isKey) await chmod(tmp, 0o600) // the mode option is filtered by the umask
    await rename(tmp, path)
    files.push(path)
  }
  return files
}

async function buildDevPki (opts: DevPkiOptions): Promise<Map<string, string>> {
  const leafDays = opts.validityDays ?? 825
  const caDays = Math.max(3650, leafDays)
  const alg = opts.rsa === true ? 'rsa' : 'ec'
  const names = [...CA_NAMES, ...CLIENT_LEAVES.map((l) => l.name), 'server']
  // RSA generation is slow: make all keys concurrently on the libuv pool
  const generated = await Promise.all(names.map(async (n) => [n, await generateKeyPairAsync(alg)] as const))
  const keys = new Map<string, KeyPair>(generated)
  const keyOf = (n: string): KeyPair => keys.get(n)!
  const out = new Map<string, string>()
  const issuers = new Map<string, Issuer>()

  const base = { organization: ORGANIZATION }
  const rootKeys = keyOf('root-ca')
  const root = issueCertificate({
    ...base, commonName: 'aedes-jitp dev root CA', publicKey: rootKeys.publicKey, issuer: 'self',
    signingKey: rootKeys.privateKey, validityDays: caDays, isCa: true, pathLength: 1
  })
  addCa('root-ca', root.pem)

  for (const ca of CA_NAMES.slice(1)) {
    const cert = issueCertificate({
      ...base, commonName: `aedes-jitp dev ${ca.replace(/-ca$/, '')} CA`, publicKey: keyOf(ca).publicKey,
      issuer: issuers.get('root-ca')!, validityDays: caDays, isCa: true, pathLength: 0
    })
    addCa(ca, cert.pem)
  }

  for (const leaf of CLIENT_LEAVES) {
    const pem = addLeaf(leaf.name, {
      ...base, commonName: leaf.commonName, publicKey: keyOf(leaf.name).publicKey, issuer: issuers.get(leaf.issuer)!,
      validityDays: leafDays, extKeyUsage: ['clientAuth']
    })
    // TLS clients send the chain file, so the server can reach the root through the CA
    out.set(`${leaf.name}-chain.pem`, pem + out.get(`${leaf.issuer}.pem`)!)
  }

  addLeaf('server', {
    ...base, commonName: 'localhost', publicKey: keyOf('server').publicKey, issuer: issuers.get('root-ca')!,
    validityDays: leafDays, extKeyUsage: ['serverAuth'], dnsNames: ['localhost'], ipAddresses: ['127.0.0.1', '::1']
  })
  out.set('ca-bundle.pem', CA_NAMES.map((n) => out.get(`${n}.pem`)!).join(''))
  return out

  function addCa (name: string, pem: string): void {
    const keyPem = privateKeyToPem(keyOf(name).privateKey)
    out.set(`${name}.pem`, pem).set(`${name}.key`, keyPem)
    issuers.set(name, loadIssuer(pem, keyPem))
  }

  function addLeaf (name: string, issue: IssueOptions): string {
    const { pem } = issueCertificate(issue)
    out.set(`${name}.pem`, pem).set(`${name}.key`, privateKeyToPem(keyOf(name).privateKey))
    return pem
  }
}

async function buildAdminPart (dir: string, opts: DevPkiOptions): Promise<Map<string, string>> {
  const leafDays = opts.validityDays ?? 825
  const alg = opts.rsa === true ? 'rsa' : 'ec'
  const [caKeys, leafKeys] = await Promise.all([generateKeyPairAsync(alg), generateKeyPairAsync(alg)])
  const rootPem = await readFile(join(dir, 'root-ca.pem'), 'utf8')
  const root = loadIssuer(rootPem, await readFile(join(dir, 'root-ca.key'), 'utf8'))
  const base = { organization: ORGANIZATION }
  const ca = issueCertificate({
    ...base, commonName: 'aedes-jitp dev admin CA', publicKey: caKeys.publicKey, issuer: root,
    validityDays: Math.max(3650, leafDays), isCa: true, pathLength: 0
  })
  const caKeyPem = privateKeyToPem(caKeys.privateKey)
  const leaf = issueCertificate({
    ...base, commonName: 'admin-dev', publicKey: leafKeys.publicKey, issuer: loadIssuer(ca.pem, caKeyPem),
    validityDays: leafDays, extKeyUsage: ['clientAuth']
  })
  const bundle = existsSync(join(dir, 'ca-bundle.pem')) ? await readFile(join(dir, 'ca-bundle.pem'), 'utf8') : rootPem
  return new Map([
    ['admin-ca.pem', ca.pem], ['admin-ca.key', caKeyPem],
    ['admin.pem', leaf.pem], ['admin.key', privateKeyToPem(leafKeys.privateKey)], ['admin-chain.pem', leaf.pem + ca.pem],
    ['ca-bundle.pem', bundle + ca.pem]
  ])
}

/** true when another generator held the lock and this call had to wait for it */
async function acquireLock (dir: string): Promise<boolean> {
  const path = join(dir, LOCK_FILE)
  let waited = false
  for (;;) {
    try {
      const handle = await open(path, 'wx')
      await handle.writeFile(String(process.pid))
      await handle.close()
      return waited
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
    }
    waited = true
    const age = await stat(path).then((s) => Date.now() - s.mtimeMs, () => 0)
    // a generator that crashed leaves its lock behind; generation takes seconds, not minutes
    if (age > LOCK_STALE_MS) await rm(path, { force: true })
    else await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

function parseArgs (argv: string[]): DevPkiOptions & { addDeviceCa?: boolean } {
  const opts: DevPkiOptions & { addDeviceCa?: boolean } = { outDir: 'certs-dev' }
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]
    if (arg === '--rsa') opts.rsa = true
    else if (arg === '--add-device-ca') opts.addDeviceCa = true
    else if (arg === '--out') opts.outDir = argv[++i] ?? opts.outDir
    else if (arg === '--days') opts.validityDays = Number(argv[++i])
    else throw new Error(`unknown argument ${arg ?? ''} (usage: generate [--out DIR] [--rsa] [--days N] [--add-device-ca])`)
  }
  return opts
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  try {
    const opts = parseArgs(process.argv.slice(2))
    if (opts.addDeviceCa === true) {
      const added = await addDeviceCa(opts)
      console.log(`new signing device CA first in device-ca.pem; previous key kept as ${added.oldKeyFile}`)
    } else {
      const result = await generateDevPki(opts)
      console.log(`wrote ${result.files.length} files to ${result.outDir}`)
    }
  } catch (err) {
    console.error((err as Error).message)
    process.exitCode = 1
  }
}
