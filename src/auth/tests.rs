//! Unit tests of key lookup and bearer parsing.
use super::*;
use http::HeaderValue;

fn registry() -> ClientRegistry {
    ClientRegistry::new(
        &[ClientConfig::keyed("team-a", key_digest_hex("ngk_secret"))],
        &[],
        1024,
    )
    .unwrap()
}

fn headers(v: &[&str]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for v in v {
        h.append("authorization", HeaderValue::from_str(v).unwrap());
    }
    h
}

#[test]
fn new_keys_are_random_and_well_formed() {
    let (a, b) = (new_client_key().unwrap(), new_client_key().unwrap());
    assert_ne!(a, b);
    assert_eq!(a.len(), 52);
    assert!(a.starts_with("ngk_") && a[4..].bytes().all(|c| c.is_ascii_hexdigit()));
    assert!(bearer_token(format!("Bearer {a}").as_bytes()).is_some());
}

#[test]
fn bearer_parsing() {
    assert_eq!(bearer_token(b"Bearer abc"), Some(&b"abc"[..]));
    assert_eq!(bearer_token(b"bearer   abc"), Some(&b"abc"[..]));
    assert_eq!(bearer_token(b"Bearer"), None);
    assert_eq!(bearer_token(b"Bearer "), None);
    assert_eq!(bearer_token(b"Bearerabc"), None);
    assert_eq!(bearer_token(b"Basic abc"), None);
    assert_eq!(bearer_token(b"Bearer a b"), None);
    assert_eq!(
        bearer_token(&[b'B', b'e', b'a', b'r', b'e', b'r', b' ', 0xff]),
        None
    );
}

#[test]
fn lookup_by_digest() {
    let r = registry();
    assert_eq!(
        &*r.authenticate(&headers(&["Bearer ngk_secret"]))
            .unwrap()
            .0
            .id,
        "team-a"
    );
    assert_eq!(
        r.authenticate(&headers(&[])).unwrap_err(),
        AuthFailure::Missing
    );
    assert_eq!(
        r.authenticate(&headers(&["Bearer ngk_secreT"]))
            .unwrap_err(),
        AuthFailure::Unknown
    );
    assert_eq!(
        r.authenticate(&headers(&["Bearer ngk_secret", "Bearer ngk_secret"]))
            .unwrap_err(),
        AuthFailure::Malformed
    );
}
