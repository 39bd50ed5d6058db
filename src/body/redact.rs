//! Removes the injected NIM key from what the NIM sends back (an echoing or misbehaving NIM must
//! not hand our key to a client). Occurrences are overwritten with `*` of the same length, so
//! `Content-Length` stays right. The key bytes are borrowed from the key's own `HeaderValue` (a
//! reference-counted clone, no copy of the key is made); the redactor never logs them.
//!
//! Non-streamed bodies: the first `BODY_BUDGET` bytes, with the last `key.len() - 1` bytes of
//! each chunk held back until the next one so a key split across chunks is still found (one copy
//! of each chunk in that window). SSE: within each chunk only (holding bytes back would delay
//! events). Headers: see `proxy::attempt::redact_headers`.

use bytes::{Bytes, BytesMut};
use http::HeaderValue;

/// How much of a non-streamed body is searched.
pub const BODY_BUDGET: u64 = 1024 * 1024;

pub struct Redactor {
    value: HeaderValue,
    start: usize,
    end: usize,
    carry: BytesMut,
    budget: u64,
    hold_back: bool,
    /// Occurrences overwritten so far.
    pub count: u64,
}

/// Overwrite every occurrence of `key` in `buf`; how many there were.
pub fn overwrite(buf: &mut [u8], key: &[u8]) -> u64 {
    if key.is_empty() {
        return 0;
    }
    let mut n = 0;
    let mut at = 0;
    while let Some(i) = memchr::memmem::find(&buf[at..], key) {
        buf[at + i..at + i + key.len()].fill(b'*');
        at += i + key.len();
        n += 1;
    }
    n
}

/// Whether `key` occurs in `chunk`. A small chunk (most JSON answers, SSE events) is searched by
/// the key's first byte: building a substring searcher costs more than such a search.
pub fn has_key(chunk: &[u8], key: &[u8]) -> bool {
    let Some(&first) = key.first() else {
        return false;
    };
    if chunk.len() < key.len() {
        return false;
    }
    if chunk.len() > 4096 {
        return memchr::memmem::find(chunk, key).is_some();
    }
    memchr::memchr_iter(first, &chunk[..=chunk.len() - key.len()])
        .any(|i| chunk[i..].starts_with(key))
}

/// Length of the longest proper prefix of `key` that `buf` ends with (0: none): the bytes that
/// must wait for the next chunk.
fn partial_prefix_len(buf: &[u8], key: &[u8]) -> usize {
    let window = key.len().saturating_sub(1).min(buf.len());
    let start = buf.len() - window;
    key.first()
        .and_then(|&first| {
            memchr::memchr_iter(first, &buf[start..])
                .map(|i| window - i)
                .find(|&l| key.starts_with(&buf[buf.len() - l..]))
        })
        .unwrap_or(0)
}

impl Redactor {
    /// `value[start..end]` is the raw key inside the injected header value.
    pub fn new(value: HeaderValue, start: usize, end: usize, sse: bool) -> Self {
        Self {
            value,
            start,
            end,
            carry: BytesMut::new(),
            budget: if sse { u64::MAX } else { BODY_BUDGET },
            hold_back: !sse,
            count: 0,
        }
    }

    /// The raw key (borrowed from the header value).
    pub fn key_bytes(&self) -> &[u8] {
        self.value
            .as_bytes()
            .get(self.start..self.end)
            .unwrap_or_default()
    }

    /// The bytes to send now for `chunk`; `last`: nothing follows.
    pub fn feed(&mut self, chunk: Bytes, last: bool) -> Bytes {
        let k = self.key_bytes().len();
        if k == 0 || (self.budget == 0 && self.carry.is_empty()) {
            return chunk;
        }
        if !self.hold_back {
            if !has_key(&chunk, self.key_bytes()) {
                return chunk;
            }
            let mut b = BytesMut::from(&chunk[..]);
            self.count += overwrite(&mut b, self.key_bytes());
            return b.freeze();
        }
        self.budget = self.budget.saturating_sub(chunk.len() as u64);
        let hold = !last && self.budget > 0;
        if self.carry.is_empty() && !has_key(&chunk, self.key_bytes()) {
            // The common case, a clean chunk: forwarded as is (no copy), holding back only a tail
            // that could be the start of a key split across chunks.
            let tail = if hold {
                partial_prefix_len(&chunk, self.key_bytes())
            } else {
                0
            };
            if tail > 0 {
                self.carry = BytesMut::from(&chunk[chunk.len() - tail..]);
            }
            return chunk.slice(..chunk.len() - tail);
        }
        let mut b = std::mem::take(&mut self.carry);
        b.extend_from_slice(&chunk);
        self.count += overwrite(&mut b, self.key_bytes());
        if hold {
            let keep = (k - 1).min(b.len());
            self.carry = b.split_off(b.len() - keep);
        }
        b.freeze()
    }

