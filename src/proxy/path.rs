//! Request-target normalisation, done before route allow-listing so that `..`, `%2e%2e`, `//`
//! and friends cannot reach a route the allow-list did not admit. The normalised form is what is
//! sent upstream, so the NIM sees exactly the path that was checked.
//!
//! One exception to "an encoded `/` is refused": the model id of `GET /v1/models/{id}`, which
//! the openai SDK's `models.retrieve("meta/llama-3.1-8b-instruct")` sends as
//! `/v1/models/meta%2Fllama-3.1-8b-instruct`. Only there is `%2F` decoded, and each part of the
//! id must be a plain segment (no empty, `.` or `..` part), so it cannot climb out of
//! `/v1/models/`.

/// The one route whose last segment may hold an encoded `/` (a model id with an org prefix).
const MODELS: &str = "/v1/models/";

use std::borrow::Cow;

/// Normalise a raw path: decode percent-escaped unreserved characters, refuse encoded `/`, `\`,
/// control characters and `;`, collapse `//`, resolve `.` and `..`. `None` = reject (400).
/// `/v1/models/{id}` with `%2F` in its one id segment: see the module header. Borrowed: the path
/// is already normal (the common case, no allocation).
pub fn normalize(raw: &str) -> Option<Cow<'_, str>> {
    match raw.strip_prefix(MODELS) {
        Some(id) if !id.contains('/') && id.to_ascii_lowercase().contains("%2f") => {
            model_path(id).map(Cow::Owned)
        }
        _ => strict(raw),
    }
}

/// `/v1/models/` + the id with `%2F` decoded; every part between them a single plain segment.
fn model_path(raw_id: &str) -> Option<String> {
    let mut path = String::from(MODELS);
    let lower = raw_id.to_ascii_lowercase();
    let mut start = 0;
    let mut parts = Vec::new();
    while let Some(i) = lower[start..].find("%2f") {
        parts.push(&raw_id[start..start + i]);
        start += i + 3;
    }
    parts.push(&raw_id[start..]);
    for (n, part) in parts.iter().enumerate() {
        let part = format!("/{part}");
        let seg = strict(&part)?;
        let seg = seg.strip_prefix('/')?;
        if seg.is_empty() || seg.contains('/') {
            return None;
        }
        if n > 0 {
            path.push('/');
        }
        path.push_str(seg);
    }
    Some(path)
}

/// `normalize` without the model-id exception.
fn strict(raw: &str) -> Option<Cow<'_, str>> {
    if !raw.starts_with('/') {
        return None;
    }
    if is_plain(raw) {
        return Some(Cow::Borrowed(raw));
    }
    resolve(raw).map(Cow::Owned)
}

/// `strict` the long way: decode, refuse, resolve the segments.
fn resolve(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    // Bytes, not chars: a non-ASCII byte is kept as it is (pushing it `as char` would re-encode
    // each byte of a UTF-8 sequence as Latin-1 and change the path the NIM sees).
    let mut decoded = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = raw.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(hex, 16).ok()?;
            if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
                decoded.push(v);
            } else if v == b'/' || v == b'\\' || v == b';' || v < 0x20 || v == 0x7f {
                return None;
            } else {
                decoded.push(b'%');
                decoded.extend_from_slice(hex.to_ascii_uppercase().as_bytes());
            }
            i += 3;
            continue;
        }
        if b == b'\\' || b == b';' || b < 0x20 || b == 0x7f {
            return None;
        }
        decoded.push(b);
        i += 1;
    }
    // Only ASCII was decoded or inserted and every other byte copied, so this is `raw`'s UTF-8.
    let decoded = String::from_utf8(decoded).ok()?;
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            s => out.push(s),
        }
    }
    let mut path = String::with_capacity(decoded.len());
    for s in &out {
        path.push('/');
        path.push_str(s);
    }
    if path.is_empty() || decoded.ends_with('/') {
        path.push('/');
    }
    Some(path)
}

