//! Configuration: serde structs (unknown keys are errors), defaults, the `NIMGATE_*` environment
//! overlay for non-secret settings, and `validate()` whose messages name the offending field.
//!
//! Config holds *where* a secret lives (a file path, a Vault path), never a secret itself.

mod env;
mod types;
mod validate;

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
    let mut cfg = parse(&text)?;
    env::apply_overlay(&mut cfg, |k| std::env::var(k).ok())?;
    cfg.resolve_files()?;
    let errs = cfg.validate();
    if errs.is_empty() {
        Ok(cfg)
    } else {
        Err(errs)
    }
}

/// Parse TOML text into a `Config` (no overlay, no validation).
pub fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
    toml::from_str::<Config>(text).map_err(|e| {
        let field = e
            .span()
            .map(|s| field_at(text, s.start))
            .unwrap_or_else(|| "config".to_string());
        vec![ConfigError::new(field, e.message().to_string())]
    })
}

/// Best-effort `table.key` name for a byte offset, used to name the field in parse errors.
fn field_at(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let table = before
        .lines()
        .rev()
        .find_map(|l| {
            let l = l.trim();
            l.starts_with('[')
                .then(|| l.trim_matches(|c| c == '[' || c == ']').to_string())
        })
        .unwrap_or_default();
    let line = text[before.rfind('\n').map_or(0, |i| i + 1)..]
        .lines()
        .next()
        .unwrap_or("");
    let key = line.split('=').next().unwrap_or("").trim();
    let lineno = before.matches('\n').count() + 1;
    let name = match (table.is_empty(), key.is_empty() || key.starts_with('[')) {
        (true, _) => key.to_string(),
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    };
    format!("{name} (line {lineno})")
}

#[cfg(test)]
mod tests;
