//! The pooled connection to one upstream replica (hyper-util legacy client, rustls for https). It never
//! follows redirects; it only ever connects to its one configured authority. `Connector` opens
//! each new connection with the upstream's current TLS config (`tls::UpstreamTls`, one
//! `ArcSwap` load per connection, none per request), so rotated certificates and CAs apply to
//! the next connection while pooled ones carry on.

use http::uri::{Authority, Scheme};
use hyper_rustls::{
    DefaultServerNameResolver, HttpsConnector, MaybeHttpsStream, ResolveServerName,
};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::sync::Arc;
use tower::Service;

use super::request_body::RequestBody;
use crate::config::UpstreamConfig;
use crate::tls::UpstreamTls;

pub type UpstreamClient = Client<Connector, RequestBody>;

/// TCP (`HttpConnector`), then for https:// TLS with the upstream's config at connect time. SNI
/// and the verified name: the URL's host (hyper-rustls' default resolver).
#[derive(Clone)]
pub struct Connector {
    http: HttpConnector,
    tls: UpstreamTls,
    names: Arc<dyn ResolveServerName + Send + Sync>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Service<http::Uri> for Connector {
    type Response = MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;
    type Error = BoxError;
    type Future = <HttpsConnector<HttpConnector> as Service<http::Uri>>::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: http::Uri) -> Self::Future {
        HttpsConnector::new(
            self.http.clone(),
            self.tls.config(),
            false,
            self.names.clone(),
        )
        .call(dst)
    }
}

pub struct Pool {
    pub client: UpstreamClient,
    pub scheme: Scheme,
    pub authority: Authority,
    /// `scheme://authority`, for audit records.
    pub label: Arc<str>,
    /// The `Host` header for HTTP/1 upstreams, built once (the client would format it per
    /// request); `None` over HTTP/2, where `:authority` carries it.
    pub host: Option<http::HeaderValue>,
}

impl Pool {
    /// The pool of one replica, `url`, with its upstream's settings and TLS config.
    pub fn new(cfg: &UpstreamConfig, url: &str, tls: &UpstreamTls) -> Result<Self, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("upstream.url: {e}"))?;
        let scheme = uri.scheme().cloned().unwrap_or(Scheme::HTTP);
        let authority = uri.authority().cloned().ok_or("upstream.url: no host")?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        http.set_keepalive(Some(std::time::Duration::from_secs(60)));
        let connector = Connector {
            http,
            tls: tls.clone(),
            names: Arc::new(DefaultServerNameResolver::default()),
        };
        let mut b = Client::builder(TokioExecutor::new());
        b.pool_idle_timeout(cfg.pool_idle_timeout)
            .pool_max_idle_per_host(cfg.pool_max_idle)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http1_preserve_header_case(false)
            .retry_canceled_requests(false)
            .set_host(true);
        if cfg.http2 {
            b.http2_only(true).http2_adaptive_window(true);
        }
        let default_port = if scheme == Scheme::HTTPS { 443 } else { 80 };
        let host = match authority.port_u16() {
            Some(p) if p != default_port => format!("{}:{p}", authority.host()),
            _ => authority.host().to_string(),
        };
        let host = (!cfg.http2)
            .then(|| http::HeaderValue::from_str(&host))
            .transpose()
            .map_err(|_| "upstream.url: host is not a valid header value".to_string())?;
        Ok(Self {
            client: b.build(connector),
            host,
            label: format!("{scheme}://{authority}").into(),
            scheme,
            authority,
        })
    }
}
