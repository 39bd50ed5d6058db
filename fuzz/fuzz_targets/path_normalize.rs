//! A normalised path is absolute, has no empty, `.` or `..` segments, and never has an encoded
//! slash; stripping credential params never leaves an `api_key`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Some(p) = nimgate::proxy::path::normalize(s) {
        assert!(p.starts_with('/'));
        let inner = p.trim_end_matches('/');
        for seg in inner.split('/').skip(1) {
            assert!(!seg.is_empty() && seg != "." && seg != "..", "{p:?} from {s:?}");
        }
        let lower = p.to_ascii_lowercase();
        assert!(!lower.contains("%2f") && !lower.contains("%5c") && !p.contains(';'));
    }
    if let Some(q) = nimgate::proxy::path::strip_credential_params(s) {
        for part in q.split('&') {
            let name = part.split('=').next().unwrap_or("").to_ascii_lowercase();
            assert!(name != "api_key" && name != "api-key");
        }
    }
});
