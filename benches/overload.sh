#!/usr/bin/env bash
# Overload benchmark: the PBX pinned to one core and SIPp to the other (so the
# load generator never starves the server, or the other way round, on a
# 2-core machine), calls UAC -> sipdesk -> UAS (the lab's scenarios, 1 s hold).
# First the clean rate, then RATES offered for SECS each; per run: completed
# calls/s, refused (503) calls, kernel drops at the server socket per second,
# open files, steal. Everything on 127.0.0.1:5070; every SIPp run bounded by
# -m and timeout.
#
#   usage: benches/overload.sh      env: RATES (default "4000 8000"), SECS (10), BIN
# The clean rate on one core was 4,000 calls/s on 2026-12-08; above it, with a
# 1 s hold, the open-file limit (20,000 here: 8,976 media port pairs) refuses
# calls with 503 (No Media Ports) before the CPU runs out.
#   output: target/overload/<timestamp>/<rate>/{uac.log,timeline.txt,pbx.log}
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
LAB="${LAB_SRC:-$ROOT/../shared/lab}"
RATES="${RATES:-4000 8000}"; SECS="${SECS:-10}"
OUT="$ROOT/target/overload/$(date +%Y%m%d-%H%M%S)"; mkdir -p "$OUT"
command -v sipp >/dev/null || { echo "sipp missing: apt-get install sip-tester" >&2; exit 1; }
# BIN=path/to/sipdesk measures another build (e.g. an older one) the same way.
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
  BIN="$ROOT/target/release/sipdesk"
fi
CONF="$OUT/sipdesk.toml"
{
  printf '[sip]\nudp = ["127.0.0.1:5070"]\ntcp = []\nauth_algorithms = ["MD5"]\nshards = 1\n'
  printf '[rtp]\nbind_ip = "127.0.0.1"\nport_min = 10000\nport_max = 60000\n'
  printf '[calls]\nauthenticate = false\n[log]\nlevel = "info,sipdesk::shard=warn,sipdesk::endpoint=warn"\n[demo]\nextensions = []\n'
  printf '[[users]]\nextension = "2000"\npassword = "pw2000"\n'
} > "$CONF"
printf 'SEQUENTIAL\n2000;pw2000\n' > "$OUT/uas.csv"
steal() { awk '/^cpu / { print $9 }' /proc/stat; }
udp_drops() { awk '/Udp:/ && !h {h=1; next} /Udp:/ {print $6}' /proc/net/snmp; }
echo "| offered/s | completed/s | refused 503 | other failures | server socket drops (per s) | peak open files | steal % |"
echo "|---|---|---|---|---|---|---|"
for RATE in $RATES; do
  dir="$OUT/$RATE"; mkdir -p "$dir"; rm -rf "$dir/data"
  ss -Hlun "sport = :5070" | grep -q . && { echo "udp 5070 in use" >&2; exit 1; }
  taskset -c 0 "$BIN" run --config "$CONF" --data-dir "$dir/data" > "$dir/pbx.log" 2>&1 &
  PBX=$!
  for _ in $(seq 100); do ss -Hlun "sport = :5070" | grep -q . && break; sleep 0.1; done
  timeout 15 sipp 127.0.0.1:5070 -sf "$LAB/scenarios/register_auth.xml" -inf "$OUT/uas.csv" \
    -p 5080 -m 1 -nostdin -i 127.0.0.1 > "$dir/register.log" 2>&1 || true
  N=$((RATE * SECS))
  timeout $((SECS + 60)) taskset -c 1 sipp -sf "$LAB/scenarios/uas_answer.xml" -p 5080 -m "$N" \
    -nostdin -buff_size 4194304 -i 127.0.0.1 > "$dir/uas.log" 2>&1 &
  UAS=$!
  sleep 0.5
  S0=$(steal); T0=$(date +%s.%N)
  timeout $((SECS + 40)) taskset -c 1 sipp 127.0.0.1:5070 -sf "$LAB/scenarios/uac_call.xml" -s 2000 \
    -p 5090 -d 1000 -r "$RATE" -m "$N" -nostdin -buff_size 4194304 -i 127.0.0.1 > "$dir/uac.log" 2>&1 &
  UAC=$!
  ( while kill -0 "$UAC" 2>/dev/null; do
      echo "$(date +%s) $(ss -Huanm 'sport = :5070' | grep -o 'd[0-9]*' | tail -1 | tr -d d) $(ls /proc/$PBX/fd | wc -l)"
      sleep 1
    done ) > "$dir/timeline.txt" &
  TL=$!
  wait "$UAC" || true
  T1=$(date +%s.%N); S1=$(steal); kill "$TL" 2>/dev/null || true
  kill "$UAS" 2>/dev/null || true; wait "$UAS" 2>/dev/null || true
  kill "$PBX"; wait "$PBX" 2>/dev/null || true
  ok=$(grep -a "Successful call" "$dir/uac.log" | tail -1 | awk -F'|' '{gsub(/ /,"",$3); print $3}')
  failed=$(grep -a "Failed call" "$dir/uac.log" | tail -1 | awk -F'|' '{gsub(/ /,"",$3); print $3}')
  shed=$(grep -a "shed under overload" "$dir/pbx.log" | grep -o '[0-9]*$' | tail -1 || true)
  drops=$(awk 'NR==1 {p=$2} {printf "%s ", $2-p; p=$2}' "$dir/timeline.txt")
  peak=$(awk '$3>m {m=$3} END {print m}' "$dir/timeline.txt")
  hz=$(getconf CLK_TCK)
  echo "| $RATE | $(awk "BEGIN{printf \"%.0f\", ${ok:-0} / $SECS}") | ${shed:-0} | $(( ${failed:-0} - ${shed:-0} )) | $drops | $peak | $(awk "BEGIN{printf \"%.1f\", 100 * ($S1 - $S0) / $hz / ($T1 - $T0) / 2}") |"
done | tee "$OUT/summary.md"
echo "results: $OUT"
