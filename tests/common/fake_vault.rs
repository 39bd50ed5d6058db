//! A fake HashiCorp Vault server for integration tests.
//!
//! Speaks the documented Vault HTTP API JSON shapes (envelope with `request_id`, `lease_id`,
//! `renewable`, `lease_duration`, `data`, `wrap_info`, `warnings`, `auth`) for the handful of
//! endpoints nimgate uses, and can inject faults the real servers cannot:
//!
//! * `POST /v1/auth/{mount}/login` (AppRole `{"role_id","secret_id"}` or Kubernetes `{"role","jwt"}`)
//! * `POST /v1/auth/token/renew-self`, `GET /v1/auth/token/lookup-self`
//! * KV v2 `GET /v1/{mount}/data/{path}[?version=N]`, KV v1 `GET /v1/{mount}/{path}`
//!
//! Faults: 503 "sealed", fixed delay, and "down" (the listener is really closed, so TCP
//! connects are refused and open keep-alive connections are cut; the same port is re-bound when
//! the fault is cleared). The port stays reserved while down: a second socket, bound to it with
//! SO_REUSEADDR but never listening, lives as long as the fake, so no port-0 bind or outgoing
//! connection elsewhere can take the port in between.
//!
//! Conventions beyond the Vault API: a token `ttl` of zero means "never expires" (like a root
//! token, `lease_duration` 0); a `max_ttl` of zero means "no cap". A `ttl` larger than a
//! non-zero `max_ttl` is clamped to `max_ttl` at issue, as Vault does.
#![allow(dead_code)]

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::AbortHandle;

/// Fault injected on every endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer normally.
    None,
    /// Answer every request with 503 `{"errors":["Vault is sealed"]}`.
    Status503,
    /// Sleep this long, then answer normally.
    Delay(Duration),
    /// Connections refused: the listener is dropped and open connections are cut.
    /// The same port is re-bound when the fault is set to anything else.
    Down,
}

/// One request as the fake saw it (recorded before any fault is applied).
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    /// Path including the query string, e.g. `/v1/secret/data/nim?version=2`.
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// The fake server. Create with [`FakeVault::start`].
pub struct FakeVault {
    addr: SocketAddr,
    /// Bound to `addr`, never listening: holds the port while the listener is down.
    _reserve: TcpSocket,
    state: Mutex<State>,
}

/// A new listener on `addr` (SO_REUSEADDR, so it can share the port with the reservation).
fn listen_on(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = TcpSocket::new_v4()?;
    s.set_reuseaddr(true)?;
    s.bind(addr)?;
    s.listen(1024)
}

const POLICIES: [&str; 2] = ["default", "nimgate"];
const KV1_LEASE: u64 = 2_764_800;

struct Version {
    data: Value,
    created: SystemTime,
}

enum Mount {
    Kv1(HashMap<String, Value>),
    Kv2(HashMap<String, Vec<Version>>),
}

struct Role {
    /// AppRole: the secret_id; unused for Kubernetes.
    secret_id: String,
    /// Kubernetes: accepted JWTs; unused for AppRole.
    jwts: Vec<String>,
    ttl: Duration,
    max_ttl: Duration,
    renewable: bool,
}

impl Role {
    /// No secret_id and no JWTs; the auth method's own field is set by the caller.
    fn new(ttl: Duration, max_ttl: Duration, renewable: bool) -> Self {
        Role {
            secret_id: String::new(),
            jwts: Vec::new(),
            ttl,
            max_ttl,
            renewable,
        }
    }
}

enum AuthMount {
    /// role_id -> role
    AppRole(HashMap<String, Role>),
    /// role name -> role
    Kubernetes(HashMap<String, Role>),
}

struct Token {
    accessor: String,
    entity_id: String,
    issued_at: Instant,
    issued_wall: SystemTime,
    ttl: Duration,
    max_ttl: Duration,
    expires: Option<Instant>,
    renewable: bool,
    revoked: bool,
    path: String,
    display_name: String,
    metadata: Value,
}

