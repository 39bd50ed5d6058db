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

/// How the walk of a top-level object ([`members`]) ended.
#[derive(Debug, PartialEq)]
pub enum End<'a> {
    /// One complete object, then only whitespace.
    Whole,
    /// One complete object, then something else.
    Trailing,
    /// The text ended inside the object: within the member with this key (decoded) when the cut
    /// fell after its key, `None` when it fell between members, inside a key, or after a key
    /// that does not decode.
    Cut(Option<Cow<'a, str>>),
    /// Not the text of a JSON object.
    Bad,
}

/// Each member of the top-level object of `b` (a UTF-8 BOM skipped), in order, as far as the
/// text goes: `f(decoded key, raw value)`, the key `None` when it does not decode. What `f` was
/// given is only a whole object's members when the walk ends in [`End::Whole`].
pub fn members<'a>(b: &'a [u8], mut f: impl FnMut(Option<&str>, &'a [u8])) -> End<'a> {
    let b = b.strip_prefix(b"\xef\xbb\xbf").unwrap_or(b);
    let closed = |i: usize| {
        if ws(b, i) == b.len() {
            End::Whole
        } else {
            End::Trailing
        }
    };
    let mut i = ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return End::Bad;
    }
    i = ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return closed(i + 1);
    }
    loop {
        match b.get(i) {
            None => return End::Cut(None),
            Some(b'"') => {}
            Some(_) => return End::Bad,
        }
        let Some(k_end) = string_end(b, i) else {
            return End::Cut(None);
        };
        let key = decode(&b[i..k_end]);
        i = ws(b, k_end);
        match b.get(i) {
            None => return End::Cut(key),
            Some(b':') => {}
            Some(_) => return End::Bad,
        }
        i = ws(b, i + 1);
        let Some(v_end) = value_end(b, i) else {
            return End::Cut(key);
        };
        f(key.as_deref(), &b[i..v_end]);
        i = ws(b, v_end);
        match b.get(i) {
            None => return End::Cut(None),
            Some(b',') => i = ws(b, i + 1),
            Some(b'}') => return closed(i + 1),
            Some(_) => return End::Bad,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The members of `s` when it is one whole object whose keys all decode.
    fn whole(s: &str) -> Option<Vec<(String, String)>> {
        let mut got = Vec::new();
        let mut keys = true;
        let end = members(s.as_bytes(), |k, v| match k {
            Some(k) => got.push((k.to_string(), String::from_utf8(v.to_vec()).unwrap())),
            None => keys = false,
        });
        (keys && end == End::Whole).then_some(got)
    }

    #[test]
    fn top_level_members_raw_and_nested_ones_skipped() {
        let got = whole(
            r#" {"id":"x","choices":[{"usage":1,"s":"}]"}],"usage":{"a":1},"mod\u0065l":"m" } "#,
        )
        .unwrap();
        let keys: Vec<_> = got.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["id", "choices", "usage", "model"]);
        assert_eq!(got[2].1, r#"{"a":1}"#);
        assert_eq!(got[3].1, r#""m""#);
        assert_eq!(whole("{}"), Some(vec![]));
        assert_eq!(whole("\u{feff}{\"a\":NaN}").unwrap()[0].1, "NaN");
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
            assert_eq!(whole(bad), None, "{bad}");
        }
    }

    #[test]
    fn how_the_text_ended() {
        fn end(s: &str) -> End<'_> {
            members(s.as_bytes(), |_, _| {})
        }
        assert_eq!(end(" {} \n"), End::Whole);
        assert_eq!(end(r#"{"a":1} x"#), End::Trailing);
        assert_eq!(end(r#"{"a":1}{"b":2}"#), End::Trailing);
        assert_eq!(end(""), End::Bad);
        assert_eq!(end("[1]"), End::Bad);
        assert_eq!(end(r#"{"a" 1}"#), End::Bad);
        assert_eq!(end(r#"{"a":1 "b":2}"#), End::Bad);
        assert_eq!(end("{a:1}"), End::Bad);
        // Cut between members or inside a key: no key.
        assert_eq!(end("{"), End::Cut(None));
        assert_eq!(end(r#"{"a":1,"#), End::Cut(None));
        assert_eq!(end(r#"{"a":1 "#), End::Cut(None));
        assert_eq!(end(r#"{"mod"#), End::Cut(None));
        // Cut after a key, before or inside its value: that key, decoded.
        assert_eq!(end(r#"{"mod\u0065l""#), End::Cut(Some("model".into())));
        assert_eq!(end(r#"{"a":1,"b":"#), End::Cut(Some("b".into())));
        assert_eq!(
            end(r#"{"a":1"#),
            End::Cut(Some("a".into())),
            "1 may go on: 12"
        );
        assert_eq!(end(r#"{"b": [1, {"c": "x"#), End::Cut(Some("b".into())));
        assert_eq!(end(r#"{"\ud800":"#), End::Cut(None));
        // What the callback saw of an undecodable key.
        let mut keys = Vec::new();
        members(br#"{"\ud800":1,"a":2}"#, |k, v| {
            keys.push((k.map(String::from), v));
        });
        assert_eq!(keys, [(None, &b"1"[..]), (Some("a".into()), &b"2"[..])]);
    }
}
