# Vault policy "nimgate": read the NIM API key, nothing else.
#
# KV v2 mounted at "secret/": the key lives at secret/nim/prod/model-a (field "api_key"), which
# the API serves at secret/data/nim/prod/model-a. No list, no metadata, no write, no other
# path. Token self-renewal and self-lookup come from Vault's built-in "default" policy, which
# the roles in this directory keep attached.
path "secret/data/nim/prod/model-a" {
  capabilities = ["read"]
}
