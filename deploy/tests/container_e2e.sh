#!/usr/bin/env bash
# End-to-end check of the container, with podman: nimgate and the fake NIM in one pod.
#
#   bash deploy/tests/container_e2e.sh [BIN_DIR]     prints `container: N passed, M failed`
#
# BIN_DIR holds the `nimgate` and `fake-nim` binaries (default: target/release if both are
# there, else target/debug; `cargo build --bins` makes them). The production Dockerfile's base
# images cannot be pulled here, so the image is built FROM scratch with the binaries and the
# shared libraries `ldd` lists (glibc, libgcc_s, libm): nothing else, no shell. Then, in a pod
# (shared network namespace, like a Kubernetes pod), the fake NIM (which accepts only
# `Authorization: Bearer <key>`) and nimgate run with the flags of deploy/README.md's
# `docker run` example and deploy/docker/nimgate.toml, and the script checks:
#   - a client request through nimgate gets the NIM's answer (so the key reached the NIM as the
#     Authorization header), the same request straight to the NIM without a key gets 401;
#   - `podman inspect` of either container (env, args, labels, mounts) holds no key, and neither
#     do nimgate's /proc/<pid>/environ and cmdline; no env var has a secret-like name;
#   - nimgate runs as uid/gid 65532 with no capabilities, no_new_privs, a read-only root
#     filesystem (the root mount is `ro`), and its audit record names the key only by fingerprint.
#
# Rootful podman with its own storage (vfs) and configuration in a temp dir, so nothing is left
# behind: runc (crun refuses this machine's hybrid cgroup layout), cgroupfs, ulimits no higher
# than the caller's (raising them needs CAP_SYS_RESOURCE). If podman cannot start a container
# at all here, the script says SKIPPED with podman's error and exits 0; every failure after
# that first container ran is a failure. deploy/validate.sh runs it when podman is installed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN_DIR=${1:-}
if [[ -z $BIN_DIR ]]; then
  BIN_DIR=$ROOT/target/debug
  if [[ -x $ROOT/target/release/nimgate && -x $ROOT/target/release/fake-nim ]]; then
    BIN_DIR=$ROOT/target/release
  fi
fi
for b in nimgate fake-nim; do
  if [[ ! -x $BIN_DIR/$b ]]; then
    echo "SKIPPED: no $BIN_DIR/$b (build it: cargo build --bins)"
    exit 0
  fi
done
for tool in podman runc curl sha256sum ldd; do
  command -v "$tool" >/dev/null || { echo "SKIPPED: $tool is not installed"; exit 0; }
done

WORK=$(mktemp -d /tmp/nimgate-container-e2e.XXXXXX)
# The key lives on tmpfs on the host side, as deploy/README.md asks.
SECRETS=$(mktemp -d /dev/shm/nimgate-e2e-secrets.XXXXXX)
POD=nimgate-e2e-$$
IMAGE=localhost/nimgate-e2e:$$
# nproc: even the caller's own value is refused here (runc sets it after podman lowered its
# own), so a lower one that is plenty for two processes.
NPROC=$(ulimit -Hu)
if [[ $NPROC == unlimited ]] || ((NPROC > 4096)); then NPROC=4096; fi
cat >"$WORK/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$(ulimit -Sn):$(ulimit -Hn)", "nproc=${NPROC}:${NPROC}"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
export CONTAINERS_CONF=$WORK/containers.conf
P=(podman --root "$WORK/storage" --runroot "$WORK/run" --storage-driver vfs
  --tmpdir "$WORK/tmp")
mkdir -p "$WORK/tmp"

cleanup() {
  "${P[@]}" pod rm -f -t 2 "$POD" >/dev/null 2>&1 || true
  "${P[@]}" rmi -f "$IMAGE" >/dev/null 2>&1 || true
  rm -rf "$WORK" "$SECRETS" 2>/dev/null || true
}
trap cleanup EXIT

PASSED=0
FAILED=0
check() { # check NAME CMD...: run CMD, count the result
  local name=$1
  shift
  if "$@"; then
    PASSED=$((PASSED + 1))
    echo "ok   $name"
  else
    FAILED=$((FAILED + 1))
    echo "FAIL $name"
  fi
}

