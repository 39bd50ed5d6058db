#!/usr/bin/env bash
# Configure Vault so that nimgate pods (ServiceAccount "nimgate" in namespace "nimgate") can
# read the NIM API key with Kubernetes auth, using a projected ServiceAccount token whose
# audience is "vault" (deploy/kubernetes/base/deployment.yaml, volume "vault-token").
#
# One role per gateway (per NIM key), and one policy per role, named after it: a second NIM's
# gateway gets its own ROLE, ServiceAccount and KEY_PATH; re-running for one role never touches
# another's policy (deploy/vault/lib.sh refuses to repoint an existing policy).
#
#   ROLE=nim-b SA_NAME=nim-b KEY_PATH=nim/prod/model-b deploy/vault/setup-kubernetes-auth.sh
#
# Run by a Vault operator, with VAULT_ADDR set and a token allowed to manage auth methods and
# policies (VAULT_TOKEN, or `vault login` beforehand). Idempotent: safe to re-run.
#
#   VAULT_ADDR=https://vault.example.internal:8200 deploy/vault/setup-kubernetes-auth.sh
#
# Settings (environment, all optional):
#   KV_MOUNT=secret                 KV v2 mount holding the key
#   KEY_PATH=nim/prod/model-a       path of the key under KV_MOUNT (field "api_key")
#   AUTH_MOUNT=kubernetes           mount path of the Kubernetes auth method
#   ROLE=nimgate  SA_NAME=nimgate  SA_NAMESPACE=nimgate  AUDIENCE=vault
#   POLICY=$ROLE                    policy name (read on KV_MOUNT/data/KEY_PATH only)
#   KUBERNETES_HOST                 API server URL (written only on the first run or when set,
#                                   see step 3). Default: the in-cluster address, which is
#                                   right when Vault itself runs in this cluster (Vault then
#                                   reviews tokens with its own ServiceAccount, which needs the
#                                   system:auth-delegator ClusterRole).
#   KUBERNETES_CA_CERT_FILE         PEM CA of the API server (Vault outside the cluster)
#   TOKEN_REVIEWER_JWT_FILE         token of a reviewer ServiceAccount bound to
#                                   system:auth-delegator (Vault outside the cluster)
#   NIM_API_KEY_FILE                if set, store the key read from this file (never pass a
#                                   key on the command line: it would land in shell history
#                                   and in /proc/<pid>/cmdline)
#   VAULT_CLI                       the CLI to use (default: vault, else bao)
set -euo pipefail

KV_MOUNT=${KV_MOUNT:-secret}
KEY_PATH=${KEY_PATH:-nim/prod/model-a}
AUTH_MOUNT=${AUTH_MOUNT:-kubernetes}
ROLE=${ROLE:-nimgate}
SA_NAME=${SA_NAME:-nimgate}
SA_NAMESPACE=${SA_NAMESPACE:-nimgate}
AUDIENCE=${AUDIENCE:-vault}
POLICY=${POLICY:-$ROLE}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=deploy/vault/lib.sh
. "$HERE/lib.sh"

# 1. KV v2 engine holding the key.
ensure_kv_mount "$KV_MOUNT"

# 2. The role's own policy: read on the one path (deploy/vault/nimgate-policy.hcl, path
#    rewritten for KV_MOUNT/KEY_PATH).
write_policy "$POLICY" "$KV_MOUNT" "$KEY_PATH"

# 3. Kubernetes auth method.
ensure_auth kubernetes "$AUTH_MOUNT"
# The method's config is shared by every role on this mount, and a write replaces all of it
# (fields left out are cleared): so it is written only when it does not exist yet or when one
# of KUBERNETES_HOST / KUBERNETES_CA_CERT_FILE / TOKEN_REVIEWER_JWT_FILE is given. Re-running
# for a second gateway's role keeps the first one's reviewer token and CA.
if [[ -n ${KUBERNETES_HOST:-}${KUBERNETES_CA_CERT_FILE:-}${TOKEN_REVIEWER_JWT_FILE:-} ]] ||
  ! vault read "auth/${AUTH_MOUNT}/config" >/dev/null 2>&1; then
  config_args=("kubernetes_host=${KUBERNETES_HOST:-https://kubernetes.default.svc:443}")
  if [[ -n ${KUBERNETES_CA_CERT_FILE:-} ]]; then
    config_args+=("kubernetes_ca_cert=@${KUBERNETES_CA_CERT_FILE}")
  fi
  if [[ -n ${TOKEN_REVIEWER_JWT_FILE:-} ]]; then
    config_args+=("token_reviewer_jwt=@${TOKEN_REVIEWER_JWT_FILE}")
  fi
  vault write "auth/${AUTH_MOUNT}/config" "${config_args[@]}" >/dev/null
  echo "wrote auth/${AUTH_MOUNT}/config (kubernetes_host=${config_args[0]#kubernetes_host=})"
else
  echo "kept the existing auth/${AUTH_MOUNT}/config (set KUBERNETES_HOST etc. to replace it)"
fi

# 4. The role: only ServiceAccount nimgate in namespace nimgate, only tokens minted for the
#    audience "vault" (the pod's default API token is refused), short-lived Vault tokens.
vault write "auth/${AUTH_MOUNT}/role/${ROLE}" \
  bound_service_account_names="$SA_NAME" \
  bound_service_account_namespaces="$SA_NAMESPACE" \
  audience="$AUDIENCE" \
  token_policies="$POLICY" \
  token_ttl=1h \
  token_max_ttl=4h \
  token_type=service >/dev/null

# 5. Optionally store the key, read from a file (stdin of vault kv put via "api_key=-" also
#    works for interactive use).
store_key "$KV_MOUNT" "$KEY_PATH"

echo "Kubernetes auth ready: role ${ROLE} <- ServiceAccount ${SA_NAMESPACE}/${SA_NAME}, audience ${AUDIENCE}, policy ${POLICY} (read ${KV_MOUNT}/data/${KEY_PATH})"
