# shellcheck shell=bash
# Shared by deploy/vault/setup-*.sh (sourced, not run): the Vault CLI, the KV mount, the
# per-role policy, the key upload and private output files.
#
# One policy per role: the policy is named after the role (POLICY overrides) and grants `read`
# on exactly one KV path. A policy of that name that already grants anything else is never
# rewritten: another gateway may depend on it (REPLACE_POLICY=1 forces it, deliberately).

# The CLI: VAULT_CLI, else `vault`, else OpenBao's `bao` (same commands and flags; both read
# VAULT_ADDR and VAULT_TOKEN).
VAULT_BIN=${VAULT_CLI:-$(command -v vault || command -v bao || true)}
if [[ -z $VAULT_BIN ]]; then
  echo "the vault CLI (or OpenBao's bao) is required; or set VAULT_CLI" >&2
  exit 1
fi
vault() { "$VAULT_BIN" "$@"; }

: "${VAULT_ADDR:?set VAULT_ADDR to the Vault server URL}"

# ensure_kv_mount MOUNT: a KV v2 engine at MOUNT (left as it is if already enabled).
ensure_kv_mount() {
  local mounts
  mounts=$(vault secrets list -format=json)
  if [[ $mounts != *"\"$1/\""* ]]; then
    vault secrets enable -path="$1" -version=2 kv
  fi
}

# ensure_auth METHOD MOUNT: the auth method at MOUNT (left as it is if already enabled).
ensure_auth() {
  local auths
  auths=$(vault auth list -format=json)
  if [[ $auths != *"\"$2/\""* ]]; then
    vault auth enable -path="$2" "$1"
  fi
}

# policy_paths: the `path "..."` lines of a policy on stdin, comments dropped, sorted.
policy_paths() {
  sed 's/#.*//' | grep -o 'path *"[^"]*"' | sort || true
}

# write_policy NAME KV_MOUNT KEY_PATH: policy NAME = deploy/vault/nimgate-policy.hcl for
# KV_MOUNT/data/KEY_PATH. Refuses (exit 1, nothing changed) if NAME exists and grants other paths.
write_policy() {
  local name=$1 wanted current
  wanted=$(sed "s|secret/data/nim/prod/model-a|$2/data/$3|" "$HERE/nimgate-policy.hcl")
  if current=$(vault policy read "$name" 2>/dev/null) &&
    [[ $(policy_paths <<<"$current") != "$(policy_paths <<<"$wanted")" ]] &&
    [[ ${REPLACE_POLICY:-0} != 1 ]]; then
    {
      echo "refusing to change policy '${name}': it already grants"
      policy_paths <<<"$current" | sed 's/^/    /'
      echo "  and this run would make it grant only $2/data/$3, cutting off whatever uses it now."
      echo "  Use another ROLE (the policy is named after it) or POLICY; REPLACE_POLICY=1 forces it."
    } >&2
    exit 1
  fi
  printf '%s\n' "$wanted" | vault policy write "$name" -
}

# store_key KV_MOUNT KEY_PATH: if NIM_API_KEY_FILE is set, store that file's content as field
# api_key (read by the CLI from the file: never on a command line, never printed).
store_key() {
  if [[ -n ${NIM_API_KEY_FILE:-} ]]; then
    vault kv put -mount="$1" "$2" "api_key=@${NIM_API_KEY_FILE}" >/dev/null
    echo "stored the NIM key from ${NIM_API_KEY_FILE} at $1/$2 (field api_key)"
  fi
}

# write_private FILE CMD...: CMD's stdout into FILE, mode 0600, replacing FILE atomically; an
# empty or failed output leaves FILE as it was. The content is never echoed.
write_private() {
  local dest=$1 tmp
  shift
  tmp=$(mktemp "${dest}.XXXXXX") # mktemp creates it 0600
  if ! "$@" >"$tmp" || [[ ! -s $tmp ]]; then
    rm -f "$tmp"
    echo "could not write ${dest}" >&2
    return 1
  fi
  chmod 0600 "$tmp"
  mv -f "$tmp" "$dest"
}
