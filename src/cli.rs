//! CLI (clap): `serve`, `check`, `keys new|hash|add|revoke|list`, `audit verify`, `demo`. Exit codes follow
//! sysexits.h (`error::InitError`): 64 bad config, 69 unavailable, 70 software, 74 audit I/O.
//! Printing to stdout is this module's job (the intended output of `check`, `keys`, `verify`).
#![expect(clippy::print_stdout, reason = "the CLI's intended output")]

use clap::{Parser, Subcommand};
#[cfg(feature = "demo")]
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::commands::{audit_verify, check_online, keys_new};
use crate::config;
use crate::error::{InitError, EXIT_CONFIG, EXIT_SOFTWARE};

/// After `nimgate --help`: what the binary reads from the environment, its signals, its exit
/// codes (tests/binary.rs pins each line; README "Command line" says the same).
const AFTER_HELP: &str = "\
Environment:
  No secret is ever read from an environment variable: the NIM key comes from [secret] (a file
  or Vault), Vault credentials from files, client keys are stored as digests in the config.
  Non-secret overrides of the config file: NIMGATE_SERVER_LISTEN, NIMGATE_ADMIN_LISTEN,
  NIMGATE_UPSTREAM_URL, NIMGATE_AUDIT_PATH, NIMGATE_VAULT_ADDRESS (an error they cause names
  the variable). Logging: server.log_level (default info; RUST_LOG, if set, wins),
  NIMGATE_LOG_FORMAT=json.

Signals (serve):
  SIGTERM, SIGINT  drain: /readyz answers 503 while the listener keeps accepting for
                   server.drain_delay, then the listener closes and in-flight requests and
                   streams get server.shutdown_grace.
  SIGHUP           reload the config file (also done when its contents or auth.clients_file's
                   change, polled every server.config_poll_interval). A broken change is
                   refused whole and the running config stays; listen addresses, workers,
                   [audit] and [telemetry] need a restart.

Exit codes:
  0   success            1   audit verify found a break (or a chain short of its anchor)
  64  bad config or arguments (each problem names its field)
  66  audit verify: --key-file or an --anchors file unreadable
  69  unavailable: a listen address in use, check --online could not fetch the key,
      audit verify could not read the --anchors store
  70  internal error     74  audit trail I/O (cannot open, locked by another gateway)";

#[derive(Parser)]
#[command(
    name = "nimgate",
    version,
    about = "Authenticating gateway that keeps the NVIDIA NIM API key out of env vars",
    after_help = AFTER_HELP
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway (until SIGTERM/SIGINT; see `nimgate --help` for signals and exit codes).
    Serve {
        /// The config file (TOML; see config/nimgate.toml).
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a config file and what `serve` would check at start without the network (audit
    /// file appendable, TLS and CA files, clients file); print each problem with its field;
    /// exit 64 on any.
    Check {
        /// The config file (TOML).
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// Also log in to Vault (or read the key file) and fetch the key once; prints its
        /// version and fingerprint, never the key; exit 69 with the cause if that fails.
        #[arg(long)]
        online: bool,
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
        /// Client listener (ip:port).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Admin listener for /healthz, /readyz, /metrics (ip:port).
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
    /// Add a client with a new key to a clients file (`[auth] clients_file`): the key is printed
    /// once on stdout, only its digest is stored. Atomic, locked, comments kept; refused if the
    /// gateway would not accept the result.
    Add(crate::keys::AddArgs),
    /// Remove a client's entry (by --id, or by --digest prefix) from a clients file.
    Revoke(crate::keys::RevokeArgs),
    /// List a clients file's entries: id, how it authenticates, digest prefix, expiry. Never a key.
    List(crate::keys::ListArgs),
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Check the hash chain of audit files (oldest first, e.g. audit.jsonl.2 audit.jsonl.1 audit.jsonl).
    Verify {
        /// The audit files, oldest first (rotated ones before the current one).
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// The chain key file (`audit.chain_key_file`) of a keyed chain.
        #[arg(long, value_name = "FILE")]
        key_file: Option<PathBuf>,
        /// Accept files with no record at all (by default an empty trail is an error: a
        /// gateway writes a `start` record as soon as it opens the file).
        #[arg(long)]
        allow_empty: bool,
        /// Fail unless the last record's seq is N (e.g. from an anchor or a previous run):
        /// detects records cut from the end, which the chain alone cannot show.
        #[arg(long, value_name = "N")]
        expect_last_seq: Option<u64>,
        #[command(flatten)]
        anchors: crate::verify_cli::AnchorArgs,
        /// Print one JSON object: {"ok", "records", "first_seq", "last_seq", "partial_start",
        /// "errors": [...], "chains": [...]}, with --anchors also "anchors".
        #[arg(long)]
        json: bool,
    },
}

pub fn main() -> ExitCode {
    // Usage errors exit 64 (EX_USAGE) like config errors, not clap's 2; --help/--version 0.
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.cmd {
        Cmd::Check { config, online } => match config::load(&config).and_then(|c| {
            let errs = config::preflight(&c);
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
                if online {
                    check_online(&cfg)
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(errs) => config_errors(&config, &errs),
        },
        Cmd::Serve { config } => {
            let cfg = match config::load(&config) {
                Ok(c) => c,
                Err(errs) => return config_errors(&config, &errs),
            };
            // Built before the runtime: the exporter's blocking HTTP client owns its own.
            let otel = match crate::telemetry::otel::init(&cfg.telemetry) {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("{}: {e}", config.display());
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            crate::telemetry::init_logging(otel.as_ref(), &cfg.server.log_level);
            let grace = cfg.server.shutdown_grace;
            let code = runtime(
                cfg.server.workers,
                crate::server::serve(cfg, Some(config.clone())),
            );
            // Spans still queued are exported within the grace period.
            if let Some(o) = otel {
                o.shutdown(grace);
            }
            code
        }
        Cmd::Keys {
            cmd: KeysCmd::New { id, key_out },
        } => keys_new(&id, key_out.as_deref()),
        Cmd::Keys {
            cmd: KeysCmd::Add(a),
        } => crate::keys::add(&a),
        Cmd::Keys {
            cmd: KeysCmd::Revoke(a),
        } => crate::keys::revoke(&a),
        Cmd::Keys {
            cmd: KeysCmd::List(a),
        } => crate::keys::list(&a),
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
            cmd:
                AuditCmd::Verify {
                    files,
                    key_file,
                    allow_empty,
                    expect_last_seq,
                    anchors,
                    json,
                },
        } => {
            let opts = crate::audit::verify::Options {
                allow_empty,
                expect_last_seq,
            };
            audit_verify(&files, key_file.as_deref(), opts, &anchors, json)
        }
        #[cfg(feature = "demo")]
        Cmd::Demo {
            listen,
            admin_listen,
        } => {
            crate::telemetry::init_logging(None, "info");
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
            let msg = match config::override_behind(&e.to_string()) {
                Some(var) => format!("{e} (the setting comes from {var})"),
                None => e.to_string(),
            };
            tracing::error!("{msg}");
            eprintln!("error: {msg}");
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
