//! JWT verification, pure and clock-injected: split a compact token, check its signature with
//! `ring` against the issuer's JWKS, then `exp`/`nbf` (with leeway), `aud` and the subject claim.
//!
//! `ring` directly rather than `jsonwebtoken`: rustls already links ring 0.17, and the few
//! lines here (base64url, JSON via serde_json, one `verify` call) are all a verifier needs; the
//! crate would add its own key parsing and, by default, HS* support we must never use.
//! The algorithm comes from the token but must be on the issuer's allow-list (asymmetric only,
//! `config/auth.rs`) and match the key's type (and the key's own `alg`, if the JWKS names one),
//! so an HS256 token "signed" with a published RSA key is refused before any check runs.

use base64::Engine;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::Value;

use super::jwks::{Jwk, KeySet, PublicKey};

/// Longest token accepted (Kubernetes service-account tokens are about 1 KiB).
pub const MAX_JWT_BYTES: usize = 8192;

/// Why a token was refused: the `reason` of its `denied` record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtFailure {
    Malformed,
    AlgorithmNotAllowed,
    UnknownIssuer,
    UnknownKid,
    KeysUnavailable,
    BadSignature,
    Expired,
    NotYetValid,
    BadAudience,
    NoSubject,
    UnmappedSubject,
}

impl JwtFailure {
    pub fn reason(self) -> &'static str {
        match self {
            Self::Malformed => "jwt_malformed",
            Self::AlgorithmNotAllowed => "jwt_algorithm_not_allowed",
            Self::UnknownIssuer => "jwt_unknown_issuer",
            Self::UnknownKid => "jwt_unknown_kid",
            Self::KeysUnavailable => "jwt_jwks_unavailable",
            Self::BadSignature => "jwt_bad_signature",
            Self::Expired => "jwt_expired",
            Self::NotYetValid => "jwt_not_yet_valid",
            Self::BadAudience => "jwt_bad_audience",
            Self::NoSubject => "jwt_no_subject",
            Self::UnmappedSubject => "jwt_unmapped_subject",
        }
    }
}

/// Could this bearer token be a JWT? Three non-empty base64url segments. Gateway keys
/// (`ngk_` + hex) never are.
pub fn looks_like_jwt(token: &[u8]) -> bool {
    let mut parts = 0;
    for seg in token.split(|&b| b == b'.') {
        parts += 1;
        if seg.is_empty()
            || !seg
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return false;
        }
    }
    parts == 3
}

/// A token split and decoded, its signature not yet checked.
pub struct Unverified<'a> {
    pub alg: String,
    pub kid: Option<String>,
    pub claims: Value,
    signing_input: &'a [u8],
    signature: Vec<u8>,
}

fn b64(seg: &[u8]) -> Result<Vec<u8>, JwtFailure> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(seg)
        .map_err(|_| JwtFailure::Malformed)
}

impl<'a> Unverified<'a> {
    pub fn parse(token: &'a [u8]) -> Result<Self, JwtFailure> {
        if token.len() > MAX_JWT_BYTES {
            return Err(JwtFailure::Malformed);
        }
        let mut it = token.split(|&b| b == b'.');
        let (Some(h), Some(p), Some(s), None) = (it.next(), it.next(), it.next(), it.next()) else {
            return Err(JwtFailure::Malformed);
        };
        let header: Value = serde_json::from_slice(&b64(h)?).map_err(|_| JwtFailure::Malformed)?;
        // A `crit` header names extensions the verifier must understand; we understand none.
        if !header.is_object() || header.get("crit").is_some() {
            return Err(JwtFailure::Malformed);
        }
        let claims: Value = serde_json::from_slice(&b64(p)?).map_err(|_| JwtFailure::Malformed)?;
        if !claims.is_object() {
            return Err(JwtFailure::Malformed);
        }
        Ok(Self {
            alg: header["alg"]
                .as_str()
                .ok_or(JwtFailure::Malformed)?
                .to_string(),
            kid: header["kid"].as_str().map(str::to_string),
            claims,
            signing_input: &token[..h.len() + 1 + p.len()],
            signature: b64(s)?,
        })
    }

