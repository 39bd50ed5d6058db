#!/usr/bin/env bash
# Validate nimgate's deployment files: Dockerfile, deploy/kubernetes, deploy/vault.
#
#   bash deploy/validate.sh            check everything (what CI runs)
#   bash deploy/validate.sh --update   re-render deploy/kubernetes/rendered/*.yaml, then check
#
# Steps (all run; the script exits non-zero if any fails):
#   venv        pip-installs the pinned validators (deploy/requirements.txt + .lock) into
#               ${NIMGATE_VENV:-$HOME/.cache/nimgate-deploy-venv}; reused while the pins and
#               the Python version are unchanged. Network: PyPI here, and Debian packages
#               that the systemd/container/vault steps install when missing.
#   render      renders every overlay with `kubectl kustomize` (or `kustomize build`) and
#               checks deploy/kubernetes/rendered/<overlay>.yaml match. Without either tool
#               the committed rendered files are validated as they are (freshness unchecked).
#               Also builds each overlay with the optional components/servicemonitor.
#   schema      kubernetes-validate --strict against Kubernetes 1.30 (oldest supported:
#               native sidecars) and 1.37 (newest the package ships), offline schemas, on the
#               rendered overlays and the negative fixtures.
#   checkov     kubernetes + dockerfile frameworks on the rendered overlays and the
#               Dockerfile, zero failed checks; skips are annotated in the manifests.
#   hadolint    the Dockerfile, failing on any finding (deploy/hadolint.yaml).
#   shell       ShellCheck on this script, deploy/vault/*.sh, deploy/tests/*.sh and the
#               overlays' scripts (overlays/fleet/make-acl.sh).
#   policy      deploy/tests/test_manifests.py: no secret in env, secret volumes in memory,
#               topology invariants, negative fixtures rejected.
#   fleet       deploy/tests/test_fleet_redis.py: the fleet overlay's make-acl.sh and valkey.conf
#               (from rendered/fleet.yaml) run a real redis-server (Debian's, installed when
#               missing) on loopback; the ACL is checked command by command and two nimgate
#               processes (target/{release,debug}) share one client's limit through it.
#               Skipped (said loudly) without built binaries.
#   systemd     `systemd-analyze verify` (any message fails) and `systemd-analyze security
#               --offline` (exposure <= 2.0) on deploy/systemd/nimgate.service; installs
#               Debian's systemd if systemd-analyze is missing.
#   container   deploy/tests/container_e2e.sh: a FROM-scratch image of target/{release,debug}'s
#               nimgate + fake-nim run with podman in one pod (no key in inspect/env, key only
#               as the header, non-root, read-only rootfs). Installs Debian's podman and runc
#               when missing; skipped (said loudly) without built binaries or when podman
#               cannot start a container on this machine.
#   vault       deploy/tests/test_vault_scripts.py: deploy/vault/setup-*.sh twice for two NIMs
#               against a real OpenBao dev server (`bao` from the venv), on loopback.

# The step functions below are called indirectly, through step(): not dead code.
# shellcheck disable=SC2329
set -euo pipefail

DEPLOY=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$DEPLOY")
VENV=${NIMGATE_VENV:-$HOME/.cache/nimgate-deploy-venv}
PYTHON=${PYTHON:-python3}
K8S_VERSIONS=(1.30.0 1.37.0)
OVERLAYS=(sidecar standalone vault-agent fleet)
RENDERED=deploy/kubernetes/rendered

UPDATE=0
case "${1:-}" in
  "") ;;
  --update) UPDATE=1 ;;
  -h | --help) sed -n '2,/^$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "usage: bash deploy/validate.sh [--update]" >&2; exit 2 ;;
esac

cd "$ROOT"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
T0=$SECONDS
SUMMARY=()
FAILED=0

# Run one step in a subshell with errexit on (a failing command fails the step), record it.
step() {
  local name=$1 t=$SECONDS rc=0
  shift
  echo
  echo "==> ${name}"
  set +e
  (set -euo pipefail; "$@")
  rc=$?
  set -e
  if ((rc == 0)); then
    SUMMARY+=("ok    ${name} ($((SECONDS - t))s)")
  else
    SUMMARY+=("FAIL  ${name} ($((SECONDS - t))s)")
    FAILED=$((FAILED + 1))
  fi
}

