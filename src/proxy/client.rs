//! The pooled connection to one upstream replica (hyper-util legacy client, rustls for https). It never
//! follows redirects; it only ever connects to its one configured authority.

use http::uri::{Authority, Scheme};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::sync::Arc;

use super::request_body::RequestBody;
use crate::config::UpstreamConfig;

pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, RequestBody>;

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
    /// The pool of one replica, `url`, with its upstream's settings.
    pub fn new(cfg: &UpstreamConfig, url: &str) -> Result<Self, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("upstream.url: {e}"))?;
        let scheme = uri.scheme().cloned().unwrap_or(Scheme::HTTP);
        let authority = uri.authority().cloned().ok_or("upstream.url: no host")?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        http.set_keepalive(Some(std::time::Duration::from_secs(60)));
        let tls = tls_config(cfg)?;
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let connector = if cfg.http2 {
            builder.enable_http2().wrap_connector(http)
        } else {
            builder.enable_http1().wrap_connector(http)
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

fn tls_config(cfg: &UpstreamConfig) -> Result<rustls::ClientConfig, String> {
    // ALPN is set by the hyper-rustls builder from the enabled HTTP versions.
    crate::tls::client_config(cfg.ca_file.as_deref(), "upstream.ca_file")
}
