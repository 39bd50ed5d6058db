//! Configuration: serde structs (unknown keys are errors), defaults, the `NIMGATE_*` environment
//! overlay for non-secret settings, and `validate()` whose messages name the offending field.
//!
//! Config holds *where* a secret lives (a file path, a Vault path), never a secret itself.

mod audit;
mod auth;
mod bounds;
mod clients;
mod env;
mod hints;
mod preflight;
mod ratelimit;
mod secret;
mod telemetry;
mod types;
mod upstream;
mod upstreams;
mod validate;

pub use clients::check_clients_file;
pub use telemetry::TelemetryConfig;
pub use types::*;
pub use validate::ConfigError;

use std::path::Path;

/// Load a config file: parse (defaults fill gaps), apply the environment overlay, validate.
/// Every problem is returned, each naming its field.
pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigError::new(
            "config",
            format!("cannot read {}: {e}", path.display()),
        )]
    })?;
    load_text(&text)
}

/// `load` of a config file's contents already read (a reload digests the very text it loads).
pub fn load_text(text: &str) -> Result<Config, Vec<ConfigError>> {
    let mut cfg = parse(text)?;
    env::apply_overlay(&mut cfg, getenv)?;
    cfg.resolve_files()?;
    let mut errs = cfg.validate();
    env::name_overrides(&mut errs, getenv);
    if errs.is_empty() {
        Ok(cfg)
    } else {
        Err(errs)
    }
}

/// The process environment, for the overlay (never consulted for a secret).
fn getenv(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

/// The `NIMGATE_*` variable behind a start-up error about the setting it overrides, if any.
pub fn override_behind(message: &str) -> Option<&'static str> {
    env::override_behind(message, getenv)
}

/// `check`'s preflight errors, with the env variable named where one set the field.
pub fn preflight(cfg: &Config) -> Vec<ConfigError> {
    let mut errs = cfg.preflight();
    env::name_overrides(&mut errs, getenv);
    errs
}

/// Parse TOML text into a `Config` (no overlay, no validation). An error names the field by its
/// exact path (`serde_path_to_error`) and line, never quoting the text.
pub fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
    parse_as::<Config>(text)
}

/// Parse TOML text as `T`, with errors as `parse` gives them.
pub fn parse_as<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, Vec<ConfigError>> {
    serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.inner();
        let line = inner
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        let mut message = inner.message().to_string();
        if path.ends_with(".listen") && message.contains("socket address") {
            // The value of a listen address is no secret: quote it in the hint.
            let value = inner.span().and_then(|s| text.get(s)).unwrap_or("");
            message.push_str(&hints::listen(value.trim_matches('"')));
        }
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|m| m.strip_suffix('`'));
        if let (".", Some(section)) = (path.as_str(), missing) {
            return vec![ConfigError::new(
                section,
                format!("the [{section}] section is missing"),
            )];
        }
        // Serde loses the path inside `[secret]` (an internally tagged enum): name the sub-table
        // the field belongs to, and its line.
        let (path, line) = match secret_subtable(&path, &message) {
            Some(sub) => (sub.to_string(), table_line(text, sub).or(line)),
            None => (path, line),
        };
        let field = match (path.as_str(), line) {
            ("." | "", Some(l)) => field_at(text, l),
            ("." | "", None) => "config".to_string(),
            (p, Some(l)) => format!("{p} (line {l})"),
            (p, None) => p.to_string(),
        };
        vec![ConfigError::new(field, message)]
    })
}

/// Keys that only `[secret.auth]` has.
const AUTH_KEYS: [&str; 6] = [
    "method",
    "token_file",
    "role_id_file",
    "secret_id_file",
    "role",
    "jwt_file",
];

/// For an error serde reports at `secret`: `secret.auth` when it is about an auth key (missing,
/// or unknown where the auth keys were expected).
fn secret_subtable(path: &str, message: &str) -> Option<&'static str> {
    if path != "secret" {
        return None;
    }
    let about_auth = AUTH_KEYS
        .iter()
        .any(|k| message.contains(&format!("missing field `{k}`")))
        || (message.starts_with("unknown") && message.contains("`role_id_file`"))
        || (message.starts_with("unknown") && message.contains("`token_file`"))
        || message.contains("unknown variant");
    Some(if about_auth { "secret.auth" } else { "secret" })
}

/// The line of a `[table]` header.
fn table_line(text: &str, table: &str) -> Option<usize> {
    let header = format!("[{table}]");
    text.lines().position(|l| l.trim() == header).map(|i| i + 1)
}

/// The table a syntax error is in, by line, for errors that have no field path. Nothing from the
/// offending line itself is quoted: a file passed by mistake (a key file) must not be echoed.
fn field_at(text: &str, lineno: usize) -> String {
    let table = text
        .lines()
        .take(lineno.saturating_sub(1))
        .filter_map(|l| {
            let name = l.trim().strip_prefix('[')?.trim_start_matches('[');
            let name = name.split(']').next()?.trim();
            let plain = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
            plain.then(|| name.to_string())
        })
        .last();
    format!("{} (line {lineno})", table.as_deref().unwrap_or("config"))
}

#[cfg(test)]
mod tests;
