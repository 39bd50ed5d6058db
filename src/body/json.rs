//! A structural walk over JSON text, read the way the NIM's parser (Python's `json.loads`)
//! reads it: strings and nesting are skipped by their delimiters, so a value no strict parser
//! takes (`NaN`) elsewhere does not hide the members wanted. `proxy::prefix` finds the request's
//! `model` with it; `sniff` finds a response's `usage` and `model` without deserialising (and
//! allocating for) everything around them.

use std::borrow::Cow;

pub fn ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// `b[i] == '"'`: the index just past the closing quote, if the string ends within `b`.
/// Strings are most of a response's bytes (the generated text): skipped by `memchr2`.
pub fn string_end(b: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    loop {
        let j = i + memchr::memchr2(b'"', b'\\', b.get(i..)?)?;
        if b[j] == b'"' {
            return Some(j + 1);
        }
        i = j + 2;
    }
}

/// The index just past the value starting at `b[i]`, if it ends within `b`.
pub fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => string_end(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = string_end(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.checked_sub(1)?;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            {
                j += 1;
            }
            (j < b.len() && j > i).then_some(j)
        }
    }
}

/// A JSON string token (quotes included), decoded; borrowed when it has no escapes.
pub fn decode(tok: &[u8]) -> Option<Cow<'_, str>> {
    let inner = tok.get(1..tok.len().checked_sub(1)?)?;
    if inner.contains(&b'\\') {
        serde_json::from_slice::<String>(tok).ok().map(Cow::Owned)
    } else {
        std::str::from_utf8(inner).ok().map(Cow::Borrowed)
    }
}

/// Each member of the top-level object of the whole document `b` (a UTF-8 BOM skipped), in order:
/// `f(decoded key, raw value)`. False when `b` is not one complete object (whatever `f` was
/// given then must be discarded).
pub fn each_member<'a>(b: &'a [u8], mut f: impl FnMut(&str, &'a [u8])) -> bool {
    let b = b.strip_prefix(b"\xef\xbb\xbf").unwrap_or(b);
    let mut i = ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return false;
    }
    i = ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return ws(b, i + 1) == b.len();
    }
    loop {
        if b.get(i) != Some(&b'"') {
            return false;
        }
        let Some(k_end) = string_end(b, i) else {
            return false;
        };
        let Some(key) = decode(&b[i..k_end]) else {
            return false;
        };
        i = ws(b, k_end);
        if b.get(i) != Some(&b':') {
            return false;
        }
        i = ws(b, i + 1);
        let Some(v_end) = value_end(b, i) else {
            return false;
        };
        f(&key, &b[i..v_end]);
        i = ws(b, v_end);
        match b.get(i) {
            Some(b',') => i = ws(b, i + 1),
            Some(b'}') => return ws(b, i + 1) == b.len(),
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(s: &str) -> Option<Vec<(String, String)>> {
        let mut got = Vec::new();
        each_member(s.as_bytes(), |k, v| {
            got.push((k.to_string(), String::from_utf8(v.to_vec()).unwrap()));
        })
        .then_some(got)
    }

    #[test]
    fn top_level_members_raw_and_nested_ones_skipped() {
        let got = members(
            r#" {"id":"x","choices":[{"usage":1,"s":"}]"}],"usage":{"a":1},"mod\u0065l":"m" } "#,
        )
        .unwrap();
        let keys: Vec<_> = got.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["id", "choices", "usage", "model"]);
        assert_eq!(got[2].1, r#"{"a":1}"#);
        assert_eq!(got[3].1, r#""m""#);
        assert_eq!(members("{}"), Some(vec![]));
        assert_eq!(members("\u{feff}{\"a\":NaN}").unwrap()[0].1, "NaN");
    }

    #[test]
    fn not_one_complete_object() {
        for bad in [
            "",
            "[]",
            r#"{"a":1"#,
            r#"{"a":1}x"#,
            r#"{"a":1,}"#,
            r#"{"a"}"#,
            "{a:1}",
            r#"{"a":{"b":1}"#,
            r#"{"a":"x}"#,
        ] {
            assert_eq!(members(bad), None, "{bad}");
        }
    }
}
