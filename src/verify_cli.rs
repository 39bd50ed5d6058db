//! `audit verify`'s anchor options (`--anchors SOURCE` and the credential files a source needs)
//! and loading the anchors they name, for `commands::audit_verify`. Credentials are read from
//! files only (never the environment, never the argument) and never printed. Exit codes: 64 a
//! malformed source, 66 an anchors file that cannot be read, 69 a store that cannot be reached
//! or refuses.

use clap::Args;
use std::path::PathBuf;

use crate::audit::anchor::{of_instance, Anchor, Source, SourceFiles, Store};
use crate::error::{EXIT_CONFIG, EXIT_SOFTWARE, EXIT_UNAVAILABLE};

/// `66`: an input file cannot be read (sysexits `EX_NOINPUT`), as for `--key-file`.
const EXIT_NOINPUT: u8 = 66;

/// The anchors to check and a description of where they came from.
pub type Loaded = (Vec<Anchor>, String);

#[derive(Args, Debug, Default)]
pub struct AnchorArgs {
    /// Also check each chain against its last anchor (`audit.anchor`), so records cut from the
    /// end fail: file:PATH (an export: a JSON object, array or lines), redis://HOST:PORT/DB
    /// (rediss:// for TLS), or vault:https://HOST:PORT/MOUNT/PATH (`audit.anchor_vault_path`).
    #[arg(long, value_name = "SOURCE")]
    pub anchors: Option<String>,
    /// Vault token for vault:… (allowed to list and read the anchors; read from this file only).
    #[arg(long, value_name = "FILE", requires = "anchors")]
    pub anchors_token_file: Option<PathBuf>,
    /// Redis password for redis://… (read from this file only).
    #[arg(long, value_name = "FILE", requires = "anchors")]
    pub anchors_password_file: Option<PathBuf>,
    /// CA bundle for rediss:// or an https:// Vault.
    #[arg(long, value_name = "FILE", requires = "anchors")]
    pub anchors_ca_file: Option<PathBuf>,
    /// Redis key prefix (`ratelimit.key_prefix`): anchors are PREFIX:anchor:<chain id>.
    #[arg(long, value_name = "PREFIX", default_value = "nimgate")]
    pub anchors_key_prefix: String,
    /// Check only the anchors of this gateway's chains (`audit.instance`, e.g. the pod name):
    /// by default every anchored chain must be in the files.
    #[arg(long, value_name = "NAME", requires = "anchors")]
    pub anchors_instance: Option<String>,
}

impl AnchorArgs {
    /// The anchors to check and where they came from (`None`: no `--anchors`), or the exit code
    /// and message.
    pub fn load(&self) -> Result<Option<Loaded>, (u8, String)> {
        let Some(arg) = &self.anchors else {
            return Ok(None);
        };
        let source = Source::parse(arg).map_err(|m| (EXIT_CONFIG, m))?;
        let files = SourceFiles {
            token_file: self.anchors_token_file.clone(),
            password_file: self.anchors_password_file.clone(),
            ca_file: self.anchors_ca_file.clone(),
            key_prefix: self.anchors_key_prefix.clone(),
        };
        let _ = rustls::crypto::ring::default_provider().install_default();
        let store = Store::open(&source, &files).map_err(|m| (EXIT_CONFIG, m))?;
        let what = store.describe();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| (EXIT_SOFTWARE, format!("cannot start runtime: {e}")))?;
        let code = if matches!(source, Source::File(_)) {
            EXIT_NOINPUT
        } else {
            EXIT_UNAVAILABLE
        };
        let mut list = rt.block_on(store.list()).map_err(|m| {
            let m = m.replace("secret.auth.token_file", "--anchors-token-file");
            (code, format!("cannot read anchors from {what}: {m}"))
        })?;
        if let Some(i) = &self.anchors_instance {
            list.retain(|a| of_instance(&a.chain, i));
        }
        Ok(Some((list, what)))
    }
}
