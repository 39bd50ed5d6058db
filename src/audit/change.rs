//! The body of a `config_reload` record (`server/reload.rs` fills it): which clients, upstreams and
//! settings a reload attempt changed, by name and digest only, never a value.

use serde::Serialize;

/// The body of a `config_reload` record. Lists hold client ids, upstream names and field paths
/// only; each is cut to `MAX_LIST` entries (then one `+N more`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConfigChange {
    /// `sighup` or `file_changed`.
    pub trigger: &'static str,
    /// Hex SHA-256 of the config file's contents as read.
    pub sha256: String,
    /// Hex SHA-256 of `auth.clients_file`'s contents, when one is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clients_file_sha256: Option<String>,
    pub clients: Diff,
    pub upstreams: Diff,
    /// Other sections or settings that changed (`limits`, `server.route_prefixes`, …).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub settings: Vec<String>,
    /// Changed settings that take effect only after a restart (the old value stays in force).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub needs_restart: Vec<String>,
    /// On `refused`: the fields the errors name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// Names added, removed and changed.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Diff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// Most names a `config_reload` list carries.
pub const MAX_LIST: usize = 100;

/// `v` cut to `MAX_LIST` names, the rest counted in a last `+N more`; names are capped too.
pub fn capped_list(mut v: Vec<String>) -> Vec<String> {
    for s in &mut v {
        if s.len() > 128 {
            let mut end = 128;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s.truncate(end);
            s.push('…');
        }
    }
    if v.len() > MAX_LIST {
        let more = v.len() - MAX_LIST;
        v.truncate(MAX_LIST);
        v.push(format!("+{more} more"));
    }
    v
}
