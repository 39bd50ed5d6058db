#!/usr/bin/env bash
# Configure Vault AppRole auth for one nimgate on hosts outside Kubernetes (VMs, bare metal),
# and write that host's role_id and secret_id into files (mode 0600) for nimgate:
#
#   [secret.auth]
#   method = "approle"
#   role_id_file = "/etc/nimgate/approle/role_id"
#   secret_id_file = "/etc/nimgate/approle/secret_id"
#
# (full example: config/nimgate.vault-approle.toml; systemd unit: deploy/systemd/). Run by a
# Vault operator with VAULT_ADDR and an admin token. Idempotent; each run mints a NEW secret_id
# and leaves the earlier ones valid (destroy them once the new one is installed).
#
#   VAULT_ADDR=https://vault.example.internal:8200 deploy/vault/setup-approle.sh ./approle-out
#
# One role per gateway (per NIM key): a second NIM gets its own ROLE and KEY_PATH, and so its
# own policy; re-running for one role never touches another's.
#
#   ROLE=nim-b KEY_PATH=nim/prod/model-b deploy/vault/setup-approle.sh ./approle-nim-b
#
# Settings (environment, all optional):
#   ROLE=nimgate            AppRole role name
#   POLICY=$ROLE            policy name (read on KV_MOUNT/data/KEY_PATH only); an existing policy
#                           of that name granting another path is never rewritten
#   KV_MOUNT=secret  KEY_PATH=nim/prod/model-a  AUTH_MOUNT=approle
#   SECRET_ID_TTL=720h      a secret_id expires after 30 days: rotate before (re-run this,
#                           install the new file; nimgate reads it at its next login)
#   BOUND_CIDRS             e.g. "10.20.0.0/16": logins (and tokens) only from these sources
#   NIM_API_KEY_FILE        if set, store the key read from this file at KV_MOUNT/KEY_PATH
#   VAULT_CLI               the CLI to use (default: vault, else bao)
set -euo pipefail

OUT_DIR=${1:-./approle-out}
KV_MOUNT=${KV_MOUNT:-secret}
KEY_PATH=${KEY_PATH:-nim/prod/model-a}
AUTH_MOUNT=${AUTH_MOUNT:-approle}
ROLE=${ROLE:-nimgate}
POLICY=${POLICY:-$ROLE}
SECRET_ID_TTL=${SECRET_ID_TTL:-720h}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=deploy/vault/lib.sh
. "$HERE/lib.sh"

ensure_kv_mount "$KV_MOUNT"
write_policy "$POLICY" "$KV_MOUNT" "$KEY_PATH"
ensure_auth approle "$AUTH_MOUNT"

role_args=(
  "token_policies=${POLICY}"
  token_ttl=1h
  token_max_ttl=4h
  token_type=service
  # nimgate logs in again with the same secret_id whenever its token reaches max TTL, so the
  # secret_id must allow many uses; it is bounded by its TTL instead.
  secret_id_num_uses=0
  "secret_id_ttl=${SECRET_ID_TTL}"
)
if [[ -n ${BOUND_CIDRS:-} ]]; then
  role_args+=("secret_id_bound_cidrs=${BOUND_CIDRS}" "token_bound_cidrs=${BOUND_CIDRS}")
fi
vault write "auth/${AUTH_MOUNT}/role/${ROLE}" "${role_args[@]}" >/dev/null
store_key "$KV_MOUNT" "$KEY_PATH"

# The credentials go straight into files only their owner can read: never echoed, never on a
# command line.
umask 077 # a new OUT_DIR (and any parent created) is 0700
mkdir -p "$OUT_DIR"
write_private "$OUT_DIR/role_id" vault read -field=role_id "auth/${AUTH_MOUNT}/role/${ROLE}/role-id"
write_private "$OUT_DIR/secret_id" vault write -f -field=secret_id "auth/${AUTH_MOUNT}/role/${ROLE}/secret-id"

cat <<MSG
AppRole ready: role ${ROLE}, policy ${POLICY} (read ${KV_MOUNT}/data/${KEY_PATH}).
Wrote ${OUT_DIR}/role_id and ${OUT_DIR}/secret_id (mode 0600). Install them on the nimgate host,
root-owned and readable by group nimgate only, then delete ${OUT_DIR}:
  install -d -m 0750 -o root -g nimgate /etc/nimgate/approle
  install -m 0640 -o root -g nimgate ${OUT_DIR}/role_id ${OUT_DIR}/secret_id /etc/nimgate/approle/
  shred -u ${OUT_DIR}/role_id ${OUT_DIR}/secret_id
MSG
