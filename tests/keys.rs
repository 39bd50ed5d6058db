#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::pedantic,
    reason = "test and bench code: a panic is a failed test; the pedantic set is for the product"
)]
//! `nimgate keys add|revoke|list --file clients.toml`, run as the built binary: the key is
//! printed once and only its digest stored, a gateway using the file accepts it (a real request
//! through the binary to the fake NIM) and refuses it once revoked, comments survive, `list`
//! never shows a key, bad flags and results the gateway would refuse are not written, concurrent
//! invocations all land, and the file keeps (or is created with) a private mode.

mod common;

use common::bin::*;
use common::*;
use nimgate::auth::key_digest_hex;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

const HEADER: &str = "# Gateway keys of the prod cluster (managed with nimgate keys).\n\n";
const HAND: &str = "# team-x: written by hand\n[[clients]]\nid = \"team-x\" # owner: alice\nkey_sha256 = \"{x}\"\nexpires = 2020-01-01T00:00:00Z\n";

fn keys(args: &[&str]) -> Output {
    std::process::Command::new(BIN)
        .arg("keys")
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A clients file with a header comment and one hand-written (expired) entry, mode 0640.
fn clients_file(dir: &Path) -> PathBuf {
    let f = dir.join("clients.toml");
    let hand = HAND.replace("{x}", &key_digest_hex("ngk_hand_written"));
    std::fs::write(&f, format!("{HEADER}{hand}")).unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
    f
}

/// The gateway config (team-a and team-b in it) using `clients` as its clients file.
fn gateway_config(dir: &Path, nim: std::net::SocketAddr, clients: &Path) -> PathBuf {
    let extra = format!("[auth]\nclients_file = \"{}\"\n", clients.display());
    write_config(dir, "gw", nim, ("", ""), &extra)
}

fn add(file: &Path, extra: &[&str]) -> Output {
    let f = file.to_str().unwrap();
    let mut args = vec!["add", "--file", f];
    args.extend(extra);
    keys(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_key_is_shown_once_stored_as_a_digest_accepted_and_refused_once_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let (nim, nim_addr) = fake_nim(vec![NIM_KEY.into()], Duration::from_millis(5)).await;
    let file = clients_file(dir.path());
    let cfg = gateway_config(dir.path(), nim_addr, &file);
    let cfg_s = cfg.to_str().unwrap();
    let out = add(
        &file,
        &[
            "--id",
            "team-k",
            "--expires",
            "2099-01-01T00:00:00Z",
            "--rpm",
            "600",
            "--config",
            cfg_s,
        ],
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    // stdout: the key, once, and nothing else; stderr never holds it.
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    let key = lines[0];
    assert!(key.starts_with("ngk_") && key.len() == 52, "{key}");
    assert!(!stderr.contains(key), "{stderr}");
    // The file: the digest, never the key; the comments and the hand-written entry as they were.
    let stored = std::fs::read_to_string(&file).unwrap();
    assert!(!stored.contains(key));
    assert!(stored.contains(&format!("key_sha256 = \"{}\"", key_digest_hex(key))));
    assert!(
        stored.contains("expires = 2099-01-01T00:00:00Z\nrpm = 600\n"),
        "{stored}"
    );
    let hand = HAND.replace("{x}", &key_digest_hex("ngk_hand_written"));
    assert!(stored.starts_with(&format!("{HEADER}{hand}")), "{stored}");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "an existing file keeps its mode");
    assert!(
        dir.path().join("clients.toml.lock").exists(),
        "the lock beside the file"
    );
    // The gateway's own check accepts the config, and the gateway accepts the key.
    let check = run_bin(&["check", "--config"], &[&cfg]);
    assert_eq!(check.status.code(), Some(0), "{:?}", text(&check));
    {
        let p = spawn_serve(&cfg, None);
        wait_ready(p.admin).await;
        let url = format!("http://{}/v1/chat/completions", p.gw);
        let (s, v) = send_json(post(&url, Some(key), &chat_body(false))).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(nim.seen().len(), 1);
        let audit = read_audit(&dir.path().join("gw.audit.jsonl"));
        assert!(audit
            .iter()
            .any(|r| r["event"] == "use" && r["client_id"] == "team-k"));
    }
    // Revoked: the entry is gone, the rest of the file as it was, and the key gets 401.
    let out = keys(&[
        "revoke",
        "--file",
        file.to_str().unwrap(),
        "--id",
        "team-k",
        "--config",
        cfg_s,
    ]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let stored = std::fs::read_to_string(&file).unwrap();
    assert!(
        !stored.contains("team-k") && !stored.contains(&key_digest_hex(key)),
        "{stored}"
    );
    assert_eq!(stored, format!("{HEADER}{hand}"));
    let p = spawn_serve(&cfg, None);
    wait_ready(p.admin).await;
    let url = format!("http://{}/v1/chat/completions", p.gw);
    let (s, v) = send_json(post(&url, Some(key), &chat_body(false))).await;
    assert_eq!((s, error_code(&v).as_str()), (401, "invalid_api_key"));
    assert_eq!(nim.seen().len(), 1, "a revoked key reaches nothing");
}

#[test]
fn list_shows_ids_digest_prefixes_and_expiry_and_never_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = clients_file(dir.path());
    let out = add(
        &file,
        &["--id", "team-k", "--expires", "2099-01-01T00:00:00Z"],
    );
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let key = text(&out).0.trim().to_string();
    let out = keys(&["list", "--file", file.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stdout.contains(&key) && !stderr.contains(&key));
    let digest = key_digest_hex(&key);
    assert!(
        !stdout.contains(&digest),
        "only a prefix of the digest: {stdout}"
    );
    let row = |id: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap()
            .to_string()
    };
    let k = row("team-k");
    assert!(k.contains(&format!("{}…", &digest[..12])), "{k}");
    assert!(
        k.contains("2099-01-01T00:00:00Z") && k.ends_with("no"),
        "{k}"
    );
    let x = row("team-x");
    assert!(
        x.contains("2020-01-01T00:00:00Z") && x.ends_with("yes"),
        "{x}"
    );
    assert!(x.contains(" key "), "{x}");
}

#[test]
fn bad_flags_are_refused_naming_the_flag_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let file = clients_file(dir.path());
    let before = std::fs::read(&file).unwrap();
    for (args, flag) in [
        (vec!["--id", "a\"b"], "--id"),
        (vec!["--id", ""], "--id"),
        (vec!["--id", "ok", "--expires", "tomorrow"], "--expires"),
        (
            vec!["--id", "ok", "--expires", "2099-01-01T00:00:00+01:00"],
            "--expires",
        ),
        (
            vec!["--id", "ok", "--expires", "2021-01-01T00:00:00Z"],
            "--expires",
        ),
        (vec!["--id", "ok", "--rpm", "0"], "--rpm"),
        (vec!["--id", "ok", "--burst", "5"], "--rpm"),
    ] {
        let out = add(&file, &args);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(
            stderr.contains(flag),
            "{args:?} does not name {flag}: {stderr}"
        );
        assert!(stdout.is_empty(), "{args:?}: a key was shown: {stdout}");
    }
    let path = file.to_str().unwrap();
    for (args, what) in [
        (vec!["revoke", "--file", path], "--id"),
        (vec!["revoke", "--file", path, "--id", "nobody"], "nobody"),
        (
            vec!["revoke", "--file", path, "--digest", "abc"],
            "--digest",
        ),
        (
            vec![
                "revoke", "--file", path, "--id", "team-x", "--digest", "00000000",
            ],
            "team-x",
        ),
    ] {
        let out = keys(&args);
        let stderr = text(&out).1;
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(what), "{args:?}: {stderr}");
    }
    assert_eq!(std::fs::read(&file).unwrap(), before);
    // By digest prefix, as `list` shows it: removed.
    let prefix = &key_digest_hex("ngk_hand_written")[..12];
    let out = keys(&["revoke", "--file", path, "--digest", prefix]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    assert!(!std::fs::read_to_string(&file).unwrap().contains("team-x"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_gateway_would_refuse_is_not_written_and_duplicates_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = clients_file(dir.path());
    let cfg = gateway_config(dir.path(), "127.0.0.1:9".parse().unwrap(), &file);
    let cfg_s = cfg.to_str().unwrap();
    let before = std::fs::read(&file).unwrap();
    // team-a is in the main config: with --config the duplicate is found and named.
    let out = add(&file, &["--id", "team-a", "--config", cfg_s]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("duplicate client id \"team-a\""),
        "{stderr}"
    );
    assert!(stdout.is_empty());
    // Already in the file itself.
    let out = add(&file, &["--id", "team-x"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        text(&out).1.contains("\"team-x\" already exists"),
        "{:?}",
        text(&out)
    );
    assert_eq!(std::fs::read(&file).unwrap(), before);
    // A config that reads another clients file is not the one to check against.
    let other = gateway_config(
        dir.path(),
        "127.0.0.1:9".parse().unwrap(),
        &dir.path().join("x.toml"),
    );
    let out = add(
        &file,
        &["--id", "team-k", "--config", other.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(64));
    assert!(
        text(&out).1.contains("auth.clients_file"),
        "{:?}",
        text(&out)
    );
    // A hand-made mistake already in the file: the gateway would refuse the file, so nothing
    // is written, and the problem is named by its field.
    std::fs::write(&file, "[[clients]]\nid = \"bad\"\nkey_sha256 = \"xyz\"\n").unwrap();
    let out = add(&file, &["--id", "team-k"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("clients[0].key_sha256"), "{stderr}");
    assert!(stdout.is_empty(), "no key shown for a change not made");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "[[clients]]\nid = \"bad\"\nkey_sha256 = \"xyz\"\n"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_new_file_is_created_0600_and_concurrent_adds_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("new-clients.toml");
    let f = file.to_str().unwrap().to_string();
    let children: Vec<_> = (0..6)
        .map(|i| {
            std::process::Command::new(BIN)
                .args(["keys", "add", "--file", &f, "--id", &format!("svc-{i}")])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let keys: Vec<String> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
            text(&out).0.trim().to_string()
        })
        .collect();
    let stored = std::fs::read_to_string(&file).unwrap();
    for (i, k) in keys.iter().enumerate() {
        assert!(stored.contains(&format!("id = \"svc-{i}\"")), "{stored}");
        assert!(stored.contains(&key_digest_hex(k)), "{stored}");
    }
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}
