//! `source = "file"`: the key in a file, typically written by a Vault Agent sidecar into an
//! in-memory `emptyDir`. Plain text (trailing newline stripped) or JSON with a JSON pointer
//! (e.g. the output of `vault kv get -format=json`). The file is re-read every `poll_interval`
//! and compared by content, so in-place rewrites and Kubernetes' atomic symlink swaps are both
//! seen; a bad new file keeps the old key.
//!
//! The file is opened non-blocking and must be a regular file of at most `MAX_FILE_BYTES` (a FIFO
//! or a device at `secret.path` cannot stall the runtime, a huge file cannot take memory on every
//! poll); the read runs on a blocking thread under `READ_TIMEOUT`. A file readable by group or
//! others draws a warning (once).

use futures_util::future::BoxFuture;
use secrecy::SecretString;
use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroizing;

use super::{content_version, Fetched, SecretError, SecretSource};
use crate::config::FileSecretConfig;

/// Largest key file read (a key, or a Vault Agent's JSON rendering of one secret).
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// Longest a read of the key file may take (a hung network filesystem).
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

pub struct FileSource {
    path: PathBuf,
    pointer: Option<String>,
    interval: Duration,
    /// A read is still running on its blocking thread (a stuck filesystem): do not pile up more.
    busy: Arc<AtomicBool>,
    warned_mode: bool,
}

impl FileSource {
    pub fn new(cfg: &FileSecretConfig) -> Self {
        Self {
            path: cfg.path.clone(),
            pointer: cfg.json_pointer.clone(),
            interval: cfg.poll_interval,
            busy: Arc::new(AtomicBool::new(false)),
            warned_mode: false,
        }
    }

    /// Read and parse synchronously (tests; `fetch` does the same on a blocking thread).
    #[cfg(test)]
    fn read(&self) -> Result<Fetched, SecretError> {
        self.parse(&read_capped(&self.path)?.0)
    }

    fn parse(&self, bytes: &[u8]) -> Result<Fetched, SecretError> {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| SecretError::invalid(format!("{} is not UTF-8", self.path.display())))?;
        let key = match &self.pointer {
            None => text.trim_end_matches(['\n', '\r']).to_string(),
            Some(ptr) => extract_pointer(text, ptr)
                .map_err(|m| SecretError::invalid(format!("{}: {m}", self.path.display())))?,
        };
        let secret = SecretString::from(key);
        let version = content_version(&secret);
        Ok(Fetched {
            secret,
            version,
            vault_request_id: None,
            vault_accessor: None,
        })
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

/// Open without blocking (a FIFO's open would wait for a writer), refuse anything but a regular
/// file of at most `MAX_FILE_BYTES`; the contents and the file's mode.
pub(crate) fn read_capped(path: &Path) -> Result<(Zeroizing<Vec<u8>>, u32), SecretError> {
    let cant = |e: std::io::Error| {
        SecretError::unavailable(format!("cannot read {}: {}", path.display(), e.kind()))
    };
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(cant)?;
    let meta = f.metadata().map_err(cant)?;
    if !meta.is_file() {
        return Err(SecretError::invalid(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(SecretError::invalid(format!(
            "{} is larger than {MAX_FILE_BYTES} bytes",
            path.display()
        )));
    }
    let mut bytes = Zeroizing::new(Vec::with_capacity(meta.len() as usize));
    f.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(cant)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(SecretError::invalid(format!(
            "{} is larger than {MAX_FILE_BYTES} bytes",
            path.display()
        )));
    }
    Ok((bytes, meta.permissions().mode()))
}

impl SecretSource for FileSource {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn fetch(&mut self) -> BoxFuture<'_, Result<Fetched, SecretError>> {
        Box::pin(async move {
            if self.busy.swap(true, Ordering::AcqRel) {
                return Err(SecretError::unavailable(format!(
                    "reading {} is still blocked",
                    self.path.display()
                )));
            }
            let path = self.path.clone();
            let busy = self.busy.clone();
            let task = tokio::task::spawn_blocking(move || {
                let r = read_capped(&path);
                busy.store(false, Ordering::Release);
                r
            });
            let (bytes, mode) = match tokio::time::timeout(READ_TIMEOUT, task).await {
                Ok(Ok(r)) => r?,
                Ok(Err(_)) => return Err(SecretError::unavailable("key file read failed")),
                Err(_) => {
                    return Err(SecretError::unavailable(format!(
                        "reading {} took longer than {READ_TIMEOUT:?}",
                        self.path.display()
                    )))
                }
            };
            if mode & 0o077 != 0 && !self.warned_mode {
                self.warned_mode = true;
                tracing::warn!(path = %self.path.display(), mode = format!("{:o}", mode & 0o777), "the NIM key file is readable by group or others; make it 0600 (or 0400)");
            }
            self.parse(&bytes)
        })
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
        FileSource::new(&crate::config::FileSecretConfig {
            path,
            json_pointer: pointer.map(String::from),
            poll_interval: Duration::from_secs(1),
        })
    }

    #[tokio::test]
    async fn fifos_devices_and_huge_files_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        // Opening a FIFO with no writer would block a plain read forever.
        let e = tokio::time::timeout(Duration::from_secs(2), src(fifo, None).fetch())
            .await
            .expect("fetch of a FIFO must not block")
            .unwrap_err();
        assert!(e.message.contains("not a regular file"), "{}", e.message);
        let e = src("/dev/zero".into(), None).fetch().await.unwrap_err();
        assert!(e.message.contains("not a regular file"), "{}", e.message);
        let big = dir.path().join("big");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(MAX_FILE_BYTES + 1).unwrap();
        let e = src(big, None).fetch().await.unwrap_err();
        assert!(e.message.contains("larger than"), "{}", e.message);
        let ok = dir.path().join("ok");
        std::fs::write(&ok, "nvapi-x\n").unwrap();
        assert_eq!(
            src(ok, None).fetch().await.unwrap().secret.expose_secret(),
            "nvapi-x"
        );
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
