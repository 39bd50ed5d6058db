#!/usr/bin/env bash
# Configure Vault AppRole auth for nimgate on hosts outside Kubernetes (VMs, bare metal), and
# write the host's role_id and secret_id into files for nimgate:
#
#   [secret.auth]
#   method = "approle"
#   role_id_file = "/etc/nimgate/approle/role_id"
#   secret_id_file = "/etc/nimgate/approle/secret_id"
#
# (full example: deploy/vault/nimgate-approle.example.toml). Run by a Vault operator with
# VAULT_ADDR and an admin token. Idempotent; each run mints a NEW secret_id.
#
#   VAULT_ADDR=https://vault.example.internal:8200 deploy/vault/setup-approle.sh ./approle-out
#
# Settings (environment, all optional):
#   KV_MOUNT=secret  KEY_PATH=nim/prod/model-a  AUTH_MOUNT=approle  ROLE=nimgate
#   SECRET_ID_TTL=720h      a secret_id expires after 30 days: rotate before (re-run this,
#                           install the new file; nimgate reads it at its next login)
#   BOUND_CIDRS             e.g. "10.20.0.0/16": logins (and tokens) only from these sources
set -euo pipefail

OUT_DIR=${1:-./approle-out}
KV_MOUNT=${KV_MOUNT:-secret}
KEY_PATH=${KEY_PATH:-nim/prod/model-a}
AUTH_MOUNT=${AUTH_MOUNT:-approle}
ROLE=${ROLE:-nimgate}
SECRET_ID_TTL=${SECRET_ID_TTL:-720h}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

: "${VAULT_ADDR:?set VAULT_ADDR to the Vault server URL}"
command -v vault >/dev/null || { echo "the vault CLI is required" >&2; exit 1; }

sed "s|secret/data/nim/prod/model-a|${KV_MOUNT}/data/${KEY_PATH}|" "$HERE/nimgate-policy.hcl" \
  | vault policy write nimgate -

auths=$(vault auth list -format=json)
if [[ $auths != *"\"${AUTH_MOUNT}/\""* ]]; then
  vault auth enable -path="$AUTH_MOUNT" approle
fi

role_args=(
  token_policies=nimgate
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
vault write "auth/${AUTH_MOUNT}/role/${ROLE}" "${role_args[@]}"

# The credentials go straight into files that only their owner can read: never echoed, never
# on a command line.
umask 077
mkdir -p "$OUT_DIR"
vault read -field=role_id "auth/${AUTH_MOUNT}/role/${ROLE}/role-id" > "$OUT_DIR/role_id"
vault write -f -field=secret_id "auth/${AUTH_MOUNT}/role/${ROLE}/secret-id" > "$OUT_DIR/secret_id"

cat <<MSG
AppRole ready: role ${ROLE} (policy nimgate). Wrote ${OUT_DIR}/role_id and ${OUT_DIR}/secret_id.
Install them on the nimgate host, readable by the nimgate user only, then delete ${OUT_DIR}:
  install -d -m 0750 -o root -g nimgate /etc/nimgate/approle
  install -m 0440 -o root -g nimgate ${OUT_DIR}/role_id ${OUT_DIR}/secret_id /etc/nimgate/approle/
  shred -u ${OUT_DIR}/role_id ${OUT_DIR}/secret_id
MSG
