#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::pedantic,
    reason = "test and bench code: a panic is a failed test; the pedantic set is for the product"
)]
//! Workload identity over real sockets: JWT bearer tokens (RS256 from the openssl CLI, ES256 and
//! HS256 from ring) verified against a JWKS file or an in-test HTTPS JWKS endpoint; every refusal
//! a 401 with an OpenAI-shaped body and a `denied` record that names why and never holds the
//! token; one credential per request; client certificates (openssl-made) mapped by SAN or, when
//! no SAN maps, by subject CN, and a certificate name given to two clients refused.

mod common;

use common::certs::{client_cert, self_signed};
use common::jwt::*;
use common::*;
use http::Request;
use http_body_util::Full;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const ISS: &str = "https://kubernetes.default.svc.cluster.local";
const SUB: &str = "system:serviceaccount:team-j:app";

fn claims(iss: &str, aud: &str, sub: &str, nbf: u64, exp: u64) -> Value {
    json!({"iss": iss, "aud": [aud], "sub": sub, "nbf": nbf, "iat": nbf, "exp": exp})
}

fn good(now: u64) -> Value {
    claims(ISS, "nimgate", SUB, now - 10, now + 600)
}

/// `[[auth.jwt]]` for `ISS` with `jwks` (a `jwks_file = …` or `jwks_url = …` line), and a
/// JWT-only client `team-j` mapped from `SUB`.
fn jwt_opts(jwks: &str) -> Opts {
    let mut o = Opts::default().client(format!("jwt_subject = \"{SUB}-a\""));
    o.extra = format!(
            "[[auth.jwt]]\nissuer = \"{ISS}\"\naudiences = [\"nimgate\"]\n{jwks}\nalgorithms = [\"RS256\", \"ES256\"]\nleeway = \"5s\"\n[[clients]]\nid = \"team-j\"\njwt_subject = \"{SUB}\"\nrpm = 600\n"
    );
    o
}

async fn bearer(gw: &Gateway, token: &str) -> (u16, Value) {
    send_json(post(
        &gw.url("/v1/chat/completions"),
        Some(token),
        &chat_body(false),
    ))
    .await
}

#[tokio::test]
async fn rs256_and_es256_tokens_authenticate_and_are_audited_as_jwt() {
    let dir = tempfile::tempdir().unwrap();
    let (rsa, _) = rsa_keypair(dir.path());
    let ec = EcKey::new();
    let jwks = dir.path().join("jwks.json");
    let doc = json!({"keys": [rsa_jwk(&rsa, "r1"), ec.jwk("e1")]});
    std::fs::write(&jwks, doc.to_string()).unwrap();
    let gw = start_with(jwt_opts(&format!("jwks_file = \"{}\"", jwks.display()))).await;
    let now = unix_now();
    let rs = sign_rs256_header(&rsa, &json!({"alg": "RS256", "kid": "r1"}), &good(now));
    let es = ec.sign("e1", &good(now));
    for t in [&rs, &es, &rs] {
        let (s, v) = bearer(&gw, t).await;
        assert_eq!(s, 200, "{v}");
    }
    // A gateway key still works beside them, audited as `key`.
    assert_eq!(bearer(&gw, CLIENT_KEY).await.0, 200);
    let uses = gw.audit_events("use").await;
    assert_eq!(uses.len(), 4);
    for u in &uses[..3] {
        assert_eq!(u["client_id"], "team-j");
        assert_eq!(u["auth"], "jwt");
        assert_eq!(u["subject"], SUB);
    }
    assert_eq!(uses[3]["client_id"], "team-a");
    assert_eq!(uses[3]["auth"], "key");
    assert!(uses[3].get("subject").is_none());
    let done = gw.audit_events("done").await;
    assert!(
        done.iter().filter(|d| d["auth"] == "jwt").count() == 3,
        "{done:?}"
    );
    let text = gw.audit_text();
    assert!(!text.contains(&rs) && !text.contains(&es));
    gw.stop().await;
}

