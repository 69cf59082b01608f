/**
 * The telemetry the benchmark's devices send: about 200 bytes of JSON that
 * validates against schemas/telemetry.json. `sentAt` (ms since the epoch, with
 * microseconds) lets the subscriber measure end-to-end latency.
 */
export function telemetryPayload (seq: number, sentAt: number): Buffer {
  return Buffer.from(`{"ts":${Math.floor(sentAt)},"seq":${seq},"values":{"temperature":21.5,"humidity":40.2,"pressure":1013.25,"battery":3.71,"rssi":-67,"door":"closed","motion":false,"firmware":"1.4.2","sentAt":${sentAt.toFixed(3)}}}`)
}
