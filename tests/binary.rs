#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::pedantic,
    reason = "test and bench code: a panic is a failed test; the pedantic set is for the product"
)]
//! Black-box tests of the built `nimgate` binary: serve from a config file on port 0, graceful
//! drain on SIGTERM, `check`, `keys new`, `audit verify`, `demo`.

mod common;

use common::bin::*;
use common::*;
use nimgate::auth::key_digest_hex;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

fn write_config(dir: &std::path::Path, nim: std::net::SocketAddr) -> std::path::PathBuf {
    std::fs::write(dir.join("key"), format!("{NIM_KEY}\n")).unwrap();
    let cfg = dir.join("nimgate.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[server]
listen = "127.0.0.1:0"
shutdown_grace = "10s"
[admin]
listen = "127.0.0.1:0"
[upstream]
url = "http://{nim}"
[secret]
source = "file"
path = "{key}"
[[clients]]
id = "team-a"
key_sha256 = "{d}"
[audit]
path = "{audit}"
fsync = "batch"
"#,
            key = dir.join("key").display(),
            d = key_digest_hex(CLIENT_KEY),
            audit = dir.join("audit.jsonl").display(),
        ),
    )
    .unwrap();
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_from_config_file_and_drain_streams_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (nim, nim_addr) = fake_nim(vec![NIM_KEY.into()], Duration::from_millis(200)).await;
    let cfg = write_config(dir.path(), nim_addr);
    let mut p = spawn_serve(&cfg, Some("info"));
    wait_ready(p.admin).await;
    let url = format!("http://{}/v1/chat/completions", p.gw);
    let (s, v) = send_json(post(&url, Some(CLIENT_KEY), &chat_body(false))).await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = send_json(post(&url, Some("wrong"), &chat_body(false))).await;
    assert_eq!(s, 401);

    // A stream in flight when SIGTERM arrives runs to its end.
    let resp = client()
        .request(post(&url, Some(CLIENT_KEY), &chat_body(true)))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let reader = tokio::spawn(async move {
        use http_body_util::BodyExt;
        String::from_utf8(
            resp.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(250)).await;
    let st = kill_pid(p.child.id(), "-TERM");
    assert!(st.success());
    tokio::time::sleep(Duration::from_millis(200)).await;
    // No new connections once draining.
    assert!(
        tokio::net::TcpStream::connect(p.gw).await.is_err(),
        "listener should be closed while draining"
    );
    let text = reader.await.unwrap();
    assert!(
        text.ends_with("data: [DONE]\n\n"),
        "stream cut short: {text}"
    );
    assert_eq!(nim.streams_completed.load(Ordering::Relaxed), 1);
    let (status, _, log) = p.finish();
    assert!(status.success(), "exit status {status:?}");
    assert!(log.contains("draining"), "{log}");

    // The trail the binary wrote verifies.
    let audit = dir.path().join("audit.jsonl");
    let out = run_bin(&["audit", "verify"], &[&audit]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let recs = read_audit(&audit);
    assert_eq!(recs.iter().filter(|r| r["event"] == "use").count(), 2);
    assert_eq!(recs.iter().filter(|r| r["event"] == "done").count(), 2);
    assert_eq!(recs.iter().filter(|r| r["event"] == "denied").count(), 1);
}

#[test]
fn check_reports_every_problem_with_its_field_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        r#"[server]
listen = "127.0.0.1:0"
[upstream]
url = "ftp://nim"
auth_value = "Bearer"
[secret]
source = "file"
path = "/k"
[[clients]]
id = "a"
key_sha256 = "xyz"
"#,
    )
    .unwrap();
    let out = run_bin(&["check", "--config"], &[&cfg]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for f in [
        "upstream.url",
        "upstream.auth_value",
        "clients[0].key_sha256",
    ] {
        assert!(err.contains(f), "{f} not named in:\n{err}");
    }
    std::fs::write(&cfg, "[server]\nlisten = \"127.0.0.1:0\"\nbogus = 1\n").unwrap();
    let out = run_bin(&["check", "--config"], &[&cfg]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.bogus"));
    // serve refuses the same way.
    let out = run_bin(&["serve", "--config"], &[&cfg]);
    assert_eq!(out.status.code(), Some(64));
    let out = run_bin(&["check", "--config", "/nonexistent.toml"], &[]);
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn keys_new_prints_a_key_and_its_digest_entry() {
    let out = run_bin(&["keys", "new", "--id", "team-z"], &[]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    // The key goes to stderr only: `keys new >> clients.toml` stores no key.
    let key = err
        .lines()
        .find(|l| l.starts_with("ngk_"))
        .map(String::from)
        .unwrap();
    assert_eq!(key.len(), 52);
    assert!(
        !text.contains(&key),
        "the key must not be on stdout: {text}"
    );
    assert!(!text.contains("ngk_"), "{text}");
    assert!(text.contains(&format!("key_sha256 = \"{}\"", key_digest_hex(&key))));
    assert!(text.contains("id = \"team-z\""));
    let cfg: toml::Value = toml::from_str(&text).unwrap();
    assert_eq!(cfg["clients"][0]["id"].as_str(), Some("team-z"));
    let out2 = run_bin(&["keys", "new", "--id", "team-z"], &[]);
    assert_ne!(out2.stderr, err.as_bytes(), "keys must be random");

    // --key-out: a new 0600 file holds the key, stderr only says where.
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("team-y.key");
    let out = run_bin(
        &["keys", "new", "--id", "team-y", "--key-out"],
        &[&key_file],
    );
    assert!(out.status.success());
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(&key_file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let key = std::fs::read_to_string(&key_file)
        .unwrap()
        .trim_end()
        .to_string();
    assert!(key.starts_with("ngk_"));
    let both = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!both.contains(&key));
    assert!(both.contains(&key_digest_hex(&key)));
    // Never overwrites: a second run into the same file fails (exit 74).
    let again = run_bin(
        &["keys", "new", "--id", "team-y", "--key-out"],
        &[&key_file],
    );
    assert_eq!(again.status.code(), Some(74));

    // keys hash: the digest of a key read from stdin.
    let mut child = Command::new(BIN)
        .args(["keys", "hash"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{key}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("key_sha256 = \"{}\"\n", key_digest_hex(&key))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_prints_a_working_curl_line() {
    let mut child = Command::new(BIN)
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let mut lines = BufReader::new(out).lines();
    let mut gw = None;
    let mut key = None;
    for _ in 0..30 {
        let Some(Ok(l)) = lines.next() else { break };
        if l.trim_start().starts_with("gateway") {
            gw = l.split_whitespace().nth(1).map(String::from);
        }
        if let Some(k) = l.split("client key (demo only): ").nth(1) {
            key = Some(k.trim().to_string());
        }
        if l.starts_with("Press Ctrl-C") {
            break;
        }
    }
    let (gw, key) = (gw.unwrap(), key.unwrap());
    let mut ok = false;
    for _ in 0..100 {
        let (s, _) = send_json(post(
            &format!("{gw}/v1/chat/completions"),
            Some(&key),
            &chat_body(false),
        ))
        .await;
        if s == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(ok, "demo gateway never answered 200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_unready_first_keeps_accepting_for_drain_delay_then_drains() {
    let dir = tempfile::tempdir().unwrap();
    let (nim, nim_addr) = fake_nim(vec![NIM_KEY.into()], Duration::from_millis(500)).await;
    let cfg = write_config(dir.path(), nim_addr);
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "shutdown_grace = \"10s\"",
        "shutdown_grace = \"10s\"\ndrain_delay = \"1500ms\"",
    );
    std::fs::write(&cfg, text).unwrap();
    let mut p = spawn_serve(&cfg, Some("info"));
    wait_ready(p.admin).await;
    let url = format!("http://{}/v1/chat/completions", p.gw);
    // A stream of 5 events 500 ms apart: still running when the listener closes.
    let resp = client()
        .request(post(&url, Some(CLIENT_KEY), &chat_body(true)))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let reader = tokio::spawn(async move {
        use http_body_util::BodyExt;
        resp.into_body().collect().await.unwrap().to_bytes()
    });
    assert!(kill_pid(p.child.id(), "-TERM").success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    // 1. Unready at once, with the reason...
    let (status, body) = get_admin(p.admin, "/readyz").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"status\":\"draining\""), "{body}");
    // 2. ...while new connections are still accepted and served.
    let (s, v) = send_json(get(&format!("http://{}/v1/models", p.gw), Some(CLIENT_KEY))).await;
    assert_eq!(s, 200, "{v}");
    // 3. After drain_delay the listener is closed...
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert!(
        tokio::net::TcpStream::connect(p.gw).await.is_err(),
        "listener should be closed after drain_delay"
    );
    // 4. ...and the stream that was in flight still completes.
    let text = String::from_utf8(reader.await.unwrap().to_vec()).unwrap();
    assert!(
        text.ends_with("data: [DONE]\n\n"),
        "stream cut short: {text}"
    );
    assert_eq!(nim.streams_completed.load(Ordering::Relaxed), 1);
    let (status, _, log) = p.finish();
    assert!(status.success(), "exit status {status:?}: {log}");
}

#[test]
fn start_up_failures_exit_with_sysexits_codes() {
    let dir = tempfile::tempdir().unwrap();
    let nim: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let cfg = write_config(dir.path(), nim);
    let base = std::fs::read_to_string(&cfg).unwrap();
    let run = |text: String| {
        std::fs::write(&cfg, text).unwrap();
        let out = run_bin(&["serve", "--config"], &[&cfg]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    // A listen address already in use: 69, naming the field.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let (code, err) = run(base.replacen(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"{addr}\""),
        1,
    ));
    assert_eq!(code, Some(69), "{err}");
    assert!(err.contains(&format!("server.listen {addr}")), "{err}");
    // The same address from NIMGATE_SERVER_LISTEN: the error names the variable.
    std::fs::write(&cfg, &base).unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("NIMGATE_SERVER_LISTEN", addr.to_string())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{err}");
    assert!(
        err.contains(&format!("server.listen {addr}"))
            && err.contains("(the setting comes from NIMGATE_SERVER_LISTEN)"),
        "{err}"
    );
    // An audit file that cannot be opened: 74, naming the path.
    let audit = dir.path().join("audit.jsonl").display().to_string();
    let (code, err) = run(base.replace(&audit, "/nonexistent-dir/audit.jsonl"));
    assert_eq!(code, Some(74), "{err}");
    assert!(
        err.contains("audit.path /nonexistent-dir/audit.jsonl"),
        "{err}"
    );
    // `check` catches the same thing without starting: 64, naming the field.
    std::fs::write(&cfg, base.replace(&audit, "/nonexistent-dir/audit.jsonl")).unwrap();
    let out = run_bin(&["check", "--config"], &[&cfg]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("audit.path: /nonexistent-dir/audit.jsonl"),
        "{err}"
    );
    // Bad config: 64.
    let (code, err) = run(base.replace("[upstream]", "[upstream]\nnope = 1"));
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("upstream"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_gateway_on_the_same_audit_file_refuses_to_start_with_74() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (_nim, nim_addr) = fake_nim(vec![NIM_KEY.into()], Duration::ZERO).await;
    let cfg = write_config(dir.path(), nim_addr);
    let audit = dir.path().join("audit.jsonl");
    let mut first = spawn_serve(&cfg, Some("info"));
    wait_ready(first.admin).await;
    let mode = std::fs::metadata(&audit).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "audit file mode {mode:o}");
    // Same config (ports 0, so no bind conflict): only the audit file is shared.
    let out = run_bin(&["serve", "--config"], &[&cfg]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(74), "{err}");
    assert!(
        err.contains(&format!("audit.path {}", audit.display()))
            && err.contains("another nimgate is writing this audit trail"),
        "{err}"
    );
    let text = std::fs::read_to_string(&audit).unwrap();
    assert_eq!(
        text.matches("\"event\":\"start\"").count(),
        1,
        "the refused gateway wrote no start record: {text}"
    );
    // The first gateway still serves and its chain is intact.
    let url = format!("http://{}/v1/chat/completions", first.gw);
    let (s, v) = send_json(post(&url, Some(CLIENT_KEY), &chat_body(false))).await;
    assert_eq!(s, 200, "{v}");
    kill_pid(first.child.id(), "-TERM");
    let (status, _, log) = first.finish();
    assert!(status.success(), "{log}");
    // Once it has stopped, the lock is gone: a new gateway starts on the same file.
    let mut second = spawn_serve(&cfg, Some("info"));
    wait_ready(second.admin).await;
    kill_pid(second.child.id(), "-TERM");
    let (status, _, log) = second.finish();
    assert!(status.success(), "{log}");
    let out = run_bin(&["audit", "verify"], &[&audit]);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn help_describes_every_option_env_signals_and_exit_codes() {
    let help = |args: &[&str]| {
        let out = Command::new(BIN).args(args).arg("--help").output().unwrap();
        assert!(out.status.success(), "{args:?} --help: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let top = help(&[]);
    for want in [
        "No secret is ever read from an environment variable",
        "NIMGATE_SERVER_LISTEN",
        "NIMGATE_VAULT_ADDRESS",
        "RUST_LOG",
        "NIMGATE_LOG_FORMAT=json",
        "SIGTERM, SIGINT  drain",
        "SIGHUP           reload the config file",
        "64  bad config",
        "69  unavailable",
        "74  audit trail I/O",
    ] {
        assert!(top.contains(want), "nimgate --help lacks {want:?}:\n{top}");
    }
    let mut commands = vec![
        vec!["serve"],
        vec!["check"],
        vec!["keys"],
        vec!["keys", "new"],
        vec!["keys", "hash"],
        vec!["audit"],
        vec!["audit", "verify"],
    ];
    if top.contains("\n  demo ") {
        commands.push(vec!["demo"]);
    }
    for args in commands {
        let text = help(&args);
        // Every option and argument line has a description after its flag column.
        let mut section = "";
        for line in text.lines() {
            if !line.starts_with(' ') {
                section = line;
                continue;
            }
            // Entries start at most 6 columns in; deeper lines continue a description.
            let indent = line.len() - line.trim_start().len();
            if matches!(section, "Options:" | "Arguments:" | "Commands:") && indent <= 6 {
                let cols: Vec<&str> = line
                    .trim()
                    .split("  ")
                    .filter(|c| !c.trim().is_empty())
                    .collect();
                assert!(cols.len() >= 2, "{args:?}: no description for {line:?}");
            }
        }
    }
    let check = help(&["check"]);
    assert!(
        check.contains("--online") && check.contains("never the key"),
        "{check}"
    );
    // A usage error exits 64 (EX_USAGE), as a config error does.
    let out = Command::new(BIN)
        .args(["check", "--nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_the_process_keeps_serving_as_help_says() {
    let dir = tempfile::tempdir().unwrap();
    let (_nim, nim_addr) = fake_nim(vec![NIM_KEY.into()], Duration::ZERO).await;
    let cfg = write_config(dir.path(), nim_addr);
    let mut p = spawn_serve(&cfg, Some("info"));
    wait_ready(p.admin).await;
    kill_pid(p.child.id(), "-HUP");
    let logged = eventually(|| p.stderr.lock().unwrap().contains("config reload attempt")).await;
    assert!(logged, "{}", p.stderr.lock().unwrap());
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "SIGHUP does not end the process"
    );
    assert_eq!(get_admin(p.admin, "/readyz").await.unwrap().0, 200);
    kill_pid(p.child.id(), "-TERM");
    let (status, _, _) = p.finish();
    assert!(status.success(), "{status:?}");
}
