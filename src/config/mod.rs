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
        let field = match (path.as_str(), line) {
            ("." | "", Some(l)) => field_at(text, l),
            ("." | "", None) => "config".to_string(),
            (p, Some(l)) => format!("{p} (line {l})"),
            (p, None) => p.to_string(),
        };
        vec![ConfigError::new(field, inner.message().to_string())]
    })
}

/// Best-effort `table.key` name for a line, for syntax errors that have no field path.
fn field_at(text: &str, lineno: usize) -> String {
    let offset: usize = text
        .split_inclusive('\n')
        .take(lineno - 1)
        .map(str::len)
        .sum();
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
    let line = text[offset.min(text.len())..].lines().next().unwrap_or("");
    // Only a bare key is taken from the line, never anything after `=` (it may be a secret
    // pasted into the wrong file).
    let key = line.split('=').next().unwrap_or("").trim();
    let key = if key.len() <= 64
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
    {
        key
    } else {
        ""
    };
    let name = match (table.is_empty(), key.is_empty() || key.starts_with('[')) {
        (true, _) => key.to_string(),
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    };
    let name = if name.is_empty() {
        "config".into()
    } else {
        name
    };
    format!("{name} (line {lineno})")
}

#[cfg(test)]
mod tests;