/// Every refusal: 401 `invalid_api_key` in an OpenAI-shaped body, and a `denied` record whose
/// reason is `reason` and which holds no token.
#[tokio::test]
async fn every_bad_token_is_a_401_with_its_reason_and_never_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let (rsa, rsa_pub_pem) = rsa_keypair(dir.path());
    let dir2 = tempfile::tempdir().unwrap();
    let (foreign, _) = rsa_keypair(dir2.path());
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [rsa_jwk(&rsa, "r1")]}).to_string()).unwrap();
    let gw = start_with(jwt_opts(&format!("jwks_file = \"{}\"", jwks.display()))).await;
    let now = unix_now();
    let h = json!({"alg": "RS256", "kid": "r1"});
    let rs = |c: &Value| sign_rs256_header(&rsa, &h, c);
    let good_token = rs(&good(now));
    let mut tampered = good_token.clone();
    tampered.replace_range(tampered.len() - 6.., "AAAAAA");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            rs(&claims(ISS, "nimgate", SUB, now - 700, now - 60)),
            "jwt_expired",
        ),
        (
            "nbf in the future",
            rs(&claims(ISS, "nimgate", SUB, now + 300, now + 900)),
            "jwt_not_yet_valid",
        ),
        (
            "wrong aud",
            rs(&claims(ISS, "vault", SUB, now - 10, now + 600)),
            "jwt_bad_audience",
        ),
        (
            "wrong iss",
            rs(&claims(
                "https://evil.example",
                "nimgate",
                SUB,
                now - 10,
                now + 600,
            )),
            "jwt_unknown_issuer",
        ),
        (
            "alg none",
            unsigned("r1", &good(now)),
            "jwt_algorithm_not_allowed",
        ),
        (
            "HS256 keyed with the RSA public key",
            sign_hs256(rsa_pub_pem.as_bytes(), "r1", &good(now)),
            "jwt_algorithm_not_allowed",
        ),
        (
            "signed by another key",
            sign_rs256_header(&foreign, &h, &good(now)),
            "jwt_bad_signature",
        ),
        ("tampered signature", tampered, "jwt_bad_signature"),
        (
            "unmapped subject",
            rs(&claims(
                ISS,
                "nimgate",
                "system:serviceaccount:x:y",
                now - 10,
                now + 600,
            )),
            "jwt_unmapped_subject",
        ),
    ];
    for (what, token, _) in &cases {
        let (s, v) = bearer(&gw, token).await;
        assert_eq!(s, 401, "{what}: {v}");
        assert_eq!(error_code(&v), "invalid_api_key", "{what}: {v}");
        assert!(v["error"]["message"].is_string(), "{what}: {v}");
    }
    let denied = gw.audit_events("denied").await;
    let reasons: Vec<&str> = denied
        .iter()
        .map(|d| d["reason"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = cases.iter().map(|c| c.2).collect();
    assert_eq!(reasons, want);
    assert!(denied
        .iter()
        .all(|d| d["status"] == 401 && d["auth"] == "jwt"));
    let text = gw.audit_text();
    for (what, token, _) in &cases {
        assert!(
            !text.contains(token.as_str()),
            "{what}: token in the audit trail"
        );
        let sig = token.rsplit('.').next().unwrap();
        assert!(!text.contains(sig), "{what}: signature in the audit trail");
    }
    assert!(
        gw.nim.seen().is_empty(),
        "no refused request reached the NIM"
    );
    // The good token still works after all that.
    assert_eq!(bearer(&gw, &good_token).await.0, 200);
    gw.stop().await;
}

#[tokio::test]
async fn one_credential_per_request_and_never_a_token_in_the_query() {
    let dir = tempfile::tempdir().unwrap();
    let (rsa, _) = rsa_keypair(dir.path());
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [rsa_jwk(&rsa, "r1")]}).to_string()).unwrap();
    let gw = start_with(jwt_opts(&format!("jwks_file = \"{}\"", jwks.display()))).await;
    let token = sign_rs256_header(
        &rsa,
        &json!({"alg": "RS256", "kid": "r1"}),
        &good(unix_now()),
    );
    let with = |auth: Option<&str>, name: &str, value: &str, uri: &str| {
        let mut b = Request::post(gw.url(uri)).header(name, value);
        if let Some(a) = auth {
            b = b.header("authorization", format!("Bearer {a}"));
        }
        b.body(Full::new(bytes::Bytes::from(chat_body(false))))
            .unwrap()
    };
    let path = "/v1/chat/completions";
    let cases = [
        (
            "key + JWT in X-Api-Key",
            with(Some(CLIENT_KEY), "x-api-key", &token, path),
            "two_credentials",
        ),
        (
            "JWT + key in X-Api-Key",
            with(Some(&token), "x-api-key", CLIENT_KEY, path),
            "two_credentials",
        ),
        (
            "two different keys",
            with(Some(CLIENT_KEY), "x-api-key", CLIENT_KEY_B, path),
            "two_credentials",
        ),
        (
            "key + other key in Api-Key",
            with(Some(CLIENT_KEY_B), "api-key", CLIENT_KEY, path),
            "two_credentials",
        ),
        (
            "two Authorization headers",
            Request::post(gw.url(path))
                .header("authorization", format!("Bearer {CLIENT_KEY}"))
                .header("authorization", format!("Bearer {token}"))
                .body(Full::new(bytes::Bytes::from(chat_body(false))))
                .unwrap(),
            "malformed_key",
        ),
        (
            "JWT in ?access_token=",
            with(
                None,
                "x-unrelated",
                "1",
                &format!("{path}?access_token={token}"),
            ),
            "missing_key",
        ),
        (
            "JWT in ?api_key=",
            with(None, "x-unrelated", "1", &format!("{path}?api_key={token}")),
            "missing_key",
        ),
    ];
    let want: Vec<&str> = cases.iter().map(|c| c.2).collect();
    for (what, req, _) in cases {
        let (s, v) = send_json(req).await;
        assert_eq!(s, 401, "{what}: {v}");
        assert_eq!(error_code(&v), "invalid_api_key", "{what}");
    }
    let denied = gw.audit_events("denied").await;
    let reasons: Vec<&str> = denied
        .iter()
        .map(|d| d["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, want);
    let text = gw.audit_text();
    assert!(!text.contains(&token) && !text.contains(CLIENT_KEY));
    // The same key in both headers is one credential, and an unknown X-Api-Key value beside a
    // key is no credential at all (it is stripped, as before).
    assert_eq!(
        send(with(Some(CLIENT_KEY), "x-api-key", CLIENT_KEY, path))
            .await
            .0,
        200
    );
    assert_eq!(
        send(with(Some(&token), "x-api-key", "client-x", path))
            .await
            .0,
        200
    );
    assert!(gw
        .nim
        .seen()
        .iter()
        .all(|s| !s.uri.contains("access_token")));
    gw.stop().await;
}

/// A JWKS endpoint over TLS (certificate from a throwaway CA) serving whatever `doc` holds,
/// counting fetches.
async fn jwks_server(
    cert: &Path,
    key: &Path,
    doc: Arc<Mutex<String>>,
) -> (std::net::SocketAddr, Arc<AtomicU64>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(nimgate::tls::server_config(cert, key).unwrap());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let fetches = Arc::new(AtomicU64::new(0));
    let f2 = fetches.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            let (acceptor, doc, fetches) = (acceptor.clone(), doc.clone(), f2.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let body = doc.lock().unwrap().clone();
                    let fetches = fetches.clone();
                    async move {
                        assert_eq!(req.uri().path(), "/openid/v1/jwks");
                        fetches.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(bytes::Bytes::from(body)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                .await;
            });
        }
    });
    (addr, fetches)
}

