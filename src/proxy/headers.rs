//! Header rewriting. Order matters: hop-by-hop headers, every header named in `Connection`, and
//! every client credential are removed *before* the key is inserted, so no client header (not
//! even `Connection: authorization`) can remove, replace or duplicate the injected credential.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::names::{API_KEY, X_ACCEL_BUFFERING, X_API_KEY, X_REQUEST_ID};

/// RFC 9110 §7.6.1 hop-by-hop headers plus the legacy ones proxies must drop.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
];

/// Client credential headers that never pass upstream.
const CLIENT_CREDENTIALS: [HeaderName; 4] = [
    header::AUTHORIZATION,
    header::PROXY_AUTHORIZATION,
    X_API_KEY,
    API_KEY,
];

/// Remove hop-by-hop headers and the headers `Connection` names. A single `Connection` value
/// (the usual case: `keep-alive`, `close`) is copied to the stack and its tokens removed by
/// `&str`, which parses each name without allocating.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    let mut values = h.get_all(header::CONNECTION).iter();
    match (values.next(), values.next()) {
        (None, _) => {}
        (Some(v), None) if v.len() <= 256 => {
            let mut copy = [0u8; 256];
            let copy = &mut copy[..v.len()];
            copy.copy_from_slice(v.as_bytes());
            remove_named(h, copy);
        }
        _ => {
            let all: Vec<u8> = h
                .get_all(header::CONNECTION)
                .iter()
                .flat_map(|v| v.as_bytes().iter().copied().chain([b',']))
                .collect();
            remove_named(h, &all);
        }
    }
    for n in &HOP_BY_HOP {
        h.remove(n);
    }
}

/// Remove every header named in a comma-separated `Connection` list. Bytes, not `to_str`: one
/// non-ASCII token must not hide the others.
fn remove_named(h: &mut HeaderMap, list: &[u8]) {
    for t in list.split(|&b| b == b',') {
        if let Ok(name) = std::str::from_utf8(t.trim_ascii()) {
            if !name.is_empty() {
                h.remove(name);
            }
        }
    }
}

/// Client headers that never reach the NIM though they are not credentials of ours: cookies
/// (another site's session is nothing the NIM needs) and the client's claims about the path it
/// came by (the NIM trusts nimgate, so a client-written `X-Real-IP` would be believed).
const CLIENT_CONTEXT: [HeaderName; 2] = [header::COOKIE, HeaderName::from_static("x-real-ip")];

/// Names removed by pattern: any `_` (WSGI/CGI-style servers, and some Python stacks behind
/// them, map `X_Api_Key` and `X-Api-Key` to the same variable, so an underscore spelling would
/// smuggle a credential past the dash-spelled rules; no header the NIM needs has one) and every
/// `X-Forwarded-*` (client-written, so untrustworthy).
fn stripped_by_pattern(n: &HeaderName) -> bool {
    let s = n.as_str();
    s.contains('_') || s.starts_with("x-forwarded-")
}

/// Remove the `stripped_by_pattern` headers. One scan of the names; allocates only when such a
/// header is present.
pub fn strip_underscore_names(h: &mut HeaderMap) {
    if !h.keys().any(stripped_by_pattern) {
        return;
    }
    let named: Vec<HeaderName> = h
        .keys()
        .filter(|n| stripped_by_pattern(n))
        .cloned()
        .collect();
    for n in named {
        h.remove(n);
    }
}

/// Rewrite a client request's headers for the upstream: strip, then inject the key.
pub fn rewrite_request(h: &mut HeaderMap, auth_header: &HeaderName, key: &HeaderValue) {
    strip_hop_by_hop(h);
    for n in &CLIENT_CREDENTIALS {
        h.remove(n);
    }
    // `_` and `-` alike: every underscore spelling of a credential name (and of any name) goes.
    strip_underscore_names(h);
    for n in &CLIENT_CONTEXT {
        h.remove(n);
    }
    h.remove(header::HOST);
    h.remove(header::FORWARDED);
    h.insert(auth_header.clone(), key.clone());
}

