#!/usr/bin/env bash
# The agent-first dialer under load, against a release sipdesk on 127.0.0.1:
# AGENTS agents (group `bench`, registered from one SIPp that answers every
# call and waits for the BYE) each hold a desktop event stream and confirm
# at once every customer they are shown (examples/desk_clients.rs `dialer`);
# the customers are a SIPp behind an IP-authenticated trunk that rings 1 s,
# answers, talks RING_MS and hangs up. Printed: attempts finished per second,
# idle agent -> customer dialled p50/p99 (from the end of an agent's attempt
# to the INVITE of its next customer, everything in between: the dialer
# seeing the agent free, the contact taken on disk, the agent's phone rung
# and answered, the record pushed after its audit entry is on disk, the
# confirmation), the confirmation's own share, the abandon rate, the PBX's
# CPU and the host's steal over the run.
#
#   usage: benches/dialer-load.sh   env: AGENTS (200), SECS (30), RING_MS (1000),
#          BIN (another sipdesk binary to measure: old-vs-new figures)
#   output: target/dialer-load/<timestamp>/{dialer.txt,sipdesk.log,...}
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
LAB_SRC="${LAB_SRC:-$ROOT/../shared/lab}"
[ -d "$LAB_SRC" ] || { echo "peer lab not found at $LAB_SRC" >&2; exit 1; }
AGENTS="${AGENTS:-200}" SECS="${SECS:-30}" RING_MS="${RING_MS:-1000}"
HTTP=127.0.0.1:8091
OUT="$ROOT/target/dialer-load/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
LAB="$OUT/lab"; cp -r "$LAB_SRC" "$LAB"; chmod -R u+w "$LAB"
command -v sipp >/dev/null || { echo "sipp missing: apt-get install sip-tester" >&2; exit 1; }
"$LAB/gen-users.sh" >/dev/null
. "$LAB/lib.sh"

cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" --bin sipdesk --example desk_clients
BIN="${BIN:-$ROOT/target/release/sipdesk}"
CONF="$OUT/sipdesk.toml"
{
  printf '[sip]\nudp = ["127.0.0.1:5070"]\ntcp = []\nauth_algorithms = ["MD5"]\n'
  printf '[rtp]\nbind_ip = "127.0.0.1"\nport_min = 10000\nport_max = 60000\n'
  printf '[http]\nlisten = "%s"\n' "$HTTP"
  printf '[log]\nlevel = "info,sipdesk::shard=warn,sipdesk::calls=warn,sipdesk::cti=warn"\n[demo]\nextensions = []\n'
  tail -n +2 "$LAB/scenarios/users.csv" | head -n "$AGENTS" | while IFS=';' read -r u p; do
    printf '[[users]]\nextension = "%s"\npassword = "%s"\n' "$u" "$p"
  done
  printf '[[users]]\nextension = "boss"\npassword = "pwboss"\nrole = "supervisor"\n'
  printf '[[groups]]\nname = "bench"\nmembers = ['
  for i in $(seq 0 $((AGENTS - 1))); do printf '{ extension = "user%d" },' $((1000 + i)); done
  printf ']\n'
  printf '[[trunks]]\nname = "bench"\nhost = "127.0.0.1"\nport = 5091\nregister = false\ncountry_code = "81"\n'
} > "$CONF"

for port in 5070 5091 5093; do
  ss -Hlun "sport = :$port" | grep -q . && { echo "udp $port already in use" >&2; exit 1; }
done
"$BIN" run --config "$CONF" --data-dir "$OUT/data" > "$OUT/sipdesk.log" 2>&1 &
PBX=$!
PEERS=""
trap 'kill $PBX $PEERS 2>/dev/null || true' EXIT
for _ in $(seq 100); do ss -Hltn "sport = :${HTTP##*:}" | grep -q . && break; sleep 0.1; done
sleep 1

# Every agent registers from 5093 (one SIPp), which then answers their calls.
{ echo SEQUENTIAL; tail -n +2 "$LAB/scenarios/users.csv" | head -n "$AGENTS"; } > "$OUT/agents.csv"
timeout 60 sipp 127.0.0.1:5070 -sf "$LAB/scenarios/register_auth.xml" -inf "$OUT/agents.csv" \
  -i 127.0.0.1 -p 5093 -m "$AGENTS" -r 100 -nostdin -timeout 50s > "$OUT/register.log" 2>&1 \
  || { echo "the agents' REGISTER failed (see $OUT/register.log)" >&2; exit 1; }
LIMIT=$((SECS + 60))
timeout "$LIMIT" sipp 127.0.0.1:5070 -sf "$ROOT/tests/scenarios/uas_answer.xml" -i 127.0.0.1 -p 5093 \
  -nostdin -timeout "${LIMIT}s" -trace_err -error_file "$OUT/agents-errors.log" > "$OUT/agents.log" 2>&1 &
PEERS="$!"
timeout "$LIMIT" sipp 127.0.0.1:5070 -sf "$ROOT/tests/scenarios/uas_ring_answer_hangup.xml" -i 127.0.0.1 -p 5091 \
  -key rtp_port 9 -d "$RING_MS" -nostdin -timeout "${LIMIT}s" -trace_err -error_file "$OUT/customers-errors.log" \
  > "$OUT/customers.log" 2>&1 &
PEERS="$PEERS $!"
sleep 1

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$PBX/stat"; }
TICK=$(getconf CLK_TCK)
C0=$(cpu_ticks); S0=$(steal_ticks); T0=$(date +%s.%N)
echo "== dialer: $AGENTS agents for $SECS s, customers answer after 1 s and talk $RING_MS ms"
timeout $((SECS + 120)) "$ROOT/target/release/examples/desk_clients" dialer "http://$HTTP" "$AGENTS" "$SECS" $((AGENTS * 100)) \
  | tee "$OUT/dialer.txt"
C1=$(cpu_ticks); S1=$(steal_ticks); T1=$(date +%s.%N)
awk -v c=$((C1 - C0)) -v s=$((S1 - S0)) -v t0="$T0" -v t1="$T1" -v hz="$TICK" -v n="$(nproc)" 'BEGIN {
  secs = t1 - t0
  printf "sipdesk CPU over the run: %.1f %% of one core; host steal: %.1f %%\n", 100 * c / hz / secs, 100 * s / hz / secs / n
}' | tee -a "$OUT/dialer.txt"
echo "sipdesk RSS: $(awk '/VmRSS/ {print $2}' "/proc/$PBX/status") kB" | tee -a "$OUT/dialer.txt"
echo "results: $OUT"
