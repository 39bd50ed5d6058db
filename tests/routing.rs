#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::pedantic,
    reason = "test and bench code: a panic is a failed test; the pedantic set is for the product"
)]
//! Several NIMs behind one gateway (issue 16), over real loopback sockets: three upstreams with
//! distinct keys (canary fake NIMs that accept only their own key), two replicas of one of them.
//! Routing by every pattern kind, unknown and disallowed models, the merged `/v1/models`, a replica
//! killed under load and rejoining after its health check, all replicas down, and a key rotation
//! of one upstream that leaves the others untouched.

mod common;

use common::openbao::{AppRole, Bao};
use common::{get_admin, post, read_audit, send, send_json, CLIENT_KEY, CLIENT_KEY_B};
use http_body_util::BodyExt;
use nimgate::auth::key_digest_hex;
use nimgate::fakenim::FakeNim;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

const LLAMA_KEY: &str = "nvapi-llama-key-0001";
const EMBED_KEY: &str = "nvapi-embed-key-0001";
const HOSTED_KEY: &str = "nvapi-hosted-key-0001";
const LLAMA_31: &str = "meta/llama-3.1-8b-instruct";
const LLAMA_33: &str = "meta/llama-3.3-70b-instruct";
const EMBED: &str = "nvidia/nv-embedqa-e5-v5";
const MIXTRAL: &str = "mistralai/mixtral-8x7b-instruct";

/// The accept loop and every connection task of a replica.
type Conns = (
    tokio::task::JoinHandle<()>,
    Arc<tokio::sync::Mutex<JoinSet<()>>>,
);

/// A fake NIM replica that can be killed (listener and every open connection closed at once)
/// and brought back on the same port.
struct Replica {
    nim: Arc<FakeNim>,
    addr: SocketAddr,
    conns: Option<Conns>,
}

impl Replica {
    async fn start(key: &str, sse_delay: Duration) -> Self {
        let nim = FakeNim::new(vec![key.into()], sse_delay, true);
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mut r = Self {
            nim,
            addr,
            conns: None,
        };
        r.serve(l);
        r
    }

    fn serve(&mut self, l: TcpListener) {
        let set = Arc::new(tokio::sync::Mutex::new(JoinSet::new()));
        let (nim, s) = (self.nim.clone(), set.clone());
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = l.accept().await {
                s.lock().await.spawn(nim.clone().serve_conn(stream));
            }
        });
        self.conns = Some((accept, set));
    }

    /// Close the listener and every connection (requests on it fail mid-way).
    async fn kill(&mut self) {
        if let Some((accept, set)) = self.conns.take() {
            accept.abort();
            let _ = accept.await;
            set.lock().await.shutdown().await;
        }
    }

    async fn restart(&mut self) {
        let l = TcpListener::bind(self.addr).await.unwrap();
        self.serve(l);
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests other than health checks.
    fn served(&self) -> Vec<nimgate::fakenim::Seen> {
        self.nim
            .seen()
            .into_iter()
            .filter(|s| !s.uri.contains("/v1/health/"))
            .collect()
    }
}

struct Multi {
    addr: SocketAddr,
    admin: SocketAddr,
    llama: [Replica; 2],
    embed: Replica,
    hosted: Replica,
    dir: tempfile::TempDir,
    audit_file: PathBuf,
    _stop: oneshot::Sender<()>,
}

async fn start(sse_delay: Duration) -> Multi {
    start_with(sse_delay, "health_interval = \"100ms\"").await
}

/// `llama_extra`: more keys for the `llama` upstream.
async fn start_with(sse_delay: Duration, llama_extra: &str) -> Multi {
    start_cfg(sse_delay, llama_extra, None).await
}

