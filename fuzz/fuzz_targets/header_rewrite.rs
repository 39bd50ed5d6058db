//! Whatever headers a client sends, the rewritten request carries exactly one credential (ours),
//! no client credential, and no hop-by-hop header.
#![no_main]
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut h = HeaderMap::new();
    // Input: lines of "name:value".
    for line in data.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (Ok(n), Ok(v)) = (HeaderName::from_bytes(&line[..colon]), HeaderValue::from_bytes(&line[colon + 1..])) else {
            continue;
        };
        h.append(n, v);
    }
    let key = HeaderValue::from_static("Bearer nim-key");
    nimgate::proxy::headers::rewrite_request(&mut h, &header::AUTHORIZATION, &key);
    let auth: Vec<_> = h.get_all(header::AUTHORIZATION).iter().collect();
    assert_eq!(auth, vec![&key]);
    for n in ["proxy-authorization", "x-api-key", "api-key", "connection", "keep-alive", "transfer-encoding", "te", "upgrade", "host"] {
        assert!(h.get(n).is_none(), "{n} survived");
    }
});
