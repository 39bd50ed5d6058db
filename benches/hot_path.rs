#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::pedantic,
    reason = "test and bench code: a panic is a failed test; the pedantic set is for the product"
)]
//! Micro-benchmarks of the per-request hot path (divan): client key lookup, header rewrite,
//! path normalisation, the request's model and the response's usage, audit record encoding.
//! `cargo bench --bench hot_path`.

use http::{HeaderMap, HeaderName, HeaderValue};
use nimgate::audit::record::{encode_line, Record};
use nimgate::auth::{key_digest_hex, ClientRegistry};
use nimgate::config::ClientConfig;
use std::sync::Arc;

fn main() {
    divan::main();
}

fn registry(n: usize) -> ClientRegistry {
    let clients: Vec<ClientConfig> = (0..n)
        .map(|i| {
            ClientConfig::keyed(
                &format!("team-{i}"),
                key_digest_hex(&format!(
                    "ngk_bench_key_{i:04}_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                )),
            )
        })
        .collect();
    ClientRegistry::new(&clients, &[], 1024).unwrap()
}

fn client_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("gateway.example:8080"));
    h.insert(
        "user-agent",
        HeaderValue::from_static("openai-python/1.52.0"),
    );
    h.insert("accept", HeaderValue::from_static("application/json"));
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h.insert("content-length", HeaderValue::from_static("187"));
    h.insert("connection", HeaderValue::from_static("keep-alive"));
    h.insert("x-stainless-lang", HeaderValue::from_static("python"));
    h.insert(
        "x-request-id",
        HeaderValue::from_static("req-0123456789abcdef"),
    );
    h.insert(
        "authorization",
        HeaderValue::from_static("Bearer ngk_bench_key_0042_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
    );
    h
}

#[divan::bench(args = [1, 100, 10_000])]
fn client_key_lookup(bencher: divan::Bencher, n: usize) {
    let r = registry(n.max(43));
    let h = client_headers();
    bencher.bench(|| r.authenticate(divan::black_box(&h)).is_ok());
}

#[divan::bench]
fn header_rewrite(bencher: divan::Bencher) {
    let key =
        HeaderValue::from_static("Bearer nvapi-0123456789abcdef0123456789abcdef0123456789abcdef");
    let name = HeaderName::from_static("authorization");
    bencher
        .with_inputs(client_headers)
        .bench_local_values(|mut h| {
            nimgate::proxy::headers::rewrite_request(&mut h, &name, &key);
            h
        });
}

#[divan::bench]
fn path_normalize() -> Option<std::borrow::Cow<'static, str>> {
    nimgate::proxy::path::normalize(divan::black_box("/v1/chat/completions"))
}

/// A chat request in the order the `openai` SDK writes it (`messages`, then `model` and the
/// sampling parameters): the model is found only after skipping the text.
fn chat_request() -> bytes::Bytes {
    let text = "Summarise the attached incident report in three bullet points. ".repeat(12);
    bytes::Bytes::from(format!(
        r#"{{"messages":[{{"role":"system","content":"You are terse."}},{{"role":"user","content":"{text}"}}],"model":"meta/llama-3.1-8b-instruct","max_tokens":256,"temperature":0.2,"stream":false}}"#
    ))
}

#[divan::bench]
fn request_model(bencher: divan::Bencher) {
    let body = chat_request();
    assert!(nimgate::proxy::prefix::model_of(&body).is_some());
    bencher.bench(|| nimgate::proxy::prefix::model_of(divan::black_box(&body)));
}

/// A NIM chat completion (the OpenAI shape): the generated text, then `usage`.
fn chat_response() -> bytes::Bytes {
    let text = "- The outage began at 09:12 when a certificate expired.\\n".repeat(8);
    bytes::Bytes::from(format!(
        r#"{{"id":"chatcmpl-7f3a","object":"chat.completion","created":1764700000,"model":"meta/llama-3.1-8b-instruct","choices":[{{"index":0,"message":{{"role":"assistant","content":"{text}"}},"logprobs":null,"finish_reason":"stop"}}],"usage":{{"prompt_tokens":212,"total_tokens":340,"completion_tokens":128}}}}"#
    ))
}

#[divan::bench]
fn response_usage_probe(bencher: divan::Bencher) {
    let body = chat_response();
    let mut s = nimgate::body::sniff::Sniffer::json(false);
    s.feed(&body);
    assert!(s.result().0.is_some(), "the bench body's usage is found");
    bencher.bench(|| {
        let mut s = nimgate::body::sniff::Sniffer::json(false);
        s.feed(divan::black_box(&body));
        s.result()
    });
}

