#!/usr/bin/env bash
# Configure Vault so that nimgate pods (ServiceAccount "nimgate" in namespace "nimgate") can
# read the NIM API key with Kubernetes auth, using a projected ServiceAccount token whose
# audience is "vault" (deploy/kubernetes/base/deployment.yaml, volume "vault-token").
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
#   KUBERNETES_HOST                 API server URL. Default: the in-cluster address, which is
#                                   right when Vault itself runs in this cluster (Vault then
#                                   reviews tokens with its own ServiceAccount, which needs the
#                                   system:auth-delegator ClusterRole).
#   KUBERNETES_CA_CERT_FILE         PEM CA of the API server (Vault outside the cluster)
#   TOKEN_REVIEWER_JWT_FILE         token of a reviewer ServiceAccount bound to
#                                   system:auth-delegator (Vault outside the cluster)
#   NIM_API_KEY_FILE                if set, store the key read from this file (never pass a
#                                   key on the command line: it would land in shell history
#                                   and in /proc/<pid>/cmdline)
set -euo pipefail

KV_MOUNT=${KV_MOUNT:-secret}
KEY_PATH=${KEY_PATH:-nim/prod/model-a}
AUTH_MOUNT=${AUTH_MOUNT:-kubernetes}
ROLE=${ROLE:-nimgate}
SA_NAME=${SA_NAME:-nimgate}
SA_NAMESPACE=${SA_NAMESPACE:-nimgate}
AUDIENCE=${AUDIENCE:-vault}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

: "${VAULT_ADDR:?set VAULT_ADDR to the Vault server URL}"
command -v vault >/dev/null || { echo "the vault CLI is required" >&2; exit 1; }

# 1. KV v2 engine holding the key.
mounts=$(vault secrets list -format=json)
if [[ $mounts != *"\"${KV_MOUNT}/\""* ]]; then
  vault secrets enable -path="$KV_MOUNT" -version=2 kv
fi

# 2. The policy: read on the one path (deploy/vault/nimgate-policy.hcl, path rewritten if
#    KV_MOUNT/KEY_PATH differ from the defaults).
sed "s|secret/data/nim/prod/model-a|${KV_MOUNT}/data/${KEY_PATH}|" "$HERE/nimgate-policy.hcl" \
  | vault policy write nimgate -

# 3. Kubernetes auth method.
auths=$(vault auth list -format=json)
if [[ $auths != *"\"${AUTH_MOUNT}/\""* ]]; then
  vault auth enable -path="$AUTH_MOUNT" kubernetes
fi
config_args=("kubernetes_host=${KUBERNETES_HOST:-https://kubernetes.default.svc:443}")
if [[ -n ${KUBERNETES_CA_CERT_FILE:-} ]]; then
  config_args+=("kubernetes_ca_cert=@${KUBERNETES_CA_CERT_FILE}")
fi
if [[ -n ${TOKEN_REVIEWER_JWT_FILE:-} ]]; then
  config_args+=("token_reviewer_jwt=@${TOKEN_REVIEWER_JWT_FILE}")
fi
vault write "auth/${AUTH_MOUNT}/config" "${config_args[@]}"

# 4. The role: only ServiceAccount nimgate in namespace nimgate, only tokens minted for the
#    audience "vault" (the pod's default API token is refused), short-lived Vault tokens.
vault write "auth/${AUTH_MOUNT}/role/${ROLE}" \
  bound_service_account_names="$SA_NAME" \
  bound_service_account_namespaces="$SA_NAMESPACE" \
  audience="$AUDIENCE" \
  token_policies=nimgate \
  token_ttl=1h \
  token_max_ttl=4h \
  token_type=service

# 5. Optionally store the key, read from a file (stdin of vault kv put via "api_key=-" also
#    works for interactive use).
if [[ -n ${NIM_API_KEY_FILE:-} ]]; then
  vault kv put -mount="$KV_MOUNT" "$KEY_PATH" "api_key=@${NIM_API_KEY_FILE}" >/dev/null
  echo "stored the NIM key at ${KV_MOUNT}/${KEY_PATH} (field api_key)"
fi

echo "Kubernetes auth ready: role ${ROLE} <- ServiceAccount ${SA_NAMESPACE}/${SA_NAME}, audience ${AUDIENCE}"