    pub fn issuer(&self) -> Option<&str> {
        self.claims["iss"].as_str()
    }
}

/// What an issuer checks, apart from its keys.
pub struct Rules {
    pub algorithms: Vec<String>,
    pub audiences: Vec<String>,
    pub subject_claim: String,
    pub leeway_secs: u64,
}

/// A verified token: its subject and the Unix time after which it is no longer accepted.
#[derive(Debug, PartialEq, Eq)]
pub struct Verified {
    pub subject: String,
    pub valid_until: u64,
}

/// Verify `t` against `keys` and `rules` at Unix time `now`.
pub fn verify(
    t: &Unverified<'_>,
    keys: &KeySet,
    rules: &Rules,
    now: u64,
) -> Result<Verified, JwtFailure> {
    if !rules.algorithms.contains(&t.alg) {
        return Err(JwtFailure::AlgorithmNotAllowed);
    }
    let candidates: Vec<&Jwk> = keys
        .keys
        .iter()
        .filter(|k| t.kid.is_none() || k.kid == t.kid)
        .filter(|k| k.alg.as_ref().is_none_or(|a| *a == t.alg))
        .collect();
    if candidates.is_empty() {
        return Err(JwtFailure::UnknownKid);
    }
    if !candidates.iter().any(|k| check_signature(t, &k.key)) {
        return Err(JwtFailure::BadSignature);
    }
    let c = &t.claims;
    let exp = c["exp"].as_u64().ok_or(JwtFailure::Malformed)?;
    let valid_until = exp.saturating_add(rules.leeway_secs);
    if now >= valid_until {
        return Err(JwtFailure::Expired);
    }
    match &c["nbf"] {
        Value::Null => {}
        v => {
            let nbf = v.as_u64().ok_or(JwtFailure::Malformed)?;
            if nbf > now.saturating_add(rules.leeway_secs) {
                return Err(JwtFailure::NotYetValid);
            }
        }
    }
    let aud_ok = match &c["aud"] {
        Value::String(a) => rules.audiences.contains(a),
        Value::Array(list) => list
            .iter()
            .filter_map(Value::as_str)
            .any(|a| rules.audiences.iter().any(|r| r == a)),
        _ => false,
    };
    if !aud_ok {
        return Err(JwtFailure::BadAudience);
    }
    let subject = c[rules.subject_claim.as_str()]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or(JwtFailure::NoSubject)?;
    Ok(Verified {
        subject: subject.to_string(),
        valid_until,
    })
}

