#!/usr/bin/env bash
# Profile one proxy at a fixed rate, pinned like benches/load/run.sh does (proxy on core 0; nginx
# upstream and oha on core 1). Needs a release build (run.sh makes one), oha, nginx and perf.
#   bash benches/load/profile.sh nimgate            # perf record -g, then the top symbols
#   bash benches/load/profile.sh hyper-floor
#   MODE=malloc bash benches/load/profile.sh nimgate   # call stacks of libc malloc (uprobe)
#   MODE=mallocs bash benches/load/profile.sh nimgate  # just the count per request (perf stat)
#   AUDIT=off RATE=5000 SECS=5 bash benches/load/profile.sh nimgate
#   MODE=syscalls bash benches/load/profile.sh hyper-floor   # perf trace -s: syscalls by count
# Output goes to $OUT (default /tmp/nimgate-profile): perf.data, report.txt, the configs.
# Ends only the processes it started, by pid.
set -euo pipefail
cd "$(dirname "$0")/../.."
target=${1:-nimgate}
MODE=${MODE:-cpu}
RATE=${RATE:-5000}
SECS=${SECS:-5}
AUDIT=${AUDIT:-interval}
OUT=${OUT:-/tmp/nimgate-profile}
REL=target/release
UP=19000 PROXY=19080
mkdir -p "$OUT/ub" "$OUT/pb" "$OUT/pt"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
sed -e "s#{{DIR}}#$OUT#g" -e "s#{{UPSTREAM_PORT}}#$UP#g" benches/load/nginx-upstream.conf > "$OUT/up.conf"
taskset -c 1 nginx -c "$OUT/up.conf" -e "$OUT/up-err.log" & pids+=($!)
KEY=ngk_bench_client_key_0123456789abcdef0123456789ab
case "$target" in
  nimgate)
    printf 'nvapi-bench-key-0123456789abcdef\n' > "$OUT/nim-key"
    digest=$(printf '%s' "$KEY" | sha256sum | cut -d' ' -f1)
    if [ "$AUDIT" = off ]; then audit='enabled = false'; else audit="path = \"$OUT/audit.jsonl\"
fsync = \"$AUDIT\""; fi
    cat > "$OUT/nimgate.toml" <<EOF
[server]
listen = "127.0.0.1:$PROXY"
workers = 1
[admin]
listen = "127.0.0.1:$((PROXY + 100))"
[upstream]
url = "http://127.0.0.1:$UP"
[secret]
source = "file"
path = "$OUT/nim-key"
[[clients]]
id = "team-a"
key_sha256 = "$digest"
[audit]
$audit
EOF
    taskset -c 0 "$REL/nimgate" serve --config "$OUT/nimgate.toml" > "$OUT/proxy.log" 2>&1 & pids+=($!) ;;
  hyper-floor)
    taskset -c 0 "$REL/examples/hyper-floor" "127.0.0.1:$PROXY" "http://127.0.0.1:$UP" > "$OUT/proxy.log" 2>&1 & pids+=($!) ;;
  *) echo "target: nimgate or hyper-floor" >&2; exit 2 ;;
esac
proxy=${pids[-1]}
for _ in $(seq 100); do curl -fs -o /dev/null -H "Authorization: Bearer $KEY" "http://127.0.0.1:$PROXY/v1/models" && break; sleep 0.1; done
BODY='{"model":"meta/llama-3.1-8b-instruct","messages":[{"role":"user","content":"Hello"}],"max_tokens":16}'
load() {
  taskset -c 1 oha -z "$1" -c 64 -q "$RATE" --latency-correction --no-tui -m POST -d "$BODY" \
    -T application/json -H "Authorization: Bearer $KEY" "http://127.0.0.1:$PROXY/v1/chat/completions" > "$OUT/oha.txt"
}
load 2s
case "$MODE" in
  cpu) perf record -e cpu-clock -F ${FREQ:-999} --call-graph dwarf,16384 -p "$proxy" -o "$OUT/perf.data" -- sleep "$SECS" 2>/dev/null & rec=$! ;;
  malloc) perf record -e probe_libc:malloc --call-graph dwarf,16384 -p "$proxy" -o "$OUT/perf.data" -- sleep "$SECS" 2>/dev/null & rec=$! ;;
  mallocs) perf stat -x, -e probe_libc:malloc -p "$proxy" -o "$OUT/stat.txt" -- sleep "$SECS" 2>/dev/null & rec=$! ;;
  syscalls) perf trace -s -p "$proxy" -o "$OUT/trace.txt" -- sleep "$SECS" 2>/dev/null & rec=$! ;;
  *) echo "MODE: cpu, malloc, mallocs or syscalls" >&2; exit 2 ;;
esac
load "${SECS}s"
wait "$rec" || true
grep -E "Requests/sec|Success rate" "$OUT/oha.txt" || true
if [ "$MODE" = mallocs ]; then
  n=$(awk -F, '/probe_libc:malloc/ {print $1}' "$OUT/stat.txt")
  ok=$(awk '/Requests\/sec/ {print $2}' "$OUT/oha.txt")
  python3 -c "print(f'mallocs/request: {$n / ($ok * $SECS):.1f}')"
  exit 0
fi
if [ "$MODE" = syscalls ]; then grep -E '^ +[a-z_0-9]+ +[0-9]+' "$OUT/trace.txt" | sort -k2 -n -r | head -25; exit 0; fi
perf report -i "$OUT/perf.data" --no-children --sort symbol -g none --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -60 > "$OUT/report.txt"
cat "$OUT/report.txt"
