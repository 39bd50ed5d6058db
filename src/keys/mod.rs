//! `nimgate keys add|revoke|list --file clients.toml`: gateway keys managed in the
//! `[auth] clients_file` without editing TOML by hand. `add` makes a key with the generator of
//! `keys new`, prints it once on stdout (the only time it is ever shown) and stores only its
//! `key_sha256`; `revoke` removes an entry; `list` shows ids, digest prefixes and expiry, never
//! a key (there is none to show). Each change is checked with the gateway's own parser and
//! validation before it replaces the file (`config::check_clients_file`; with `--config`, the
//! whole config that uses the file), under a lock, atomically (`file`), keeping comments
//! (`edit`). A running gateway picks the new file up by itself (its clients-file reload).
#![expect(clippy::print_stdout, reason = "the CLI's intended output")]

mod edit;
mod file;

use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use crate::commands::{valid_id, ID_RULE};
use crate::config;
use crate::error::{EXIT_CONFIG, EXIT_IO, EXIT_SOFTWARE};
use edit::{Doc, NewClient};
use file::ReplaceError;

/// Shortest `--digest` prefix accepted (the 12 characters `list` prints are plenty).
const MIN_DIGEST_PREFIX: usize = 8;
/// Characters of a digest `list` shows.
const SHOWN_DIGEST: usize = 12;

#[derive(Args)]
pub struct AddArgs {
    /// The clients file (`[auth] clients_file`); created (mode 0600) if it does not exist.
    #[arg(long, value_name = "FILE")]
    file: PathBuf,
    /// Client id (1–128 printable characters, no quotes or backslashes; not already used).
    #[arg(long)]
    id: String,
    /// The key gets 401 `key_expired` from this UTC instant on, e.g. 2027-03-01T00:00:00Z.
    #[arg(long, value_name = "DATETIME")]
    expires: Option<String>,
    /// Sustained requests per minute for this client.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    rpm: Option<u32>,
    /// Requests that may arrive at once after an idle period (default: rpm).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..), requires = "rpm")]
    burst: Option<u32>,
    /// The gateway config that uses FILE: the result is validated with it as a whole (ids
    /// unique across both files, every rule `check` applies) before the file is replaced.
    #[arg(long, value_name = "CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Args)]
#[command(group = clap::ArgGroup::new("which").required(true).multiple(true).args(["id", "digest"]))]
pub struct RevokeArgs {
    /// The clients file.
    #[arg(long, value_name = "FILE")]
    file: PathBuf,
    /// Remove the entry of this client.
    #[arg(long)]
    id: Option<String>,
    /// Remove the entry whose key_sha256 starts with this (at least 8 hex characters, as
    /// `list` shows them); with --id, it must be that client's.
    #[arg(long, value_name = "HEX")]
    digest: Option<String>,
    /// The gateway config that uses FILE (as for `add`).
    #[arg(long, value_name = "CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Args)]
pub struct ListArgs {
    /// The clients file.
    #[arg(long, value_name = "FILE")]
    file: PathBuf,
}

/// A refusal: its exit code and the lines said on stderr.
struct Fail(u8, Vec<String>);

impl Fail {
    fn usage(m: impl Into<String>) -> Self {
        Self(EXIT_CONFIG, vec![m.into()])
    }
}

fn finish(r: Result<(), Fail>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(code, lines)) => {
            for l in lines {
                eprintln!("error: {l}");
            }
            ExitCode::from(code)
        }
    }
}

pub fn add(a: &AddArgs) -> ExitCode {
    finish(try_add(a))
}

pub fn revoke(a: &RevokeArgs) -> ExitCode {
    finish(try_revoke(a))
}

pub fn list(a: &ListArgs) -> ExitCode {
    finish(try_list(a))
}