    /// Whether bytes are held back (the body is not over while they are).
    pub fn holding(&self) -> bool {
        !self.carry.is_empty()
    }

    /// What is still held back (at the end of the body).
    pub fn flush(&mut self) -> Option<Bytes> {
        (!self.carry.is_empty()).then(|| std::mem::take(&mut self.carry).freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn has_key_finds_the_key_anywhere_and_only_whole() {
        let c = has_key;
        assert!(c(b"nvapi-KEY", b"nvapi-KEY") && c(b"x nvapi-KEY", b"nvapi-KEY"));
        assert!(c(b"nnvapi-KEYy", b"nvapi-KEY") && c(b"nvapi-nvapi-KEY", b"nvapi-KEY"));
        let big = [b"x".repeat(5000), b"nvapi-KEY".to_vec()].concat();
        assert!(c(&big, b"nvapi-KEY") && !c(&big[..5003], b"nvapi-KEY"));
        assert!(!c(b"nvapi-KE", b"nvapi-KEY") && !c(b"nvapi-KEX nvapi-", b"nvapi-KEY"));
        assert!(!c(b"", b"k") && !c(b"abc", b""));
    }

    fn r(sse: bool) -> Redactor {
        Redactor::new(HeaderValue::from_static("Bearer SECRETKEY"), 7, 16, sse)
    }

    #[test]
    fn key_split_across_chunks_is_found() {
        for cut in 0..=30 {
            let body = b"{\"echo\":\"Bearer SECRETKEY\",\"x\":\"SECRETKEY\"}";
            let mut red = r(false);
            let cut = cut.min(body.len());
            let mut out = Vec::new();
            out.extend_from_slice(&red.feed(Bytes::copy_from_slice(&body[..cut]), false));
            out.extend_from_slice(&red.feed(Bytes::copy_from_slice(&body[cut..]), false));
            if let Some(f) = red.flush() {
                out.extend_from_slice(&f);
            }
            assert_eq!(out.len(), body.len());
            assert!(memchr::memmem::find(&out, b"SECRETKEY").is_none(), "{cut}");
            assert_eq!(red.count, 2);
        }
    }

    #[test]
    fn last_chunk_is_not_held_back_and_sse_is_per_chunk() {
        let mut red = r(false);
        assert_eq!(
            &red.feed(Bytes::from_static(b"abSECRETKEYcd"), true)[..],
            b"ab*********cd"
        );
        assert!(red.flush().is_none());
        let mut s = r(true);
        assert_eq!(
            &s.feed(Bytes::from_static(b"data: SECRETKEY\n\n"), false)[..],
            b"data: *********\n\n"
        );
        assert_eq!(
            &s.feed(Bytes::from_static(b"data: clean\n\n"), false)[..],
            b"data: clean\n\n"
        );
        assert_eq!(s.count, 1);
    }

    #[test]
    fn clean_chunks_pass_without_a_copy_and_only_a_possible_key_start_is_held() {
        let mut red = r(false);
        let clean = Bytes::from_static(b"{\"choices\":[]}");
        let out = red.feed(clean.clone(), false);
        assert_eq!(
            out.as_ptr(),
            clean.as_ptr(),
            "a clean chunk is forwarded, not copied"
        );
        assert!(!red.holding());
        // Ends with a prefix of the key: those bytes wait for the next chunk.
        let out = red.feed(Bytes::from_static(b"abcSECR"), false);
        assert_eq!(&out[..], b"abc");
        assert!(red.holding());
        let out = red.feed(Bytes::from_static(b"ETKEY!"), true);
        assert_eq!(&out[..], b"*********!");
        assert_eq!(partial_prefix_len(b"xxSESE", b"SECRETKEY"), 2);
        assert_eq!(partial_prefix_len(b"xxSECRETKE", b"SECRETKEY"), 8);
        assert_eq!(partial_prefix_len(b"xyz", b"SECRETKEY"), 0);
    }

    #[test]
    fn budget_ends_the_search() {
        let mut red = r(false);
        let big = Bytes::from(vec![b'a'; BODY_BUDGET as usize]);
        let out = red.feed(big, false);
        assert_eq!(out.len() as u64, BODY_BUDGET);
        let tail = Bytes::from_static(b"SECRETKEY");
        assert_eq!(red.feed(tail.clone(), false), tail);
    }
}