#[tokio::test]
async fn unknown_kid_refetches_the_https_jwks_once_and_follows_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = self_signed(dir.path(), "jwks");
    let (k1, _) = rsa_keypair(dir.path());
    let d2 = tempfile::tempdir().unwrap();
    let (k2, _) = rsa_keypair(d2.path());
    let doc = Arc::new(Mutex::new(
        json!({"keys": [rsa_jwk(&k1, "k1")]}).to_string(),
    ));
    let (addr, fetches) = jwks_server(&cert, &key, doc.clone()).await;
    let url = format!("https://localhost:{}/openid/v1/jwks", addr.port());
    let gw = start_with(jwt_opts(&format!(
        "jwks_url = \"{url}\"\nca_file = \"{}\"\njwks_refresh = \"1h\"",
        ca.display()
    )))
    .await;
    let now = unix_now();
    let sign = |k: &Path, kid: &str| {
        sign_rs256_header(k, &json!({"alg": "RS256", "kid": kid}), &good(now))
    };
    // The background refresher's first fetch at start-up (waited for, so the counts below are
    // the request-driven fetches only).
    assert!(eventually(|| fetches.load(Ordering::SeqCst) >= 1).await);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let t1 = sign(&k1, "k1");
    let (s, v) = bearer(&gw, &t1).await;
    assert_eq!(s, 200, "{v}");
    let after_first = fetches.load(Ordering::SeqCst);
    assert_eq!(
        after_first, 1,
        "the key set from start-up served the first token"
    );
    // The IdP rotates to k2; the gateway's cached set has only k1.
    *doc.lock().unwrap() = json!({"keys": [rsa_jwk(&k2, "k2")]}).to_string();
    let t2 = sign(&k2, "k2");
    let (s, v) = bearer(&gw, &t2).await;
    assert_eq!(s, 200, "rotation followed without a restart: {v}");
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        after_first + 1,
        "exactly one refetch"
    );
    // Another unknown kid right away: no second refetch within the rate limit, 401.
    let t3 = sign(&k1, "k3");
    let (s, _) = bearer(&gw, &t3).await;
    assert_eq!(s, 401);
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        after_first + 1,
        "refetches are rate-limited"
    );
    let denied = gw.audit_events("denied").await;
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["reason"], "jwt_unknown_kid");
    // A reused token is served from the cache: the endpoint going away changes nothing for it.
    *doc.lock().unwrap() = "{}".into();
    assert_eq!(bearer(&gw, &t2).await.0, 200);
    gw.stop().await;
}

