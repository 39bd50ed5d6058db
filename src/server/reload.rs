//! Live config reload. Triggers: SIGHUP (at once) and a change of the config file's or
//! `auth.clients_file`'s *contents*, polled every `server.config_poll_interval` (contents, not
//! mtimes: a Kubernetes ConfigMap or Secret update swaps a symlink).
//!
//! One attempt: read the file once, digest it, and validate those very contents as at start
//! (`config::load_text`); build a complete new live state (`App::rebuild`: clients, routes and
//! upstreams, limits, prefixes), give each upstream with new secret settings its first key (so no
//! request ever finds an upstream without one), then publish it with one `ArcSwap` store and make
//! the background tasks match it. A request in flight keeps the state it started with; no
//! connection is touched. Anything that fails refuses the whole change and the old state keeps
//! serving; settings that only a restart can change are reported (`needs_restart`) and keep their
//! old value while the rest applies.
//! Every attempt is a `config_reload` audit record and a `nimgate_config_reloads_total` count.

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

use super::conn::ConnSettings;
use super::diff;
use super::tasks::Tasks;
use crate::app::App;
use crate::audit::{capped_list, ConfigChange, Event, Record};
use crate::config::Config;

/// Longest a reload waits for the first key of an upstream whose secret settings changed.
const FIRST_KEY_WAIT: Duration = Duration::from_secs(10);

pub struct Reloader {
    pub path: PathBuf,
    pub app: Arc<App>,
    pub conn: Arc<ArcSwap<ConnSettings>>,
    /// The config the process started with: its restart-only settings are the ones in force.
    pub started: Arc<Config>,
    /// Digest of what the last attempt (or the start) read, to see a change when polling.
    seen: [u8; 32],
    /// Installed at construction, before the gateway says it is serving: from then on a SIGHUP
    /// is a reload, never the default action (the end of the process).
    hup: Option<tokio::signal::unix::Signal>,
}

/// How an attempt ended.
enum Outcome {
    Applied,
    Refused,
    Unchanged,
}

impl Outcome {
    fn as_str(&self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Refused => "refused",
            Self::Unchanged => "unchanged",
        }
    }
}

