//! Listeners and the process lifecycle: bind, start the audit trail and the secret refreshers,
//! accept client connections (`conn` serves each), run the admin listener, and on SIGTERM/SIGINT
//! drain in the order a load balancer needs (`/readyz` 503 while still accepting for
//! `drain_delay`, then stop accepting and let in-flight streams finish for `shutdown_grace`).

mod conn;
mod peers;

use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
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

/// Bind both listeners from config, run until SIGTERM/SIGINT.
pub async fn serve(cfg: Config) -> Result<(), InitError> {
    let listener = bind("server.listen", cfg.server.listen).await?;
    let admin = bind("admin.listen", cfg.admin.listen).await?;
    run(cfg, listener, admin, shutdown_signal()).await
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

/// Run the gateway on bound listeners until `shutdown` resolves, then drain.
pub async fn run(
    cfg: Config,
    listener: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), InitError> {
    let (audit, writer) = Audit::start(&cfg.audit).map_err(|source| InitError::AuditIo {
        path: cfg.audit.path.clone().into(),
        source,
    })?;
    let (app, sources) = app::build(&cfg, audit.clone())?;
    let app = Arc::new(app);
    let (stop_tx, stop_rx) = watch::channel(false);
    let refreshers: Vec<_> = sources
        .into_iter()
        .map(|(store, source)| {
            tokio::spawn(crate::secret::refresher::run(
                source,
                store,
                audit.clone(),
                stop_rx.clone(),
            ))
        })
        .collect();
    let tls = match (&cfg.server.tls_cert, &cfg.server.tls_key) {
        (Some(c), Some(k)) => Some(tokio_rustls::TlsAcceptor::from(
            crate::tls::server_config(c, k).map_err(InitError::Config)?,
        )),
        _ => None,
    };
    let addr = listener
        .local_addr()
        .map_err(|e| InitError::Software(format!("server.listen: {e}")))?;
    let admin_addr = admin
        .local_addr()
        .map_err(|e| InitError::Software(format!("admin.listen: {e}")))?;
    tracing::info!(listen = %addr, admin = %admin_addr, tls = tls.is_some(), upstream = %cfg.upstream.url, clients = app.clients, "nimgate serving");
    let admin_task = tokio::spawn(health::serve_admin(admin, app.clone(), stop_rx.clone()));

    let graceful = GracefulShutdown::new();
    let settings = ConnSettings::new(&cfg.limits, tls);
    let connections = Arc::new(Semaphore::new(cfg.limits.max_connections));
    let per_ip = PerIp::new(cfg.limits.max_connections_per_ip);
    let limits = (&connections, &per_ip);
    let accept = |stop| accept_loop(&listener, &app, &settings, &graceful, limits, stop);
    accept(Box::pin(shutdown)).await;
    // Draining: unready first, still accepting, so the load balancer moves away before the port
    // closes (Kubernetes removes the endpoint asynchronously).
    app.draining.store(true, Ordering::Release);
    let delay = cfg.server.drain_delay;
    if !delay.is_zero() {
        tracing::info!(drain_delay = ?delay, "shutting down: /readyz is 503, still accepting");
        accept(Box::pin(tokio::time::sleep(delay))).await;
    }
    drop(listener);
    tracing::info!(grace = ?cfg.server.shutdown_grace, "listener closed: draining in-flight requests");
    if tokio::time::timeout(cfg.server.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("grace period over: closing remaining connections");
    }
    let _ = stop_tx.send(true);
    for r in refreshers {
        let _ = r.await;
    }
    let _ = admin_task.await;
    app.denied_budget.write_summary(&audit).await;
    // Everything queued is written and synced; the writer thread ends with the process.
    let flushed = audit.flush().await;
    drop(writer);
    tracing::info!(audit_flushed = flushed, "stopped");
    Ok(())
}

/// Accept connections until `stop` resolves; each is served on its own task.
async fn accept_loop(
    listener: &TcpListener,
    app: &Arc<App>,
    settings: &ConnSettings,
    graceful: &GracefulShutdown,
    (connections, per_ip): (&Arc<Semaphore>, &Arc<PerIp>),
    mut stop: std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>>,
) {
    loop {
        let (stream, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => return,
        };
        // `limits.max_connections`: beyond it a new connection is closed at once, so idle
        // connections (an HTTP/2 peer that only answers pings) cannot exhaust descriptors.
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!(%remote, "max_connections reached: connection refused");
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
            app.service.clone(),
            settings.clone(),
            graceful.watcher(),
            (permit, ip_permit),
        ));
    }
}