#[tokio::test]
async fn an_untrusted_jwks_endpoint_is_never_used() {
    let dir = tempfile::tempdir().unwrap();
    let (_, cert, key) = self_signed(dir.path(), "jwks");
    let (k1, _) = rsa_keypair(dir.path());
    let doc = Arc::new(Mutex::new(
        json!({"keys": [rsa_jwk(&k1, "k1")]}).to_string(),
    ));
    let (addr, fetches) = jwks_server(&cert, &key, doc).await;
    // No ca_file: the throwaway CA is not trusted, so the TLS handshake fails.
    let url = format!("https://localhost:{}/openid/v1/jwks", addr.port());
    let gw = start_with(jwt_opts(&format!("jwks_url = \"{url}\""))).await;
    let t1 = sign_rs256_header(
        &k1,
        &json!({"alg": "RS256", "kid": "k1"}),
        &good(unix_now()),
    );
    let (s, v) = bearer(&gw, &t1).await;
    assert_eq!(s, 401, "{v}");
    assert_eq!(fetches.load(Ordering::SeqCst), 0);
    let denied = gw.audit_events("denied").await;
    assert_eq!(denied[0]["reason"], "jwt_jwks_unavailable");
    gw.stop().await;
}

/// An HTTPS client trusting `ca`, presenting the client certificate `cert` (if any).
fn mtls_client(
    ca: &Path,
    cert: Option<(&Path, &Path)>,
) -> hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<bytes::Bytes>,
> {
    let cfg = common::certs::client_tls(&[ca], cert);
    let conn = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(cfg)
        .https_only()
        .enable_http1()
        .build();
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(conn)
}

