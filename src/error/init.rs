//! `InitError`: why the gateway could not start, with the sysexits code each cause exits with.
//! The message names the config field or the path to fix.

use std::path::PathBuf;

/// EX_USAGE: bad configuration or arguments.
pub const EXIT_CONFIG: u8 = 64;
/// EX_UNAVAILABLE: something the gateway needs at start is not there (a port in use).
pub const EXIT_UNAVAILABLE: u8 = 69;
/// EX_SOFTWARE: anything else (a bug, the runtime would not start).
pub const EXIT_SOFTWARE: u8 = 70;
/// EX_IOERR: the audit trail cannot be opened or written.
pub const EXIT_IO: u8 = 74;

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A setting is invalid; the message starts with the field's name.
    #[error("{0}")]
    Config(String),
    /// A listener could not be bound (address in use, not permitted).
    #[error("{field} {addr}: {source}")]
    Bind {
        field: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// The audit file could not be opened.
    #[error("audit.path {}: {source}", path.display())]
    AuditIo {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Anything else.
    #[error("{0}")]
    Software(String),
}

impl InitError {
    /// The process exit code for this error (sysexits.h).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_) => EXIT_CONFIG,
            Self::Bind { .. } => EXIT_UNAVAILABLE,
            Self::AuditIo { .. } => EXIT_IO,
            Self::Software(_) => EXIT_SOFTWARE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_sysexits_and_messages_name_the_field() {
        let e = InitError::Config("upstream.url: must include a host".into());
        assert_eq!(
            (e.exit_code(), e.to_string().starts_with("upstream.url")),
            (64, true)
        );
        let e = InitError::Bind {
            field: "server.listen",
            addr: ([127, 0, 0, 1], 8080).into(),
            source: std::io::ErrorKind::AddrInUse.into(),
        };
        assert_eq!(e.exit_code(), 69);
        assert!(
            e.to_string().starts_with("server.listen 127.0.0.1:8080: "),
            "{e}"
        );
        let e = InitError::AuditIo {
            path: "/nope/a.jsonl".into(),
            source: std::io::ErrorKind::NotFound.into(),
        };
        assert_eq!(e.exit_code(), 74);
        assert!(
            e.to_string().starts_with("audit.path /nope/a.jsonl: "),
            "{e}"
        );
        assert_eq!(InitError::Software("x".into()).exit_code(), 70);
    }
}
