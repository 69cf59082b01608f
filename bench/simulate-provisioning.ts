/**
 * The provisioning scenario driven by `aedes-jitp simulate`'s client
 * (broker/simulate/run.ts: MQTT.js over mutual TLS, one thread, what a user
 * runs), so the devices/s figure is the one a firmware team sees. Each device:
 * claim connect → create-from-csr → register (`sensor`) → reconnect with its
 * certificate → CONNACK 0, like the lean client of bench/load-worker.ts (two
 * threads, its own MQTT encoder), whose figure the report keeps next to it.
 * Keys and CSRs are made before the clock starts; a short run first warms the
 * broker's JIT up, as the lean client's first second does.
 */
import { runSimulation, type SimulationSummary } from '../broker/simulate/run.js'
import { cpuBetween, MEASURE_MS, round, snapshot, type BenchEnv, type ScenarioResult, type Snapshot } from './scenarios.js'
import type { Target } from './processes.js'

/** keys made before the clock: more than the measured window can use on this hardware */
const SIMULATED_DEVICES = 1500
const WARMUP_DEVICES = 48
const CONCURRENCY = 16

export async function provisioningSimulated (target: Target, env: BenchEnv, prefix: string): Promise<ScenarioResult> {
  const common = {
    claim: { cert: env.claim.cert, key: env.claim.key },
    ca: env.ca,
    mqttUrl: `mqtts://127.0.0.1:${target.port}`,
    admin: null,
    lifecycle: 'provision' as const,
    concurrency: CONCURRENCY
  }
  // the sensor template's serial numbers are upper case
  const runId = prefix.toUpperCase()
  try {
    await runSimulation({ ...common, devices: WARMUP_DEVICES, runId: `${runId}W` })
    let a: Snapshot | null = null
    let b: Snapshot | null = null
    const s: SimulationSummary = await runSimulation({
      ...common,
      devices: SIMULATED_DEVICES,
      runId,
      provisionWithinMs: MEASURE_MS,
      onPhase (phase) {
        if (phase === 'provisioning') a = snapshot(target)
        if (phase === 'provisioned') b = snapshot(target)
      }
    })
    if (a === null || b === null) throw new Error('the simulation reported no provisioning phase')
    const step = (name: keyof SimulationSummary['latencyMs']): number | null => s.latencyMs[name]?.p50 ?? null
    return {
      value: s.provisioning.devicesPerSecond,
      detail: {
        devices: s.provisioned,
        errors: s.failed,
        firstError: s.errors[0]?.message ?? null,
        certificatesPerSecond: round((2 * s.provisioned) / s.provisioning.seconds, 1),
        claimConnectP50Ms: step('claimConnect'),
        csrP50Ms: step('csr'),
        registerP50Ms: step('register'),
        reconnectP50Ms: step('reconnect'),
        reconnectP99Ms: s.latencyMs.reconnect?.p99 ?? null
      },
      cpu: cpuBetween(a, b)
    }
  } catch (err) {
    return { value: null, detail: {}, cpu: null, error: (err as Error).message.split('\n')[0] }
  }
}
