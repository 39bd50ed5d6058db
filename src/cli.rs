//! CLI (clap): `serve`, `check`, `keys new`, `audit verify`, `demo`. Exit 64 on bad config.

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::config;

/// EX_USAGE from sysexits.h: bad configuration or arguments.
pub const EXIT_CONFIG: u8 = 64;

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
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_listen: SocketAddr,
    },
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Make a new random client key: prints it once, and the [[clients]] entry with its digest.
    New {
        #[arg(long)]
        id: String,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Check the hash chain of audit files (oldest first, e.g. audit.jsonl.2 audit.jsonl.1 audit.jsonl).
    Verify {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Check { config } => match config::load(&config) {
            Ok(cfg) => {
                println!(
                    "{}: OK ({} client(s), secret source {}, upstream {})",
                    config.display(),
                    cfg.clients.len(),
                    match cfg.secret {
                        config::SecretConfig::File(_) => "file",
                        config::SecretConfig::Vault(_) => "vault",
                    },
                    cfg.upstream.url
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
            cmd: KeysCmd::New { id },
        } => {
            if id.is_empty()
                || id.len() > 128
                || id.contains(['"', '\\'])
                || id.chars().any(char::is_control)
            {
                eprintln!(
                    "error: --id must be 1–128 printable characters without quotes or backslashes"
                );
                return ExitCode::from(EXIT_CONFIG);
            }
            let key = new_client_key();
            println!(
                "# Client key for {id:?}: give it to the client now, it is not stored anywhere."
            );
            println!("# {key}");
            println!();
            println!("[[clients]]");
            println!("id = {id:?}");
            println!("key_sha256 = \"{}\"", crate::auth::key_digest_hex(&key));
            ExitCode::SUCCESS
        }
        Cmd::Audit {
            cmd: AuditCmd::Verify { files },
        } => {
            let paths: Vec<&std::path::Path> = files.iter().map(|p| p.as_path()).collect();
            match crate::audit::verify::verify_files(&paths) {
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
        Cmd::Demo {
            listen,
            admin_listen,
        } => {
            crate::telemetry::init_logging();
            runtime(0, crate::demo::run(listen, admin_listen))
        }
    }
}

fn config_errors(path: &std::path::Path, errs: &[config::ConfigError]) -> ExitCode {
    eprintln!("{}: {} problem(s):", path.display(), errs.len());
    for e in errs {
        eprintln!("  error: {e}");
    }
    ExitCode::from(EXIT_CONFIG)
}

fn runtime(workers: usize, fut: impl std::future::Future<Output = Result<(), String>>) -> ExitCode {
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
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("error: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// `ngk_` + 48 hex chars (192 random bits).
pub fn new_client_key() -> String {
    let mut b = [0u8; 24];
    if getrandom::getrandom(&mut b).is_err() {
        // No entropy source is not something to paper over.
        eprintln!("error: no OS randomness available");
        std::process::exit(1);
    }
    format!("ngk_{}", hex::encode(b))
}
