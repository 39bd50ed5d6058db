//! Checks shared by the hostile-input suites: what the fake NIM saw (credentials, path,
//! authority), whether other clients are still served promptly, and this process's RSS.

use super::{get, h2_client, send, Gateway, CLIENT_KEY_B, NIM_KEY};
use std::time::{Duration, Instant};

pub fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Exactly one `Authorization` upstream, ours; no other client credential.
pub fn assert_only_our_credential(s: &nimgate::fakenim::Seen, what: &str) {
    let auth: Vec<_> = s.headers.get_all("authorization").iter().collect();
    assert_eq!(
        auth.len(),
        1,
        "{what}: exactly one Authorization upstream, got {:?}",
        s.headers
    );
    assert_eq!(auth[0], format!("Bearer {NIM_KEY}").as_str(), "{what}");
    for h in ["x-api-key", "api-key", "proxy-authorization"] {
        assert!(s.headers.get(h).is_none(), "{what}: {h} leaked upstream");
    }
    for v in s.headers.values() {
        let v = String::from_utf8_lossy(v.as_bytes());
        assert!(
            !v.contains("ngk_test_client_key") && !v.contains("client-secret"),
            "{what}: client credential leaked upstream in a header: {v}"
        );
    }
    let lower = s.uri.to_ascii_lowercase();
    assert!(
        !lower.contains("api_key")
            && !lower.contains("api-key")
            && !lower.contains("client-secret"),
        "{what}: query credential leaked upstream: {}",
        s.uri
    );
}

pub fn seen_with(gw: &Gateway, needle: &str) -> Vec<nimgate::fakenim::Seen> {
    gw.nim
        .seen()
        .into_iter()
        .filter(|s| s.uri.contains(needle))
        .collect()
}

/// The path the NIM saw (h2 upstream requests carry an absolute URI).
pub fn seen_path(s: &nimgate::fakenim::Seen) -> String {
    s.uri
        .parse::<http::Uri>()
        .map(|u| u.path().to_string())
        .unwrap_or_else(|_| s.uri.clone())
}

/// Where the NIM request was addressed: its `Host` header (HTTP/1.1) or URI authority (h2).
pub fn seen_authority(s: &nimgate::fakenim::Seen) -> String {
    if let Some(h) = s.headers.get("host") {
        return String::from_utf8_lossy(h.as_bytes()).into_owned();
    }
    s.uri
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| u.authority().map(|a| a.to_string()))
        .unwrap_or_default()
}

/// A normal request on a fresh HTTP/1.1 connection and a fresh h2c connection: both 200 fast.
pub async fn others_are_served(gw: &Gateway, what: &str) {
    let t = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(3),
        send(get(&gw.url("/v1/models"), Some(CLIENT_KEY_B))),
    )
    .await;
    assert!(
        matches!(r, Ok((200, _, _))),
        "{what}: HTTP/1.1 client not served promptly: {:?}",
        r.map(|r| r.0)
    );
    let r = tokio::time::timeout(
        Duration::from_secs(3),
        h2_client().request(get(&gw.url("/v1/models"), Some(CLIENT_KEY_B))),
    )
    .await;
    let st = match &r {
        Ok(Ok(resp)) => Some(resp.status().as_u16()),
        _ => None,
    };
    assert_eq!(st, Some(200), "{what}: h2 client not served promptly");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "{what}: other clients slowed down: {:?}",
        t.elapsed()
    );
}