impl Reloader {
    pub fn new(path: PathBuf, app: Arc<App>, conn: Arc<ArcSwap<ConnSettings>>) -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        let started = app.live().config.clone();
        let hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot install the SIGHUP handler: reload by file change only");
                None
            }
        };
        let mut r = Self {
            path,
            app,
            conn,
            started,
            seen: [0; 32],
            hup,
        };
        r.seen = r.read().1;
        r
    }

    /// The config file's contents as they are now (empty when unreadable), the digest of them
    /// and of the clients file together, and each one's own digest (hex; the clients file's when
    /// one is set).
    fn read(&self) -> (std::io::Result<Vec<u8>>, [u8; 32], String, Option<String>) {
        let read = std::fs::read(&self.path);
        let text = read.as_deref().unwrap_or_default();
        let config = Sha256::digest(text);
        let clients = self
            .app
            .live()
            .config
            .auth
            .clients_file
            .as_ref()
            .map(|p| Sha256::digest(std::fs::read(p).unwrap_or_default()));
        let mut both = Sha256::new();
        both.update(config);
        if let Some(c) = &clients {
            both.update(c);
        }
        (
            read,
            both.finalize().into(),
            hex::encode(config),
            clients.map(hex::encode),
        )
    }

    /// Serve reloads until `stop`; hands the tasks back for shutdown.
    pub async fn run(mut self, mut tasks: Tasks, mut stop: watch::Receiver<bool>) -> Tasks {
        let mut hup = self.hup.take();
        loop {
            let every = self.app.live().config.server.config_poll_interval;
            let sighup = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            let trigger = tokio::select! {
                _ = sighup => "sighup",
                () = tokio::time::sleep(every), if !every.is_zero() => {
                    if self.read().1 == self.seen {
                        continue;
                    }
                    "file_changed"
                }
                _ = stop.changed() => return tasks,
            };
            self.attempt(trigger, &mut tasks).await;
        }
    }

    /// One reload attempt, recorded whatever its outcome.
    pub async fn attempt(&mut self, trigger: &'static str, tasks: &mut Tasks) {
        let started_at = Instant::now();
        let (text, seen, sha256, clients_file_sha256) = self.read();
        self.seen = seen;
        let mut change = ConfigChange {
            trigger,
            sha256,
            clients_file_sha256,
            ..ConfigChange::default()
        };
        let outcome = match self.apply(text, &mut change, tasks).await {
            Ok(o) => o,
            Err(errors) => {
                for (field, message) in &errors {
                    tracing::error!(field = %field, error = %message, "config reload refused: the running config stays");
                }
                change.errors = capped_list(errors.into_iter().map(|(f, _)| f).collect());
                Outcome::Refused
            }
        };
        let o = outcome.as_str();
        self.app.metrics.reload(o);
        if !change.needs_restart.is_empty() {
            tracing::warn!(settings = ?change.needs_restart, "config reload: these changes take effect only after a restart");
        }
        if matches!(outcome, Outcome::Applied) {
            tracing::info!(
                trigger,
                clients_added = change.clients.added.len(),
                clients_removed = change.clients.removed.len(),
                clients_changed = change.clients.changed.len(),
                upstreams_changed = change.upstreams.added.len()
                    + change.upstreams.removed.len()
                    + change.upstreams.changed.len(),
                took_ms = started_at.elapsed().as_millis() as u64,
                "config reloaded"
            );
        } else {
            tracing::info!(trigger, outcome = o, "config reload attempt");
        }
        let mut r = Record::event(Event::ConfigReload);
        r.reason = Some(o.to_string());
        r.config = Some(Box::new(change));
        let _ = self.app.audit.record(r).await;
    }

    /// `text`: the config file's contents that `change.sha256` is the digest of.
    async fn apply(
        &mut self,
        text: std::io::Result<Vec<u8>>,
        change: &mut ConfigChange,
        tasks: &mut Tasks,
    ) -> Result<Outcome, Vec<(String, String)>> {
        let cannot_read = |e: &dyn std::fmt::Display| {
            vec![(
                "config".to_string(),
                format!("cannot read {}: {e}", self.path.display()),
            )]
        };
        let text = text.map_err(|e| cannot_read(&e))?;
        let text = String::from_utf8(text)
            .map_err(|_| cannot_read(&"stream did not contain valid UTF-8"))?;
        let new = crate::config::load_text(&text).map_err(|errs| {
            errs.into_iter()
                .map(|e| (e.field, e.message))
                .collect::<Vec<_>>()
        })?;
        let old = self.app.live().config.clone();
        change.needs_restart = diff::needs_restart(&self.started, &new);
        change.clients = diff::clients(&old, &new);
        change.upstreams = diff::upstreams(&old, &new);
        change.settings = diff::settings(&old, &new);
        for d in [&mut change.clients, &mut change.upstreams] {
            for v in [&mut d.added, &mut d.removed, &mut d.changed] {
                *v = capped_list(std::mem::take(v));
            }
        }
        if change.clients.is_empty() && change.upstreams.is_empty() && change.settings.is_empty() {
            return Ok(Outcome::Unchanged);
        }
        let conn = ConnSettings::new(&new, self.conn.load().tls.clone())
            .map_err(|e| vec![(e.field, e.message)])?;
        let (live, sources) = self
            .app
            .rebuild(new)
            .map_err(|e| vec![("config".to_string(), e.to_string())])?;
        // The first key of each upstream with new secret settings, before anything is published.
        let stores: Vec<_> = sources
            .iter()
            .map(|(n, s, _)| (n.clone(), s.clone()))
            .collect();
        tasks.start_refreshers(sources);
        let deadline = Instant::now() + FIRST_KEY_WAIT;
        let missing = loop {
            let missing: Vec<_> = stores.iter().filter(|(_, s)| s.peek().is_none()).collect();
            // Two failed fetches in a row (a second after the first): no need to wait longer.
            let failing = missing.iter().any(|(_, s)| s.consecutive_failures() >= 2);
            if missing.is_empty() || failing || Instant::now() >= deadline {
                break missing;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if !missing.is_empty() {
            let errs = missing
                .iter()
                .map(|(n, _)| {
                    (
                        format!("upstream {n}: secret"),
                        "the new secret settings gave no key (see the secret_failure records); the upstream keeps its old settings".to_string(),
                    )
                })
                .collect();
            let all: Vec<_> = stores.into_iter().map(|(_, s)| s).collect();
            tasks.stop_refreshers(&all).await;
            return Err(errs);
        }
        let level = live.config.server.log_level.clone();
        let live = Arc::new(live);
        self.app.live.store(live.clone());
        if let Err(e) = crate::telemetry::set_log_level(&level) {
            tracing::warn!(error = %e, "server.log_level: the log filter was not changed");
        }
        self.conn.store(Arc::new(conn));
        tasks.sync(&live).await;
        Ok(Outcome::Applied)
    }
}
