#!/usr/bin/env bash
# Attack benchmark, one run on 127.0.0.x: legitimate phones (SIPp from
# 127.0.0.3, REGISTER with digest at REG_RATE/s) alone, then while an attacker
# on 127.0.0.2 — first a password guesser, banned after its 10th failure, then a
# flood of FLOOD_RATE OPTIONS datagrams a second from the banned address
# (examples/flood) — is dropped by the guard. Prints, per step: legitimate
# REGISTERs achieved/s and failed, server CPU %, and what the ban path dropped
# a second (sipdesk_guard_dropped from /metrics); steal % from /proc/stat.
#
#   usage: benches/attack.sh   env: REG_RATE (500), SECS (10), FLOOD_RATE (100000)
#   output: target/attack/<timestamp>/
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
REG_RATE="${REG_RATE:-500}" SECS="${SECS:-10}" FLOOD_RATE="${FLOOD_RATE:-100000}"
PORT=5072 HTTP=127.0.0.1:8092 TOKEN=attack-bench-metrics-token
OUT="$ROOT/target/attack/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
command -v sipp >/dev/null || { echo "sipp missing: apt-get install sip-tester" >&2; exit 1; }
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" --bin sipdesk --example flood
N=$((REG_RATE * SECS))
{
  printf '[sip]\nudp = ["127.0.0.1:%s"]\ntcp = []\nauth_algorithms = ["MD5"]\n' "$PORT"
  printf '[http]\nlisten = "%s"\nmetrics_token = "%s"\n' "$HTTP" "$TOKEN"
  printf '[log]\nlevel = "info,sipdesk::shard=warn"\n[demo]\nextensions = []\n'
  # Loopback addresses stand for internet hosts; the phones share one address,
  # so their rate limit is raised (real phones each have their own).
  printf '[security]\nallow = []\nrate = 5000\nburst = 10000\n'
  for i in $(seq 1000 1999); do printf '[[users]]\nextension = "user%d"\npassword = "pw%d"\n' "$i" "$i"; done
} > "$OUT/sipdesk.toml"
{ echo SEQUENTIAL; for i in $(seq 1000 1999); do echo "user$i;pw$i"; done; } > "$OUT/phones.csv"
{ echo SEQUENTIAL; for i in $(seq 1000 1099); do echo "user$i;guess$i"; done; } > "$OUT/guesses.csv"

ss -Hlun "sport = :$PORT" | grep -q . && { echo "udp $PORT already in use" >&2; exit 1; }
"$ROOT/target/release/sipdesk" run --config "$OUT/sipdesk.toml" --data-dir "$OUT/data" > "$OUT/sipdesk.log" 2>&1 &
PBX=$!
trap 'kill $PBX 2>/dev/null || true' EXIT
for _ in $(seq 100); do ss -Hlun "sport = :$PORT" | grep -q . && break; sleep 0.1; done
sleep 1

ticks() { awk '{print $14 + $15}' "/proc/$PBX/stat"; }
steal() { awk '/^cpu / {print $9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }
dropped() { curl -s -H "Authorization: Bearer $TOKEN" "http://$HTTP/metrics" | awk '/^sipdesk_guard_dropped_total/ {print $2}'; }
phones() {  # name: the legitimate REGISTERs, N of them at REG_RATE/s
  timeout $((SECS * 3 + 30)) sipp "127.0.0.1:$PORT" -sf "$ROOT/tests/scenarios/register_auth.xml" \
    -inf "$OUT/phones.csv" -i 127.0.0.3 -p 5073 -r "$REG_RATE" -m "$N" -nostdin \
    -timeout $((SECS * 3 + 20))s -trace_screen -screen_file "$OUT/$1.screen" > /dev/null 2>&1 || true
}
report() {  # name t0 t1 ticks0 ticks1 drop0 drop1 steal0 steal1(2 fields each)
  local name=$1 secs ok failed cpu rate st
  secs=$(echo "$3 - $2" | bc -l)
  ok=$(awk -F'|' '/Successful call/ {gsub(/ /, "", $3); print $3; exit}' "$OUT/$name.screen")
  failed=$(awk -F'|' '/Failed call/ {gsub(/ /, "", $3); print $3; exit}' "$OUT/$name.screen")
  cpu=$(echo "($5 - $4) / $(getconf CLK_TCK) / $secs * 100" | bc -l)
  rate=$(echo "(${7:-0} - ${6:-0}) / $secs" | bc -l)
  st=$(echo "(${10} - $8) * 100 / (${11} - $9)" | bc -l)
  printf '| %s | %.0f | %s | %s | %.1f | %.0f | %.1f |\n' "$name" "$(echo "$ok / $secs" | bc -l)" "$ok" "$failed" "$cpu" "$rate" "$st"
}
measure() {  # name [attack command...]
  local name=$1; shift
  local t0 c0 d0 s0 t1 c1 d1 s1 attacker=""
  if [ $# -gt 0 ]; then "$@" > "$OUT/$name.attack" 2>&1 & attacker=$!; sleep 0.5; fi
  t0=$(date +%s.%N); c0=$(ticks); d0=$(dropped); s0=$(steal)
  phones "$name"
  t1=$(date +%s.%N); c1=$(ticks); d1=$(dropped); s1=$(steal)
  [ -n "$attacker" ] && { kill "$attacker" 2>/dev/null || true; wait "$attacker" 2>/dev/null || true; }
  report "$name" "$t0" "$t1" "$c0" "$c1" "$d0" "$d1" $s0 $s1
}

echo "| step | legit REGISTER/s | ok | failed | server CPU % | ban path drops/s | steal % |"
echo "|---|---|---|---|---|---|---|"
measure alone
# The guesser: wrong passwords from 127.0.0.2 until banned.
timeout 30 sipp "127.0.0.1:$PORT" -sf "$ROOT/tests/scenarios/register_wrong_password.xml" \
  -inf "$OUT/guesses.csv" -i 127.0.0.2 -p 5074 -r 200 -m 100 -nostdin -timeout 10s \
  -recv_timeout 1000 > "$OUT/guesser.log" 2>&1 || true
grep -q "SECURITY ban source=127.0.0.2" "$OUT/sipdesk.log" || { echo "the guesser was not banned" >&2; exit 1; }
measure flood "$ROOT/target/release/examples/flood" "127.0.0.1:$PORT" 127.0.0.2 "$FLOOD_RATE" $((SECS * 3))
grep -c "SECURITY" "$OUT/sipdesk.log" | sed 's/^/security log lines: /'
echo "results: $OUT"
