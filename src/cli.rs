//! CLI (clap): `serve`, `check`, `keys new`, `audit verify`, `demo`. Exit codes follow
//! sysexits.h (`error::InitError`): 64 bad config, 69 unavailable, 70 software, 74 audit I/O.
//! Printing to stdout is this module's job (the intended output of `check`, `keys`, `verify`).
#![expect(clippy::print_stdout, reason = "the CLI's intended output")]

use clap::{Parser, Subcommand};
#[cfg(feature = "demo")]
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::config;
use crate::error::{InitError, EXIT_CONFIG, EXIT_IO, EXIT_SOFTWARE};

#[derive(Parser)]
#[command(
    name = "nimgate",
    version,
    about = "Authenticating gateway that keeps the NVIDIA NIM API key out of env vars"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway.
    Serve {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file; print each problem with its field; exit 64 on any.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Client key management.
    Keys {
        #[command(subcommand)]
        cmd: KeysCmd,
    },
    /// Audit trail tools.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
    /// Gateway + built-in fake NIM + temporary key file in one process: try nimgate in a minute.
    #[cfg(feature = "demo")]
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_listen: SocketAddr,
    },
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Make a new random client key. The `[[clients]]` entry (digest only) goes to stdout, so
    /// `nimgate keys new --id X >> clients.toml` never stores the key; the key itself goes to
    /// stderr, or to the file given with --key-out (created 0600).
    New {
        /// Client id for the entry (1–128 printable characters, no quotes or backslashes).
        #[arg(long)]
        id: String,
        /// Write the plaintext key to this new file (mode 0600) instead of stderr.
        #[arg(long, value_name = "FILE")]
        key_out: Option<PathBuf>,
    },
    /// Print the `key_sha256` digest of a key read from stdin (one line; a trailing newline is
    /// ignored), e.g. to register a key that already exists.
    Hash,
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Check the hash chain of audit files (oldest first, e.g. audit.jsonl.2 audit.jsonl.1 audit.jsonl).
    Verify {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The chain key file (`audit.chain_key_file`) of a keyed chain.
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Check { config } => match config::load(&config).and_then(|c| {
            let errs = c.preflight();
            if errs.is_empty() {
                Ok(c)
            } else {
                Err(errs)
            }
        }) {
            Ok(cfg) => {
                println!(
                    "{}: OK ({} client(s), {})",
                    config.display(),
                    cfg.clients.len(),
                    upstreams_summary(&cfg)
                );
                ExitCode::SUCCESS
            }
            Err(errs) => config_errors(&config, &errs),
        },
        Cmd::Serve { config } => {
            let cfg = match config::load(&config) {
                Ok(c) => c,
                Err(errs) => return config_errors(&config, &errs),
            };
            crate::telemetry::init_logging();
            runtime(cfg.server.workers, crate::server::serve(cfg))
        }
        Cmd::Keys {
            cmd: KeysCmd::New { id, key_out },
        } => keys_new(&id, key_out.as_deref()),
        Cmd::Keys { cmd: KeysCmd::Hash } => {
            let mut line = zeroize::Zeroizing::new(String::new());
            if std::io::stdin().read_line(&mut line).is_err() {
                eprintln!("error: cannot read a key from stdin");
                return ExitCode::from(EXIT_CONFIG);
            }
            let key = line.trim_end_matches(['\n', '\r']);
            if key.is_empty() {
                eprintln!("error: no key on stdin");
                return ExitCode::from(EXIT_CONFIG);
            }
            println!("key_sha256 = \"{}\"", crate::auth::key_digest_hex(key));
            ExitCode::SUCCESS
        }
        Cmd::Audit {
            cmd: AuditCmd::Verify { files, key_file },
        } => {
            let paths: Vec<&std::path::Path> =
                files.iter().map(std::path::PathBuf::as_path).collect();
            let key = match key_file.as_deref().map(crate::audit::ChainKey::from_file) {
                None => crate::audit::ChainKey::none(),
                Some(Ok(k)) => k,
                Some(Err(e)) => {
                    println!("cannot read --key-file: {e}");
                    return ExitCode::from(66);
                }
            };
            match crate::audit::verify::verify_files_keyed(&paths, &key) {
                Ok(s) => {
                    println!(
                        "OK: {} records, seq {}..{}{}",
                        s.records,
                        s.first_seq.map_or("-".into(), |v| v.to_string()),
                        s.last_seq.map_or("-".into(), |v| v.to_string()),
                        if s.partial_start {
                            " (chain starts mid-way: earlier files not given)"
                        } else {
                            ""
                        }
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    println!("BROKEN: {e}");
                    ExitCode::from(1)
                }
            }
        }
        #[cfg(feature = "demo")]
        Cmd::Demo {
            listen,
            admin_listen,
        } => {
            crate::telemetry::init_logging();
            runtime(0, crate::demo::run(listen, admin_listen))
        }
    }
}

/// `keys new`: the entry to stdout, the key to stderr or `--key-out` (0600, never overwritten).
fn keys_new(id: &str, key_out: Option<&std::path::Path>) -> ExitCode {
    if id.is_empty()
        || id.len() > 128
        || id.contains(['"', '\\'])
        || id.chars().any(char::is_control)
    {
        eprintln!("error: --id must be 1–128 printable characters without quotes or backslashes");
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

fn config_errors(path: &std::path::Path, errs: &[config::ConfigError]) -> ExitCode {
    eprintln!("{}: {} problem(s):", path.display(), errs.len());
    for e in errs {
        eprintln!("  error: {e}");
    }
    ExitCode::from(EXIT_CONFIG)
}

fn runtime(
    workers: usize,
    fut: impl std::future::Future<Output = Result<(), InitError>>,
) -> ExitCode {
    for p in crate::hardening::harden_process() {
        tracing::warn!("{p}");
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    // One worker: a current-thread runtime (no work-stealing machinery, no cross-thread
    // wake-ups); more: the multi-thread scheduler.
    let mut b = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    b.enable_all().on_thread_park(crate::audit::on_thread_park);
    if workers > 1 {
        b.worker_threads(workers);
    }
    let rt = match b.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::from(EXIT_SOFTWARE);
        }
    };
    match rt.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// `secret source file, upstream http://…` (single form) or
/// `upstreams llama (vault, 2 replica(s)), embed (file, 1 replica(s))`.
fn upstreams_summary(cfg: &config::Config) -> String {
    let source = |s: Option<&config::SecretConfig>| match s {
        Some(config::SecretConfig::Vault(_)) => "vault",
        _ => "file",
    };
    let list = cfg.upstream_list();
    if cfg.upstream.is_some() {
        let urls: Vec<&str> = list
            .iter()
            .flat_map(|u| u.cfg.replica_urls(""))
            .map(|(_, u)| u)
            .collect();
        return format!(
            "secret source {}, upstream {}",
            source(cfg.secret.as_ref()),
            urls.join(" ")
        );
    }
    let each: Vec<String> = list
        .iter()
        .map(|u| {
            format!(
                "{} ({}, {} replica(s))",
                u.name,
                source(u.secret),
                u.cfg.replica_urls("").len()
            )
        })
        .collect();
    format!("upstreams {}", each.join(", "))
}
