#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::pedantic,
    reason = "test and bench code: a panic is a failed test; the pedantic set is for the product"
)]
//! Routes clients really hit, over real sockets: the official openai Python SDK's
//! `models.retrieve("meta/llama-3.1-8b-instruct")` (which encodes the id's `/` as `%2F`), and
//! client addresses behind a trusted proxy (`server.trusted_proxies` and `X-Forwarded-For`).

mod common;

use common::*;

/// Run a Python snippet with `base_url` and `api_key` bound; its stdout (it must succeed).
async fn python(code: &str, base_url: String) -> String {
    let code =
        format!("import openai, sys\nbase_url = {base_url:?}\napi_key = {CLIENT_KEY:?}\n{code}");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args(["-c", &code])
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        out.status.success(),
        "python failed (is the openai SDK installed? .ci/run installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn openai_sdk_models_retrieve_with_an_org_prefixed_id() {
    let gw = start().await;
    let out = python(
        r#"
c = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0)
m = c.models.retrieve("meta/llama-3.1-8b-instruct")
print(m.id, m.object, m.owned_by)
try:
    c.models.retrieve("meta/no-such-model")
    print("no error")
except openai.NotFoundError as e:
    print("404", e.status_code)
"#,
        format!("http://{}/v1", gw.addr),
    )
    .await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        ["meta/llama-3.1-8b-instruct model system", "404 404"],
        "{out}"
    );
    // The SDK sent %2F; the NIM got the decoded id, with our key only.
    let seen = gw.nim.seen();
    let uris: Vec<&str> = seen.iter().map(|s| s.uri.as_str()).collect();
    assert_eq!(
        uris,
        [
            "/v1/models/meta/llama-3.1-8b-instruct",
            "/v1/models/meta/no-such-model"
        ]
    );
    let auth: Vec<_> = seen[0].headers.get_all("authorization").iter().collect();
    assert_eq!(auth, [format!("Bearer {NIM_KEY}").as_str()]);
    let uses = gw.audit_events("use").await;
    assert_eq!(uses[0]["path"], "/v1/models/meta/llama-3.1-8b-instruct");
    gw.stop().await;
}

#[tokio::test]
async fn an_encoded_slash_is_refused_everywhere_else() {
    let gw = start().await;
    for path in [
        "/v1/chat%2Fcompletions",
        "/v1/models%2Fmeta",
        "/v1/models/..%2F..%2Fadmin",
        "/v1/models/meta%2F..%2F..%2Fhealth",
    ] {
        let url = format!("http://{}{path}", gw.addr);
        let (s, v) = send_json(get(&url, Some(CLIENT_KEY))).await;
        assert_eq!(s, 400, "{path}: {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{path}: {v}");
    }
    assert!(gw.nim.seen().is_empty(), "nothing reached the NIM");
    gw.stop().await;
}

/// A chat with `X-Forwarded-For` values, then a request with no key; the `use` and `denied`
/// records' `remote_addr`, and what the NIM saw.
async fn forwarded_for(trusted: &str, xff: &[&str]) -> (String, String, nimgate::fakenim::Seen) {
    let gw = start_with(Opts {
        server_extra: trusted.into(),
        ..Opts::default()
    })
    .await;
    let url = format!("http://{}/v1/chat/completions", gw.addr);
    let with_xff = |key: Option<&str>| {
        let mut req = post(&url, key, &chat_body(false));
        for v in xff {
            req.headers_mut()
                .append("x-forwarded-for", v.parse().unwrap());
        }
        req
    };
    let (s, v) = send_json(with_xff(Some(CLIENT_KEY))).await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = send_json(with_xff(None)).await;
    assert_eq!(s, 401);
    let uses = gw.audit_events("use").await;
    let denied = gw.audit_events("denied").await;
    let seen = gw.nim.seen().remove(0);
    let addr = |r: &serde_json::Value| r["remote_addr"].as_str().unwrap().to_string();
    let out = (addr(&uses[0]), addr(&denied[0]), seen);
    gw.stop().await;
    out
}

#[tokio::test]
async fn trusted_proxies_name_the_client_from_x_forwarded_for() {
    let xff = ["203.0.113.50, 198.51.100.7", "10.9.8.7"];
    // The peer (127.0.0.1) is trusted, so is 10.0.0.0/8: the right-most untrusted entry.
    let (used, denied, seen) =
        forwarded_for("trusted_proxies = [\"127.0.0.0/8\", \"10.0.0.0/8\"]", &xff).await;
    assert_eq!(
        (used.as_str(), denied.as_str()),
        ("198.51.100.7", "198.51.100.7")
    );
    assert!(
        seen.headers.get("x-forwarded-for").is_none(),
        "XFF never reaches the NIM: {:?}",
        seen.headers
    );
    // Not opted in, or the peer not in the list: XFF is ignored, the peer is the client.
    for trusted in ["", "trusted_proxies = [\"10.0.0.0/8\"]"] {
        let (used, denied, seen) = forwarded_for(trusted, &xff).await;
        assert!(used.starts_with("127.0.0.1:"), "{trusted}: {used}");
        assert!(denied.starts_with("127.0.0.1:"), "{trusted}: {denied}");
        assert!(seen.headers.get("x-forwarded-for").is_none());
    }
    // A spoofed, unparsable entry from a trusted peer: ignored as a whole.
    let (used, _, _) = forwarded_for(
        "trusted_proxies = [\"127.0.0.1\"]",
        &["198.51.100.7, not-an-ip"],
    )
    .await;
    assert!(used.starts_with("127.0.0.1:"), "{used}");
}
