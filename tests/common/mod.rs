//! In-process harness: the gateway on 127.0.0.1:0 with a fake NIM, a key file and an audit file
//! in a temp dir; a small HTTP client; helpers to read the audit trail.
#![allow(dead_code)]

pub mod bin;
pub mod certs;
pub mod checks;
pub mod fake_vault;
pub mod h2frames;
pub mod jwt;
pub mod openbao;
pub mod raw;
pub mod redis;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use nimgate::auth::key_digest_hex;
use nimgate::fakenim::FakeNim;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub const CLIENT_KEY: &str = "ngk_test_client_key_aaaaaaaaaaaaaaaaaaaaaaaa";
pub const CLIENT_KEY_B: &str = "ngk_test_client_key_bbbbbbbbbbbbbbbbbbbbbbbb";
pub const NIM_KEY: &str = "nvapi-test-key-0001";

pub struct Gateway {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub nim: Arc<FakeNim>,
    pub nim_addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub key_file: PathBuf,
    pub audit_file: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<Result<(), nimgate::error::InitError>>>,
}

pub struct Opts {
    /// Extra TOML appended to the generated config (may add tables; top-level sections only).
    pub extra: String,
    /// Extra keys for the `[upstream]` table.
    pub upstream_extra: String,
    /// Extra keys for the `[server]` table.
    pub server_extra: String,
    /// Extra keys for the `[secret]` table.
    pub secret_extra: String,
    /// Extra keys for `[limits]`.
    pub limits_extra: String,
    /// Extra keys for `[audit]`.
    pub audit_extra: String,
    /// Extra keys for the first client.
    pub client_extra: String,
    /// Write the key file before start.
    pub write_key: bool,
    pub sse_delay: Duration,
    /// Replace the whole `[secret]` table.
    pub secret_table: Option<String>,
    /// Upstream URL override (default: the fake NIM).
    pub upstream_url: Option<String>,
    /// Audit path override (default: audit.jsonl in the temp dir).
    pub audit_path: Option<PathBuf>,
    /// Do not wait for /readyz before returning.
    pub no_wait: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            extra: String::new(),
            upstream_extra: String::new(),
            server_extra: String::new(),
            secret_extra: String::new(),
            limits_extra: String::new(),
            audit_extra: String::new(),
            client_extra: String::new(),
            write_key: true,
            sse_delay: Duration::from_millis(10),
            secret_table: None,
            upstream_url: None,
            audit_path: None,
            no_wait: false,
        }
    }
}

/// A fake NIM accepting `keys`, serving on 127.0.0.1:0: (the NIM, its bound address).
pub async fn fake_nim(keys: Vec<String>, sse_delay: Duration) -> (Arc<FakeNim>, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let nim = FakeNim::new(keys, sse_delay, true);
    tokio::spawn(nim.clone().serve(l));
    (nim, addr)
}

/// A loopback address where connects are refused, reserved for as long as the returned socket
/// lives: bound to 127.0.0.1:0 but never listening, so no other socket can take the port.
pub fn refused_addr() -> (tokio::net::TcpSocket, SocketAddr) {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = s.local_addr().unwrap();
    (s, addr)
}

