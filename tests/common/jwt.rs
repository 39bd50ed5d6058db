//! JWTs signed in the test: RS256 with keys from the openssl CLI (as OpenBao's jwt method tests
//! use them), ES256 and HS256 with ring, unsigned (`alg: none`) tokens, and the JWKS entries
//! that publish the public keys.
#![allow(dead_code)]

use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};
use std::path::Path;

pub fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..=c.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// An RSA key pair made with the openssl CLI: (private key path, public key PEM).
pub fn rsa_keypair(dir: &Path) -> (std::path::PathBuf, String) {
    let key = dir.join("jwt-signing.pem");
    let ok = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl genpkey");
    let out = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl pkey -pubout");
    (key, String::from_utf8(out.stdout).unwrap())
}

/// An RS256 JWT with `claims`, signed with `key` by `openssl dgst -sha256 -sign`.
pub fn sign_rs256(key: &Path, claims: &Value) -> String {
    sign_rs256_header(key, &json!({"alg": "RS256", "typ": "JWT"}), claims)
}

/// `sign_rs256` with another header (a `kid`, say).
pub fn sign_rs256_header(key: &Path, header: &Value, claims: &Value) -> String {
    use std::io::Write;
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let mut child = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "openssl dgst -sign");
    format!("{input}.{}", b64url(&out.stdout))
}

/// The JWK of the RSA key at `key` (modulus from `openssl rsa -modulus`, exponent 65537).
pub fn rsa_jwk(key: &Path, kid: &str) -> Value {
    let out = std::process::Command::new("openssl")
        .args(["rsa", "-noout", "-modulus", "-in"])
        .arg(key)
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl rsa -modulus");
    let text = String::from_utf8(out.stdout).unwrap();
    let n = hex::decode(text.trim().trim_start_matches("Modulus=")).unwrap();
    json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": b64url(&n), "e": "AQAB"})
}

/// A P-256 key pair made with ring.
pub struct EcKey(EcdsaKeyPair);

impl EcKey {
    pub fn new() -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        Self(
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                .unwrap(),
        )
    }

    pub fn jwk(&self, kid: &str) -> Value {
        let p = self.0.public_key().as_ref();
        json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": b64url(&p[1..33]), "y": b64url(&p[33..])})
    }

    pub fn sign(&self, kid: &str, claims: &Value) -> String {
        let input = signing_input(&json!({"alg": "ES256", "kid": kid}), claims);
        let sig = self.0.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
        format!("{input}.{}", b64url(sig.as_ref()))
    }
}

fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    )
}

/// An HS256 token whose HMAC secret is `secret` (e.g. an RSA public key PEM: the
/// algorithm-confusion attack on verifiers that take the key type from the token).
pub fn sign_hs256(secret: &[u8], kid: &str, claims: &Value) -> String {
    let input = signing_input(&json!({"alg": "HS256", "kid": kid}), claims);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", b64url(tag.as_ref()))
}

/// An unsigned token (`alg: none`) with a placeholder third segment, so it has a JWT's shape.
pub fn unsigned(kid: &str, claims: &Value) -> String {
    format!(
        "{}.AA",
        signing_input(&json!({"alg": "none", "kid": kid}), claims)
    )
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
