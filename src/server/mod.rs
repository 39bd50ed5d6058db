//! Listeners and the process lifecycle: bind, start the audit trail and the secret refreshers,
//! accept client connections (`conn` serves each), run the admin listener, and on SIGTERM/SIGINT
//! drain in the order a load balancer needs (`/readyz` 503 while still accepting for
//! `drain_delay`, then stop accepting and let in-flight streams finish for `shutdown_grace`).
//! With a config file, `reload` swaps the live state on SIGHUP or a change; `tasks` runs the
//! refreshers and probes of whatever state is live. New connections take the connection settings
//! (`ConnSettings`, from an `ArcSwap`) live at accept; each request takes the live stack.

mod conn;
mod diff;
mod peers;
mod reload;
mod tasks;
pub mod xff;

use arc_swap::ArcSwap;
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::app::{self, App};
use crate::audit::Audit;
use crate::config::Config;
use crate::error::InitError;
use crate::health;
use conn::ConnSettings;
use peers::PerIp;

/// Bind `addr`; a failure names the setting it came from (exit 69).
pub async fn bind(
    field: &'static str,
    addr: std::net::SocketAddr,
) -> Result<TcpListener, InitError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| InitError::Bind {
            field,
            addr,
            source,
        })
}

/// Bind both listeners from config, run until SIGTERM/SIGINT; `path`: the file `cfg` came from,
/// reloaded on SIGHUP and when its contents change (`reload.rs`).
pub async fn serve(cfg: Config, path: Option<PathBuf>) -> Result<(), InitError> {
    let listener = bind("server.listen", cfg.server.listen).await?;
    let admin = bind("admin.listen", cfg.admin.listen).await?;
    run_reloading(cfg, path, listener, admin, shutdown_signal()).await
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}

/// Run the gateway on bound listeners until `shutdown` resolves, then drain (no reload).
pub async fn run(
    cfg: Config,
    listener: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), InitError> {
    run_reloading(cfg, None, listener, admin, shutdown).await
}

/// `run`, reloading the config from `path` (when given) on SIGHUP and on a change.
pub async fn run_reloading(
    cfg: Config,
    path: Option<PathBuf>,
    listener: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), InitError> {
    check_nofile(cfg.limits.max_connections);
    let (audit, writer) = Audit::start(&cfg.audit).map_err(|source| InitError::AuditIo {
        path: cfg.audit.path.clone().into(),
        source,
    })?;
    let (app, sources) = app::build(&cfg, audit.clone())?;
    let app = Arc::new(app);
    let (stop_tx, stop_rx) = watch::channel(false);
    let anchor =
        crate::audit::anchor::start(&cfg, &audit, stop_rx.clone()).map_err(InitError::Config)?;
    let mut tasks = tasks::Tasks::new(audit.clone());
    tasks.start_refreshers(sources);
    tasks.sync(&app.live()).await;
    // The listener's TLS, re-read from its files every `server.tls_reload_interval`.
    let tls =
        crate::tls::ServerTls::start(&cfg.server).map_err(|e| InitError::Config(e.to_string()))?;
    if let Some(t) = &tls {
        let _ = app.metrics.server_tls.set(t.clone());
    }
    let addr = listener
        .local_addr()
        .map_err(|e| InitError::Software(format!("server.listen: {e}")))?;
    let admin_addr = admin
        .local_addr()
        .map_err(|e| InitError::Software(format!("admin.listen: {e}")))?;
    let graceful = GracefulShutdown::new();
    let tls_on = tls.is_some();
    let settings = ConnSettings::new(&cfg, tls)
        .map_err(|e| InitError::Config(format!("{}: {}", e.field, e.message)))?;
    let settings = Arc::new(ArcSwap::from_pointee(settings));
    // The reloader owns the tasks while it runs and hands them back for shutdown. It is built
    // (SIGHUP handler installed) before the serving line below.
    let reload = path.is_some();
    let (reloader, tasks) = match path {
        Some(p) => {
            let r = reload::Reloader::new(p, app.clone(), settings.clone());
            (Some(tokio::spawn(r.run(tasks, stop_rx.clone()))), None)
        }
        None => (None, Some(tasks)),
    };
    let clients = app.live().registry.len();
    tracing::info!(listen = %addr, admin = %admin_addr, tls = tls_on, upstreams = cfg.upstream_list().len(), clients, reload, "nimgate serving");
    let admin_task = tokio::spawn(health::serve_admin(admin, app.clone(), stop_rx.clone()));
    let connections = Arc::new(Semaphore::new(cfg.limits.max_connections));
    let per_ip = PerIp::new(cfg.limits.max_connections_per_ip);
    let limits = (&connections, &per_ip);
    let accept = |stop| accept_loop(&listener, &app, &settings, &graceful, limits, stop);
    accept(Box::pin(shutdown)).await;
    // Draining: unready first, still accepting, so the load balancer moves away before the port
    // closes (Kubernetes removes the endpoint asynchronously).
    app.draining.store(true, Ordering::Release);
    let delay = app.live().config.server.drain_delay;
    if !delay.is_zero() {
        tracing::info!(drain_delay = ?delay, "shutting down: /readyz is 503, still accepting");
        accept(Box::pin(tokio::time::sleep(delay))).await;
    }
    drop(listener);
    let grace = app.live().config.server.shutdown_grace;
    tracing::info!(grace = ?grace, "listener closed: draining in-flight requests");
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("grace period over: closing remaining connections");
    }
    let _ = stop_tx.send(true);
    let tasks = match reloader {
        Some(r) => r.await.ok(),
        None => tasks,
    };
    if let Some(t) = tasks {
        t.stop_all().await;
    }
    let _ = admin_task.await;
    app.denied_budget.write_summary(&audit).await;
    // Everything queued is written and synced; the writer thread ends with the process.
    let flushed = audit.flush().await;
    // The head that flush synced is the trail's last: anchor it (`audit.anchor`).
    if let Some(a) = anchor {
        a.finish().await;
    }
    audit.release_lock();
    drop(writer);
    tracing::info!(audit_flushed = flushed, "stopped");
    Ok(())
}