/// A path `strict` would return unchanged (the usual case, checked in one pass): no escape, no
/// refused byte, no empty, `.` or `..` segment (a trailing `/` is kept as it is).
fn is_plain(raw: &str) -> bool {
    if raw
        .bytes()
        .any(|c| matches!(c, b'%' | b'\\' | b';' | 0x7f) || c < 0x20)
    {
        return false;
    }
    if raw == "/" {
        return true;
    }
    let segs = &raw[1..];
    let body = segs.strip_suffix('/').unwrap_or(segs);
    !body.is_empty() && body.split('/').all(|s| !matches!(s, "" | "." | ".."))
}

/// Whether a decoded query parameter name is a credential: `api_key`, `api-key`, `apikey`,
/// `key`, `access_token` in any case, `_`/`-` alike, with or without a PHP/Rails-style `[…]`
/// suffix (`api_key[]`, `key[0]`).
fn is_credential_name(name: &[u8]) -> bool {
    let base = match name.iter().position(|&b| b == b'[') {
        Some(i) => &name[..i],
        None => name,
    };
    let mut folded = [0u8; 16];
    let mut n = 0;
    for &b in base {
        if b == b'_' || b == b'-' {
            continue;
        }
        if n == folded.len() {
            return false;
        }
        folded[n] = b.to_ascii_lowercase();
        n += 1;
    }
    matches!(&folded[..n], b"apikey" | b"key" | b"accesstoken")
}

/// Remove credential parameters (see `is_credential_name`; percent-encoded names too) from a
/// query.
pub fn strip_credential_params(query: &str) -> Option<String> {
    let mut changed = false;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| {
            // Compare the fully decoded name, as the upstream's framework will see it.
            let name = form_decode(p.split('=').next().unwrap_or(""));
            let cred = is_credential_name(&name);
            changed |= cred;
            !cred
        })
        .collect();
    changed.then(|| kept.join("&"))
}