struct State {
    fault: Fault,
    listener: Option<TcpListener>,
    listener_gen: u64,
    accept_waker: Option<Waker>,
    conns: Vec<AbortHandle>,

    mounts: HashMap<String, Mount>,
    kv2_metadata: bool,
    denied: HashSet<String>,

    auth_mounts: HashMap<String, AuthMount>,
    tokens: HashMap<String, Token>,
    issued: Vec<String>,
    renew_refused: bool,

    counts: HashMap<&'static str, u64>,
    log: Vec<Seen>,
    seq: u64,
}

type Reply = (StatusCode, Value);

fn errors(status: StatusCode, msgs: &[&str]) -> Reply {
    (status, json!({ "errors": msgs }))
}

fn not_found() -> Reply {
    errors(StatusCode::NOT_FOUND, &[])
}

fn denied() -> Reply {
    errors(StatusCode::FORBIDDEN, &["permission denied"])
}

fn method_not_allowed() -> Reply {
    errors(StatusCode::METHOD_NOT_ALLOWED, &[])
}

fn norm(s: &str) -> String {
    s.trim_matches('/').to_string()
}

fn is_write(m: &Method) -> bool {
    m == Method::POST || m == Method::PUT
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// RFC 3339 UTC timestamp with nanoseconds, as Vault prints them
/// (`2026-03-22T02:24:06.945319214Z`).
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(t).to_string()
}

impl State {
    fn new(listener: TcpListener) -> State {
        State {
            fault: Fault::None,
            listener: Some(listener),
            listener_gen: 0,
            accept_waker: None,
            conns: Vec::new(),
            mounts: HashMap::new(),
            kv2_metadata: true,
            denied: HashSet::new(),
            auth_mounts: HashMap::new(),
            tokens: HashMap::new(),
            issued: Vec::new(),
            renew_refused: false,
            counts: HashMap::new(),
            log: Vec::new(),
            seq: 0,
        }
    }

    /// The secrets mount `mount`, created empty (KV v2 if `kv2`, else KV v1) if it is new.
    fn kv_mount(&mut self, mount: &str, kv2: bool) -> &mut Mount {
        self.mounts.entry(mount.to_string()).or_insert_with(|| {
            if kv2 {
                Mount::Kv2(HashMap::new())
            } else {
                Mount::Kv1(HashMap::new())
            }
        })
    }

    fn wake_acceptor(&mut self) {
        if let Some(w) = self.accept_waker.take() {
            w.wake();
        }
    }

    /// 32 bytes of hex that differ on every call (sha256 of a counter, the clock and a label).
    fn random_hex(&mut self, label: &str) -> String {
        self.seq += 1;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let mut h = Sha256::new();
        h.update(format!("{label}:{}:{nanos}:{:p}", self.seq, self as *const _).as_bytes());
        hex::encode(h.finalize())
    }

    fn uuid(&mut self, label: &str) -> String {
        let h = self.random_hex(label);
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }

