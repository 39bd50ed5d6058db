//! The bodies of the CLI's one-shot commands (`audit verify`, `keys new`, `check --online`;
//! `keys add|revoke|list` live in `keys`); `cli` parses the arguments and calls them
//! (`verify_cli` loads `verify --anchors`). Exit codes as in `cli`.
#![expect(clippy::print_stdout, reason = "the CLI's intended output")]

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config;
use crate::error::{EXIT_CONFIG, EXIT_IO, EXIT_SOFTWARE, EXIT_UNAVAILABLE};

/// `audit verify`: exit 0 when the chain holds (and reaches every anchor), 1 on any break, 66
/// when --key-file (or an --anchors file) is unreadable, 69 when the anchor store is not.
pub(crate) fn audit_verify(
    files: &[PathBuf],
    key_file: Option<&std::path::Path>,
    opts: crate::audit::verify::Options,
    anchors: &crate::verify_cli::AnchorArgs,
    json: bool,
) -> ExitCode {
    let paths: Vec<&std::path::Path> = files.iter().map(PathBuf::as_path).collect();
    let key = match key_file.map(crate::audit::ChainKey::from_file) {
        None => crate::audit::ChainKey::none(),
        Some(Ok(k)) => k,
        Some(Err(e)) => {
            println!("cannot read --key-file: {e}");
            return ExitCode::from(66);
        }
    };
    let anchors = match anchors.load() {
        Ok(a) => a,
        Err((code, m)) => {
            eprintln!("error: {m}");
            return ExitCode::from(code);
        }
    };
    let mut s = crate::audit::verify::verify(&paths, &key, opts);
    if let Some((list, source)) = anchors {
        crate::audit::anchor::apply(&mut s, &paths, &key, list, &source);
    }
    if json {
        println!(
            "{}",
            serde_json::to_string(&s).unwrap_or_else(|_| "{\"ok\":false}".into())
        );
    } else {
        print!("{}", s.text());
    }
    if s.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// What `--id` of `keys new` and `keys add` must be.
pub(crate) const ID_RULE: &str = "must be 1–128 printable characters without quotes or backslashes";

/// A client id `keys` accepts (stricter than the config: no quoting questions in any output).
pub(crate) fn valid_id(id: &str) -> bool {
    !(id.is_empty()
        || id.len() > 128
        || id.contains(['"', '\\'])
        || id.chars().any(char::is_control))
}

/// `keys new`: the entry to stdout, the key to stderr or `--key-out` (0600, never overwritten).
pub(crate) fn keys_new(id: &str, key_out: Option<&std::path::Path>) -> ExitCode {
    if !valid_id(id) {
        eprintln!("error: --id {ID_RULE}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let key = match crate::auth::new_client_key() {
        Ok(k) => zeroize::Zeroizing::new(k),
        Err(e) => {
            eprintln!("error: no OS randomness available: {e}");
            return ExitCode::from(EXIT_SOFTWARE);
        }
    };
    if let Some(path) = key_out {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        {
            let written = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .and_then(|mut f| f.write_all(format!("{}\n", key.as_str()).as_bytes()));
            if let Err(e) = written {
                eprintln!("error: --key-out {}: {e}", path.display());
                return ExitCode::from(EXIT_IO);
            }
            eprintln!("# The key for {id:?} is in {} (mode 0600).", path.display());
        }
    } else {
        eprintln!("# Client key for {id:?}: give it to the client now, it is not stored anywhere:");
        eprintln!("{}", key.as_str());
    }
    println!("[[clients]]");
    println!("id = {id:?}");
    println!("key_sha256 = \"{}\"", crate::auth::key_digest_hex(&key));
    ExitCode::SUCCESS
}

/// `check --online`: fetch the key once (a runtime only for that), exit 69 on failure.
pub(crate) fn check_online(cfg: &config::Config) -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::from(EXIT_SOFTWARE);
        }
    };
    // Every upstream's secret, each named (`upstream` is the single form's `default`).
    let mut failed = false;
    for up in cfg.upstream_list() {
        let Some(secret) = up.secret else { continue };
        let label = if cfg.upstreams.is_empty() {
            String::new()
        } else {
            format!("{}: ", up.name)
        };
        match rt.block_on(crate::secret::check_once(secret)) {
            Ok(what) => println!("{label}{what}"),
            Err(e) => {
                eprintln!("error: {label}{e}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::from(EXIT_UNAVAILABLE)
    } else {
        ExitCode::SUCCESS
    }
}
