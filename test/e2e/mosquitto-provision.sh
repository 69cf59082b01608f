#!/usr/bin/env bash
# The claim flow driven by mosquitto_pub/mosquitto_sub and openssl: clients no one
# here wrote. MQTT 3.1.1 tools cannot publish and receive on one connection, so the
# replies are read on the companion connection `<client id>-replies` (broker option
# PROVISION_REPLY_COMPANION). Needs: PORT, CERTS_DIR. Prints the device id on success.
set -euo pipefail
: "${PORT:?}" "${CERTS_DIR:?}"
W=$(mktemp -d)
trap 'rm -rf "$W"; kill $(jobs -p) 2>/dev/null || true' EXIT
SERIAL=${SERIAL:-SHELL-0001}
common=(-h 127.0.0.1 -p "$PORT" -V mqttv311 --cafile "$CERTS_DIR/root-ca.pem")
claim=(--cert "$CERTS_DIR/claim-chain.pem" --key "$CERTS_DIR/claim.key")
json() { node -e 'const o = JSON.parse(require("fs").readFileSync(0, "utf8")); process.stdout.write(String(o[process.argv[1]] ?? ""))' "$1"; }

# request → reply on the companion connection
ask() { # topic payload-file out-file
  mosquitto_sub "${common[@]}" "${claim[@]}" -i shell-claim-replies -t "$1/accepted" -t "$1/rejected" -C 1 -W "${REPLY_WAIT:-15}" > "$3" &
  local sub=$!
  sleep 0.7
  mosquitto_pub "${common[@]}" "${claim[@]}" -i shell-claim -t "$1" -f "$2" -q 1
  wait "$sub"
}

openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=ignored \
  -keyout "$W/device.key" -out "$W/device.csr" 2>/dev/null
node -e 'process.stdout.write(JSON.stringify({ certificateSigningRequest: require("fs").readFileSync(process.argv[1], "utf8") }))' "$W/device.csr" > "$W/create-req.json"
ask '$provision/certificates/create-from-csr/json' "$W/create-req.json" "$W/create.json"
TOKEN=$(json certificateOwnershipToken < "$W/create.json")
[ -n "$TOKEN" ] || { echo "create failed: $(cat "$W/create.json")" >&2; exit 1; }

# through the environment: a token may start with '-', which node would take for an option
TOKEN="$TOKEN" SERIAL="$SERIAL" node -e 'process.stdout.write(JSON.stringify({ certificateOwnershipToken: process.env.TOKEN, parameters: { serialNumber: process.env.SERIAL } }))' > "$W/register-req.json"
ask '$provision/templates/sensor/provision/json' "$W/register-req.json" "$W/register.json"
DEVICE=$(json deviceId < "$W/register.json")
[ -n "$DEVICE" ] || { echo "register failed: $(cat "$W/register.json")" >&2; exit 1; }
json certificatePem < "$W/register.json" > "$W/device.pem"
cat "$CERTS_DIR/device-ca.pem" >> "$W/device.pem"
dev=(--cert "$W/device.pem" --key "$W/device.key" -i "$DEVICE")

# first contact as the device: the retained config is there
CONFIG=$(mosquitto_sub "${common[@]}" "${dev[@]}" -t "devices/$DEVICE/config" -C 1 -W 10)
[ "$(printf '%s' "$CONFIG" | json version)" = "1" ] || { echo "no retained config v1: $CONFIG" >&2; exit 1; }

# telemetry reaches a service
mosquitto_sub "${common[@]}" --cert "$CERTS_DIR/service-chain.pem" --key "$CERTS_DIR/service.key" -i shell-service \
  -t 'devices/+/telemetry' -C 1 -W 10 -v > "$W/service.out" &
svc=$!
sleep 0.7
mosquitto_pub "${common[@]}" "${dev[@]}" -t "devices/$DEVICE/telemetry" -q 1 \
  -m '{"ts": 1763769600000, "seq": 1, "values": {"temperature": 21.5, "door": "open"}}'
wait "$svc"
grep -q "^devices/$DEVICE/telemetry " "$W/service.out" || { echo "service got: $(cat "$W/service.out")" >&2; exit 1; }
echo "$DEVICE"