/// `secrets`: the `[upstreams.secret]` tables of `llama` and `embed` (default: key files).
async fn start_cfg(
    sse_delay: Duration,
    llama_extra: &str,
    secrets: Option<(String, String)>,
) -> Multi {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let key = |name: &str, k: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, format!("{k}\n")).unwrap();
        p
    };
    let (kl, ke, kh) = (
        key("llama", LLAMA_KEY),
        key("embed", EMBED_KEY),
        key("hosted", HOSTED_KEY),
    );
    let llama = [
        Replica::start(LLAMA_KEY, sse_delay).await,
        Replica::start(LLAMA_KEY, sse_delay).await,
    ];
    let embed = Replica::start(EMBED_KEY, sse_delay).await;
    let hosted = Replica::start(HOSTED_KEY, sse_delay).await;
    let audit_file = dir.path().join("audit.jsonl");
    let secret = |p: &PathBuf| {
        format!(
            "[upstreams.secret]\nsource = \"file\"\npath = \"{}\"\npoll_interval = \"50ms\"\n",
            p.display()
        )
    };
    let toml = format!(
        r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace = "2s"
[admin]
listen = "127.0.0.1:0"
[[clients]]
id = "team-a"
key_sha256 = "{da}"
[[clients]]
id = "team-b"
key_sha256 = "{db}"
models = ["meta/*"]
[audit]
path = "{audit}"
[[upstreams]]
name = "llama"
urls = ["{l0}", "{l1}"]
models = ["{LLAMA_31}", "meta/llama-3.3-*"]
response_timeout = "5s"
eject_after = 2
eject_backoff = "30s"
{llama_extra}
{sl}
[[upstreams]]
name = "embed"
url = "{e}"
models = ["{EMBED}"]
default = true
{se}
[[upstreams]]
name = "hosted"
url = "{h}"
models = ["mistralai/*"]
{sh}
"#,
        da = key_digest_hex(CLIENT_KEY),
        db = key_digest_hex(CLIENT_KEY_B),
        audit = audit_file.display(),
        l0 = llama[0].url(),
        l1 = llama[1].url(),
        e = embed.url(),
        h = hosted.url(),
        sl = secrets
            .as_ref()
            .map_or_else(|| secret(&kl), |s| s.0.clone()),
        se = secrets
            .as_ref()
            .map_or_else(|| secret(&ke), |s| s.1.clone()),
        sh = secret(&kh),
    );
    let cfg = nimgate::config::parse(&toml).unwrap_or_else(|e| panic!("{e:?}\n{toml}"));
    assert_eq!(cfg.validate(), vec![]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, admin_addr) = (listener.local_addr().unwrap(), admin.local_addr().unwrap());
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(nimgate::server::run(cfg, listener, admin, async move {
        let _ = rx.await;
    }));
    let m = Multi {
        addr,
        admin: admin_addr,
        llama,
        embed,
        hosted,
        dir,
        audit_file,
        _stop: tx,
    };
    m.wait_readyz(|v| v["status"] == "ready").await;
    m
}

impl Multi {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn chat(&self, key: &str, body: Value) -> (u16, Value) {
        send_json(post(
            &self.url("/v1/chat/completions"),
            Some(key),
            &body.to_string(),
        ))
        .await
    }

    async fn readyz(&self) -> Value {
        let (_, body) = get_admin(self.admin, "/readyz").await.unwrap();
        serde_json::from_str(&body).unwrap()
    }

