//! Listeners: the client listener (HTTP/1.1 + h2c, or TLS with ALPN h2/http1.1 via hyper-util's
//! auto builder) and the admin listener; graceful drain on shutdown.

use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::Service;

use crate::app;
use crate::audit::Audit;
use crate::config::Config;
use crate::health;
use crate::proxy::RemoteAddr;
use crate::stall::StallTimeout;

/// Bind both listeners from config, run until SIGTERM/SIGINT.
pub async fn serve(cfg: Config) -> Result<(), String> {
    let listener = TcpListener::bind(cfg.server.listen)
        .await
        .map_err(|e| format!("server.listen {}: {e}", cfg.server.listen))?;
    let admin = TcpListener::bind(cfg.admin.listen)
        .await
        .map_err(|e| format!("admin.listen {}: {e}", cfg.admin.listen))?;
    run(cfg, listener, admin, shutdown_signal()).await
}

pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
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
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    let (audit, writer) =
        Audit::start(&cfg.audit).map_err(|e| format!("audit.path {}: {e}", cfg.audit.path))?;
    let (app, source) = app::build(&cfg, audit.clone())?;
    let app = Arc::new(app);
    let (stop_tx, stop_rx) = watch::channel(false);
    let refresher = tokio::spawn(crate::secret::refresher::run(
        source,
        app.store.clone(),
        audit.clone(),
        stop_rx.clone(),
    ));
    let tls = match (&cfg.server.tls_cert, &cfg.server.tls_key) {
        (Some(c), Some(k)) => Some(tokio_rustls::TlsAcceptor::from(crate::tls::server_config(
            c, k,
        )?)),
        _ => None,
    };
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let admin_addr = admin.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(listen = %addr, admin = %admin_addr, tls = tls.is_some(), upstream = %cfg.upstream.url, clients = app.clients, "nimgate serving");
    let admin_task = tokio::spawn(health::serve_admin(admin, app.clone(), stop_rx.clone()));

    let h1 = conn_builder(&cfg).http1_only();
    let h2 = conn_builder(&cfg).http2_only();
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(tokio::sync::Semaphore::new(cfg.limits.max_connections));
    tokio::pin!(shutdown);
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
            _ = &mut shutdown => break,
        };
        // `limits.max_connections`: beyond it a new connection is closed at once, so idle
        // connections (an HTTP/2 peer that only answers pings) cannot exhaust descriptors.
        let Ok(conn_permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!(%remote, "max_connections reached: connection refused");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let svc = app.service.clone();
        let remote = RemoteAddr::new(remote);
        let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(remote.clone());
            svc.clone().call(req)
        });
        let (h1, h2) = (h1.clone(), h2.clone());
        let watcher = graceful.watcher();
        let tls = tls.clone();
        let (first_bytes, send_timeout) = (cfg.limits.header_read_timeout, cfg.limits.send_timeout);
        // HTTP/1 goes through `serve_connection_with_upgrades`: with hyper-util 0.1.21 only that
        // path applies the http1 builder's `max_buf_size` (431 on oversized heads; see
        // tests/security.rs). No upgrade is ever granted: `Upgrade` is stripped, no 101 is sent.
        macro_rules! serve {
            ($io:expr, $is_h2:expr) => {
                if $is_h2 {
                    let _ = watcher
                        .watch(h2.serve_connection($io, svc).into_owned())
                        .await;
                } else {
                    let conn = h1.serve_connection_with_upgrades($io, svc).into_owned();
                    let _ = watcher.watch(conn).await;
                }
            };
        }
        tokio::spawn(async move {
            let _conn_permit = conn_permit;
            // The protocol is settled before hyper sees the connection, within the header-read
            // timeout, so a client that sends nothing (or half an h2 preface) cannot hold it.
            match tls {
                None => {
                    let Some(is_h2) = detect_h2(&stream, first_bytes).await else {
                        return;
                    };
                    serve!(TokioIo::new(StallTimeout::new(stream, send_timeout)), is_h2);
                }
                Some(acceptor) => {
                    let stream = StallTimeout::new(stream, send_timeout);
                    let Ok(Ok(tls_stream)) =
                        tokio::time::timeout(first_bytes, acceptor.accept(stream)).await
                    else {
                        return;
                    };
                    let is_h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
                    serve!(TokioIo::new(tls_stream), is_h2);
                }
            }
        });
    }
    drop(listener);
    tracing::info!(grace = ?cfg.server.shutdown_grace, "shutting down: draining in-flight requests");
    if tokio::time::timeout(cfg.server.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("grace period over: closing remaining connections");
    }
    let _ = stop_tx.send(true);
    let _ = refresher.await;
    let _ = admin_task.await;
    // Everything queued is written and synced; the writer thread ends with the process.
    let flushed = audit.flush().await;
    drop(writer);
    tracing::info!(audit_flushed = flushed, "stopped");
    Ok(())
}

/// Wait (up to `limit`) for enough bytes to tell an HTTP/2 prior-knowledge preface from HTTP/1.
/// `None`: the client closed, errored or was too slow.
async fn detect_h2(stream: &tokio::net::TcpStream, limit: Duration) -> Option<bool> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut buf = [0u8; 24];
    tokio::time::timeout(limit, async {
        loop {
            let n = stream.peek(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            if buf[..n] != PREFACE[..n] {
                return Some(false);
            }
            if n == PREFACE.len() {
                return Some(true);
            }
            // A partial preface: peek returns at once, so wait a little for the rest.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .ok()
    .flatten()
}

fn conn_builder(cfg: &Config) -> auto::Builder<TokioExecutor> {
    let l = &cfg.limits;
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(l.header_read_timeout)
        .max_buf_size(l.max_header_bytes.max(8192))
        .max_headers(l.max_headers)
        .keep_alive(true)
        .half_close(false);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(l.max_h2_streams)
        .max_header_list_size(l.max_header_bytes as u32)
        .max_pending_accept_reset_streams(Some(32))
        .max_local_error_reset_streams(Some(256))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}