/// A gateway serving TLS with `server_cert`/`server_key` that verifies client certificates
/// against `ca` (`client_auth = mode`).
fn mtls_opts(server_cert: &Path, server_key: &Path, ca: &Path, mode: &str) -> Opts {
    Opts::default().server(format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"\nclient_ca = \"{}\"\nclient_auth = \"{mode}\"",
        server_cert.display(),
        server_key.display(),
        ca.display()
    ))
}

const SPIFFE: &str = "spiffe://cluster.local/ns/team-m/sa/app";

#[tokio::test]
async fn client_certificates_map_by_spiffe_uri_and_bad_ones_fail_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ca, server_cert, server_key) = self_signed(d, "gw");
    self_signed(d, "rogue");
    let usage = "extendedKeyUsage=clientAuth";
    let leaf = |cn: &str, ca: &str, san: &str, eku: &str, expired: bool| {
        client_cert(d, ca, cn, &format!("subjectAltName={san}\n{eku}"), expired)
    };
    let good = leaf("app", "gw", &format!("URI:{SPIFFE}"), usage, false);
    let dns = leaf("batch", "gw", "DNS:batch.team-m.svc", usage, false);
    let unmapped = leaf(
        "stranger",
        "gw",
        "URI:spiffe://cluster.local/ns/x/sa/y",
        usage,
        false,
    );
    let expired = leaf("old", "gw", &format!("URI:{SPIFFE}"), usage, true);
    let untrusted = leaf("rogue-app", "rogue", &format!("URI:{SPIFFE}"), usage, false);
    let server_only = leaf(
        "wrong-usage",
        "gw",
        &format!("URI:{SPIFFE}"),
        "extendedKeyUsage=serverAuth",
        false,
    );
    let mut o = mtls_opts(&server_cert, &server_key, &ca, "optional");
    o.extra = format!(
        "[[clients]]\nid = \"team-m\"\ncert_san_uri = \"{SPIFFE}\"\n[[clients]]\nid = \"batch\"\ncert_san_dns = \"batch.team-m.svc\"\n"
    );
    let gw = start_with(o).await;
    let url = format!("https://localhost:{}/v1/chat/completions", gw.addr.port());
    let call = |cert: Option<&(std::path::PathBuf, std::path::PathBuf)>, key: Option<&str>| {
        let client = mtls_client(&ca, cert.map(|(c, k)| (c.as_path(), k.as_path())));
        let mut b = Request::post(&url);
        if let Some(k) = key {
            b = b.header("authorization", format!("Bearer {k}"));
        }
        let req = b
            .body(Full::new(bytes::Bytes::from(chat_body(false))))
            .unwrap();
        async move { client.request(req).await.map(|r| r.status().as_u16()) }
    };
    assert_eq!(call(Some(&good), None).await.unwrap(), 200);
    assert_eq!(call(Some(&dns), None).await.unwrap(), 200);
    // No certificate (optional mode): keys work as before.
    assert_eq!(call(None, Some(CLIENT_KEY)).await.unwrap(), 200);
    // A verified certificate and a key: two credentials.
    assert_eq!(call(Some(&good), Some(CLIENT_KEY)).await.unwrap(), 401);
    assert_eq!(call(Some(&unmapped), None).await.unwrap(), 401);
    let seen_before = gw.nim.seen().len();
    for (what, cert) in [
        ("expired", &expired),
        ("untrusted", &untrusted),
        ("serverAuth only", &server_only),
    ] {
        assert!(
            call(Some(cert), None).await.is_err(),
            "{what}: the handshake must fail"
        );
    }
    assert_eq!(
        gw.nim.seen().len(),
        seen_before,
        "a failed handshake reaches nothing"
    );
    let uses = gw.audit_events("use").await;
    assert_eq!(uses.len(), 3);
    assert_eq!(
        (uses[0]["client_id"].as_str(), uses[0]["auth"].as_str()),
        (Some("team-m"), Some("mtls"))
    );
    assert_eq!(uses[0]["subject"], SPIFFE);
    assert_eq!(
        (uses[1]["client_id"].as_str(), uses[1]["subject"].as_str()),
        (Some("batch"), Some("batch.team-m.svc"))
    );
    assert_eq!(uses[2]["auth"], "key");
    let denied = gw.audit_events("denied").await;
    let reasons: Vec<&str> = denied
        .iter()
        .map(|d| d["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["two_credentials", "unmapped_certificate"]);
    assert!(!gw.audit_text().contains(CLIENT_KEY));
    gw.stop().await;
}

#[tokio::test]
async fn a_key_past_its_expiry_gets_401_and_one_before_it_works() {
    let mut o = Opts::default().client("expires = 2020-03-01T00:00:00Z");
    o.extra = format!(
        "[[clients]]\nid = \"team-c\"\nkey_sha256 = \"{}\"\nexpires = 2099-03-01T00:00:00Z\n",
        nimgate::auth::key_digest_hex("ngk_not_yet_expired")
    );
    let gw = start_with(o).await;
    let (s, v) = bearer(&gw, CLIENT_KEY).await;
    assert_eq!((s, error_code(&v).as_str()), (401, "invalid_api_key"));
    assert_eq!(bearer(&gw, "ngk_not_yet_expired").await.0, 200);
    assert_eq!(bearer(&gw, CLIENT_KEY_B).await.0, 200);
    let denied = gw.audit_events("denied").await;
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["reason"], "key_expired");
    assert_eq!(denied[0]["auth"], "key");
    gw.stop().await;
    // An expiry with an offset is refused at validation, naming the field.
    let text = format!(
        "[upstream]\nurl = \"http://x:1\"\n[secret]\nsource = \"file\"\npath = \"/k\"\n[[clients]]\nid = \"a\"\nkey_sha256 = \"{}\"\nexpires = 2027-03-01T00:00:00+01:00\n",
        nimgate::auth::key_digest_hex("k")
    );
    let errs = nimgate::config::parse(&text).unwrap().validate();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].field, "clients[0].expires");
}