    fn envelope(&mut self, lease_duration: u64, data: Value, auth: Value) -> Value {
        json!({
            "request_id": self.uuid("request"),
            "lease_id": "",
            "renewable": false,
            "lease_duration": lease_duration,
            "data": data,
            "wrap_info": null,
            "warnings": null,
            "auth": auth,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn insert_token(
        &mut self,
        id: Option<&str>,
        ttl: Duration,
        max_ttl: Duration,
        renewable: bool,
        path: String,
        display_name: String,
        metadata: Value,
    ) -> String {
        let id = match id {
            Some(id) => id.to_string(),
            None => {
                let h = self.random_hex("token");
                format!("hvs.fake-{}-{}", self.seq, &h[..24])
            }
        };
        let ttl = if !max_ttl.is_zero() && ttl > max_ttl {
            max_ttl
        } else {
            ttl
        };
        let now = Instant::now();
        let accessor = self.random_hex("accessor")[..24].to_string();
        let entity_id = self.uuid("entity");
        self.tokens.insert(
            id.clone(),
            Token {
                accessor,
                entity_id,
                issued_at: now,
                issued_wall: SystemTime::now(),
                ttl,
                max_ttl,
                expires: (!ttl.is_zero()).then(|| now + ttl),
                renewable,
                revoked: false,
                path,
                display_name,
                metadata,
            },
        );
        id
    }

    /// The token of the request if it is known, not revoked and not expired.
    fn valid_token(&self, headers: &HeaderMap, now: Instant) -> Option<String> {
        let raw = headers
            .get("x-vault-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| {
                headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(str::to_string)
            })?;
        let raw = raw.trim().to_string();
        let t = self.tokens.get(&raw)?;
        if t.revoked || t.expires.is_some_and(|e| now >= e) {
            return None;
        }
        Some(raw)
    }

    fn auth_block(&self, id: &str, lease_duration: u64) -> Value {
        let t = &self.tokens[id];
        json!({
            "client_token": id,
            "accessor": t.accessor,
            "policies": POLICIES,
            "token_policies": POLICIES,
            "metadata": t.metadata,
            "lease_duration": lease_duration,
            "renewable": t.renewable,
            "entity_id": t.entity_id,
            "token_type": "service",
            "orphan": true,
            "mfa_requirement": null,
            "num_uses": 0,
        })
    }

    /// Longest registered secret mount that prefixes `rest`, and the remainder after it.
    fn find_mount<'a>(&self, rest: &'a str) -> Option<(String, &'a str)> {
        self.mounts
            .keys()
            .filter_map(|m| {
                if rest == m {
                    Some((m.clone(), ""))
                } else {
                    rest.strip_prefix(m.as_str())
                        .and_then(|r| r.strip_prefix('/'))
                        .map(|r| (m.clone(), r))
                }
            })
            .max_by_key(|(m, _)| m.len())
    }

    fn classify(&self, path: &str) -> Option<&'static str> {
        let rest = path.strip_prefix("/v1/")?;
        match rest {
            "auth/token/renew-self" => Some("renew"),
            "auth/token/lookup-self" => Some("lookup"),
            _ if rest.starts_with("auth/") && rest.ends_with("/login") => Some("login"),
            _ => self.find_mount(rest).map(|_| "read"),
        }
    }