# --- the image: FROM scratch + binaries + their shared libraries ---------------------------
ctx=$WORK/image
mkdir -p "$ctx/rootfs/usr/local/bin"
install -m 0555 "$BIN_DIR/nimgate" "$BIN_DIR/fake-nim" "$ctx/rootfs/usr/local/bin/"
if command -v strip >/dev/null; then # debug info only makes the vfs copies slower
  strip --strip-debug "$ctx/rootfs/usr/local/bin/nimgate" "$ctx/rootfs/usr/local/bin/fake-nim"
fi
for lib in $(for b in nimgate fake-nim; do ldd "$BIN_DIR/$b"; done | grep -o '/[^ ]*' | sort -u); do
  install -D -m 0555 "$(readlink -f "$lib")" "$ctx/rootfs$lib" # ld.so must be executable
done
cat >"$ctx/Containerfile" <<'EOF'
FROM scratch
COPY rootfs/ /
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/nimgate"]
CMD ["serve", "--config", "/etc/nimgate/nimgate.toml"]
EOF
"${P[@]}" build --quiet -t "$IMAGE" "$ctx" >/dev/null
echo "image $IMAGE: $(find "$ctx/rootfs" -type f | wc -l) files, $(du -sh "$ctx/rootfs" | cut -f1)"

if ! probe=$("${P[@]}" run --rm --network none "$IMAGE" --version 2>&1); then
  echo "SKIPPED: podman cannot run a container here: $probe"
  exit 0
fi
echo "probe container ran: $probe"

# --- keys, config, the pod -------------------------------------------------------------------
NIM_KEY="nvapi-e2e-$(head -c 24 /dev/urandom | sha256sum | cut -c1-40)"
CLIENT_KEY="ngk-e2e-$(head -c 24 /dev/urandom | sha256sum | cut -c1-40)"
printf '%s' "$NIM_KEY" >"$SECRETS/nim-api-key"
chgrp 65532 "$SECRETS" "$SECRETS/nim-api-key"
chmod 0750 "$SECRETS"
chmod 0640 "$SECRETS/nim-api-key"
printf '[[clients]]\nid = "e2e"\nkey_sha256 = "%s"\n' \
  "$(printf '%s' "$CLIENT_KEY" | sha256sum | cut -c1-64)" >"$WORK/clients.toml"
chmod 0644 "$WORK/clients.toml"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
HTTP=$(free_port)
ADMIN=$(free_port)
NIM=$(free_port)
# Port 8000 is published only so this test can show the NIM refuses a request without the key.
"${P[@]}" pod create --name "$POD" -p "127.0.0.1:${HTTP}:8080" -p "127.0.0.1:${ADMIN}:9090" \
  -p "127.0.0.1:${NIM}:8000" >/dev/null

# The fake NIM: it is given the key only to check the header nimgate sends.
"${P[@]}" run -d --pod "$POD" --name nim --read-only --user 65532:65532 --cap-drop ALL \
  --security-opt no-new-privileges -v "$SECRETS:/run/secrets:ro" \
  --entrypoint /usr/local/bin/fake-nim "$IMAGE" \
  --listen 0.0.0.0:8000 --key-file /run/secrets/nim-api-key >/dev/null

# nimgate: deploy/README.md's `docker run` example, with --pod for --network.
"${P[@]}" run -d --pod "$POD" --name nimgate \
  --read-only --user 65532:65532 --cap-drop ALL --security-opt no-new-privileges \
  --tmpfs /tmp:rw,noexec,nosuid,size=1m \
  -v "$ROOT/deploy/docker/nimgate.toml:/etc/nimgate/nimgate.toml:ro" \
  -v "$WORK/clients.toml:/etc/nimgate/clients.toml:ro" \
  -v "$SECRETS:/run/secrets:ro" \
  "$IMAGE" >/dev/null

ready=0
for _ in $(seq 1 100); do
  if curl -fsS -o /dev/null "http://127.0.0.1:${ADMIN}/readyz" 2>/dev/null; then
    ready=1
    break
  fi
  sleep 0.1
done
if ((!ready)); then
  echo "nimgate did not become ready; its log:"
  "${P[@]}" logs nimgate 2>&1 | tail -20
  "${P[@]}" logs nim 2>&1 | tail -5
