/**
 * Development PKI: one root, five CAs beneath it (device, claim, service,
 * manufacturer, admin) and the leaves a local broker, its test clients and an
 * operator's CLI need.
 * Everything is generated natively in-process; no openssl binary is involved.
 *
 *   node dist/certs-dev/generate.js [--out DIR] [--rsa] [--days N]
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
    const files: string[] = []
    for (const [name, text] of contents) {
      const path = join(outDir, name)
      const isKey = name.endsWith('.key')
      // write-then-rename so a reader never sees a half-written file
      const tmp = `${path}.${process.pid}.tmp`
      await writeFile(tmp, text, { mode: isKey ? 0o600 : 0o644 })
      if (isKey) await chmod(tmp, 0o600) // the mode option is filtered by the umask
      await rename(tmp, path)
      files.push(path)
    }
    return { outDir, files }
  } finally {
    await rm(join(outDir, LOCK_FILE), { force: true })
  }
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

function parseArgs (argv: string[]): DevPkiOptions {
  const opts: DevPkiOptions = { outDir: 'certs-dev' }
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]
    if (arg === '--rsa') opts.rsa = true
    else if (arg === '--out') opts.outDir = argv[++i] ?? opts.outDir
    else if (arg === '--days') opts.validityDays = Number(argv[++i])
    else throw new Error(`unknown argument ${arg ?? ''} (usage: generate [--out DIR] [--rsa] [--days N])`)
  }
  return opts
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  try {
    const result = await generateDevPki(parseArgs(process.argv.slice(2)))
    console.log(`wrote ${result.files.length} files to ${result.outDir}`)
  } catch (err) {
    console.error((err as Error).message)
    process.exitCode = 1
  }
}
