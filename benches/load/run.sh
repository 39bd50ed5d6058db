#!/usr/bin/env bash
# Load test: nimgate vs direct vs nginx and HAProxy, with oha. From a fresh checkout:
#   bash benches/load/run.sh            # 3 rounds × 10 s per target (≈ 8 min)
#   bash benches/load/run.sh --quick    # smoke: 1 round × 3 s
#   bash benches/load/run.sh --soak 600 # plus a 10-minute soak at 5,000 req/s sampling RSS
#   bash benches/load/run.sh --quick --only nimgate,hyper-floor,nginx   # just those (and direct)
# Results: benches/load/results/latest.json and results/chart.svg; a Markdown table on stdout.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.cargo/bin:$PATH"
command -v oha >/dev/null || cargo install oha --locked
command -v taskset >/dev/null || { echo "taskset (util-linux) is required" >&2; exit 1; }
if ! command -v nginx >/dev/null || ! command -v haproxy >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    # policy-rc.d 101 tells the packages' maintainer scripts not to start their default
    # instances, so nothing is left running that this script did not start (and nothing of
    # anyone else's is ever stopped: the driver ends only the pids it started).
    had_policy=0
    [ -e /usr/sbin/policy-rc.d ] && had_policy=1
    if [ "$had_policy" = 0 ]; then printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light haproxy >/dev/null || true
    if [ "$had_policy" = 0 ]; then rm -f /usr/sbin/policy-rc.d; fi
  fi
  command -v nginx >/dev/null || echo "nginx not on PATH: peer skipped, fake-nim is the upstream" >&2
  command -v haproxy >/dev/null || echo "haproxy not on PATH: peer skipped" >&2
fi
cargo build --release --locked --bins --example hyper-floor
# mallocs/request: a uprobe on libc's malloc, counted per process with `perf stat` (skipped when
# perf is absent or this is not root).
if [ "$(id -u)" = 0 ] && command -v perf >/dev/null && ! perf probe -l 2>/dev/null | grep -q 'probe_libc:malloc'; then
  libc=$(ldconfig -p | awk '/libc\.so\.6 / {print $NF; exit}')
  [ -n "$libc" ] && perf probe -q -x "$libc" malloc >/dev/null 2>&1 || true
fi
exec python3 benches/load/driver.py "$@"
