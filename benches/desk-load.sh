#!/usr/bin/env bash
# Desk load against a release sipdesk on 127.0.0.1: CLIENTS agents log in and
# hold the event stream open; event latency (state change request -> event
# received on every stream, p50/p99), the board's requests/s, the PBX's RSS
# with and without the streams; call-backs (create -> event on every stream,
# claims/s on distinct items); then whether the desk slows the telephone:
# the peer lab's call step at CALL_RATE calls/s without desktops and with
# CLIENTS desktops connected and receiving events (an agent changes state
# EVENT_RATE times a second, besides the calls' own), back to back in one run
# (server CPU, achieved rate, failures, steal from the lab's summary).
#
#   usage: benches/desk-load.sh   env: CLIENTS (200), CHANGES (200), CALL_RATE (1000),
#          STEP_SECS (10), EVENT_RATE (20 agent state changes/s while the desktops are held),
#          CALLBACKS (200 call-backs written to the streams' group: create -> event, claims/s)
#   output: target/desk-load/<timestamp>/{desk.txt,calls-alone,calls-with-desk}
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
LAB_SRC="${LAB_SRC:-$ROOT/../shared/lab}"
[ -d "$LAB_SRC" ] || { echo "peer lab not found at $LAB_SRC" >&2; exit 1; }
CLIENTS="${CLIENTS:-200}" CHANGES="${CHANGES:-200}" CALL_RATE="${CALL_RATE:-1000}"
EVENT_RATE="${EVENT_RATE:-20}"
CALLBACKS="${CALLBACKS:-200}"
export STEP_SECS="${STEP_SECS:-10}"
HTTP=127.0.0.1:8090

OUT="$ROOT/target/desk-load/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
LAB="$OUT/lab"; cp -r "$LAB_SRC" "$LAB"; chmod -R u+w "$LAB"
command -v sipp >/dev/null || { echo "sipp missing: apt-get install sip-tester" >&2; exit 1; }
"$LAB/gen-users.sh" >/dev/null

cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" --bin sipdesk --example desk_clients
CLIENT_BIN="$ROOT/target/release/examples/desk_clients"
CONF="$OUT/sipdesk.toml"
{
  printf '[sip]\nudp = ["127.0.0.1:5070"]\ntcp = []\nauth_algorithms = ["MD5"]\n'
  printf '[rtp]\nbind_ip = "127.0.0.1"\nport_min = 10000\nport_max = 60000\n'
  printf '[calls]\nauthenticate = false\n'
  printf '[http]\nlisten = "%s"\n' "$HTTP"
  printf '[log]\nlevel = "info,sipdesk::shard=warn"\n[demo]\nextensions = []\n'
  tail -n +2 "$LAB/scenarios/users.csv" | while IFS=';' read -r u p; do
    printf '[[users]]\nextension = "%s"\npassword = "%s"\n' "$u" "$p"
  done
  printf '[[users]]\nextension = "2000"\npassword = "pw2000"\n'
  printf '[[groups]]\nname = "bench"\nmembers = ['
  for i in $(seq 0 $((CLIENTS - 1))); do printf '{ extension = "user%d" },' $((1000 + i)); done
  printf ']\n'
} > "$CONF"

ss -Hlun "sport = :5070" | grep -q . && { echo "udp 5070 already in use" >&2; exit 1; }
ss -Hltn "sport = :${HTTP##*:}" | grep -q . && { echo "tcp $HTTP already in use" >&2; exit 1; }
"$ROOT/target/release/sipdesk" run --config "$CONF" --data-dir "$OUT/data" > "$OUT/sipdesk.log" 2>&1 &
PBX=$!
HOLD=""
trap 'kill $PBX $HOLD 2>/dev/null || true' EXIT
for _ in $(seq 100); do ss -Hltn "sport = :${HTTP##*:}" | grep -q . && break; sleep 0.1; done
sleep 1

# The agent whose state changes must be online: one REGISTER (digest) for user1000.
printf 'SEQUENTIAL\nuser1000;pw1000\n' > "$OUT/reg.csv"
timeout 20 sipp 127.0.0.1:5070 -sf "$LAB/scenarios/register_auth.xml" -inf "$OUT/reg.csv" \
  -i 127.0.0.1 -p 5063 -m 1 -nostdin -timeout 15s > "$OUT/register.log" 2>&1 \
  || { echo "REGISTER of user1000 failed (see $OUT/register.log)" >&2; exit 1; }

echo "== desk: $CLIENTS streams, $CHANGES state changes"
timeout 180 "$CLIENT_BIN" measure "http://$HTTP" "$PBX" "$CLIENTS" "$CHANGES" | tee "$OUT/desk.txt"
echo "== call-back box: $CALLBACKS call-backs to the group of the $CLIENTS streams"
timeout 180 "$CLIENT_BIN" callbacks "http://$HTTP" "$CLIENTS" "$CALLBACKS" | tee -a "$OUT/desk.txt"

run_calls() {   # name
  REG_RATES="" CALL_RATES="$CALL_RATE" DIRECT_RATES="" SERVER_PIDS="$PBX" \
    "$LAB/sip-load.sh" "$OUT/$1" > "$OUT/$1.log" 2>&1
  echo "-- $1"; cat "$OUT/$1/summary.md"
}
echo "== telephone at $CALL_RATE calls/s: without desktops, then with $CLIENTS"
run_calls calls-alone
HOLD_SECS=$((STEP_SECS * 3 + 60))
"$CLIENT_BIN" hold "http://$HTTP" "$CLIENTS" "$HOLD_SECS" "$EVENT_RATE" > "$OUT/hold.txt" 2>&1 &
HOLD=$!
for _ in $(seq 600); do grep -q CONNECTED "$OUT/hold.txt" 2>/dev/null && break; sleep 0.1; done
grep -q CONNECTED "$OUT/hold.txt" || { echo "desktops did not connect: $(cat "$OUT/hold.txt")" >&2; exit 1; }
( sleep $((STEP_SECS / 2 + 2)); awk '/VmRSS/ {print "sipdesk RSS mid-step with desktops: " $2 " kB"}' "/proc/$PBX/status" ) > "$OUT/rss-with-desk.txt" &
run_calls calls-with-desk
cat "$OUT/rss-with-desk.txt"
kill "$HOLD" 2>/dev/null || true; wait "$HOLD" 2>/dev/null || true; HOLD=""
tail -n 1 "$OUT/hold.txt"
echo "results: $OUT"