setup_venv() {
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "Python >= 3.11 is required ($PYTHON is $("$PYTHON" -V 2>&1))" >&2
    return 1
  }
  local stamp
  stamp=$({ "$PYTHON" -VV; cat deploy/requirements.txt deploy/requirements.lock; } | sha256sum | cut -c1-16)
  if [[ -x $VENV/bin/python && -f $VENV/.nimgate-deploy-stamp && $(cat "$VENV/.nimgate-deploy-stamp") == "$stamp" ]]; then
    echo "reusing $VENV"
    return 0
  fi
  echo "creating $VENV and installing deploy/requirements.txt (pinned) ..."
  rm -f "$VENV/.nimgate-deploy-stamp"
  "$PYTHON" -m venv --clear "$VENV"
  export PIP_DISABLE_PIP_VERSION_CHECK=1
  # The lock was resolved on CPython 3.11.7 (the CI machine's); on another Python some locked
  # versions may not install (e.g. Requires-Python >= 3.11.5): fall back to the top-level pins.
  if ! "$VENV/bin/pip" install --quiet --no-input \
    -r deploy/requirements.txt -c deploy/requirements.lock; then
    echo "WARNING: the locked set does not install on $("$VENV/bin/python" -V); using the top-level pins of deploy/requirements.txt only"
    "$VENV/bin/pip" install --quiet --no-input -r deploy/requirements.txt
  fi
  echo "$stamp" > "$VENV/.nimgate-deploy-stamp"
}