    /// Poll `/readyz` until `ok` holds (at most 10 s).
    async fn wait_readyz(&self, ok: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..200 {
            let v = self.readyz().await;
            if ok(&v) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("readyz never matched: {}", self.readyz().await);
    }

    async fn audit(&self) -> Vec<Value> {
        tokio::time::sleep(Duration::from_millis(100)).await;
        read_audit(&self.audit_file)
    }
}

fn chat_body(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

/// Every request `r` served carried exactly one credential: `Bearer <key>`.
fn only_key(r: &Replica, key: &str, what: &str) {
    for s in r.nim.seen() {
        let auth: Vec<_> = s.headers.get_all("authorization").iter().collect();
        if s.uri.contains("/v1/health/") {
            assert!(auth.is_empty(), "{what}: keyless health checks: {auth:?}");
            continue;
        }
        assert_eq!(auth.len(), 1, "{what}: {}", s.uri);
        assert_eq!(auth[0], format!("Bearer {key}").as_str(), "{what}");
        for h in ["x-api-key", "api-key", "proxy-authorization"] {
            assert!(!s.headers.contains_key(h), "{what}: {h}");
        }
        let text = format!("{:?}{}", s.headers, String::from_utf8_lossy(&s.body));
        for other in [LLAMA_KEY, EMBED_KEY, HOSTED_KEY, CLIENT_KEY, CLIENT_KEY_B] {
            if other != key {
                assert!(!text.contains(other), "{what}: saw another key");
            }
        }
    }
}

#[tokio::test]
async fn each_model_reaches_its_upstream_with_that_upstreams_key_only() {
    let m = start(Duration::from_millis(5)).await;
    for (model, want) in [
        (LLAMA_31, "llama"),
        (LLAMA_33, "llama"),
        (EMBED, "embed"),
        (MIXTRAL, "hosted"),
    ] {
        let (s, v) = m.chat(CLIENT_KEY, chat_body(model)).await;
        assert_eq!(s, 200, "{model}: {v}");
        assert_eq!(v["model"], model, "{want}");
    }
    // A nested `model` does not count; with duplicates the last top-level one wins (as the NIM).
    let tricky = format!(
        r#"{{"model":"{EMBED}","messages":[{{"role":"user","content":"x","model":"{LLAMA_31}"}}],"model":"{MIXTRAL}"}}"#
    );
    let (s, _, _) = send(post(
        &m.url("/v1/chat/completions"),
        Some(CLIENT_KEY),
        &tricky,
    ))
    .await;
    assert_eq!(s, 200);
    let models_of = |r: &Replica| -> Vec<String> {
        r.served()
            .iter()
            .map(|s| {
                let v: Value = serde_json::from_slice(&s.body).unwrap_or(Value::Null);
                v["model"].as_str().unwrap_or("").to_string()
            })
            .collect()
    };
    let mut llama = models_of(&m.llama[0]);
    llama.extend(models_of(&m.llama[1]));
    llama.sort();
    assert_eq!(llama, vec![LLAMA_31, LLAMA_33]);
    assert_eq!(models_of(&m.embed), vec![EMBED]);
    assert_eq!(models_of(&m.hosted), vec![MIXTRAL, MIXTRAL]);
    only_key(&m.llama[0], LLAMA_KEY, "llama 0");
    only_key(&m.llama[1], LLAMA_KEY, "llama 1");
    only_key(&m.embed, EMBED_KEY, "embed");
    only_key(&m.hosted, HOSTED_KEY, "hosted");
    // Model-less routes go to the default upstream.
    let (s, _, _) = send(common::get(&m.url("/v1/health/ready"), Some(CLIENT_KEY))).await;
    assert_eq!(s, 200);
    let proxied = m
        .embed
        .nim
        .seen()
        .into_iter()
        .find(|s| s.uri == "/v1/health/ready");
    assert_eq!(
        proxied.unwrap().headers["authorization"],
        format!("Bearer {EMBED_KEY}").as_str()
    );
    let audit = m.audit().await;
    let uses: Vec<&Value> = audit.iter().filter(|r| r["event"] == "use").collect();
    let of = |model: &str| uses.iter().find(|r| r["model"] == model).copied().unwrap();
    assert_eq!(of(LLAMA_33)["upstream"], "llama");
    let replica = of(LLAMA_33)["replica"].as_str().unwrap().to_string();
    assert!(
        [m.llama[0].url(), m.llama[1].url()].contains(&replica),
        "{replica}"
    );
    assert_eq!(of(EMBED)["upstream"], "embed");
    assert_eq!(of(EMBED)["replica"], m.embed.url().as_str());
    assert_eq!(of(MIXTRAL)["upstream"], "hosted");
    // The three upstreams' keys have three different fingerprints in the records.
    let fps: BTreeSet<_> = uses
        .iter()
        .map(|r| r["key_fingerprint"].to_string())
        .collect();
    assert_eq!(fps.len(), 3, "{fps:?}");
}

#[tokio::test]
async fn unknown_disallowed_and_missing_models_are_refused_before_any_key_is_used() {
    let m = start(Duration::from_millis(5)).await;
    let (s, unknown) = m.chat(CLIENT_KEY, chat_body("meta/llama-2-7b")).await;
    assert_eq!(s, 404);
    assert_eq!(unknown["error"]["code"], "model_not_found");
    assert_eq!(unknown["error"]["param"], "model");
    assert_eq!(unknown["error"]["type"], "invalid_request_error");
    // team-b may use meta/* only: another model gets exactly the unknown-model answer.
    let (s, denied) = m.chat(CLIENT_KEY_B, chat_body(EMBED)).await;
    assert_eq!(s, 404);
    assert_eq!(denied, unknown, "existence is not revealed");
    let (s, _) = m.chat(CLIENT_KEY_B, chat_body(LLAMA_33)).await;
    assert_eq!(s, 200);
    // A body without a model (the default upstream claims no `*`): 400 naming `model`.
    let (s, v) = m.chat(CLIENT_KEY, json!({"messages": []})).await;
    assert_eq!(s, 400);
    assert_eq!(v["error"]["param"], "model");
    assert_eq!(v["error"]["code"], "model_required");
    let (s, v) = m
        .chat(CLIENT_KEY, json!({"model": 7, "messages": []}))
        .await;
    assert_eq!((s, &v["error"]["param"]), (400, &json!("model")));
    assert!(m.embed.served().is_empty() && m.hosted.served().is_empty());
    let audit = m.audit().await;
    let denied: Vec<&Value> = audit.iter().filter(|r| r["event"] == "denied").collect();
    let reasons: Vec<(&str, &str)> = denied
        .iter()
        .map(|r| {
            (
                r["client_id"].as_str().unwrap(),
                r["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(
        reasons.contains(&("team-a", "model_not_found")),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&("team-b", "model_not_allowed")),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&("team-a", "model_required")),
        "{reasons:?}"
    );
    let d = denied
        .iter()
        .find(|r| r["reason"] == "model_not_allowed")
        .unwrap();
    assert_eq!(d["model"], EMBED);
    assert_eq!(d["status"], 404);
}

#[tokio::test]
async fn v1_models_is_the_routed_union_filtered_by_the_clients_list() {
    let m = start(Duration::from_millis(5)).await;
    for r in &m.llama {
        *r.nim.models.lock().unwrap() = vec![LLAMA_31.into(), LLAMA_33.into(), "other/x".into()];
    }
    *m.embed.nim.models.lock().unwrap() = vec![EMBED.into()];
    *m.hosted.nim.models.lock().unwrap() = vec![MIXTRAL.into(), LLAMA_31.into()];
    let ids = |v: &Value| -> BTreeSet<String> {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    };
    let (s, all) = send_json(common::get(&m.url("/v1/models"), Some(CLIENT_KEY))).await;
    assert_eq!(s, 200);
    assert_eq!(all["object"], "list");
    // `other/x` routes nowhere; llama-3.1 listed by `hosted` routes to `llama`: once, from there.
    assert_eq!(
        ids(&all),
        [LLAMA_31, LLAMA_33, EMBED, MIXTRAL]
            .map(String::from)
            .into()
    );
    assert!(all["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["object"] == "model"));
    let (s, b) = send_json(common::get(&m.url("/v1/models"), Some(CLIENT_KEY_B))).await;
    assert_eq!(s, 200);
    assert_eq!(ids(&b), [LLAMA_31, LLAMA_33].map(String::from).into());
    // Each list was fetched with its own upstream's key, and audited as a key use.
    only_key(&m.llama[0], LLAMA_KEY, "llama 0");
    only_key(&m.llama[1], LLAMA_KEY, "llama 1");
    only_key(&m.embed, EMBED_KEY, "embed");
    only_key(&m.hosted, HOSTED_KEY, "hosted");
    let audit = m.audit().await;
    let fetches: BTreeSet<&str> = audit
        .iter()
        .filter(|r| r["event"] == "use" && r["path"] == "/v1/models")
        .map(|r| r["upstream"].as_str().unwrap())
        .collect();
    assert_eq!(fetches, ["embed", "hosted", "llama"].into());
}

/// A streaming chat to `model`: the status, and whether the stream reached `[DONE]`.
async fn stream_chat(url: String, model: &str) -> (u16, bool) {
    let body =
        json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let resp = common::client()
        .request(post(&url, Some(CLIENT_KEY), &body.to_string()))
        .await;
    let Ok(resp) = resp else {
        return (0, false);
    };
    let status = resp.status().as_u16();
    let done = match resp.into_body().collect().await {
        Ok(b) => String::from_utf8_lossy(&b.to_bytes()).contains("[DONE]"),
        Err(_) => false,
    };
    (status, done)
}

#[tokio::test]
async fn a_replica_killed_under_load_costs_only_its_own_requests_then_rejoins() {
    let mut m = start(Duration::from_millis(100)).await;
    let url = m.url("/v1/chat/completions");
    // Streams of ~0.5 s each, on both replicas.
    let mut load = JoinSet::new();
    for _ in 0..8 {
        load.spawn(stream_chat(url.clone(), LLAMA_31));
    }
    for _ in 0..100 {
        let n: usize = m.llama.iter().map(|r| r.served().len()).sum();
        if n == 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let on = |r: &Replica| r.served().len();
    assert!(
        on(&m.llama[0]) > 0 && on(&m.llama[1]) > 0,
        "P2C spreads the load"
    );
    let on_killed = on(&m.llama[1]);
    m.llama[1].kill().await;
    let mut broken = 0;
    while let Some(r) = load.join_next().await {
        let (status, done) = r.unwrap();
        assert_eq!(status, 200, "every request had its response head");
        broken += usize::from(!done);
    }
    assert_eq!(
        broken, on_killed,
        "exactly the streams on the killed replica broke"
    );
    // New requests all succeed on the survivor (connect failures move to it).
    for _ in 0..10 {
        let (s, v) = m.chat(CLIENT_KEY, chat_body(LLAMA_31)).await;
        assert_eq!(s, 200, "{v}");
    }
    let v = m
        .wait_readyz(|v| v["upstreams"]["llama"]["replicas_up"] == 1)
        .await;
    assert_eq!(v["status"], "ready");
    let audit = m.audit().await;
    let killed = m.llama[1].url();
    let retried: Vec<&Value> = audit
        .iter()
        .filter(|r| r["event"] == "done" && r["replica"] == killed.as_str())
        .filter(|r| r["reason"] == "upstream_unreachable")
        .collect();
    for d in &retried {
        // The failed attempt has its own use record, and the same request a second one on r0.
        let uses: Vec<&Value> = audit
            .iter()
            .filter(|r| r["event"] == "use" && r["request_id"] == d["request_id"])
            .collect();
        assert_eq!(uses.len(), 2, "{uses:?}");
        assert_eq!(uses[1]["replica"], m.llama[0].url().as_str());
    }
    let (_, metrics) = get_admin(m.admin, "/metrics").await.unwrap();
    assert!(metrics.contains(&format!(
        "nimgate_upstream_retries_total{{upstream=\"llama\"}} {}",
        retried.len()
    )));
    assert!(metrics.contains("nimgate_upstream_health_check_failures_total{upstream=\"llama\"}"));
    assert!(
        !metrics.contains("nimgate_upstream_health_check_failures_total{upstream=\"llama\"} 0\n")
    );
    // Back on the same port: the health check puts it in rotation again.
    m.llama[1].restart().await;
    m.wait_readyz(|v| v["upstreams"]["llama"]["replicas_up"] == 2)
        .await;
    let before = on(&m.llama[1]);
    for _ in 0..40 {
        let (s, _) = m.chat(CLIENT_KEY, chat_body(LLAMA_31)).await;
        assert_eq!(s, 200);
        if on(&m.llama[1]) > before {
            break;
        }
    }
    assert!(
        on(&m.llama[1]) > before,
        "the rejoined replica serves again"
    );
    only_key(&m.llama[1], LLAMA_KEY, "llama 1");
}

#[tokio::test]
async fn all_replicas_down_is_a_503_upstream_unavailable_and_others_still_serve() {
    let mut m = start(Duration::from_millis(5)).await;
    m.llama[0].kill().await;
    m.llama[1].kill().await;
    m.wait_readyz(|v| v["upstreams"]["llama"]["replicas_up"] == 0)
        .await;
    let (s, v) = m.chat(CLIENT_KEY, chat_body(LLAMA_33)).await;
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["error"]["code"], "upstream_unavailable");
    let (s, _) = m.chat(CLIENT_KEY, chat_body(EMBED)).await;
    assert_eq!(s, 200, "other upstreams are untouched");
    let audit = m.audit().await;
    let d = audit
        .iter()
        .find(|r| r["event"] == "denied" && r["reason"] == "upstream_unavailable")
        .unwrap();
    assert_eq!(d["model"], LLAMA_33);
    assert!(
        !audit
            .iter()
            .any(|r| r["event"] == "use" && r["request_id"] == d["request_id"]),
        "no key was used for it"
    );
    drop(m.dir);
}

#[tokio::test]
async fn rotating_one_upstreams_key_leaves_the_others_untouched() {
    let m = start(Duration::from_millis(5)).await;
    let (s, _) = m.chat(CLIENT_KEY, chat_body(EMBED)).await;
    assert_eq!(s, 200);
    let new = "nvapi-llama-key-0002";
    for r in &m.llama {
        r.nim.set_keys(vec![new.into()]);
    }
    std::fs::write(m.dir.path().join("llama"), format!("{new}\n")).unwrap();
    let mut ok = false;
    for _ in 0..100 {
        if m.chat(CLIENT_KEY, chat_body(LLAMA_31)).await.0 == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "llama serves with its new key");
    let (s, _) = m.chat(CLIENT_KEY, chat_body(EMBED)).await;
    assert_eq!(s, 200);
    let audit = m.audit().await;
    let rotations: Vec<&str> = audit
        .iter()
        .filter(|r| r["event"] == "secret_rotate" && r["old_key_version"].is_string())
        .map(|r| r["upstream"].as_str().unwrap())
        .collect();
    assert_eq!(rotations, vec!["llama"]);
    let embed_versions: BTreeSet<String> = audit
        .iter()
        .filter(|r| r["event"] == "use" && r["upstream"] == "embed")
        .map(|r| r["key_version"].to_string())
        .collect();
    assert_eq!(embed_versions.len(), 1, "{embed_versions:?}");
    let last = m.embed.served().pop().unwrap();
    assert_eq!(
        last.headers["authorization"],
        format!("Bearer {EMBED_KEY}").as_str()
    );
}

#[tokio::test]
async fn sse_streams_through_a_routed_upstream() {
    let m = start(Duration::from_millis(5)).await;
    let (s, done) = stream_chat(m.url("/v1/chat/completions"), MIXTRAL).await;
    assert_eq!((s, done), (200, true));
    let audit = m.audit().await;
    let d = audit
        .iter()
        .find(|r| r["event"] == "done" && r["model"] == MIXTRAL)
        .unwrap();
    assert_eq!(d["upstream"], "hosted");
    assert_eq!(d["status"], 200);
}

#[tokio::test]
async fn a_connect_failure_moves_the_request_to_the_other_replica_with_a_use_record_each() {
    // No health checks: only passive ejection (2 connect failures) takes the dead one out.
    let mut m = start_with(Duration::from_millis(5), "").await;
    m.llama[1].kill().await;
    for _ in 0..20 {
        let (s, v) = m.chat(CLIENT_KEY, chat_body(LLAMA_31)).await;
        assert_eq!(s, 200, "{v}");
    }
    let audit = m.audit().await;
    let dead = m.llama[1].url();
    let failed: Vec<&Value> = audit
        .iter()
        .filter(|r| r["event"] == "done" && r["replica"] == dead.as_str())
        .collect();
    assert!((1..=2).contains(&failed.len()), "{failed:?}");
    for d in &failed {
        assert_eq!(d["reason"], "upstream_unreachable");
        let uses: Vec<&Value> = audit
            .iter()
            .filter(|r| r["event"] == "use" && r["request_id"] == d["request_id"])
            .collect();
        assert_eq!(uses.len(), 2, "one use record per keyed attempt");
        assert_eq!(uses[0]["replica"], dead.as_str());
        assert_eq!(uses[1]["replica"], m.llama[0].url().as_str());
    }
    let (_, metrics) = get_admin(m.admin, "/metrics").await.unwrap();
    let line = |name: &str, n: usize| format!("{name}{{upstream=\"llama\"}} {n}\n");
    assert!(metrics.contains(&line("nimgate_upstream_retries_total", failed.len())));
    let ejected = usize::from(failed.len() == 2);
    assert!(
        metrics.contains(&line("nimgate_upstream_ejections_total", ejected)),
        "{metrics}"
    );
    assert!(metrics.contains(&line("nimgate_upstream_retries_total", 0).replace("llama", "embed")));
}

/// `[upstreams.secret]` reading KV v2 `secret/<path>` field `api_key` with AppRole `ar`, whose
/// files go to `dir`.
fn vault_secret(bao: &Bao, path: &str, ar: &AppRole, dir: &std::path::Path) -> String {
    let (rid, sid) = (
        dir.join(format!("{path}.rid")),
        dir.join(format!("{path}.sid")),
    );
    std::fs::write(&rid, format!("{}\n", ar.role_id)).unwrap();
    std::fs::write(&sid, format!("{}\n", ar.secret_id)).unwrap();
    format!(
        "[upstreams.secret]\nsource = \"vault\"\naddress = \"{}\"\nmount = \"secret\"\npath = \"nim/{path}\"\nfield = \"api_key\"\nrefresh = \"300ms\"\nmax_staleness = \"30s\"\ntimeout = \"2s\"\n[upstreams.secret.auth]\nmethod = \"approle\"\nrole_id_file = \"{}\"\nsecret_id_file = \"{}\"\n",
        bao.addr,
        rid.display(),
        sid.display()
    )
}

/// Poll `f` (a request) until it answers `want`, at most 10 s.
async fn until_status(want: u16, f: impl AsyncFn() -> u16) -> bool {
    for _ in 0..100 {
        if f().await == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn two_upstreams_read_two_vault_paths_and_one_losing_access_leaves_the_other_serving() {
    let Some(bao) = Bao::dev().await else {
        return;
    };
    assert_eq!(
        bao.kv2_put("nim/llama", json!({"api_key": LLAMA_KEY}))
            .await,
        1
    );
    assert_eq!(
        bao.kv2_put("nim/embed", json!({"api_key": EMBED_KEY}))
            .await,
        1
    );
    for name in ["llama", "embed"] {
        let hcl = format!("path \"secret/data/nim/{name}\" {{ capabilities = [\"read\"] }}\n");
        bao.policy(&format!("{name}-read"), &hcl).await;
    }
    let ar_l = bao
        .approle(
            "llama",
            json!({"token_policies": ["llama-read"], "token_ttl": "1h"}),
        )
        .await;
    let ar_e = bao
        .approle(
            "embed",
            json!({"token_policies": ["embed-read"], "token_ttl": "1h"}),
        )
        .await;
    let creds = tempfile::tempdir().unwrap();
    let secrets = (
        vault_secret(&bao, "llama", &ar_l, creds.path()),
        vault_secret(&bao, "embed", &ar_e, creds.path()),
    );
    let m = start_cfg(Duration::from_millis(5), "", Some(secrets)).await;
    assert_eq!(m.chat(CLIENT_KEY, chat_body(LLAMA_31)).await.0, 200);
    assert_eq!(m.chat(CLIENT_KEY, chat_body(EMBED)).await.0, 200);
    // Rotate llama's key in Vault only.
    let k2 = "nvapi-llama-key-0002";
    assert_eq!(bao.kv2_put("nim/llama", json!({"api_key": k2})).await, 2);
    for r in &m.llama {
        r.nim.set_keys(vec![k2.into()]);
    }
    assert!(
        until_status(200, async || m
            .chat(CLIENT_KEY, chat_body(LLAMA_33))
            .await
            .0)
        .await
    );
    assert_eq!(m.chat(CLIENT_KEY, chat_body(EMBED)).await.0, 200);
    only_key(&m.embed, EMBED_KEY, "embed");
    // llama's AppRole loses its policy: its key is evicted (503), embed keeps serving.
    let (s, _) = bao.api("DELETE", "sys/policies/acl/llama-read", None).await;
    assert_eq!(s, 204);
    assert!(
        until_status(503, async || m
            .chat(CLIENT_KEY, chat_body(LLAMA_31))
            .await
            .0)
        .await
    );
    let (s, v) = m.chat(CLIENT_KEY, chat_body(LLAMA_31)).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (503, Some("credential_unavailable"))
    );
    assert_eq!(m.chat(CLIENT_KEY, chat_body(EMBED)).await.0, 200);
    let r = m.readyz().await;
    assert_eq!(r["status"], "degraded", "{r}");
    assert_eq!(r["upstreams"]["embed"]["key"], "ok");
    assert_ne!(r["upstreams"]["llama"]["key"], "ok");
    let audit = m.audit().await;
    let versions = |up: &str| -> BTreeSet<String> {
        audit
            .iter()
            .filter(|r| r["event"] == "use" && r["upstream"] == up && r["path"] != "/v1/models")
            .map(|r| r["key_version"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(versions("llama"), ["1", "2"].map(String::from).into());
    assert_eq!(versions("embed"), ["1"].map(String::from).into());
    let evicted: Vec<&str> = audit
        .iter()
        .filter(|r| r["event"] == "secret_evict")
        .map(|r| r["upstream"].as_str().unwrap())
        .collect();
    assert_eq!(evicted, vec!["llama"]);
}

#[tokio::test]
async fn a_rejected_key_is_refreshed_and_retried_on_a_routed_upstream() {
    // llama's key file is polled hourly: only the 401's on-demand refresh can see the new key.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("llama-key");
    std::fs::write(&file, format!("{LLAMA_KEY}\n")).unwrap();
    let table = format!(
        "[upstreams.secret]\nsource = \"file\"\npath = \"{}\"\npoll_interval = \"1h\"\n",
        file.display()
    );
    let embed = format!(
        "[upstreams.secret]\nsource = \"file\"\npath = \"{}\"\n",
        dir.path().join("embed-key").display()
    );
    std::fs::write(dir.path().join("embed-key"), format!("{EMBED_KEY}\n")).unwrap();
    let m = start_cfg(Duration::from_millis(5), "", Some((table, embed))).await;
    let new = "nvapi-llama-key-0003";
    for r in &m.llama {
        r.nim.set_keys(vec![new.into()]);
    }
    std::fs::write(&file, format!("{new}\n")).unwrap();
    // Sent with the old key, 401, refreshed (this upstream's store only), sent again.
    let url = m.url("/v1/chat/completions");
    let pending = tokio::spawn(async move {
        send_json(post(
            &url,
            Some(CLIENT_KEY),
            &chat_body(LLAMA_31).to_string(),
        ))
        .await
    });
    let (s, v) = pending.await.unwrap();
    assert_eq!(s, 200, "{v}");
    let audit = m.audit().await;
    let retried = audit
        .iter()
        .find(|r| r["event"] == "done" && r["reason"] == "upstream_rejected_key_retrying")
        .unwrap();
    assert_eq!(retried["upstream"], "llama");
    assert_eq!(retried["status"], 401);
    let uses = audit
        .iter()
        .filter(|r| r["event"] == "use" && r["request_id"] == retried["request_id"])
        .count();
    assert_eq!(uses, 2);
    only_key(&m.embed, EMBED_KEY, "embed");
}

#[tokio::test]
async fn keyed_health_checks_carry_the_key_and_are_audited_as_uses() {
    let m = start_with(
        Duration::from_millis(5),
        "health_interval = \"100ms\"\nhealth_auth = true",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    for r in &m.llama {
        let checks: Vec<_> = r
            .nim
            .seen()
            .into_iter()
            .filter(|s| s.uri == "/v1/health/ready")
            .collect();
        assert!(!checks.is_empty());
        for c in checks {
            assert_eq!(
                c.headers["authorization"],
                format!("Bearer {LLAMA_KEY}").as_str()
            );
        }
    }
    // Keyless elsewhere: embed has no health checks at all.
    assert!(m.embed.nim.seen().is_empty());
    let audit = m.audit().await;
    let probes: BTreeSet<&str> = audit
        .iter()
        .filter(|r| r["event"] == "use" && r["path"] == "/v1/health/ready")
        .map(|r| {
            assert_eq!(r["upstream"], "llama");
            assert_eq!(r["reason"], "gateway_probe");
            r["replica"].as_str().unwrap()
        })
        .collect();
    assert_eq!(probes.len(), 2, "both replicas, each check audited");
}
