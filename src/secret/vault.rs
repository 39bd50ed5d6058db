//! Placeholder until the Vault source lands (issue 3); config with source = "vault" is refused.

use crate::config::VaultSecretConfig;

pub struct VaultSource;

impl VaultSource {
    pub fn new(_: &VaultSecretConfig) -> Result<Self, String> {
        Err("secret.source = \"vault\" is not available in this build yet".into())
    }
}

impl super::SecretSource for VaultSource {
    fn kind(&self) -> &'static str {
        "vault"
    }
    fn fetch(
        &mut self,
    ) -> futures_util::future::BoxFuture<'_, Result<super::Fetched, super::SecretError>> {
        Box::pin(async {
            Err(super::SecretError::unavailable(
                "vault source not available",
            ))
        })
    }
    fn interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs(60)
    }
}