# Render into $WORK/rendered; compare with (or, with --update, write) deploy/kubernetes/rendered.
render() {
  local renderer=() o
  if command -v kubectl >/dev/null 2>&1 && kubectl kustomize --help >/dev/null 2>&1; then
    renderer=(kubectl kustomize)
  elif command -v kustomize >/dev/null 2>&1 && kustomize version >/dev/null 2>&1; then
    renderer=(kustomize build)
  elif ((UPDATE)); then
    echo "--update needs kubectl or kustomize on PATH" >&2
    return 1
  else
    echo "WARNING: neither kubectl nor kustomize found: validating the committed ${RENDERED}/*.yaml as they are (not checked against the overlays)"
    return 0
  fi
  echo "rendering with: ${renderer[*]} ($("${renderer[0]}" version --client 2>/dev/null | tr '\n' ' ' || true))"
  mkdir -p "$WORK/rendered"
  for o in "${OVERLAYS[@]}"; do
    {
      echo "# GENERATED from deploy/kubernetes/overlays/${o} by \`bash deploy/validate.sh --update\`."
      echo "# Do not edit: change the base or the overlay and re-render. Apply with:"
      echo "#   kubectl apply -k deploy/kubernetes/overlays/${o}   (or: kubectl apply -f this file)"
      "${renderer[@]}" "deploy/kubernetes/overlays/${o}"
    } > "$WORK/rendered/${o}.yaml"
  done
  # The optional components (not in rendered/) must compose with every overlay.
  local rel c components=(servicemonitor)
  for c in "${components[@]}"; do
    for o in "${OVERLAYS[@]}"; do
      mkdir -p "$WORK/compose/${o}-${c}"
      rel=$(realpath --relative-to="$WORK/compose/${o}-${c}" deploy/kubernetes)
      printf '%s\n' "apiVersion: kustomize.config.k8s.io/v1beta1" "kind: Kustomization" \
        "namespace: nimgate" "resources:" "  - ${rel}/overlays/${o}" "components:" \
        "  - ${rel}/components/${c}" >"$WORK/compose/${o}-${c}/kustomization.yaml"
      "${renderer[@]}" "$WORK/compose/${o}-${c}" >"$WORK/compose/${o}-${c}.yaml"
    done
    echo "components/${c} composes with overlays ${OVERLAYS[*]}"
  done
  if ((UPDATE)); then
    mkdir -p "$RENDERED"
    cp "$WORK"/rendered/*.yaml "$RENDERED/"
    echo "updated ${RENDERED}/{$(IFS=,; echo "${OVERLAYS[*]}")}.yaml"
  fi
  # Compare documents, not bytes: another kustomize version may format differently.
  "$VENV/bin/python" - "$WORK/rendered" "$RENDERED" "${OVERLAYS[@]}" <<'PY'
import difflib, sys, yaml
fresh, committed, overlays = sys.argv[1], sys.argv[2], sys.argv[3:]
stale = 0
for o in overlays:
    def load(d):
        try:
            with open(f"{d}/{o}.yaml", encoding="utf-8") as f:
                return [yaml.safe_dump(x, sort_keys=True) for x in yaml.safe_load_all(f) if x]
        except FileNotFoundError:
            return None
    a, b = load(committed), load(fresh)
    if a is None:
        print(f"{committed}/{o}.yaml is missing")
        stale += 1
    elif a != b:
        print(f"{committed}/{o}.yaml is stale:")
        sys.stdout.writelines(difflib.unified_diff(
            "".join(a).splitlines(True), "".join(b).splitlines(True),
            f"{committed}/{o}.yaml", f"overlays/{o} (rendered now)", n=2))
        stale += 1
    else:
        print(f"{committed}/{o}.yaml is up to date")
if stale:
    print("run `bash deploy/validate.sh --update` and commit deploy/kubernetes/rendered/")
sys.exit(1 if stale else 0)
PY
}

schema() {
  local v
  for v in "${K8S_VERSIONS[@]}"; do
    "$VENV/bin/kubernetes-validate" --strict --quiet -k "$v" \
      "$RENDERED"/*.yaml deploy/tests/fixtures/*.yaml
    echo "Kubernetes ${v}: all resources valid (strict)"
  done
}

checkov_scan() {
  local args=() f
  for f in "$RENDERED"/*.yaml; do args+=(-f "$f"); done
  # --skip-download: no call to Prisma Cloud; the checks run from the installed package.
  "$VENV/bin/checkov" "${args[@]}" -f Dockerfile --framework kubernetes dockerfile \
    --quiet --compact --skip-download -o cli -o json --output-file-path "$WORK/checkov" \
    >"$WORK/checkov.log" 2>&1 || {
    cat "$WORK/checkov/results_cli.txt" 2>/dev/null || cat "$WORK/checkov.log"
    return 1
  }
  "$VENV/bin/python" - "$WORK/checkov/results_json.json" "$RENDERED"/*.yaml Dockerfile <<'PY'
import json, re, sys, yaml
data = json.load(open(sys.argv[1], encoding="utf-8"))
failed = 0
for rep in data if isinstance(data, list) else [data]:
    s = rep["summary"]
    failed += s["failed"] + s["parsing_errors"]
    print(f"checkov {rep['check_type']}: {s['passed']} passed, {s['failed']} failed, "
          f"{s['skipped']} skipped, {s['parsing_errors']} parsing errors")
    for c in rep["results"].get("failed_checks", []):
        print(f"  FAILED {c['check_id']} {c['check_name']} on {c['resource']} ({c['file_path']})")
# The skips, with their reasons, as written in the files scanned.
for path in sys.argv[2:]:
    text = open(path, encoding="utf-8").read()
    if path.endswith(".yaml"):
        for d in yaml.safe_load_all(text):
            meta = (d or {}).get("metadata") or {}
            for k, v in (meta.get("annotations") or {}).items():
                if k.startswith("checkov.io/skip"):
                    print(f"  skip in {path}: {d['kind']}/{meta.get('name')}: {v}")
    else:
        for m in re.finditer(r"#\s*checkov:skip=(\S+?):\s*(.*)", text):
            print(f"  skip in {path}: {m.group(1)}: {m.group(2)}")
sys.exit(1 if failed else 0)
PY
}

hadolint_scan() {
  "$VENV/bin/hadolint" --no-color --config deploy/hadolint.yaml Dockerfile
  echo "hadolint: Dockerfile clean"
}

shellcheck_scan() {
  local scripts
  shopt -s nullglob
  scripts=(deploy/validate.sh deploy/vault/*.sh deploy/tests/*.sh deploy/kubernetes/overlays/*/*.sh)
  # -x: follow the `. lib.sh` of the setup scripts.
  "$VENV/bin/shellcheck" -x "${scripts[@]}"
  echo "shellcheck: ${#scripts[@]} scripts clean"
}

