# Vault policy "nimgate-anchors": with [audit] anchor = "vault" and
# anchor_vault_path = "secret/nimgate/anchors", each gateway writes its chain head to the KV v2
# secret secret/nimgate/anchors/<chain id> (the API path secret/data/nimgate/anchors/<chain id>).
# Attach it to the gateway's role beside "nimgate". Create and update only: no read, no list,
# no delete, no metadata, so a gateway cannot see or remove anchors (its own or its peers').
# tests/anchors.rs runs OpenBao with exactly this policy.
path "secret/data/nimgate/anchors/*" {
  capabilities = ["create", "update"]
}