fn try_add(a: &AddArgs) -> Result<(), Fail> {
    if !valid_id(&a.id) {
        return Err(Fail::usage(format!("--id {ID_RULE}")));
    }
    let expires = a.expires.as_deref().map(parse_expires).transpose()?;
    let (main, locked, mut doc) = open(&a.file, a.config.as_deref())?;
    if doc
        .entries()
        .iter()
        .any(|e| e.id.as_deref() == Some(a.id.as_str()))
    {
        return Err(Fail::usage(format!(
            "--id: client id {:?} already exists in {} (revoke it first, or choose another id)",
            a.id,
            a.file.display()
        )));
    }
    let key = crate::auth::new_client_key()
        .map(zeroize::Zeroizing::new)
        .map_err(|e| {
            Fail(
                EXIT_SOFTWARE,
                vec![format!("no OS randomness available: {e}")],
            )
        })?;
    let digest = crate::auth::key_digest_hex(&key);
    let now = humantime::format_rfc3339_seconds(SystemTime::now());
    doc.add(&NewClient {
        id: &a.id,
        digest: &digest,
        expires,
        rpm: a.rpm,
        burst: a.burst,
        note: &format!("added by `nimgate keys add` at {now}"),
    });
    replace(&locked, &doc, main.as_ref())?;
    eprintln!(
        "# Added client {:?} to {} (key_sha256 {}…). Its key is below, shown this once: it is stored nowhere.",
        a.id,
        a.file.display(),
        &digest[..SHOWN_DIGEST]
    );
    println!("{}", key.as_str());
    Ok(())
}

fn try_revoke(a: &RevokeArgs) -> Result<(), Fail> {
    let prefix = match &a.digest {
        Some(d) if d.len() < MIN_DIGEST_PREFIX || !d.bytes().all(|b| b.is_ascii_hexdigit()) => {
            return Err(Fail::usage(format!(
                "--digest must be at least {MIN_DIGEST_PREFIX} hex characters of a key_sha256"
            )));
        }
        d => d.as_deref().map(str::to_ascii_lowercase),
    };
    let (main, locked, mut doc) = open(&a.file, a.config.as_deref())?;
    let hits: Vec<usize> = doc
        .entries()
        .into_iter()
        .filter(|e| a.id.as_ref().is_none_or(|id| e.id.as_ref() == Some(id)))
        .filter(|e| {
            prefix
                .as_ref()
                .is_none_or(|p| e.digest.as_ref().is_some_and(|d| d.starts_with(p)))
        })
        .map(|e| e.index)
        .collect();
    let what = match (&a.id, &a.digest) {
        (Some(id), Some(d)) => format!("client {id:?} with a key_sha256 starting {d}"),
        (Some(id), None) => format!("client {id:?}"),
        (None, d) => format!("key_sha256 starting {}", d.as_deref().unwrap_or("")),
    };
    match hits.len() {
        0 => {
            return Err(Fail::usage(format!("no {what} in {}", a.file.display())));
        }
        1 => {}
        n => {
            return Err(Fail::usage(format!(
                "--digest: {n} entries match {what}; give more characters"
            )));
        }
    }
    doc.remove(&hits);
    replace(&locked, &doc, main.as_ref())?;
    eprintln!("# Removed {what} from {}.", a.file.display());
    Ok(())
}

fn try_list(a: &ListArgs) -> Result<(), Fail> {
    let mut cfg = config::parse("").map_err(config_fail)?;
    cfg.auth.clients_file = Some(a.file.clone());
    cfg.resolve_files().map_err(config_fail)?;
    let now = SystemTime::now();
    println!(
        "{:<24} {:<5} {:<14} {:<21} EXPIRED",
        "ID", "AUTH", "KEY_SHA256", "EXPIRES"
    );
    for c in &cfg.clients {
        let auth = if c.key_sha256.is_some() {
            "key"
        } else if c.jwt_subject.is_some() {
            "jwt"
        } else {
            "mtls"
        };
        let digest = c.key_sha256.as_deref().map_or_else(
            || "-".to_string(),
            |d| {
                let shown: String = d.chars().take(SHOWN_DIGEST).collect();
                format!("{}…", shown.to_ascii_lowercase())
            },
        );
        let expires = c
            .expires
            .as_ref()
            .map_or_else(|| "-".to_string(), ToString::to_string);
        let expired = match c.expires_at() {
            Ok(Some(t)) if t <= now => "yes",
            Ok(_) => "no",
            Err(_) => "invalid",
        };
        println!(
            "{:<24} {auth:<5} {digest:<14} {expires:<21} {expired}",
            c.id
        );
    }
    Ok(())
}

