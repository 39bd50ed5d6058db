#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::pedantic,
    reason = "test and bench code: a panic is a failed test; the pedantic set is for the product"
)]
//! Vault credentials never leave for another host: a Vault address that answers every call with a
//! 307 to a canary listener must not make nimgate replay `X-Vault-Token`, an AppRole secret-id or
//! a Kubernetes JWT there (issue 12, finding 4). Proxies from the environment are not used either.

mod common;

use common::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A listener that counts connections and what they sent (the canary), and never answers.
async fn canary() -> (
    std::net::SocketAddr,
    Arc<AtomicU64>,
    Arc<std::sync::Mutex<Vec<u8>>>,
) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let hits = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (h, s) = (hits.clone(), seen.clone());
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            h.fetch_add(1, Ordering::Relaxed);
            let s = s.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                while let Ok(n) = c.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    s.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
    });
    (addr, hits, seen)
}

/// A "Vault" that answers every request with `307 Location: http://<to><same path>`; counts calls.
async fn redirector(to: std::net::SocketAddr) -> (std::net::SocketAddr, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let c2 = calls.clone();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            let calls = c2.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16384];
                let mut have = Vec::new();
                loop {
                    let Ok(n) = c.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    have.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&have).to_string();
                    let Some(end) = text.find("\r\n\r\n") else {
                        continue;
                    };
                    let len: usize = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if have.len() < end + 4 + len {
                        continue;
                    }
                    let path = text.split(' ').nth(1).unwrap_or("/").to_string();
                    calls.fetch_add(1, Ordering::Relaxed);
                    let resp = format!(
                        "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://{to}{path}\r\nContent-Length: 0\r\n\r\n"
                    );
                    if c.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                    have.clear();
                }
            });
        }
    });
    (addr, calls)
}

#[tokio::test]
async fn vault_redirects_are_not_followed_for_token_approle_and_kubernetes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("token"), "hvs.canary-token-0001\n").unwrap();
    std::fs::write(d.join("role-id"), "role-canary\n").unwrap();
    std::fs::write(d.join("secret-id"), "secret-id-canary-0001\n").unwrap();
    std::fs::write(d.join("jwt"), "eyJcanary.jwt.0001\n").unwrap();
    let auths = [
        format!("method = \"token\"\ntoken_file = \"{}/token\"", d.display()),
        format!(
            "method = \"approle\"\nrole_id_file = \"{0}/role-id\"\nsecret_id_file = \"{0}/secret-id\"",
            d.display()
        ),
        format!("method = \"kubernetes\"\nrole = \"nimgate\"\njwt_file = \"{}/jwt\"", d.display()),
    ];
    for auth in auths {
        let (canary_addr, hits, seen) = canary().await;
        let (vault, calls) = redirector(canary_addr).await;
        let table = format!(
            "[secret]\nsource = \"vault\"\naddress = \"http://{vault}\"\npath = \"nim/prod\"\nfield = \"api_key\"\nrefresh = \"200ms\"\nmax_staleness = \"5s\"\ntimeout = \"1s\"\n[secret.auth]\n{auth}\n"
        );
        let gw = start_with(Opts::default().secret_table(table).no_wait()).await;
        // Let the refresher try (and back off) a few times.
        assert!(
            eventually(|| calls.load(Ordering::Relaxed) >= 2).await,
            "{auth}: nimgate never called the Vault address"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            hits.load(Ordering::Relaxed),
            0,
            "{auth}: followed a redirect to another host: {:?}",
            String::from_utf8_lossy(&seen.lock().unwrap())
        );
        let (status, body) = get_admin(gw.admin, "/readyz").await.unwrap();
        assert_eq!(status, 503, "{body}");
        // The failure is recorded, without the credential.
        let text = gw.audit_text();
        assert!(
            text.contains("secret_failure") || text.contains("vault_login"),
            "{text}"
        );
        for secret in ["canary-token", "secret-id-canary", "eyJcanary"] {
            assert!(!text.contains(secret), "{secret} in the audit trail");
        }
        gw.stop().await;
    }
}
