//! What `serve` would refuse at start that needs no network, checked by `nimgate check` too: the
//! audit file can be opened for append (or its directory written), and every TLS file set passes
//! the checks a reload would apply (`tls`: CA files parse and hold a certificate, a key matches
//! its certificate, leaves are within their validity period).

use std::path::Path;

use super::types::{Config, SecretConfig};
use super::ConfigError;

impl Config {
    /// Every start-up problem found on the local filesystem, each naming its field.
    pub fn preflight(&self) -> Vec<ConfigError> {
        let mut errs = Vec::new();
        if self.audit.enabled && self.audit.path != "-" {
            if let Err(m) = writable(Path::new(&self.audit.path)) {
                errs.push(ConfigError::new("audit.path", m));
            }
        }
        let tls = |r: Result<(), crate::tls::TlsError>| {
            r.err().map(|e| ConfigError::new(e.field, e.message))
        };
        errs.extend(tls(crate::tls::ServerTls::check(&self.server)));
        for u in self.upstream_list() {
            errs.extend(tls(crate::tls::UpstreamTls::check(&u.field, u.cfg)));
            if let Some(SecretConfig::Vault(v)) = u.secret {
                if let Some(ca) = &v.ca_file {
                    if let Err(m) = crate::tls::load_certs(ca) {
                        errs.push(ConfigError::new(format!("{}.ca_file", u.secret_field), m));
                    }
                }
            }
        }
        errs
    }
}

/// Whether the audit file can be appended to: the file if it exists, else a probe file in its
/// directory (removed again).
fn writable(path: &Path) -> Result<(), String> {
    if path.exists() {
        return std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map(drop)
            .map_err(|e| format!("{}: cannot append: {e}", path.display()));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let probe = dir.join(format!(".nimgate-check-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|e| {
            format!(
                "{}: cannot create files in {}: {e}",
                path.display(),
                dir.display()
            )
        })?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn catches_what_serve_would_refuse() {
        let dir = tempfile::tempdir().unwrap();
        let empty_ca = dir.path().join("ca.pem");
        std::fs::write(&empty_ca, "# placeholder: replace with your Vault CA\n").unwrap();
        let text = format!(
            r#"[upstream]
url = "https://nim:8000"
ca_file = "{ca}"
[secret]
source = "file"
path = "/k"
[[clients]]
id = "a"
key_sha256 = "0000000000000000000000000000000000000000000000000000000000000001"
[audit]
path = "/nonexistent-dir/audit.jsonl"
"#,
            ca = empty_ca.display()
        );
        let cfg = crate::config::parse(&text).unwrap();
        let errs = cfg.preflight();
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["audit.path", "upstream.ca_file"], "{errs:?}");
        assert!(errs[1].message.contains("no certificates"), "{errs:?}");
        let ok = text
            .replace(
                "/nonexistent-dir/audit.jsonl",
                &dir.path().join("a.jsonl").display().to_string(),
            )
            .replace(&format!("ca_file = \"{}\"\n", empty_ca.display()), "");
        let cfg = crate::config::parse(&ok).unwrap();
        assert!(cfg.preflight().is_empty(), "{:?}", cfg.preflight());
        assert!(
            !dir.path().join("a.jsonl").exists(),
            "check must not create the audit file"
        );
    }
}