/// `pub fn $name(self, keys) -> Self` setting the `$field` string of [`Opts`].
macro_rules! extra_keys {
    ($($(#[$doc:meta])* $name:ident => $field:ident;)*) => {
        $($(#[$doc])* pub fn $name(mut self, keys: impl Into<String>) -> Self {
            self.$field = keys.into();
            self
        })*
    };
}

/// Shorthands: `start_with(Opts::default().limits("max_connections = 2")).await`.
impl Opts {
    extra_keys! {
        /// Keys for `[limits]`.
        limits => limits_extra;
        /// Keys for the first client.
        client => client_extra;
        /// Keys for `[upstream]`.
        upstream => upstream_extra;
        /// Keys for `[server]`.
        server => server_extra;
        /// Keys for the generated `[secret]` table.
        secret => secret_extra;
        /// Keys for `[audit]`.
        audit => audit_extra;
    }
    pub fn upstream_url(mut self, url: impl Into<String>) -> Self {
        self.upstream_url = Some(url.into());
        self
    }
    pub fn secret_table(mut self, table: impl Into<String>) -> Self {
        self.secret_table = Some(table.into());
        self
    }
    pub fn audit_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.audit_path = Some(path.into());
        self
    }
    pub fn sse_delay(mut self, d: Duration) -> Self {
        self.sse_delay = d;
        self
    }
    /// Start without a key file (and so without waiting for readiness).
    pub fn no_key(mut self) -> Self {
        self.write_key = false;
        self
    }
    /// Do not wait for /readyz before returning.
    pub fn no_wait(mut self) -> Self {
        self.no_wait = true;
        self
    }
}

pub async fn start() -> Gateway {
    start_with(Opts::default()).await
}

pub async fn start_with(o: Opts) -> Gateway {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("nim-api-key");
    let audit_file = o
        .audit_path
        .clone()
        .unwrap_or_else(|| dir.path().join("audit.jsonl"));
    if o.write_key {
        std::fs::write(&key_file, format!("{NIM_KEY}\n")).unwrap();
    }
    let (nim, nim_addr) = fake_nim(vec![NIM_KEY.into()], o.sse_delay).await;
    let secret = o.secret_table.clone().unwrap_or_else(|| {
        format!(
            "[secret]\nsource = \"file\"\npath = \"{}\"\npoll_interval = \"50ms\"\n{}",
            key_file.display(),
            o.secret_extra
        )
    });
    let toml = format!(
        r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace = "5s"
{server_extra}
[admin]
listen = "127.0.0.1:0"
[upstream]
url = "{upstream}"
response_timeout = "2s"
{upstream_extra}
{secret}
[[clients]]
id = "team-a"
key_sha256 = "{da}"
{client_extra}
[[clients]]
id = "team-b"
key_sha256 = "{db}"
[audit]
path = "{audit}"
{audit_extra}
[limits]
{limits_extra}
{extra}
"#,
        upstream = o
            .upstream_url
            .clone()
            .unwrap_or(format!("http://{nim_addr}")),
        upstream_extra = o.upstream_extra,
        server_extra = o.server_extra,
        da = key_digest_hex(CLIENT_KEY),
        db = key_digest_hex(CLIENT_KEY_B),
        client_extra = o.client_extra,
        audit = audit_file.display(),
        audit_extra = o.audit_extra,
        limits_extra = o.limits_extra,
        extra = o.extra,
    );
    let cfg = nimgate::config::parse(&toml).unwrap_or_else(|e| panic!("{e:?}\n{toml}"));
    let errs = cfg.validate();
    assert!(errs.is_empty(), "{errs:?}");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(nimgate::server::run(cfg, listener, admin, async move {
        let _ = rx.await;
    }));
    let gw = Gateway {
        addr,
        admin: admin_addr,
        nim,
        nim_addr,
        dir,
        key_file,
        audit_file,
        stop: Some(tx),
        task: Some(task),
    };
    if o.write_key && !o.no_wait {
        gw.wait_ready().await;
    }
    gw
}

impl Gateway {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn wait_ready(&self) {
        for _ in 0..200 {
            if let Ok(r) = get_admin(self.admin, "/readyz").await {
                if r.0 == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("gateway not ready");
    }

    /// Stop and drain; returns the temp dir so its files can still be read.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        self.dir
    }

    /// All audit records written so far (flushes by waiting for the writer to catch up).
    pub async fn audit(&self) -> Vec<Value> {
        tokio::time::sleep(Duration::from_millis(50)).await;
        read_audit(&self.audit_file)
    }

    /// POST a non-streaming chat completion with the first client's key: (status, JSON body).
    pub async fn chat(&self) -> (u16, Value) {
        send_json(post(
            &self.url("/v1/chat/completions"),
            Some(CLIENT_KEY),
            &chat_body(false),
        ))
        .await
    }

    /// The audit file as it is on disk now.
    pub fn audit_text(&self) -> String {
        std::fs::read_to_string(&self.audit_file).unwrap()
    }

    /// A non-streaming chat completion request with the first client's key and one more header.
    pub fn chat_with_header(&self, name: &'static str, value: &str) -> Request<Full<Bytes>> {
        let mut req = post(
            &self.url("/v1/chat/completions"),
            Some(CLIENT_KEY),
            &chat_body(false),
        );
        req.headers_mut().insert(name, value.parse().unwrap());
        req
    }

    /// POST a streaming chat completion with the first client's key; the response head.
    pub async fn chat_stream(&self) -> Response<Incoming> {
        client()
            .request(post(
                &self.url("/v1/chat/completions"),
                Some(CLIENT_KEY),
                &chat_body(true),
            ))
            .await
            .unwrap()
    }

    pub async fn audit_events(&self, event: &str) -> Vec<Value> {
        self.audit()
            .await
            .into_iter()
            .filter(|r| r["event"] == event)
            .collect()
    }
}

/// Traffic in the background: non-streaming chats to `url` with the first client's key, one
/// after another with `gap` between them, until `requests` were sent or `for_at_most` passed.
/// Returns every status.
pub fn chat_load(
    url: String,
    requests: usize,
    gap: Duration,
    for_at_most: Option<Duration>,
) -> tokio::task::JoinHandle<Vec<u16>> {
    tokio::spawn(async move {
        let c = client();
        let until = for_at_most.map(|d| std::time::Instant::now() + d);
        let mut st = Vec::new();
        while st.len() < requests && until.is_none_or(|u| std::time::Instant::now() < u) {
            let r = c
                .request(post(&url, Some(CLIENT_KEY), &chat_body(false)))
                .await
                .unwrap();
            st.push(r.status().as_u16());
            let _ = r.into_body().collect().await;
            tokio::time::sleep(gap).await;
        }
        st
    })
}

pub fn read_audit(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

pub fn chat_body(stream: bool) -> String {
    format!(
        r#"{{"model":"meta/llama-3.1-8b-instruct","stream":{stream},"stream_options":{{"include_usage":true}},"messages":[{{"role":"user","content":"hi"}}]}}"#
    )
}

pub fn post(url: &str, key: Option<&str>, body: &str) -> Request<Full<Bytes>> {
    let mut b = Request::post(url).header("content-type", "application/json");
    if let Some(k) = key {
        b = b.header("authorization", format!("Bearer {k}"));
    }
    b.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

pub fn get(url: &str, key: Option<&str>) -> Request<Full<Bytes>> {
    let mut b = Request::get(url);
    if let Some(k) = key {
        b = b.header("authorization", format!("Bearer {k}"));
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

/// Send and collect: (status, headers, body).
pub async fn send(req: Request<Full<Bytes>>) -> (u16, http::HeaderMap, Bytes) {
    let resp: Response<Incoming> = client().request(req).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, body)
}

pub async fn send_json(req: Request<Full<Bytes>>) -> (u16, Value) {
    let (s, _, b) = send(req).await;
    (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

pub async fn get_admin(admin: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let resp = client()
        .request(get(&format!("http://{admin}{path}"), None))
        .await
        .map_err(|e| e.to_string())?;
    let s = resp.status().as_u16();
    let b = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((s, String::from_utf8_lossy(&b).into_owned()))
}

/// Assert the OpenAI error shape and return its `code`.
pub fn error_code(v: &Value) -> String {
    let e = &v["error"];
    assert!(e["message"].is_string(), "no error.message in {v}");
    assert!(e["type"].is_string(), "no error.type in {v}");
    e["code"].as_str().unwrap_or_default().to_string()
}

/// Poll until `f` is true (max 5 s).
pub async fn eventually(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..250 {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}