fi
check "nimgate /readyz 200 (key loaded from the mounted tmpfs file)" test "$ready" = 1

# --- the key reaches the NIM as the Authorization header, only through nimgate --------------
chat='{"model":"meta/llama-3.1-8b-instruct","messages":[{"role":"user","content":"hi"}]}'
through=$(curl -sS -w '\n%{http_code}' -H "Authorization: Bearer ${CLIENT_KEY}" \
  -H 'Content-Type: application/json' -d "$chat" "http://127.0.0.1:${HTTP}/v1/chat/completions")
check "client key -> nimgate -> NIM: 200 with the NIM's answer" \
  test "$(tail -n1 <<<"$through")" = 200 -a "$(grep -c 'Hello from the fake NIM' <<<"$through")" = 1
direct=$(curl -sS -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
  -d "$chat" "http://127.0.0.1:${NIM}/v1/chat/completions")
check "straight to the NIM without the key: 401 (so the 200 above carried it)" test "$direct" = 401
wrong=$(curl -sS -o /dev/null -w '%{http_code}' -H "Authorization: Bearer ${NIM_KEY}x" \
  -H 'Content-Type: application/json' -d "$chat" "http://127.0.0.1:${HTTP}/v1/chat/completions")
check "a wrong client key at nimgate: 401" test "$wrong" = 401

# --- no secret in either container's inspect data, env or process --------------------------
no_key_in_inspect() {
  local c=$1 out
  out=$("${P[@]}" inspect "$c")
  ! grep -qF -e "$NIM_KEY" -e "$CLIENT_KEY" <<<"$out" &&
    ! "${P[@]}" inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$c" |
      cut -d= -f1 | grep -qiE 'KEY|TOKEN|SECRET|PASSW|CREDENTIAL|PRIVATE'
}
check "podman inspect nimgate: no key anywhere, no secret-named env var" no_key_in_inspect nimgate
check "podman inspect nim: no key anywhere, no secret-named env var" no_key_in_inspect nim
PID=$("${P[@]}" inspect -f '{{.State.Pid}}' nimgate)
no_key_in_proc() {
  ! tr '\0' '\n' <"/proc/$PID/environ" | grep -qF -e "$NIM_KEY" -e "$CLIENT_KEY" &&
    ! tr '\0' ' ' <"/proc/$PID/cmdline" | grep -qF -e "$NIM_KEY" -e "$CLIENT_KEY"
}
check "nimgate /proc/<pid>/environ and cmdline hold no key" no_key_in_proc

# --- non-root, no capabilities, read-only root filesystem -----------------------------------
status=/proc/$PID/status
non_root() {
  grep -qE '^Uid:\s+65532\s+65532\s+65532\s+65532$' "$status" &&
    grep -qE '^Gid:\s+65532\s+65532\s+65532\s+65532$' "$status"
}
no_privileges() {
  grep -qE '^CapEff:\s+0+$' "$status" && grep -qE '^CapPrm:\s+0+$' "$status" &&
    grep -qE '^NoNewPrivs:\s+1$' "$status"
}
read_only_root() {
  # Field 5 of mountinfo is the mount point, field 6 its per-mount options (ro/rw first).
  [[ $("${P[@]}" inspect -f '{{.HostConfig.ReadonlyRootfs}}' nimgate) == true ]] &&
    awk '$5 == "/" { split($6, o, ","); print o[1] }' "/proc/$PID/mountinfo" | grep -qx ro
}
check "nimgate runs as uid 65532 and gid 65532" non_root
check "nimgate has no capabilities and no_new_privs" no_privileges
check "nimgate's root filesystem is mounted read-only" read_only_root

# --- the audit trail names the key by fingerprint only --------------------------------------
logs=$("${P[@]}" logs nimgate 2>&1)
check "audit 'use' record with key_fingerprint on stdout" \
  grep -q '"event":"use".*"key_fingerprint":"[0-9a-f]\{16\}"' <<<"$logs"
no_key_in_logs() { ! grep -qF -e "$NIM_KEY" -e "$CLIENT_KEY" <<<"$logs"; }
check "nimgate's output holds neither key" no_key_in_logs

echo "container: ${PASSED} passed, ${FAILED} failed"
((FAILED == 0))