/// `application/x-www-form-urlencoded` decoding of one name: `%XX` and `+`.
fn form_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
                continue;
            }
            (b'+', _) => out.push(b' '),
            (c, _) => out.push(c),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_fast_path_agrees_with_resolving() {
        let cases = [
            "/",
            "//",
            "///",
            "/v1/chat/completions",
            "/v1/chat/completions/",
            "/v1//x",
            "/v1/./x",
            "/v1/../x",
            "/..",
            "/.",
            "/v1/x/.",
            "/v1/x/..",
            "/v1/x/",
            "/a.b/..c/d..",
            "/v1/caf\u{e9}",
            "/v1/%2e%2e/x",
            "/v1/a;b",
            "/v1/a\\b",
            "/v1/\u{7f}",
            "/v1/x//",
            "/.well-known/x",
        ];
        for raw in cases {
            if is_plain(raw) {
                assert_eq!(
                    Some(raw.to_owned()),
                    resolve(raw),
                    "{raw:?} is plain but resolves differently"
                );
            }
            assert_eq!(strict(raw).as_deref(), resolve(raw).as_deref(), "{raw:?}");
        }
        assert!(is_plain("/v1/chat/completions") && is_plain("/") && is_plain("/v1/x/"));
        assert!(!is_plain("//") && !is_plain("/v1/./x") && !is_plain("/v1/%41"));
    }

    #[test]
    fn normalises() {
        assert_eq!(
            normalize("/v1/chat/completions").as_deref(),
            Some("/v1/chat/completions")
        );
        assert_eq!(normalize("/v1//models").as_deref(), Some("/v1/models"));
        assert_eq!(normalize("/v1/../admin").as_deref(), Some("/admin"));
        assert_eq!(normalize("/v1/%2e%2e/admin").as_deref(), Some("/admin"));
        assert_eq!(normalize("/v1/%2E%2E/%2e/admin").as_deref(), Some("/admin"));
        assert_eq!(normalize("/v1/./models/").as_deref(), Some("/v1/models/"));
        assert_eq!(normalize("/%76%31/models").as_deref(), Some("/v1/models"));
        assert_eq!(normalize("/v1/a%20b").as_deref(), Some("/v1/a%20b"));
        assert_eq!(normalize("/v1/..%2Fadmin"), None);
        assert_eq!(normalize("/v1/..%2fadmin"), None);
        assert_eq!(normalize("/v1;/../admin"), None);
        assert_eq!(normalize("/v1/%00"), None);
        assert_eq!(normalize("/.."), None);
        assert_eq!(normalize("/v1/%zz"), None);
        assert_eq!(normalize("*"), None);
        // Non-ASCII bytes are forwarded unchanged (not re-encoded per byte).
        assert_eq!(
            normalize("/v1/caf\u{e9}/\u{2028}/x").as_deref(),
            Some("/v1/caf\u{e9}/\u{2028}/x")
        );
    }

    #[test]
    fn decodes_an_encoded_slash_only_in_a_model_id() {
        assert_eq!(
            normalize("/v1/models/meta%2Fllama-3.1-8b-instruct").as_deref(),
            Some("/v1/models/meta/llama-3.1-8b-instruct")
        );
        assert_eq!(
            normalize("/v1/models/a%2fb%2Fc").as_deref(),
            Some("/v1/models/a/b/c")
        );
        assert_eq!(
            normalize("/v1/models/plain").as_deref(),
            Some("/v1/models/plain")
        );
        // Nowhere else, and never a way out of /v1/models/.
        for bad in [
            "/v1/chat%2Fcompletions",
            "/v1/models%2Fmeta",
            "/v1/x/models/meta%2Fllama",
            "/v1/models/..%2F..%2Fadmin",
            "/v1/models/%2e%2e%2Fadmin",
            "/v1/models/meta%2F..",
            "/v1/models/meta%2F.",
            "/v1/models/meta%2F%2Fx",
            "/v1/models/%2Fmeta",
            "/v1/models/meta%2F",
            "/v1/models/a%2Fb%5Cc",
            "/v1/models/a%2Fb;c",
            "/v1/models/a%2Fb/c",
        ] {
            assert_eq!(normalize(bad), None, "{bad}");
        }
        assert_eq!(
            normalize("/v1/models/meta%2Fllama%2D3").as_deref(),
            Some("/v1/models/meta/llama-3")
        );
    }

    #[test]
    fn strips_api_key_params() {
        assert_eq!(
            strip_credential_params("a=1&api_key=x&b=2").as_deref(),
            Some("a=1&b=2")
        );
        assert_eq!(strip_credential_params("API-KEY=x").as_deref(), Some(""));
        assert_eq!(
            strip_credential_params("api%5Fkey=x&a=1").as_deref(),
            Some("a=1")
        );
        assert_eq!(strip_credential_params("a=1"), None);
        assert_eq!(
            strip_credential_params("%61pi_key=x&b=2").as_deref(),
            Some("b=2")
        );
        assert_eq!(
            strip_credential_params("%41%50%49%5F%4B%45%59=x").as_deref(),
            Some("")
        );
        assert_eq!(
            strip_credential_params("%61pi-key=x&api_ke=1").as_deref(),
            Some("api_ke=1")
        );
        assert_eq!(strip_credential_params("a=%&b%="), None);
        for q in [
            "key=x",
            "KEY=x",
            "apikey=x",
            "ApiKey=x",
            "api_key[]=x",
            "api_key%5B%5D=x",
            "key[0]=x",
            "access_token=x",
            "access-token=x",
            "api__key=x",
            "a-p-i-k-e-y=x",
        ] {
            assert_eq!(
                strip_credential_params(&format!("{q}&a=1")).as_deref(),
                Some("a=1"),
                "{q}"
            );
        }
        assert_eq!(
            strip_credential_params("keys=1&monkey=2&key_id=3&token=4"),
            None
        );
    }
}