#[tokio::test]
async fn client_auth_required_refuses_a_handshake_without_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ca, server_cert, server_key) = self_signed(d, "gw");
    let good = client_cert(
        d,
        "gw",
        "app",
        &format!("subjectAltName=URI:{SPIFFE}\nextendedKeyUsage=clientAuth"),
        false,
    );
    let mut o = mtls_opts(&server_cert, &server_key, &ca, "required");
    o.extra = format!("[[clients]]\nid = \"team-m\"\ncert_san_uri = \"{SPIFFE}\"\n");
    let gw = start_with(o).await;
    let url = format!("https://localhost:{}/v1/models", gw.addr.port());
    let get = |cert: Option<(&Path, &Path)>, key: Option<&str>| {
        let client = mtls_client(&ca, cert);
        let mut b = Request::get(&url);
        if let Some(k) = key {
            b = b.header("authorization", format!("Bearer {k}"));
        }
        let req = b.body(Full::new(bytes::Bytes::new())).unwrap();
        async move { client.request(req).await.map(|r| r.status().as_u16()) }
    };
    assert!(
        get(None, Some(CLIENT_KEY)).await.is_err(),
        "no certificate, no connection"
    );
    assert_eq!(get(Some((&good.0, &good.1)), None).await.unwrap(), 200);
    assert!(gw.nim.seen().len() == 1);
    gw.stop().await;
}