policy() {
  "$VENV/bin/python" deploy/tests/test_manifests.py
}

# Debian packages a step needs: apt-get install, refreshing the package lists once if that
# fails (a fresh machine may have none or stale ones).
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "$@" >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null && apt-get install -y -qq "$@" >/dev/null; }
}

# verify needs every ExecStart binary to exist: check a copy whose ExecStart points at a stub
# executable in $WORK (the real path, /usr/local/bin/nimgate, is not installed here). The unit
# is otherwise checked as shipped.
systemd_unit() {
  local unit=deploy/systemd/nimgate.service dir="$WORK/systemd" out
  if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "installing Debian's systemd for systemd-analyze ..."
    apt_install systemd
  fi
  mkdir -p "$dir"
  printf '#!/bin/sh\nexit 0\n' >"$dir/nimgate"
  chmod 0755 "$dir/nimgate"
  grep -q '^ExecStart=/usr/local/bin/nimgate ' "$unit"
  sed "s|^ExecStart=/usr/local/bin/nimgate |ExecStart=${dir}/nimgate |" "$unit" >"$dir/nimgate.service"
  # verify exits 0 on warnings such as unknown keys: any output counts as a failure.
  out=$(systemd-analyze verify "$dir/nimgate.service" 2>&1) || true
  if [[ -n $out ]]; then
    echo "$out"
    return 1
  fi
  echo "systemd-analyze verify: ${unit} clean"
  # --threshold is on systemd's 0-100 scale: 20 = the printed exposure 2.0 (now 1.4).
  systemd-analyze security --offline=yes --threshold=20 --no-pager "$dir/nimgate.service" |
    tail -n 1
}

fleet_redis() {
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server
  "$VENV/bin/python" deploy/tests/test_fleet_redis.py ${NIMGATE_BIN_DIR:+"$NIMGATE_BIN_DIR"}
}

container_e2e() {
  if ! command -v podman >/dev/null 2>&1 || ! command -v runc >/dev/null 2>&1; then
    echo "installing Debian's podman and runc ..."
    apt_install podman runc || {
      echo "SKIPPED: podman/runc could not be installed"
      return 0
    }
  fi
  bash deploy/tests/container_e2e.sh "${NIMGATE_BIN_DIR:-}"
}

vault_scripts() {
  # openssl makes the throwaway CA the Kubernetes-auth config needs.
  command -v openssl >/dev/null 2>&1 || apt_install openssl
  PATH="$VENV/bin:$PATH" "$VENV/bin/python" deploy/tests/test_vault_scripts.py
}

echo "nimgate deploy validation in $ROOT"
step "venv (${VENV})" setup_venv
if ((FAILED)); then
  echo "cannot install the validators; giving up" >&2
  exit 1
fi
step "render overlays (${OVERLAYS[*]})" render
step "schema: kubernetes-validate ${K8S_VERSIONS[*]}" schema
step "checkov (kubernetes, dockerfile)" checkov_scan
step "hadolint Dockerfile" hadolint_scan
step "shellcheck" shellcheck_scan
step "policy test (deploy/tests/test_manifests.py)" policy
step "fleet Valkey config with redis-server and two gateways (deploy/tests/test_fleet_redis.py)" fleet_redis
step "systemd unit (deploy/systemd/nimgate.service)" systemd_unit
step "container end to end with podman (deploy/tests/container_e2e.sh)" container_e2e
step "vault setup scripts against OpenBao (deploy/tests/test_vault_scripts.py)" vault_scripts

echo
echo "==> summary"
printf '  %s\n' "${SUMMARY[@]}"
echo "deploy/validate.sh: ${#SUMMARY[@]} steps, ${FAILED} failed, $((SECONDS - T0))s"
exit $((FAILED > 0))
