//! One client connection: TLS handshake (if configured; with the listener's current certificate,
//! which a rotation swaps for later connections only) or the HTTP/2-preface sniff, both within
//! the header-read timeout, then hyper's HTTP/1.1 or HTTP/2 connection with the limits from
//! `[limits]`, the stall timeout on writes, and every request passed to the stack as a `Call`
//! whose `Ctx` holds the `RemoteAddr` (the peer, or behind a trusted proxy the client it names:
//! `xff`) and, with mTLS, the `PeerIdentity`.
//! An HTTP/2 connection with no open stream for `limits.idle_timeout` is closed (hyper has no such
//! timeout; `peers::Activity` counts the streams), and its response bodies are under the
//! `send_timeout` watchdog (`peers::Watched`): flow control can stall a stream without ever
//! blocking the socket.

use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::Watcher;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tower::Service;

use crate::app::App;
use crate::auth::mtls::PeerIdentity;
use crate::config::LimitsConfig;
use crate::request::{Call, Ctx, RemoteAddr};
use crate::stall::StallTimeout;

use super::peers::{Activity, IpPermit};
use super::xff::TrustedProxies;

/// Everything a connection task needs, cloned once per connection.
#[derive(Clone)]
pub struct ConnSettings {
    pub h1: http1::Builder,
    pub h2: http2::Builder<TokioExecutor>,
    /// The listener's TLS config, swapped whole when its files change (`tls::ServerTls`).
    pub tls: Option<crate::tls::ServerTls>,
    pub first_bytes: Duration,
    pub send_timeout: Duration,
    pub idle_timeout: Duration,
    /// Peers whose `X-Forwarded-For` names the client (`xff`).
    pub trusted: std::sync::Arc<TrustedProxies>,
}

impl ConnSettings {
    /// From `cfg`'s `[limits]` and `server.trusted_proxies` (at start and at each reload), with
    /// the listener's TLS (`tls`, which reloads on its own).
    pub fn new(
        cfg: &crate::config::Config,
        tls: Option<crate::tls::ServerTls>,
    ) -> Result<Self, crate::config::ConfigError> {
        let trusted = TrustedProxies::new(&cfg.server.trusted_proxies)
            .map_err(|m| crate::config::ConfigError::new("server.trusted_proxies", m))?;
        let l = &cfg.limits;
        Ok(Self {
            h1: h1_builder(l),
            h2: h2_builder(l),
            tls,
            first_bytes: l.header_read_timeout,
            send_timeout: l.send_timeout,
            idle_timeout: l.idle_timeout,
            trusted: std::sync::Arc::new(trusted),
        })
    }
}

/// Serve one accepted connection until it closes (or the graceful watcher ends it).
pub async fn serve(
    stream: TcpStream,
    remote: std::net::SocketAddr,
    app: std::sync::Arc<App>,
    s: std::sync::Arc<ConnSettings>,
    watcher: Watcher,
    permit: (OwnedSemaphorePermit, IpPermit),
) {
    let _permit = permit;
    let peer_addr = remote;
    let remote = RemoteAddr::new(remote);
    let trusted = (!s.trusted.is_empty()).then(|| s.trusted.clone());
    // The verified client certificate's names, set once the TLS handshake is done (mTLS).
    let peer = std::sync::Arc::new(std::sync::OnceLock::<PeerIdentity>::new());
    let activity = Activity::new();
    let streams = activity.clone();
    // The request's `Call`: its `Ctx` starts with the client's address (behind a trusted proxy,
    // the client it forwards for, formatted per request, only then) and certificate identity.
    let ctx_peer = peer.clone();
    let call_of = move |req: Request<Incoming>| Call {
        ctx: Ctx {
            remote: Some(
                match trusted
                    .as_ref()
                    .and_then(|t| t.client(peer_addr, req.headers()))
                {
                    Some(ip) => RemoteAddr(ip.to_string().into()),
                    None => remote.clone(),
                },
            ),
            peer: ctx_peer.get().cloned(),
            ..Ctx::default()
        },
        req,
    };
    let h2_svc = {
        let (app, call_of) = (app.clone(), call_of.clone());
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let call = call_of(req);
            let guard = streams.begin();
            // The live state (stack, routes, clients) as of this request: one atomic load.
            let fut = app.live.load().service.clone().call(call);
            let streams = streams.clone();
            async move { Ok::<_, std::convert::Infallible>(fut.await?.map(|b| streams.watch(b, guard))) }
        })
    };
    let h1_svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        app.live.load().service.clone().call(call_of(req))
    });
    // hyper's own HTTP/1 and HTTP/2 connections (the protocol is known here, so hyper-util's
    // auto builder and its `Rewind` buffer are not needed). `max_header_size` gives 431 on an
    // oversized head (tests/security_headers.rs, security_limits.rs): `max_buf_size` alone is
    // not exact, since one read may fill more than it once the buffer has grown. No upgrade is
    // ever granted: `Upgrade` is stripped, no 101 is sent.
    macro_rules! serve {
        ($io:expr, $is_h2:expr) => {
            if $is_h2 {
                let conn = watcher.watch(s.h2.serve_connection($io, h2_svc));
                tokio::select! {
                    _ = conn => {},
                    () = activity.idle(s.idle_timeout) => {},
                    () = activity.watchdog(s.send_timeout) => {},
                }
            } else {
                let _ = watcher.watch(s.h1.serve_connection($io, h1_svc)).await;
            }
        };
    }
    // The protocol is settled before hyper sees the connection, within the header-read
    // timeout, so a client that sends nothing (or half an h2 preface) cannot hold it.
    match s.tls.clone() {
        None => {
            let Some(is_h2) = detect_h2(&stream, s.first_bytes).await else {
                return;
            };
            serve!(
                TokioIo::new(StallTimeout::new(stream, s.send_timeout)),
                is_h2
            );
        }
        Some(tls) => {
            // One `ArcSwap` load: this connection keeps the certificate it starts with.
            let acceptor = tls.acceptor();
            let stream = StallTimeout::new(stream, s.send_timeout);
            let Ok(Ok(tls_stream)) =
                tokio::time::timeout(s.first_bytes, acceptor.accept(stream)).await
            else {
                return;
            };
            let is_h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
            if let Some(p) = PeerIdentity::of(tls_stream.get_ref().1) {
                let _ = peer.set(p);
            }
            serve!(TokioIo::new(tls_stream), is_h2);
        }
    }
}

/// Wait (up to `limit`) for enough bytes to tell an HTTP/2 prior-knowledge preface from HTTP/1.
/// `None`: the client closed, errored or was too slow.
async fn detect_h2(stream: &TcpStream, limit: Duration) -> Option<bool> {
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

fn h1_builder(l: &LimitsConfig) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(l.header_read_timeout)
        .max_buf_size(l.max_header_bytes.max(8192))
        .max_header_size(l.max_header_bytes)
        .max_headers(l.max_headers)
        .keep_alive(true)
        .half_close(false);
    b
}

fn h2_builder(l: &LimitsConfig) -> http2::Builder<TokioExecutor> {
    let mut b = http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .max_concurrent_streams(l.max_h2_streams)
        .max_header_list_size(l.max_header_bytes as u32)
        .max_pending_accept_reset_streams(Some(32))
        .max_local_error_reset_streams(Some(256))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}
