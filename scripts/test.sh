#!/usr/bin/env bash
# Runs every test of sipdesk. Installs the real peers the integration tests talk to
# when they are missing: SIPp (Debian's sip-tester), baresip and sox for the audio
# test, python3 for the independent digest client, Kamailio as the provider of
# the trunk tests (and dnsmasq as its DNS, for SRV), Debian's chromium and npm's
# playwright-core for the desktop test (node and npm come with the machine),
# fail2ban for its fail2ban-regex (the shipped filter is checked), and PyPI's
# sipvicious (in a venv under target/peers) as the scanner. Every
# server and peer the tests start listens on loopback addresses only.
set -euo pipefail
cd "$(dirname "$0")/.."

# The attacker's tool the scanner test runs (pinned: its output is parsed).
SIPVICIOUS=0.3.8
need=()
command -v sipp >/dev/null 2>&1 || need+=(sip-tester)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v baresip >/dev/null 2>&1 || need+=(baresip-core)
command -v sox >/dev/null 2>&1 || need+=(sox)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v kamailio >/dev/null 2>&1 || need+=(kamailio)
command -v fail2ban-regex >/dev/null 2>&1 || need+=(fail2ban)
command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ] || need+=(dnsmasq-base)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing test peers: ${need[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

if [ ! -d tests/browser/node_modules/playwright-core ]; then
  echo "installing playwright-core (npm) for the desktop test"
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
fi

if [ ! -x target/peers/sipvicious/bin/sipvicious_svwar ]; then
  echo "installing sipvicious (PyPI) for the scanner test"
  python3 -m venv target/peers/sipvicious
  target/peers/sipvicious/bin/pip install -q --disable-pip-version-check "sipvicious==$SIPVICIOUS"
fi

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --all-targets --locked 2>&1 | tee "$log"
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
