//! Bearer-token parsing and client authentication never panic, and only the exact key passes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let token = nimgate::auth::bearer_token(data);
    if let Some(t) = token {
        assert!(!t.is_empty() && t.len() <= 512 && t.iter().all(|b| b.is_ascii_graphic()));
        assert!(data[..6].eq_ignore_ascii_case(b"bearer"));
    }
    thread_local! {
        static REG: nimgate::auth::ClientRegistry = nimgate::auth::ClientRegistry::new(
            &[nimgate::config::ClientConfig::keyed("fuzz", nimgate::auth::key_digest_hex("ngk_fuzz_key"))],
            &[],
            1024,
        )
        .unwrap();
    }
    if let Ok(v) = http::HeaderValue::from_bytes(data) {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, v);
        let ok = REG.with(|r| r.authenticate(&h).is_ok());
        if ok {
            assert_eq!(token, Some(&b"ngk_fuzz_key"[..]));
        }
    }
});