    fn route(
        &mut self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Reply {
        let Some(rest) = path.strip_prefix("/v1/") else {
            return not_found();
        };
        let now = Instant::now();
        match rest {
            "auth/token/renew-self" => {
                return if is_write(method) {
                    self.renew_self(headers, now)
                } else {
                    method_not_allowed()
                };
            }
            "auth/token/lookup-self" => {
                return if method == Method::GET || is_write(method) {
                    self.lookup_self(headers, now)
                } else {
                    method_not_allowed()
                };
            }
            _ => {}
        }
        if let Some(mount) = rest
            .strip_prefix("auth/")
            .and_then(|r| r.strip_suffix("/login"))
        {
            if !self.auth_mounts.contains_key(mount) {
                return not_found();
            }
            return if is_write(method) {
                self.login(mount, body)
            } else {
                method_not_allowed()
            };
        }
        if let Some((mount, sub)) = self.find_mount(rest) {
            if method != Method::GET {
                return method_not_allowed();
            }
            return self.read(&mount, sub, query, headers, now);
        }
        not_found()
    }

    fn login(&mut self, mount: &str, body: &Bytes) -> Reply {
        let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let field = |k: &str| {
            body.get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let (ttl, max_ttl, renewable, metadata, display) = match &self.auth_mounts[mount] {
            AuthMount::AppRole(roles) => {
                let (role_id, secret_id) = (field("role_id"), field("secret_id"));
                match roles.get(&role_id) {
                    Some(r) if !secret_id.is_empty() && r.secret_id == secret_id => (
                        r.ttl,
                        r.max_ttl,
                        r.renewable,
                        json!({ "role_name": "nimgate" }),
                        mount.to_string(),
                    ),
                    _ => {
                        return errors(StatusCode::BAD_REQUEST, &["invalid role or secret ID"]);
                    }
                }
            }
            AuthMount::Kubernetes(roles) => {
                let (role, jwt) = (field("role"), field("jwt"));
                match roles.get(&role) {
                    Some(r) if !jwt.is_empty() && r.jwts.contains(&jwt) => (
                        r.ttl,
                        r.max_ttl,
                        r.renewable,
                        json!({
                            "role": role,
                            "service_account_name": "nimgate",
                            "service_account_namespace": "default",
                            "service_account_secret_name": "",
                            "service_account_uid": "00000000-0000-4000-8000-000000000000",
                        }),
                        format!("{mount}-default-nimgate"),
                    ),
                    _ => return denied(),
                }
            }
        };
        let id = self.insert_token(
            None,
            ttl,
            max_ttl,
            renewable,
            format!("auth/{mount}/login"),
            display,
            metadata,
        );
        self.issued.push(id.clone());
        let lease = self.tokens[&id].ttl.as_secs();
        let auth = self.auth_block(&id, lease);
        (StatusCode::OK, self.envelope(0, Value::Null, auth))
    }

    fn renew_self(&mut self, headers: &HeaderMap, now: Instant) -> Reply {
        let Some(id) = self.valid_token(headers, now) else {
            return denied();
        };
        let refused = self.renew_refused;
        let t = self.tokens.get_mut(&id).expect("valid token exists");
        if !t.renewable || refused {
            return errors(StatusCode::BAD_REQUEST, &["lease is not renewable"]);
        }
        let granted = if t.ttl.is_zero() {
            0
        } else {
            let want = now + t.ttl;
            let cap = (!t.max_ttl.is_zero()).then(|| t.issued_at + t.max_ttl);
            match cap {
                Some(cap) if cap < want => {
                    t.expires = Some(cap);
                    cap.saturating_duration_since(now).as_secs()
                }
                _ => {
                    t.expires = Some(want);
                    t.ttl.as_secs()
                }
            }
        };
        let auth = self.auth_block(&id, granted);
        (StatusCode::OK, self.envelope(0, Value::Null, auth))
    }

    fn lookup_self(&mut self, headers: &HeaderMap, now: Instant) -> Reply {
        let Some(id) = self.valid_token(headers, now) else {
            return denied();
        };
        let t = &self.tokens[&id];
        let (ttl, expire_time) = match t.expires {
            Some(e) => (
                e.saturating_duration_since(now).as_secs(),
                json!(rfc3339(t.issued_wall + (e - t.issued_at))),
            ),
            None => (0, Value::Null),
        };
        let data = json!({
            "accessor": t.accessor,
            "creation_time": unix_secs(t.issued_wall),
            "creation_ttl": t.ttl.as_secs(),
            "display_name": t.display_name,
            "entity_id": t.entity_id,
            "expire_time": expire_time,
            "explicit_max_ttl": 0,
            "id": id,
            "issue_time": rfc3339(t.issued_wall),
            "meta": null,
            "num_uses": 0,
            "orphan": true,
            "path": t.path,
            "policies": POLICIES,
            "renewable": t.renewable,
            "ttl": ttl,
            "type": "service",
        });
        (StatusCode::OK, self.envelope(0, data, Value::Null))
    }

    fn read(
        &mut self,
        mount: &str,
        sub: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        now: Instant,
    ) -> Reply {
        if self.valid_token(headers, now).is_none() {
            return denied();
        }
        let (data, lease) = match &self.mounts[mount] {
            Mount::Kv2(secrets) => {
                let Some(path) = sub.strip_prefix("data/").map(norm) else {
                    return not_found();
                };
                if self.denied.contains(&format!("{mount}/{path}")) {
                    return denied();
                }
                let Some(versions) = secrets.get(&path) else {
                    return not_found();
                };
                let wanted = query
                    .unwrap_or("")
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("version="))
                    .map(str::parse::<usize>);
                let n = match wanted {
                    None | Some(Ok(0)) => versions.len(),
                    Some(Ok(n)) => n,
                    Some(Err(_)) => {
                        return errors(StatusCode::BAD_REQUEST, &["invalid version"]);
                    }
                };
                let Some(v) = n.checked_sub(1).and_then(|i| versions.get(i)) else {
                    return not_found();
                };
                let data = if self.kv2_metadata {
                    json!({
                        "data": v.data,
                        "metadata": {
                            "created_time": rfc3339(v.created),
                            "custom_metadata": null,
                            "deletion_time": "",
                            "destroyed": false,
                            "version": n,
                        },
                    })
                } else {
                    json!({ "data": v.data })
                };
                (data, 0)
            }
            Mount::Kv1(secrets) => {
                let path = norm(sub);
                if self.denied.contains(&format!("{mount}/{path}")) {
                    return denied();
                }
                let Some(v) = secrets.get(&path) else {
                    return not_found();
                };
                (v.clone(), KV1_LEASE)
            }
        };
        (StatusCode::OK, self.envelope(lease, data, Value::Null))
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

async fn accept_loop(weak: Weak<FakeVault>) {
    loop {
        let accepted = poll_fn(|cx| {
            let Some(fv) = weak.upgrade() else {
                return Poll::Ready(None);
            };
            let mut st = fv.lock();
            let gen = st.listener_gen;
            let polled = st.listener.as_ref().map(|l| l.poll_accept(cx));
            match polled {
                Some(Poll::Ready(Ok((stream, _)))) => Poll::Ready(Some(Some((stream, gen)))),
                Some(Poll::Ready(Err(_))) => Poll::Ready(Some(None)),
                Some(Poll::Pending) | None => {
                    st.accept_waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await;
        let (stream, gen) = match accepted {
            None => return,
            Some(Some(x)) => x,
            Some(None) => {
                // Transient accept error (e.g. EMFILE); back off briefly.
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        let Some(fv) = weak.upgrade() else { return };
        let mut st = fv.lock();
        if st.listener_gen != gen || st.fault == Fault::Down {
            continue; // accepted on a listener that has since been closed: drop it
        }
        let handle = tokio::spawn(serve_conn(stream, weak.clone()));
        st.conns.retain(|h| !h.is_finished());
        st.conns.push(handle.abort_handle());
    }
}

async fn serve_conn(stream: TcpStream, weak: Weak<FakeVault>) {
    let svc = service_fn(move |req: Request<Incoming>| {
        let weak = weak.clone();
        async move {
            match weak.upgrade() {
                Some(fv) => fv.handle(req).await,
                None => Err(std::io::Error::other("fake vault dropped")),
            }
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), svc)
        .await;
}

impl FakeVault {
    /// Bind 127.0.0.1:0 and serve (HTTP/1.1) in a spawned task. Must be called inside a
    /// tokio runtime.
    pub async fn start() -> Arc<FakeVault> {
        let reserve = TcpSocket::new_v4().expect("fake vault: socket");
        reserve
            .set_reuseaddr(true)
            .expect("fake vault: SO_REUSEADDR");
        reserve
            .bind("127.0.0.1:0".parse().expect("loopback address"))
            .expect("fake vault: bind 127.0.0.1:0");
        let addr = reserve.local_addr().expect("fake vault: local_addr");
        let listener = listen_on(addr).expect("fake vault: listen");
        let fv = Arc::new(FakeVault {
            addr,
            _reserve: reserve,
            state: Mutex::new(State::new(listener)),
        });
        tokio::spawn(accept_loop(Arc::downgrade(&fv)));
        fv
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    // --- secrets ---

    /// KV v2 write at mount/path (creates the mount implicitly); returns the new version.
    pub fn put_kv2(&self, mount: &str, path: &str, data: Value) -> u64 {
        let (mount, path) = (norm(mount), norm(path));
        let mut st = self.lock();
        match st.kv_mount(&mount, true) {
            Mount::Kv2(secrets) => {
                let versions = secrets.entry(path).or_default();
                versions.push(Version {
                    data,
                    created: SystemTime::now(),
                });
                versions.len() as u64
            }
            Mount::Kv1(_) => panic!("fake vault: mount {mount:?} is KV v1, not KV v2"),
        }
    }

    /// KV v1 write (creates the mount implicitly; overwrites).
    pub fn put_kv1(&self, mount: &str, path: &str, data: Value) {
        let (mount, path) = (norm(mount), norm(path));
        let mut st = self.lock();
        match st.kv_mount(&mount, false) {
            Mount::Kv1(secrets) => {
                secrets.insert(path, data);
            }
            Mount::Kv2(_) => panic!("fake vault: mount {mount:?} is KV v2, not KV v1"),
        }
    }

    /// When false, KV v2 reads answer `"data":{"data":{...}}` with no `"metadata"`.
    pub fn set_kv2_metadata(&self, on: bool) {
        self.lock().kv2_metadata = on;
    }

    /// Reads of `mount/path` (e.g. `secret/nim/prod`, logical path without `data/`) get
    /// 403 `{"errors":["permission denied"]}` for every token.
    pub fn deny_secret(&self, mount_and_path: &str, deny: bool) {
        let key = norm(mount_and_path);
        let mut st = self.lock();
        if deny {
            st.denied.insert(key);
        } else {
            st.denied.remove(&key);
        }
    }

    // --- auth ---

    /// AppRole at auth mount `mount`. Calling again for the same role_id replaces it.
    pub fn add_approle(
        &self,
        mount: &str,
        role_id: &str,
        secret_id: &str,
        ttl: Duration,
        max_ttl: Duration,
        renewable: bool,
    ) {
        let role = Role {
            secret_id: secret_id.to_string(),
            ..Role::new(ttl, max_ttl, renewable)
        };
        self.insert_role(mount, true, role_id, role);
    }

    /// Kubernetes auth at `mount`: login with `role` + one of `accepted_jwts`. Calling again
    /// replaces the role (and its accepted JWT list).
    pub fn add_k8s_role(
        &self,
        mount: &str,
        role: &str,
        accepted_jwts: &[&str],
        ttl: Duration,
        max_ttl: Duration,
        renewable: bool,
    ) {
        let r = Role {
            jwts: accepted_jwts.iter().map(|s| s.to_string()).collect(),
            ..Role::new(ttl, max_ttl, renewable)
        };
        self.insert_role(mount, false, role, r);
    }

    /// Put `role` under `key` at auth mount `mount`, creating the mount (AppRole if `approle`,
    /// else Kubernetes); panics if the mount exists as the other kind.
    fn insert_role(&self, mount: &str, approle: bool, key: &str, role: Role) {
        let mount = norm(mount);
        let mut st = self.lock();
        let m = st.auth_mounts.entry(mount.clone()).or_insert_with(|| {
            if approle {
                AuthMount::AppRole(HashMap::new())
            } else {
                AuthMount::Kubernetes(HashMap::new())
            }
        });
        let roles = match (m, approle) {
            (AuthMount::AppRole(roles), true) | (AuthMount::Kubernetes(roles), false) => roles,
            (AuthMount::Kubernetes(_), true) => {
                panic!("fake vault: auth mount {mount:?} is kubernetes, not approle")
            }
            (AuthMount::AppRole(_), false) => {
                panic!("fake vault: auth mount {mount:?} is approle, not kubernetes")
            }
        };
        roles.insert(key.to_string(), role);
    }

    /// A pre-made token (as a Vault Agent sink would hold). Its lookup `path` is
    /// `auth/token/create`. Re-adding the same token resets it.
    pub fn add_token(&self, token: &str, ttl: Duration, max_ttl: Duration, renewable: bool) {
        self.lock().insert_token(
            Some(token),
            ttl,
            max_ttl,
            renewable,
            "auth/token/create".to_string(),
            "token".to_string(),
            Value::Null,
        );
    }

    /// Revoke every issued/added token (next use -> 403 permission denied). Tokens issued by
    /// later logins are valid.
    pub fn revoke_all_tokens(&self) {
        for t in self.lock().tokens.values_mut() {
            t.revoked = true;
        }
    }

    /// Make renew-self answer 400 `{"errors":["lease is not renewable"]}` for every token.
    pub fn set_renew_refused(&self, refused: bool) {
        self.lock().renew_refused = refused;
    }

    // --- faults ---

    /// Applies to every endpoint. `Down` closes the listening socket (connects are refused)
    /// and cuts open connections; any other value re-binds the same port if it was down (the
    /// port stays reserved meanwhile, see the module header).
    /// Must be called inside a tokio runtime (re-binding registers with its reactor).
    pub fn set_fault(&self, f: Fault) {
        let mut st = self.lock();
        st.fault = f;
        if f == Fault::Down {
            if st.listener.take().is_some() {
                st.listener_gen += 1;
            }
            for h in st.conns.drain(..) {
                h.abort();
            }
            st.wake_acceptor();
        } else if st.listener.is_none() {
            let mut last_err = None;
            for _ in 0..200 {
                match listen_on(self.addr) {
                    Ok(l) => {
                        st.listener = Some(l);
                        st.listener_gen += 1;
                        st.wake_acceptor();
                        return;
                    }
                    Err(e) => {
                        last_err = Some(e);
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
            panic!("fake vault: could not re-bind {}: {last_err:?}", self.addr);
        }
    }

    // --- observation ---

    /// The last request whose path contains `path_part`.
    pub fn last_seen(&self, path_part: &str) -> Option<Seen> {
        self.log().into_iter().rfind(|s| s.path.contains(path_part))
    }

    /// Requests seen per kind: "login", "renew", "lookup", "read" (any request under a secret
    /// mount), "requests" (everything). Counted on arrival, so failed and faulted requests
    /// count too.
    pub fn count(&self, what: &str) -> u64 {
        self.lock().counts.get(what).copied().unwrap_or(0)
    }

    /// Every request received, in arrival order.
    pub fn log(&self) -> Vec<Seen> {
        self.lock().log.clone()
    }

    /// Tokens issued by successful logins, in order (not those from `add_token`).
    pub fn tokens_issued(&self) -> Vec<String> {
        self.lock().issued.clone()
    }

    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, std::io::Error> {
        let (parts, body) = req.into_parts();
        let body = match body.collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => return Err(std::io::Error::other(e)),
        };
        let path_q = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| parts.uri.path().to_string());
        let fault = {
            let mut st = self.lock();
            let kind = st.classify(parts.uri.path());
            *st.counts.entry("requests").or_default() += 1;
            if let Some(k) = kind {
                *st.counts.entry(k).or_default() += 1;
            }
            st.log.push(Seen {
                method: parts.method.clone(),
                path: path_q,
                headers: parts.headers.clone(),
                body: body.clone(),
            });
            st.fault
        };
        match fault {
            Fault::None => {}
            Fault::Down => return Err(std::io::Error::other("fake vault is down")),
            Fault::Status503 => {
                let (s, b) = errors(StatusCode::SERVICE_UNAVAILABLE, &["Vault is sealed"]);
                return Ok(json_response(s, &b));
            }
            Fault::Delay(d) => tokio::time::sleep(d).await,
        }
        let (status, reply) = self.lock().route(
            &parts.method,
            parts.uri.path(),
            parts.uri.query(),
            &parts.headers,
            &body,
        );
        Ok(json_response(status, &reply))
    }
}
