# Vault Agent of the model download Job: logs in once with Kubernetes auth (role
# "nim-model-download"), renders NIM's NGC key into /vault/secrets/ngc-key (an emptyDir with
# medium: Memory) and exits (exit_after_auth). No sink: its Vault token is never written.
exit_after_auth = true

vault {
  address = "https://vault.vault.svc:8200"
  ca_cert = "/etc/vault-ca/ca.crt"
}

auto_auth {
  method "kubernetes" {
    mount_path = "auth/kubernetes"
    config = {
      role       = "nim-model-download"
      token_path = "/var/run/secrets/nimgate/vault-token"
    }
  }
}

template {
  destination          = "/vault/secrets/ngc-key"
  # Owner: the agent (uid 10100); group: the pod's fsGroup 10001 = the download container.
  perms                = "0440"
  error_on_missing_key = true
  contents             = "{{ with secret \"secret/data/nim/ngc-download\" }}{{ .Data.data.api_key }}{{ end }}"
}