#[divan::bench]
fn audit_use_record_encoding(bencher: divan::Bencher) {
    let mut r = Record::event(nimgate::audit::Event::Use);
    r.request_id = Some("077f87f251920c020000000000000000".into());
    r.client_id = Some(Arc::from("team-a"));
    r.remote_addr = Some("10.0.3.7:37834".into());
    r.method = Some("POST".into());
    r.path = Some("/v1/chat/completions".into());
    r.model = Some("meta/llama-3.1-8b-instruct".into());
    r.upstream = Some(Arc::from("http://127.0.0.1:8000"));
    r.key_version = Some(Arc::from("7"));
    r.key_fingerprint = Some(Arc::from("671b023cf9d6a1ea"));
    let prev = "bc5294ff6029e220837e8f3fbf5f35b7a23f64cbd91121afb55c8e1a09d27bfc".to_string();
    let mut buf = Vec::with_capacity(64 * 1024);
    bencher.bench_local(|| {
        buf.clear();
        encode_line(&mut buf, divan::black_box(&r), 42, &prev)
    });
}

/// An ES256 token for `sub` (ring) and the JWKS document with its key (kid `k`).
fn es256_token(kp: &ring::signature::EcdsaKeyPair, jti: u64) -> String {
    use base64::Engine;
    let b = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let claims = format!(
        r#"{{"iss":"https://k8s","aud":["nimgate"],"sub":"system:serviceaccount:team-a:app","exp":4102444800,"jti":"{jti}"}}"#
    );
    let input = format!(
        "{}.{}",
        b(br#"{"alg":"ES256","kid":"k"}"#),
        b(claims.as_bytes())
    );
    let sig = kp
        .sign(&ring::rand::SystemRandom::new(), input.as_bytes())
        .unwrap();
    format!("{input}.{}", b(sig.as_ref()))
}

/// A registry with one `[[auth.jwt]]` issuer whose JWKS holds `kp`'s key, and the key pair.
fn jwt_registry() -> (
    ClientRegistry,
    ring::signature::EcdsaKeyPair,
    tempfile::TempDir,
) {
    use base64::Engine;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING as ALG};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ALG, &rng).unwrap();
    let kp = EcdsaKeyPair::from_pkcs8(&ALG, pkcs8.as_ref(), &rng).unwrap();
    let p = kp.public_key().as_ref();
    let b = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(
        &jwks,
        format!(
            r#"{{"keys":[{{"kty":"EC","crv":"P-256","kid":"k","x":"{}","y":"{}"}}]}}"#,
            b(&p[1..33]),
            b(&p[33..])
        ),
    )
    .unwrap();
    let toml = format!(
        "[upstream]\nurl = \"http://x:1\"\n[secret]\nsource = \"file\"\npath = \"/k\"\n\
         [[clients]]\nid = \"team-a\"\njwt_subject = \"system:serviceaccount:team-a:app\"\n\
         [[auth.jwt]]\nissuer = \"https://k8s\"\naudiences = [\"nimgate\"]\njwks_file = \"{}\"\n",
        jwks.display()
    );
    let cfg = nimgate::config::parse(&toml).unwrap();
    let r = ClientRegistry::new(&cfg.clients, &cfg.auth.jwt, 1024).unwrap();
    (r, kp, dir)
}

fn bearer_headers(token: &str) -> HeaderMap {
    let mut h = client_headers();
    h.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    h
}

/// A reused token: SHA-256 of the token and a cache lookup.
#[divan::bench]
fn jwt_cache_hit(bencher: divan::Bencher) {
    let (r, kp, _dir) = jwt_registry();
    let h = bearer_headers(&es256_token(&kp, 0));
    assert!(r.authenticate(&h).is_ok());
    bencher.bench(|| r.authenticate(divan::black_box(&h)).is_ok());
}

/// A new token each time: parse, ES256 signature check, claims, mapping, cache insert.
#[divan::bench(sample_count = 200, sample_size = 10)]
fn jwt_cache_miss_es256(bencher: divan::Bencher) {
    let (r, kp, _dir) = jwt_registry();
    let mut jti = 0;
    bencher
        .with_inputs(|| {
            jti += 1;
            bearer_headers(&es256_token(&kp, jti))
        })
        .bench_local_refs(|h| assert!(r.authenticate(h).is_ok()));
}
