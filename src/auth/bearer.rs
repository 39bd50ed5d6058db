//! The bearer token of an `Authorization` value, and gateway keys: making one, and its digest.

use sha2::{Digest, Sha256};

/// Longest gateway key accepted.
pub(super) const MAX_KEY_BYTES: usize = 512;

/// The token of an `Authorization: Bearer <token>` value (scheme case-insensitive, one or more
/// spaces). The token must be non-empty visible ASCII without spaces, at most 512 bytes.
pub fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    bearer_token_max(value, MAX_KEY_BYTES)
}

/// `bearer_token` with another length limit (a JWT may be longer than a key).
pub fn bearer_token_max(value: &[u8], max: usize) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let start = rest.iter().position(|&b| b != b' ')?;
    if start == 0 {
        return None;
    }
    let token = &rest[start..];
    if token.is_empty() || token.len() > max || !token.iter().all(u8::is_ascii_graphic) {
        return None;
    }
    Some(token)
}

/// A new random client key: `ngk_` + 48 hex characters (192 bits from the OS).
pub fn new_client_key() -> Result<String, getrandom::Error> {
    let mut b = [0u8; 24];
    getrandom::getrandom(&mut b)?;
    Ok(format!("ngk_{}", hex::encode(b)))
}

/// Hex SHA-256 of a client key, as stored in `key_sha256`.
pub fn key_digest_hex(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}
