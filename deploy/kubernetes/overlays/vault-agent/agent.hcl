# Vault Agent for nimgate (overlays/vault-agent).
# - Logs in with Kubernetes auth (role "nimgate") using the pod's projected ServiceAccount
#   token, audience "vault" (deploy/vault/README.md sets the role up).
# - Keeps its Vault token in memory: there is no sink, so no token file exists anywhere.
# - Renders the NIM key into /vault/secrets (an emptyDir with medium: Memory, mounted
#   read-only in nimgate) and re-reads it every 60s, rewriting the file when it changes.

exit_after_auth = false

vault {
  address = "https://vault.vault.svc:8200"
  ca_cert = "/etc/vault-ca/ca.crt"
}

auto_auth {
  method "kubernetes" {
    mount_path = "auth/kubernetes"
    config = {
      role       = "nimgate"
      token_path = "/var/run/secrets/nimgate/vault-token"
    }
  }
}

template_config {
  static_secret_render_interval = "60s"
  # Fail loudly (container restart, pod not ready) rather than serve a stale key forever.
  exit_on_retry_failure = true
}

template {
  destination          = "/vault/secrets/nim-api-key"
  # Owner: the agent (uid 10100); group: the pod's fsGroup 65532 (setgid emptyDir) = nimgate.
  perms                = "0440"
  error_on_missing_key = true
  contents             = "{{ with secret \"secret/data/nim/prod/model-a\" }}{{ .Data.data.api_key }}{{ end }}"
}
