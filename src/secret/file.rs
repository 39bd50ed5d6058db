//! `source = "file"`: the key in a file, typically written by a Vault Agent sidecar into an
//! in-memory `emptyDir`. Plain text (trailing newline stripped) or JSON with a JSON pointer
//! (e.g. the output of `vault kv get -format=json`). The file is re-read every `poll_interval`
//! and compared by content, so in-place rewrites and Kubernetes' atomic symlink swaps are both
//! seen; a bad new file keeps the old key.

use futures_util::future::BoxFuture;
use secrecy::SecretString;
use std::path::PathBuf;
use std::time::Duration;
use zeroize::Zeroizing;

use super::{content_version, Fetched, SecretError, SecretSource};
use crate::config::FileSecretConfig;

pub struct FileSource {
    path: PathBuf,
    pointer: Option<String>,
    interval: Duration,
}

impl FileSource {
    pub fn new(cfg: &FileSecretConfig) -> Self {
        Self {
            path: cfg.path.clone(),
            pointer: cfg.json_pointer.clone(),
            interval: cfg.poll_interval,
        }
    }

    fn read(&self) -> Result<Fetched, SecretError> {
        let bytes = Zeroizing::new(std::fs::read(&self.path).map_err(|e| {
            SecretError::unavailable(format!("cannot read {}: {}", self.path.display(), e.kind()))
        })?);
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| SecretError::invalid(format!("{} is not UTF-8", self.path.display())))?;
        let key = match &self.pointer {
            None => text.trim_end_matches(['\n', '\r']).to_string(),
            Some(ptr) => extract_pointer(text, ptr)
                .map_err(|m| SecretError::invalid(format!("{}: {m}", self.path.display())))?,
        };
        let secret = SecretString::from(key);
        let version = content_version(&secret);
        Ok(Fetched { secret, version })
    }
}

/// The string at `ptr` in JSON `text`. Error messages never include values.
pub fn extract_pointer(text: &str, ptr: &str) -> Result<String, String> {
    let v: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| format!("not valid JSON (line {}, column {})", e.line(), e.column()))?;
    let mut v = v;
    let taken = v.pointer_mut(ptr).map(serde_json::Value::take);
    super::scrub(&mut v);
    match taken {
        Some(serde_json::Value::String(s)) => Ok(s),
        Some(mut other) => {
            super::scrub(&mut other);
            Err(format!("JSON pointer {ptr} is not a string"))
        }
        None => Err(format!("JSON pointer {ptr} matches nothing")),
    }
}

impl SecretSource for FileSource {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn fetch(&mut self) -> BoxFuture<'_, Result<Fetched, SecretError>> {
        let r = self.read();
        Box::pin(async move { r })
    }

    fn interval(&self) -> Duration {
        self.interval
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn src(path: PathBuf, pointer: Option<&str>) -> FileSource {
        FileSource {
            path,
            pointer: pointer.map(String::from),
            interval: Duration::from_secs(1),
        }
    }

    #[test]
    fn plain_and_json() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, "nvapi-abc\r\n").unwrap();
        assert_eq!(
            src(p.clone(), None).read().unwrap().secret.expose_secret(),
            "nvapi-abc"
        );
        std::fs::write(&p, r#"{"data":{"data":{"api_key":"nvapi-j"}}}"#).unwrap();
        let f = src(p.clone(), Some("/data/data/api_key")).read().unwrap();
        assert_eq!(f.secret.expose_secret(), "nvapi-j");
        let e = src(p.clone(), Some("/data/nope")).read().unwrap_err();
        assert!(e.message.contains("matches nothing"));
        std::fs::write(&p, r#"{"data":{"data":{"api_key":"nvapi-j"#).unwrap();
        let e = src(p.clone(), Some("/data/data/api_key"))
            .read()
            .unwrap_err();
        assert!(!e.message.contains("nvapi"), "{}", e.message);
        let e = src(dir.path().join("missing"), None).read().unwrap_err();
        assert_eq!(e.kind, crate::secret::SecretErrorKind::Unavailable);
    }
}