#[tokio::test]
async fn a_client_certificate_maps_by_subject_cn_when_no_san_maps() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ca, server_cert, server_key) = self_signed(d, "gw");
    let usage = "extendedKeyUsage=clientAuth";
    // No SAN at all: only the subject CN names it.
    let cn_only = client_cert(d, "gw", "legacy-batch", usage, false);
    // A SAN that maps (team-m) wins over a CN that also maps.
    let both = client_cert(
        d,
        "gw",
        "legacy-batch-2",
        &format!("subjectAltName=URI:{SPIFFE}\n{usage}"),
        false,
    );
    // A CN nobody maps.
    let stranger = client_cert(d, "gw", "someone-else", usage, false);
    let mut o = mtls_opts(&server_cert, &server_key, &ca, "optional");
    o.extra = format!(
        "[[clients]]\nid = \"team-m\"\ncert_san_uri = \"{SPIFFE}\"\n[[clients]]\nid = \"legacy\"\ncert_subject_cn = \"legacy-batch\"\n[[clients]]\nid = \"legacy-2\"\ncert_subject_cn = \"legacy-batch-2\"\n"
    );
    let gw = start_with(o).await;
    let url = format!("https://localhost:{}/v1/chat/completions", gw.addr.port());
    for (cert, want) in [(&cn_only, 200), (&both, 200), (&stranger, 401)] {
        let client = mtls_client(&ca, Some((cert.0.as_path(), cert.1.as_path())));
        let req = Request::post(&url)
            .body(Full::new(bytes::Bytes::from(chat_body(false))))
            .unwrap();
        let status = client.request(req).await.unwrap().status().as_u16();
        assert_eq!(status, want, "{}", cert.0.display());
    }
    let uses = gw.audit_events("use").await;
    assert_eq!(uses.len(), 2);
    assert_eq!(
        (uses[0]["client_id"].as_str(), uses[0]["auth"].as_str()),
        (Some("legacy"), Some("mtls"))
    );
    assert_eq!(uses[0]["subject"], "legacy-batch");
    assert_eq!(uses[1]["client_id"], "team-m");
    assert_eq!(uses[1]["subject"], SPIFFE);
    let denied = gw.audit_events("denied").await;
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["reason"], "unmapped_certificate");
    gw.stop().await;
}

#[test]
fn a_certificate_name_given_to_two_clients_is_refused_naming_both() {
    let base = "[server]\ntls_cert = \"/c\"\ntls_key = \"/k\"\nclient_ca = \"/ca\"\n[upstream]\nurl = \"http://x:1\"\n[secret]\nsource = \"file\"\npath = \"/k\"\n";
    for (field, a, b) in [
        ("cert_san_uri", SPIFFE, SPIFFE),
        ("cert_san_dns", "batch.svc", "BATCH.svc"),
        ("cert_subject_cn", "legacy", "legacy"),
    ] {
        let text = format!(
            "{base}[[clients]]\nid = \"one\"\n{field} = \"{a}\"\n[[clients]]\nid = \"two\"\n{field} = \"{b}\"\n"
        );
        let errs = nimgate::config::parse(&text).unwrap().validate();
        assert_eq!(errs.len(), 1, "{field}: {errs:?}");
        assert_eq!(errs[0].field, format!("clients[1].{field}"));
        assert!(
            errs[0].message.contains(&format!("clients[0].{field}")),
            "{errs:?}"
        );
    }
    // The same value in two different fields names different things: allowed.
    let text = format!(
        "{base}[[clients]]\nid = \"one\"\ncert_san_dns = \"legacy\"\n[[clients]]\nid = \"two\"\ncert_subject_cn = \"legacy\"\n"
    );
    assert_eq!(nimgate::config::parse(&text).unwrap().validate(), []);
    // Without client_ca a CN mapping can never match: refused naming the field.
    let text = "[upstream]\nurl = \"http://x:1\"\n[secret]\nsource = \"file\"\npath = \"/k\"\n[[clients]]\nid = \"one\"\ncert_subject_cn = \"legacy\"\n";
    let errs = nimgate::config::parse(text).unwrap().validate();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].field, "clients[0].cert_subject_cn");
}
