//! The connection pool of one upstream replica, over hyper's own connection handshakes
//! (`hyper::client::conn::http1`/`http2`), with rustls for https://. It never follows redirects;
//! it only ever connects to its one configured authority. Each new connection is opened with the
//! upstream's current TLS config (`tls::UpstreamTls`, one `ArcSwap` load per connection, none per
//! request), so rotated certificates and CAs apply to the next connection while pooled ones
//! carry on.
//!
//! HTTP/1: idle connections are kept, newest first, up to `pool_max_idle`; one idle longer than
//! `pool_idle_timeout` is closed (at the next checkout, or by a reaper task that runs only while
//! the pool holds connections). A connection goes back to the pool when the response head
//! arrives and is taken again only once hyper says it is ready (the body has been read to its
//! end). A request that hyper hands back unsent (the pooled connection closed under it) goes on
//! a new connection. HTTP/2: one multiplexed connection, re-opened when it closes.
//!
//! Per request this costs a mutex, a clock read and a `Vec` pop/push: no task, no boxing, no
//! `Extensions` (hyper-util's legacy client spawned, boxed and inserted per request).

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_rustls::MaybeHttpsStream;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

use super::request_body::RequestBody;
use crate::config::UpstreamConfig;
use crate::tls::UpstreamTls;

type Io = MaybeHttpsStream<TokioIo<TcpStream>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No connection: TCP, TLS or the handshake failed, or `connect_timeout` passed. Nothing
    /// reached the upstream.
    #[error("connect failed")]
    Connect(#[source] BoxError),
    #[error("connect timed out")]
    ConnectTimeout,
    /// The exchange failed on an open connection (the request may have reached the upstream).
    #[error("request failed")]
    Http(#[source] hyper::Error),
}

impl PoolError {
    /// Nothing reached the upstream.
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect(_) | Self::ConnectTimeout)
    }
}

struct Idle {
    tx: http1::SendRequest<RequestBody>,
    since: Instant,
}

type IdleList = Mutex<Vec<Idle>>;

pub struct Pool {
    pub scheme: Scheme,
    pub authority: Authority,
    /// `scheme://authority`, for audit records.
    pub label: Arc<str>,
    /// The `Host` header for HTTP/1 upstreams, built once; `None` over HTTP/2, where
    /// `:authority` carries it.
    pub host: Option<http::HeaderValue>,
    /// The host to connect to (IPv6 brackets removed) and the port.
    addr: (Box<str>, u16),
    server_name: Option<ServerName<'static>>,
    tls: UpstreamTls,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    http2: bool,
    idle: Arc<IdleList>,
    /// A reaper task is running for `idle`.
    reaping: Arc<std::sync::atomic::AtomicBool>,
    h2: Mutex<Option<http2::SendRequest<RequestBody>>>,
    h2_connecting: tokio::sync::Mutex<()>,
}