fn check_signature(t: &Unverified<'_>, key: &PublicKey) -> bool {
    let (msg, sig) = (t.signing_input, t.signature.as_slice());
    match key {
        PublicKey::Rsa { n, e } => {
            let params = match t.alg.as_str() {
                "RS256" => &signature::RSA_PKCS1_2048_8192_SHA256,
                "RS384" => &signature::RSA_PKCS1_2048_8192_SHA384,
                "RS512" => &signature::RSA_PKCS1_2048_8192_SHA512,
                "PS256" => &signature::RSA_PSS_2048_8192_SHA256,
                "PS384" => &signature::RSA_PSS_2048_8192_SHA384,
                "PS512" => &signature::RSA_PSS_2048_8192_SHA512,
                _ => return false,
            };
            RsaPublicKeyComponents { n, e }
                .verify(params, msg, sig)
                .is_ok()
        }
        PublicKey::Ec { p384, point } => {
            let alg = match (t.alg.as_str(), p384) {
                ("ES256", false) => &signature::ECDSA_P256_SHA256_FIXED,
                ("ES384", true) => &signature::ECDSA_P384_SHA384_FIXED,
                _ => return false,
            };
            UnparsedPublicKey::new(alg, point).verify(msg, sig).is_ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
    }

    fn token(header: &str, claims: &str) -> String {
        format!("{}.{}.{}", enc(header), enc(claims), enc("sig"))
    }

    /// An ES256 token over `claims` and the key set with its public key (kid `k`).
    fn es256(claims: &Value) -> (String, KeySet) {
        use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING as ALG};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ALG, &rng).unwrap();
        let kp = EcdsaKeyPair::from_pkcs8(&ALG, pkcs8.as_ref(), &rng).unwrap();
        let input = format!(
            "{}.{}",
            enc(r#"{"alg":"ES256","kid":"k"}"#),
            enc(&claims.to_string())
        );
        let sig = kp.sign(&rng, input.as_bytes()).unwrap();
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig.as_ref());
        let key = PublicKey::Ec {
            p384: false,
            point: kp.public_key().as_ref().to_vec(),
        };
        let jwk = Jwk {
            kid: Some("k".into()),
            alg: None,
            key,
        };
        (format!("{input}.{b}"), KeySet::new(vec![jwk]))
    }

    fn rules(algs: &[&str]) -> Rules {
        Rules {
            algorithms: algs.iter().map(|a| (*a).to_string()).collect(),
            audiences: vec!["nimgate".into()],
            subject_claim: "sub".into(),
            leeway_secs: 5,
        }
    }

    #[test]
    fn exp_and_nbf_with_leeway_audience_and_allow_list() {
        let now = 1_000_000;
        let check = |c: Value, algs: &[&str]| {
            let (t, keys) = es256(&c);
            verify(
                &Unverified::parse(t.as_bytes()).unwrap(),
                &keys,
                &rules(algs),
                now,
            )
        };
        let c = |nbf: u64, exp: u64, aud: Value| serde_json::json!({"sub": "s", "aud": aud, "nbf": nbf, "exp": exp});
        let ok = check(c(now, now - 4, "nimgate".into()), &["ES256"]).unwrap();
        assert_eq!(
            ok,
            Verified {
                subject: "s".into(),
                valid_until: now + 1
            }
        );
        assert_eq!(
            check(c(now, now - 5, "nimgate".into()), &["ES256"]),
            Err(JwtFailure::Expired)
        );
        assert!(check(c(now + 5, now + 60, "nimgate".into()), &["ES256"]).is_ok());
        assert_eq!(
            check(c(now + 6, now + 60, "nimgate".into()), &["ES256"]),
            Err(JwtFailure::NotYetValid)
        );
        let aud = serde_json::json!(["vault", "nimgate"]);
        assert!(check(c(now, now + 60, aud), &["ES256"]).is_ok());
        assert_eq!(
            check(c(now, now + 60, "vault".into()), &["ES256"]),
            Err(JwtFailure::BadAudience)
        );
        assert_eq!(
            check(c(now, now + 60, "nimgate".into()), &["RS256"]),
            Err(JwtFailure::AlgorithmNotAllowed)
        );
        let no_exp = serde_json::json!({"sub": "s", "aud": "nimgate"});
        assert_eq!(check(no_exp, &["ES256"]), Err(JwtFailure::Malformed));
    }

    #[test]
    fn shape_decides_key_or_jwt() {
        assert!(looks_like_jwt(b"aGk.aGk.aGk"));
        assert!(!looks_like_jwt(b"ngk_0123abcd"));
        assert!(!looks_like_jwt(b"a.b"));
        assert!(!looks_like_jwt(b"a.b.c.d"));
        assert!(!looks_like_jwt(b"a..c"));
        assert!(!looks_like_jwt(b"a.b=.c"));
    }

    #[test]
    fn parse_rejects_crit_and_non_objects() {
        let ok = token(r#"{"alg":"RS256","kid":"k"}"#, r#"{"iss":"i"}"#);
        let u = Unverified::parse(ok.as_bytes()).unwrap();
        assert_eq!(
            (u.alg.as_str(), u.kid.as_deref(), u.issuer()),
            ("RS256", Some("k"), Some("i"))
        );
        let crit = token(r#"{"alg":"RS256","crit":["x"]}"#, "{}");
        assert!(Unverified::parse(crit.as_bytes()).is_err());
        assert!(Unverified::parse(token("[]", "{}").as_bytes()).is_err());
        assert!(Unverified::parse(token(r#"{"alg":"RS256"}"#, "1").as_bytes()).is_err());
    }
}
