#!/usr/bin/env bash
# SIPp load driver: the same sweeps against sipdesk and against Kamailio, back to
# back in one run, using the peer lab in ../shared/lab (its scenarios, users and
# summarizer): REGISTER with digest auth, and calls UAC -> server -> UAS (INVITE,
# 180, 200, ACK, hold, BYE; the UAS registered as 2000). Per step: achieved rate,
# failures, retransmissions, p50/p99 call setup (SIPp rtd). sipdesk also prints its
# own routing latency (INVITE received -> B-leg INVITE sent, hdrhistogram) when it
# stops. Everything listens on 127.0.0.1:5070; every SIPp run is bounded by a call
# count and a timeout.
#
#   usage: benches/sip-load.sh   env: REG_RATES, CALL_RATES, STEP_SECS, HOLD_MS, SKIP_KAMAILIO=1,
#          BIN (another sipdesk binary to measure)
#   output: target/sip-load/<timestamp>/{sipdesk,kamailio}/summary.md and the ratio
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
LAB_SRC="${LAB_SRC:-$ROOT/../shared/lab}"
[ -d "$LAB_SRC" ] || { echo "peer lab not found at $LAB_SRC" >&2; exit 1; }
export REG_RATES="${REG_RATES-2000 4000 6000 8000 10000 12000 14000 16000}"
export CALL_RATES="${CALL_RATES-250 500 1000 1500 2000 2500 3000}"
export STEP_SECS="${STEP_SECS:-5}" DIRECT_RATES=""

OUT="$ROOT/target/sip-load/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
# The lab writes next to itself: work on a private copy.
LAB="$OUT/lab"; cp -r "$LAB_SRC" "$LAB"; chmod -R u+w "$LAB"
command -v sipp >/dev/null || { echo "sipp missing: apt-get install sip-tester" >&2; exit 1; }
"$LAB/gen-users.sh" >/dev/null

# BIN= measures another build (an old one, for old-vs-new figures in one run).
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
  BIN="$ROOT/target/release/sipdesk"
fi
CONF="$OUT/sipdesk.toml"
{
  printf '[sip]\nudp = ["127.0.0.1:5070"]\ntcp = []\nauth_algorithms = ["MD5"]\n'
  printf '[rtp]\nbind_ip = "127.0.0.1"\nport_min = 10000\nport_max = 60000\n'
  printf '[calls]\nauthenticate = false\n'
  printf '[log]\nlevel = "info,sipdesk::shard=warn"\n[demo]\nextensions = []\n'
  tail -n +2 "$LAB/scenarios/users.csv" | while IFS=';' read -r u p; do
    printf '[[users]]\nextension = "%s"\npassword = "%s"\n' "$u" "$p"
  done
  printf '[[users]]\nextension = "2000"\npassword = "pw2000"\n'
} > "$CONF"

ss -Hlun "sport = :5070" | grep -q . && { echo "udp 5070 already in use" >&2; exit 1; }
"$BIN" run --config "$CONF" --data-dir "$OUT/data" > "$OUT/sipdesk.log" 2>&1 &
PBX=$!
trap 'kill $PBX 2>/dev/null || true' EXIT
for _ in $(seq 100); do ss -Hlun "sport = :5070" | grep -q . && break; sleep 0.1; done
sleep 1
echo "sipdesk RSS idle: $(awk '/VmRSS/ {print $2}' "/proc/$PBX/status") kB" | tee "$OUT/rss-idle.txt"
echo "== sipdesk (pid $PBX)"
SERVER_PIDS="$PBX" "$LAB/sip-load.sh" "$OUT/sipdesk" | tail -n 20
RSS=$(awk '/VmRSS/ {print $2}' "/proc/$PBX/status")
echo "sipdesk RSS after the sweep: ${RSS} kB" | tee "$OUT/sipdesk/rss.txt"
# Completed transactions wait out Timer J/L/M (32 s): what stays after them.
sleep 35
RSS=$(awk '/VmRSS/ {print $2}' "/proc/$PBX/status")
echo "sipdesk RSS 35 s later (the sweep's transactions gone): ${RSS} kB" | tee -a "$OUT/sipdesk/rss.txt"
kill "$PBX"; wait "$PBX" 2>/dev/null || true
grep -a 'routing latency' "$OUT/sipdesk.log" | sed 's/.*routing latency/routing latency/' | tee "$OUT/sipdesk/routing.txt"

if [ -z "${SKIP_KAMAILIO:-}" ] && command -v kamailio >/dev/null; then
  echo "== kamailio"
  (cd "$LAB" && ./bench-kamailio.sh) 2>&1 | tail -n 20
  cp "$(ls -d "$LAB"/results/kamailio-*/ | tail -1)/summary.md" "$OUT/kamailio-summary.md"
fi
echo "results: $OUT"