impl Pool {
    /// The pool of one replica, `url`, with its upstream's settings and TLS config.
    pub fn new(cfg: &UpstreamConfig, url: &str, tls: &UpstreamTls) -> Result<Self, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("upstream.url: {e}"))?;
        let scheme = uri.scheme().cloned().unwrap_or(Scheme::HTTP);
        let authority = uri.authority().cloned().ok_or("upstream.url: no host")?;
        let default_port = if scheme == Scheme::HTTPS { 443 } else { 80 };
        let port = authority.port_u16().unwrap_or(default_port);
        let host = match authority.port_u16() {
            Some(p) if p != default_port => format!("{}:{p}", authority.host()),
            _ => authority.host().to_string(),
        };
        let host = (!cfg.http2)
            .then(|| http::HeaderValue::from_str(&host))
            .transpose()
            .map_err(|_| "upstream.url: host is not a valid header value".to_string())?;
        let bare = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let server_name = if scheme == Scheme::HTTPS {
            Some(
                ServerName::try_from(bare.to_string())
                    .map_err(|_| "upstream.url: host is not a valid TLS server name")?,
            )
        } else {
            None
        };
        Ok(Self {
            label: format!("{scheme}://{authority}").into(),
            host,
            addr: (bare.into(), port),
            server_name,
            tls: tls.clone(),
            connect_timeout: cfg.connect_timeout,
            idle_timeout: cfg.pool_idle_timeout,
            max_idle: cfg.pool_max_idle,
            http2: cfg.http2,
            idle: Arc::new(Mutex::new(Vec::new())),
            reaping: Arc::default(),
            h2: Mutex::new(None),
            h2_connecting: tokio::sync::Mutex::new(()),
            scheme,
            authority,
        })
    }

    /// Send `req` (its URI: a path and query, or absolute for this replica) and wait for the
    /// response head.
    pub async fn request(
        &self,
        mut req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, PoolError> {
        if self.http2 {
            // Boxed: inline, the HTTP/2 path's state would grow the HTTP/1 one's (futures are
            // moved by copying, up the request's chain of futures).
            return Box::pin(self.request_h2(req)).await;
        }
        if req.uri().scheme().is_some() {
            let pq = req.uri().path_and_query().cloned();
            *req.uri_mut() = Uri::from(pq.unwrap_or_else(|| PathAndQuery::from_static("/")));
        }
        let mut retried = false;
        loop {
            let pooled = if retried { None } else { self.checkout() };
            let reused = pooled.is_some();
            // Connecting (TCP, TLS, handshake) is boxed: kept inline, its state would make every
            // request's future several kB larger, and futures are moved by copying.
            let mut tx = if let Some(tx) = pooled {
                tx
            } else {
                Box::pin(self.connect_h1()).await?
            };
            match tx.try_send_request(req).await {
                Ok(resp) => {
                    self.checkin(tx);
                    return Ok(resp);
                }
                // A pooled connection closed before the request was written: nothing was sent,
                // so it goes on a new connection (once; a new connection failing is final).
                Err(mut e) => match e.take_message() {
                    Some(back) if reused => {
                        req = back;
                        retried = true;
                    }
                    _ => return Err(PoolError::Http(e.into_error())),
                },
            }
        }
    }

    async fn request_h2(
        &self,
        mut req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, PoolError> {
        if req.uri().scheme().is_none() {
            let mut parts = std::mem::take(req.uri_mut()).into_parts();
            parts.scheme = Some(self.scheme.clone());
            parts.authority = Some(self.authority.clone());
            *req.uri_mut() = Uri::from_parts(parts).map_err(|e| PoolError::Connect(e.into()))?;
        }
        let current = lock(&self.h2).as_ref().filter(|t| !t.is_closed()).cloned();
        let mut tx = match current {
            Some(tx) => tx,
            None => Box::pin(self.connect_h2()).await?,
        };
        tx.ready().await.map_err(PoolError::Http)?;
        tx.send_request(req).await.map_err(PoolError::Http)
    }

    /// The newest ready idle connection; closed and expired ones are dropped on the way.
    fn checkout(&self) -> Option<http1::SendRequest<RequestBody>> {
        let now = Instant::now();
        let mut idle = lock(&self.idle);
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            let e = &idle[i];
            if e.tx.is_closed() {
                idle.swap_remove(i);
            } else if e.tx.is_ready() {
                let e = idle.swap_remove(i);
                if now.duration_since(e.since) < self.idle_timeout {
                    return Some(e.tx);
                }
            }
        }
        None
    }

    /// Back to the pool (it is taken again once ready); dropped, and so closed once its
    /// response is done, when the pool is full.
    fn checkin(&self, tx: http1::SendRequest<RequestBody>) {
        let mut idle = lock(&self.idle);
        if idle.len() >= self.max_idle {
            return;
        }
        idle.push(Idle {
            tx,
            since: Instant::now(),
        });
        drop(idle);
        if !self.reaping.swap(true, std::sync::atomic::Ordering::AcqRel) {
            tokio::spawn(reap(
                Arc::downgrade(&self.idle),
                self.reaping.clone(),
                self.idle_timeout,
            ));
        }
    }

    async fn connect_io(&self) -> Result<Io, PoolError> {
        let connect = async {
            let tcp = TcpStream::connect((&*self.addr.0, self.addr.1))
                .await
                .map_err(|e| PoolError::Connect(e.into()))?;
            let _ = tcp.set_nodelay(true);
            let ka = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
            let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&ka);
            let tcp = TokioIo::new(tcp);
            match &self.server_name {
                None => Ok(MaybeHttpsStream::Http(tcp)),
                Some(name) => {
                    let tls = tokio_rustls::TlsConnector::from(self.tls.config())
                        .connect(name.clone(), TokioIo::new(tcp))
                        .await
                        .map_err(|e| PoolError::Connect(e.into()))?;
                    Ok(MaybeHttpsStream::from(tls))
                }
            }
        };
        tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| PoolError::ConnectTimeout)?
    }

    async fn connect_h1(&self) -> Result<http1::SendRequest<RequestBody>, PoolError> {
        let io = self.connect_io().await?;
        let (tx, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| PoolError::Connect(e.into()))?;
        spawn_conn(conn);
        Ok(tx)
    }

    /// One connection at a time is opened; requests arriving meanwhile share it.
    async fn connect_h2(&self) -> Result<http2::SendRequest<RequestBody>, PoolError> {
        let _one = self.h2_connecting.lock().await;
        if let Some(tx) = lock(&self.h2).as_ref().filter(|t| !t.is_closed()) {
            return Ok(tx.clone());
        }
        let io = self.connect_io().await?;
        let (tx, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .adaptive_window(true)
            .handshake(io)
            .await
            .map_err(|e| PoolError::Connect(e.into()))?;
        spawn_conn(conn);
        *lock(&self.h2) = Some(tx.clone());
        Ok(tx)
    }

    /// Connections open to this replica and, of them, idle in the pool (tests, `stats`).
    pub fn idle_connections(&self) -> usize {
        lock(&self.idle)
            .iter()
            .filter(|e| !e.tx.is_closed() && e.tx.is_ready())
            .count()
    }
}

/// Drive one upstream connection until it ends.
fn spawn_conn(conn: impl std::future::Future<Output = hyper::Result<()>> + Send + 'static) {
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended");
        }
    });
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Close the connections idle longer than `timeout`; ends when the pool is empty or gone.
async fn reap(
    idle: Weak<IdleList>,
    running: Arc<std::sync::atomic::AtomicBool>,
    timeout: Duration,
) {
    let tick = (timeout / 2).max(Duration::from_millis(50));
    loop {
        tokio::time::sleep(tick).await;
        let Some(list) = idle.upgrade() else {
            return;
        };
        let now = Instant::now();
        let mut l = lock(&list);
        l.retain(|e| {
            !(e.tx.is_closed() || e.tx.is_ready() && now.duration_since(e.since) >= timeout)
        });
        if l.is_empty() {
            running.store(false, std::sync::atomic::Ordering::Release);
            return;
        }
    }
}