/// What an accept loop does when `accept(2)` fails: out of descriptors (`EMFILE`, `ENFILE`) or
/// memory, the pending connection stays queued and `accept` would fail again at once, so sleep
/// (doubling from 10 ms to 1 s while it keeps failing) instead of spinning; log the first failure
/// and then at most one line per `LOG_EVERY` with the count suppressed in between.
#[derive(Default)]
pub struct AcceptBackoff {
    delay: Duration,
    last_log: Option<std::time::Instant>,
    suppressed: u64,
}

impl AcceptBackoff {
    const LOG_EVERY: Duration = Duration::from_secs(10);

    /// The sleep after this failure (also advances the backoff).
    pub fn next_delay(&mut self, e: &std::io::Error) -> Duration {
        use nix::errno::Errno;
        let exhausted = e.raw_os_error().is_some_and(|n| {
            [Errno::EMFILE, Errno::ENFILE, Errno::ENOBUFS, Errno::ENOMEM]
                .contains(&Errno::from_raw(n))
        });
        self.delay = if exhausted {
            (self.delay * 2).clamp(Duration::from_millis(10), Duration::from_secs(1))
        } else {
            Duration::from_millis(10)
        };
        self.delay
    }

    /// Whether to log this failure now; `Some(n)`: n failures were not logged since the last.
    pub fn should_log(&mut self, now: std::time::Instant) -> Option<u64> {
        if self
            .last_log
            .is_some_and(|t| now.duration_since(t) < Self::LOG_EVERY)
        {
            self.suppressed += 1;
            return None;
        }
        self.last_log = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }

    pub async fn failed(&mut self, listener: &'static str, e: &std::io::Error) {
        let delay = self.next_delay(e);
        if let Some(suppressed) = self.should_log(std::time::Instant::now()) {
            tracing::warn!(listener, error = %e, suppressed, backoff = ?delay, "accept failed");
        }
        tokio::time::sleep(delay).await;
    }

    /// A successful accept ends the backoff.
    pub fn ok(&mut self) {
        self.delay = Duration::ZERO;
    }
}

/// At start: a soft `RLIMIT_NOFILE` below what `max_connections` needs (each connection one
/// descriptor, plus headroom for upstream connections and files) is raised to the hard limit;
/// still short, warn.
fn check_nofile(max_connections: usize) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let need = u64::try_from(max_connections)
        .unwrap_or(u64::MAX)
        .saturating_add(256);
    let mut have = soft;
    if soft < need && hard > soft && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        tracing::info!(
            from = soft,
            to = hard,
            "raised the soft RLIMIT_NOFILE to the hard limit"
        );
        have = hard;
    }
    if have < need {
        tracing::warn!(
            rlimit_nofile = have,
            max_connections,
            "RLIMIT_NOFILE is below limits.max_connections + 256: descriptors may run out before max_connections is reached"
        );
    }
}

/// Accept connections until `stop` resolves; each is served on its own task.
async fn accept_loop(
    listener: &TcpListener,
    app: &Arc<App>,
    settings: &ArcSwap<ConnSettings>,
    graceful: &GracefulShutdown,
    (connections, per_ip): (&Arc<Semaphore>, &Arc<PerIp>),
    mut stop: std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>>,
) {
    let mut accept_failed = AcceptBackoff::default();
    let mut full_log = AcceptBackoff::default();
    loop {
        let (stream, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    accept_failed.failed("server.listen", &e).await;
                    continue;
                }
            },
            () = &mut stop => return,
        };
        accept_failed.ok();
        // `limits.max_connections`: beyond it a new connection is closed at once, so idle
        // connections (an HTTP/2 peer that only answers pings) cannot exhaust descriptors.
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            if let Some(suppressed) = full_log.should_log(std::time::Instant::now()) {
                tracing::warn!(%remote, suppressed, "max_connections reached: connection refused");
            }
            drop(stream);
            continue;
        };
        // `limits.max_connections_per_ip`: one address cannot take the whole budget.
        let Some(ip_permit) = per_ip.try_acquire(remote.ip()) else {
            tracing::debug!(%remote, "max_connections_per_ip reached: connection refused");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(conn::serve(
            stream,
            remote,
            app.clone(),
            settings.load_full(),
            graceful.watcher(),
            (permit, ip_permit),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::AcceptBackoff;
    use std::time::{Duration, Instant};

    #[test]
    fn accept_backoff_grows_on_emfile_and_logs_rarely() {
        let mut b = AcceptBackoff::default();
        let emfile = std::io::Error::from_raw_os_error(nix::errno::Errno::EMFILE as i32);
        let delays: Vec<_> = (0..10).map(|_| b.next_delay(&emfile)).collect();
        assert_eq!(delays[0], Duration::from_millis(10));
        assert!(delays.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(delays[9], Duration::from_secs(1));
        b.ok();
        assert_eq!(b.next_delay(&emfile), Duration::from_millis(10));
        let now = Instant::now();
        assert_eq!(b.should_log(now), Some(0));
        assert_eq!(b.should_log(now), None);
        assert_eq!(b.should_log(now + Duration::from_secs(11)), Some(1));
    }
}