/// `--expires`: a UTC date-time in the future, as a TOML datetime.
fn parse_expires(s: &str) -> Result<toml_edit::Datetime, Fail> {
    let bad = || Fail::usage("--expires must be a UTC date-time such as 2027-03-01T00:00:00Z");
    let dt: toml_edit::Datetime = s.parse().map_err(|_| bad())?;
    let at = humantime::parse_rfc3339(&dt.to_string()).map_err(|_| bad())?;
    if at <= SystemTime::now() {
        return Err(Fail::usage(format!("--expires {s} is in the past")));
    }
    Ok(dt)
}

/// `--config`: parsed (not yet merged with any clients file), and using FILE as its
/// `auth.clients_file`, else the check would judge a file the gateway never reads.
fn main_config(path: &Path, file: &Path) -> Result<config::Config, Fail> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Fail(EXIT_IO, vec![format!("--config {}: {e}", path.display())]))?;
    let cfg = config::parse(&text).map_err(|errs| {
        let mut lines = vec![format!(
            "--config {}: {} problem(s):",
            path.display(),
            errs.len()
        )];
        lines.extend(errs.iter().map(ToString::to_string));
        Fail(EXIT_CONFIG, lines)
    })?;
    let same = cfg
        .auth
        .clients_file
        .as_deref()
        .and_then(real)
        .is_some_and(|used| real(file) == Some(used));
    if !same {
        return Err(Fail::usage(format!(
            "--config {}: its auth.clients_file is not {} (the gateway would not read the change)",
            path.display(),
            file.display()
        )));
    }
    Ok(cfg)
}

/// A path with its directory resolved (the file itself may not exist yet).
fn real(p: &Path) -> Option<PathBuf> {
    if let Ok(r) = std::fs::canonicalize(p) {
        return Some(r);
    }
    let dir = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Some(std::fs::canonicalize(dir).ok()?.join(p.file_name()?))
}

/// `--config` read (if given), then FILE locked and parsed for editing.
fn open(
    file: &Path,
    config: Option<&Path>,
) -> Result<(Option<config::Config>, file::Locked, Doc), Fail> {
    let main = config.map(|c| main_config(c, file)).transpose()?;
    let locked = lock(file)?;
    let doc = parse_doc(&locked)?;
    Ok((main, locked, doc))
}

fn lock(path: &Path) -> Result<file::Locked, Fail> {
    file::open(path).map_err(|e| Fail(EXIT_IO, vec![format!("--file {}: {e}", path.display())]))
}

fn parse_doc(locked: &file::Locked) -> Result<Doc, Fail> {
    Doc::parse(&locked.text)
        .map_err(|m| Fail::usage(format!("--file {}: {m}", locked.path.display())))
}

/// Put the edited document in place if the gateway would accept it.
fn replace(locked: &file::Locked, doc: &Doc, main: Option<&config::Config>) -> Result<(), Fail> {
    let shown = locked.path.display().to_string();
    let check = |tmp: &Path| {
        let tmp_shown = tmp.display().to_string();
        config::check_clients_file(tmp, main)
            .iter()
            .map(|e| e.to_string().replace(&tmp_shown, &shown))
            .collect::<Vec<String>>()
    };
    locked.replace(&doc.text(), check).map_err(|e| match e {
        ReplaceError::Invalid(problems) => {
            let mut lines = vec![format!(
                "the change was not written: the gateway would refuse {shown}:"
            )];
            lines.extend(problems);
            Fail(EXIT_CONFIG, lines)
        }
        ReplaceError::Io(m) => Fail(EXIT_IO, vec![m]),
    })
}

fn config_fail(errs: Vec<config::ConfigError>) -> Fail {
    Fail(EXIT_CONFIG, errs.iter().map(ToString::to_string).collect())
}