/// Rewrite an upstream response's headers for the client.
pub fn rewrite_response(h: &mut HeaderMap, request_id: &HeaderValue) {
    strip_hop_by_hop(h);
    // The client's session is with nimgate: the NIM sets no cookie on it, and its auth challenge
    // (for *our* key) is not the client's to answer.
    h.remove(header::SET_COOKIE);
    h.remove(header::WWW_AUTHENTICATE);
    h.insert(X_REQUEST_ID, request_id.clone());
    let sse = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if sse {
        h.remove(header::CONTENT_LENGTH);
        h.entry(header::CACHE_CONTROL)
            .or_insert(HeaderValue::from_static("no-cache"));
        h.insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_cannot_remove_injected_key() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, authorization, x-api-key"),
        );
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer client"),
        );
        h.insert(X_API_KEY, HeaderValue::from_static("client"));
        h.append(API_KEY, HeaderValue::from_static("client"));
        h.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("Basic x"),
        );
        h.insert("x-keep", HeaderValue::from_static("1"));
        let key = HeaderValue::from_static("Bearer nim");
        rewrite_request(&mut h, &header::AUTHORIZATION, &key);
        assert_eq!(h.get_all(header::AUTHORIZATION).iter().count(), 1);
        assert_eq!(h[header::AUTHORIZATION], "Bearer nim");
        assert!(h.get(X_API_KEY).is_none() && h.get(API_KEY).is_none());
        assert!(
            h.get(header::PROXY_AUTHORIZATION).is_none() && h.get(header::CONNECTION).is_none()
        );
        assert_eq!(h["x-keep"], "1");
    }

    #[test]
    fn every_header_connection_names_goes_in_any_spelling_and_count() {
        let long = format!("{}, X-Named-3", "a".repeat(300));
        for values in [
            vec!["Keep-Alive, X-Named-1 ,x-named-2,,\u{e9}"],
            vec!["x-named-1", "X-NAMED-2, bad name, x-named-3"],
            vec![long.as_str(), "x-named-1, x-named-2"],
        ] {
            let mut h = HeaderMap::new();
            for v in &values {
                h.append(
                    header::CONNECTION,
                    HeaderValue::from_bytes(v.as_bytes()).unwrap(),
                );
            }
            for n in [
                "x-named-1",
                "x-named-2",
                "x-named-3",
                "keep-alive",
                "x-other",
            ] {
                h.insert(n, HeaderValue::from_static("v"));
            }
            strip_hop_by_hop(&mut h);
            let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
            let named_3 = values
                .iter()
                .any(|v| v.to_ascii_lowercase().contains("x-named-3"));
            let want: &[&str] = if named_3 {
                &["x-other"]
            } else {
                &["x-named-3", "x-other"]
            };
            assert_eq!(left, want, "{values:?}");
        }
    }

    #[test]
    fn many_stripped_headers_all_go_and_the_rest_stay() {
        let stripped = [
            "authorization",
            "x-api-key",
            "api-key",
            "proxy-authorization",
            "cookie",
            "x-real-ip",
            "host",
            "forwarded",
            "te",
            "trailer",
            "upgrade",
            "keep-alive",
            "x-forwarded-for",
            "x-forwarded-host",
            "x_api_key",
            "a_b",
        ];
        for count in [1, 8, 9, stripped.len()] {
            let mut h = HeaderMap::new();
            for n in &stripped[..count] {
                h.append(*n, HeaderValue::from_static("client"));
                h.append(*n, HeaderValue::from_static("again"));
            }
            h.insert("content-type", HeaderValue::from_static("application/json"));
            h.insert("x-keep", HeaderValue::from_static("1"));
            let key = HeaderValue::from_static("Bearer nim");
            rewrite_request(&mut h, &header::AUTHORIZATION, &key);
            let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
            left.sort_unstable();
            assert_eq!(
                left,
                ["authorization", "content-type", "x-keep"],
                "{count} stripped"
            );
            assert_eq!(
                h.get_all(header::AUTHORIZATION).iter().collect::<Vec<_>>(),
                ["Bearer nim"]
            );
        }
    }

    #[test]
    fn underscore_spellings_of_credentials_are_stripped() {
        let mut h = HeaderMap::new();
        for n in [
            "x_api_key",
            "api_key",
            "proxy_authorization",
            "x_nim_key",
            "authorization_",
            "x-custom_thing",
        ] {
            h.insert(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_static("client"),
            );
        }
        h.insert("x-keep", HeaderValue::from_static("1"));
        rewrite_request(
            &mut h,
            &HeaderName::from_static("x-nim-key"),
            &HeaderValue::from_static("nim"),
        );
        assert!(h.keys().all(|n| !n.as_str().contains('_')), "{h:?}");
        assert_eq!(h["x-nim-key"], "nim");
        assert_eq!(h["x-keep"], "1");
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn cookies_and_forwarding_claims_stay_here() {
        let mut h = HeaderMap::new();
        for n in [
            "cookie",
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-proto",
            "x-real-ip",
        ] {
            h.insert(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_static("v"),
            );
        }
        h.insert("x-forwardedness", HeaderValue::from_static("1"));
        rewrite_request(
            &mut h,
            &header::AUTHORIZATION,
            &HeaderValue::from_static("Bearer nim"),
        );
        assert_eq!(h.len(), 2, "{h:?}");
        let mut r = HeaderMap::new();
        r.insert(header::SET_COOKIE, HeaderValue::from_static("s=1"));
        r.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        r.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        rewrite_response(&mut r, &HeaderValue::from_static("id"));
        assert!(r.get(header::SET_COOKIE).is_none() && r.get(header::WWW_AUTHENTICATE).is_none());
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn custom_header_is_also_overwritten() {
        let mut h = HeaderMap::new();
        let name = HeaderName::from_static("x-nim-key");
        h.append(&name, HeaderValue::from_static("client-1"));
        h.append(&name, HeaderValue::from_static("client-2"));
        rewrite_request(&mut h, &name, &HeaderValue::from_static("nim"));
        assert_eq!(h.get_all(&name).iter().collect::<Vec<_>>(), vec!["nim"]);
    }
}
