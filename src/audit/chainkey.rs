//! The chain's link function: plain SHA-256 of the previous line (default, verifiable by anyone),
//! or HMAC-SHA256 under a key read from `audit.chain_key_file` (never from the environment), so
//! whoever can write the file but does not hold the key cannot re-hash an edited chain. The key
//! itself never leaves this type: records carry only its fingerprint (`chain_key` on `start`).

use sha2::{Digest, Sha256};
use std::sync::Arc;
use zeroize::Zeroizing;

/// Shortest key accepted (bytes, after trimming a final newline).
pub const MIN_KEY_BYTES: usize = 16;

#[derive(Clone, Default)]
pub struct ChainKey(Option<Arc<Zeroizing<Vec<u8>>>>);

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "ChainKey(hmac-sha256, redacted)"
        } else {
            "ChainKey(sha256)"
        })
    }
}

impl ChainKey {
    /// Unkeyed: plain SHA-256 links.
    pub fn none() -> Self {
        Self(None)
    }

    /// Read a key file (a final `\n` / `\r\n` is not part of the key).
    pub fn from_file(path: &std::path::Path) -> std::io::Result<Self> {
        let mut bytes = Zeroizing::new(std::fs::read(path)?);
        while matches!(bytes.last(), Some(b'\n' | b'\r')) {
            bytes.pop();
        }
        if bytes.len() < MIN_KEY_BYTES {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("audit chain key is shorter than {MIN_KEY_BYTES} bytes"),
            ));
        }
        Ok(Self(Some(Arc::new(bytes))))
    }

    pub fn is_keyed(&self) -> bool {
        self.0.is_some()
    }

    /// `hmac-sha256:<16 hex>` (SHA-256 over a domain tag and the key), or `None` unkeyed.
    pub fn fingerprint(&self) -> Option<String> {
        let k = self.0.as_ref()?;
        let mut h = Sha256::new();
        h.update(b"nimgate-audit-chain-key\0");
        h.update(k.as_slice());
        Some(format!("hmac-sha256:{}", &hex::encode(h.finalize())[..16]))
    }

    /// The link from `line` (without its `\n`) to the next record, as hex.
    pub fn link(&self, line: &[u8]) -> String {
        let mut out = String::with_capacity(64);
        self.link_into(line, &mut out);
        out
    }

    /// `link` into `out` (replacing what it held; its buffer is reused).
    pub fn link_into(&self, line: &[u8], out: &mut String) {
        let digest: [u8; 32] = match &self.0 {
            None => Sha256::digest(line).into(),
            Some(k) => hmac_sha256(k, line),
        };
        let mut hex_buf = [0u8; 64];
        out.clear();
        if hex::encode_to_slice(digest, &mut hex_buf).is_ok() {
            out.push_str(std::str::from_utf8(&hex_buf).unwrap_or_default());
        }
    }
}

/// HMAC-SHA256 (RFC 2104) over `sha2`, so no other crate is needed.
fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = Zeroizing::new([0u8; BLOCK]);
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut ipad = Zeroizing::new([0x36u8; BLOCK]);
    let mut opad = Zeroizing::new([0x5cu8; BLOCK]);
    for i in 0..BLOCK {
        ipad[i] ^= k[i];
        opad[i] ^= k[i];
    }
    let inner = Sha256::new()
        .chain_update(ipad.as_slice())
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(opad.as_slice())
        .chain_update(inner)
        .finalize()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2.
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block.
        assert_eq!(
            hex::encode(hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
        assert_eq!(
            ChainKey::none().link(b"x"),
            hex::encode(Sha256::digest(b"x"))
        );
    }
}
