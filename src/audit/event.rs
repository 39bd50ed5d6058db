//! The audit event names: one enum, serialised by serde as the `event` field, so the README's
//! list, the code and the records cannot drift (a test checks every name against README.md).

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// The NIM key is about to be sent for a request (written before the first upstream byte).
    Use,
    /// The response for a `use` ended (complete, failed, or the client left).
    Done,
    /// A request was refused before any key was used.
    Denied,
    /// Refusals beyond an address's unauthenticated budget, counted per address and reason.
    DeniedSummary,
    /// The audit trail was opened (a process start).
    Start,
    /// At start, unreadable lines at the end of the audit file were moved to `<path>.quarantine`
    /// and the chain continued from the last readable record.
    AuditQuarantine,
    /// A write to the audit sink failed (recorded once it works again).
    AuditFailure,
    /// A secret source fetched the key it already had.
    SecretFetch,
    /// A new key version was loaded.
    SecretRotate,
    /// A fetch failed (a new kind of failure; repeats are not re-audited).
    SecretFailure,
    /// Access to the key was revoked: the cached key was dropped.
    SecretEvict,
    /// A Vault login (or a token read from `token_file`).
    VaultLogin,
    /// A Vault token renewal.
    VaultRenew,
    /// A config reload was attempted (SIGHUP or a changed file): applied, refused or unchanged.
    ConfigReload,
    /// Writing the chain head to the anchor store failed (once per outage; retried each tick).
    AnchorFailure,
}

impl Event {
    pub const ALL: [Self; 15] = [
        Self::Use,
        Self::Done,
        Self::Denied,
        Self::DeniedSummary,
        Self::Start,
        Self::AuditQuarantine,
        Self::AuditFailure,
        Self::SecretFetch,
        Self::SecretRotate,
        Self::SecretFailure,
        Self::SecretEvict,
        Self::VaultLogin,
        Self::VaultRenew,
        Self::ConfigReload,
        Self::AnchorFailure,
    ];

    /// The name as written in records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Use => "use",
            Self::Done => "done",
            Self::Denied => "denied",
            Self::DeniedSummary => "denied_summary",
            Self::Start => "start",
            Self::AuditQuarantine => "audit_quarantine",
            Self::AuditFailure => "audit_failure",
            Self::SecretFetch => "secret_fetch",
            Self::SecretRotate => "secret_rotate",
            Self::SecretFailure => "secret_failure",
            Self::SecretEvict => "secret_evict",
            Self::VaultLogin => "vault_login",
            Self::VaultRenew => "vault_renew",
            Self::ConfigReload => "config_reload",
            Self::AnchorFailure => "anchor_failure",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Event;

    #[test]
    fn serde_names_match_as_str_and_the_readme() {
        let readme = include_str!("../../README.md");
        for e in Event::ALL {
            let json = serde_json::to_string(&e).unwrap();
            assert_eq!(json, format!("\"{}\"", e.as_str()));
            assert!(
                readme.contains(&format!("`{}`", e.as_str())),
                "README.md does not document the audit event `{}`",
                e.as_str()
            );
        }
    }
}
