//! Request-target normalisation, done before route allow-listing so that `..`, `%2e%2e`, `//`
//! and friends cannot reach a route the allow-list did not admit. The normalised form is what is
//! sent upstream, so the NIM sees exactly the path that was checked.

/// Normalise a raw path: decode percent-escaped unreserved characters, refuse encoded `/`, `\`,
/// control characters and `;`, collapse `//`, resolve `.` and `..`. `None` = reject (400).
pub fn normalize(raw: &str) -> Option<String> {
    if !raw.starts_with('/') {
        return None;
    }
    let bytes = raw.as_bytes();
    let mut decoded = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = raw.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(hex, 16).ok()?;
            if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
                decoded.push(v as char);
            } else if v == b'/' || v == b'\\' || v == b';' || v < 0x20 || v == 0x7f {
                return None;
            } else {
                decoded.push('%');
                decoded.push_str(&hex.to_ascii_uppercase());
            }
            i += 3;
            continue;
        }
        if b == b'\\' || b == b';' || b < 0x20 || b == 0x7f {
            return None;
        }
        decoded.push(b as char);
        i += 1;
    }
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

/// Remove `api_key` / `api-key` parameters (any case, percent-encoded names too) from a query.
pub fn strip_credential_params(query: &str) -> Option<String> {
    let mut changed = false;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| {
            let name = p.split('=').next().unwrap_or("");
            let name = name
                .replace("%5F", "_")
                .replace("%5f", "_")
                .replace("%2D", "-")
                .replace("%2d", "-");
            let cred = name.eq_ignore_ascii_case("api_key") || name.eq_ignore_ascii_case("api-key");
            changed |= cred;
            !cred
        })
        .collect();
    changed.then(|| kept.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
