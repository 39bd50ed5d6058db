mod common;

// Hostile-input security suite (DESIGN.md "Security invariants" 1–5 and 8). Every case sends
// its attack over a real loopback socket — raw HTTP/1.1 bytes or hand-written HTTP/2 frames —
// and asserts the safe outcome: the status the client gets, whether the connection is closed,
// and exactly what the fake NIM (and, for routing, a canary listener) received.

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1.1 client
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The OpenAI error `code` of a gateway-generated error (asserts the shape).
    fn error_code(&self) -> String {
        let v = self.json();
        error_code(&v)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parse a chunked body at the start of `b`: (body, bytes used), `None` if incomplete.
fn dechunk(b: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut pos = 0;
    let mut body = Vec::new();
    loop {
        let eol = pos + find(&b[pos..], b"\r\n")?;
        let line = std::str::from_utf8(&b[pos..eol]).ok()?;
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        pos = eol + 2;
        if size == 0 {
            let end = pos + find(&b[pos..], b"\r\n")?;
            if end == pos {
                return Some((body, pos + 2));
            }
            let end = pos + find(&b[pos..], b"\r\n\r\n")?;
            return Some((body, end + 4));
        }
        if b.len() < pos + size + 2 {
            return None;
        }
        body.extend_from_slice(&b[pos..pos + size]);
        pos += size + 2;
    }
}

struct H1 {
    s: TcpStream,
    buf: Vec<u8>,
    eof: bool,
}

impl H1 {
    async fn connect(addr: SocketAddr) -> Self {
        let s = TcpStream::connect(addr).await.unwrap();
        let _ = s.set_nodelay(true);
        Self {
            s,
            buf: Vec::new(),
            eof: false,
        }
    }

    /// Write (errors ignored: the server may already have closed).
    async fn send(&mut self, b: &[u8]) -> bool {
        self.s.write_all(b).await.is_ok()
    }

    /// Read once more before `deadline`; false on timeout or EOF (EOF also sets `eof`).
    async fn fill(&mut self, deadline: tokio::time::Instant) -> bool {
        if self.eof {
            return false;
        }
        let mut tmp = vec![0u8; 65536];
        match tokio::time::timeout_at(deadline, self.s.read(&mut tmp)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                self.eof = true;
                false
            }
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&tmp[..n]);
                true
            }
            Err(_) => false,
        }
    }

    fn try_parse(&mut self) -> Option<Resp> {
        let end = find(&self.buf, b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| {
                let (n, v) = l.split_once(':')?;
                Some((n.trim().to_ascii_lowercase(), v.trim().to_string()))
            })
            .collect();
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let start = end + 4;
        let rest = &self.buf[start..];
        let (body, used) = if status < 200 || status == 204 || status == 304 {
            (Vec::new(), 0)
        } else if let Some(cl) = get("content-length") {
            let n: usize = cl.parse().ok()?;
            if rest.len() < n {
                return None;
            }
            (rest[..n].to_vec(), n)
        } else if get("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            dechunk(rest)?
        } else {
            if !self.eof {
                return None;
            }
            (rest.to_vec(), rest.len())
        };
        self.buf.drain(..start + used);
        Some(Resp {
            status,
            headers,
            body,
        })
    }

    /// Read one whole response (None: timeout or EOF before a complete one).
    async fn response(&mut self, t: Duration) -> Option<Resp> {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            if let Some(r) = self.try_parse() {
                return Some(r);
            }
            if !self.fill(deadline).await {
                return self.try_parse();
            }
        }
    }

    /// Keep reading (into `buf`) until the server closes or `t` passes; true = closed.
    async fn closed_within(&mut self, t: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + t;
        while !self.eof {
            if !self.fill(deadline).await && !self.eof {
                return false;
            }
        }
        true
    }

    /// Status lines still unread in the buffer (extra responses).
    fn extra_responses(&self) -> usize {
        let text = String::from_utf8_lossy(&self.buf);
        text.matches("HTTP/1.").count()
    }
}

/// Connect, send, read one response.
async fn exchange(addr: SocketAddr, bytes: &[u8], t: Duration) -> Option<Resp> {
    let mut c = H1::connect(addr).await;
    c.send(bytes).await;
    c.response(t).await
}

fn auth_line() -> String {
    format!("Authorization: Bearer {CLIENT_KEY}\r\n")
}

/// A GET with our client key; `extra` is whole header lines ("Name: v\r\n").
fn h1_get(target: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET {target} HTTP/1.1\r\nHost: gw.example\r\n{}{extra}\r\n",
        auth_line()
    )
    .into_bytes()
}

/// A non-streaming chat POST with our client key.
fn h1_chat(target: &str, extra: &str) -> Vec<u8> {
    let body = chat_body(false);
    format!(
        "POST {target} HTTP/1.1\r\nHost: gw.example\r\n{}Content-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n{body}",
        auth_line(),
        body.len()
    )
    .into_bytes()
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// A listener that must never be contacted: counts connections.
struct Canary {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

async fn canary() -> Canary {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((_s, _)) = l.accept().await {
            h.fetch_add(1, Ordering::SeqCst);
        }
    });
    Canary { addr, hits }
}

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Exactly one `Authorization` upstream, ours; no other client credential.
fn assert_only_our_credential(s: &nimgate::fakenim::Seen, what: &str) {
    let auth: Vec<_> = s.headers.get_all("authorization").iter().collect();
    assert_eq!(
        auth.len(),
        1,
        "{what}: exactly one Authorization upstream, got {:?}",
        s.headers
    );
    assert_eq!(auth[0], format!("Bearer {NIM_KEY}").as_str(), "{what}");
    for h in ["x-api-key", "api-key", "proxy-authorization"] {
        assert!(s.headers.get(h).is_none(), "{what}: {h} leaked upstream");
    }
    for v in s.headers.values() {
        let v = String::from_utf8_lossy(v.as_bytes());
        assert!(
            !v.contains("ngk_test_client_key") && !v.contains("client-secret"),
            "{what}: client credential leaked upstream in a header: {v}"
        );
    }
    let lower = s.uri.to_ascii_lowercase();
    assert!(
        !lower.contains("api_key")
            && !lower.contains("api-key")
            && !lower.contains("client-secret"),
        "{what}: query credential leaked upstream: {}",
        s.uri
    );
}

fn seen_with(gw: &Gateway, needle: &str) -> Vec<nimgate::fakenim::Seen> {
    gw.nim
        .seen()
        .into_iter()
        .filter(|s| s.uri.contains(needle))
        .collect()
}

/// The path the NIM saw (h2 upstream requests carry an absolute URI).
fn seen_path(s: &nimgate::fakenim::Seen) -> String {
    s.uri
        .parse::<http::Uri>()
        .map(|u| u.path().to_string())
        .unwrap_or_else(|_| s.uri.clone())
}

/// Where the NIM request was addressed: its `Host` header (HTTP/1.1) or URI authority (h2).
fn seen_authority(s: &nimgate::fakenim::Seen) -> String {
    if let Some(h) = s.headers.get("host") {
        return String::from_utf8_lossy(h.as_bytes()).into_owned();
    }
    s.uri
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| u.authority().map(|a| a.to_string()))
        .unwrap_or_default()
}

fn get_with(url: &str, key: &str, extra: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut b = Request::get(url).header("authorization", format!("Bearer {key}"));
    for (n, v) in extra {
        b = b.header(*n, *v);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Hand-written HTTP/2 frames (h2c prior knowledge)
// ---------------------------------------------------------------------------------------------

mod h2 {
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    pub const HEADERS: u8 = 1;
    pub const RST_STREAM: u8 = 3;
    pub const SETTINGS: u8 = 4;
    pub const PING: u8 = 6;
    pub const GOAWAY: u8 = 7;
    pub const CONTINUATION: u8 = 9;
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const CANCEL: u32 = 0x8;
    pub const REFUSED_STREAM: u32 = 0x7;
    pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;

    pub fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::with_capacity(9 + payload.len());
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        f.push(ty);
        f.push(flags);
        f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    pub fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
        let mut p = Vec::new();
        for (id, v) in pairs {
            p.extend_from_slice(&id.to_be_bytes());
            p.extend_from_slice(&v.to_be_bytes());
        }
        frame(SETTINGS, 0, 0, &p)
    }

    pub fn rst(stream: u32, code: u32) -> Vec<u8> {
        frame(RST_STREAM, 0, stream, &code.to_be_bytes())
    }

    /// HPACK integer with an N-bit prefix.
    fn int(out: &mut Vec<u8>, prefix_bits: u8, flags: u8, mut v: usize) {
        let max = (1usize << prefix_bits) - 1;
        if v < max {
            out.push(flags | v as u8);
            return;
        }
        out.push(flags | max as u8);
        v -= max;
        while v >= 128 {
            out.push((v % 128) as u8 | 0x80);
            v /= 128;
        }
        out.push(v as u8);
    }

    /// HPACK "literal header field without indexing — new name" (no Huffman, no table state).
    pub fn literal(out: &mut Vec<u8>, name: &str, value: &[u8]) {
        out.push(0x00);
        int(out, 7, 0, name.len());
        out.extend_from_slice(name.as_bytes());
        int(out, 7, 0, value.len());
        out.extend_from_slice(value);
    }

    pub fn request_block(
        method: &str,
        path: &str,
        authority: &str,
        headers: &[(&str, &str)],
    ) -> Vec<u8> {
        let mut b = Vec::new();
        literal(&mut b, ":method", method.as_bytes());
        literal(&mut b, ":scheme", b"http");
        literal(&mut b, ":authority", authority.as_bytes());
        literal(&mut b, ":path", path.as_bytes());
        for (n, v) in headers {
            literal(&mut b, n, v.as_bytes());
        }
        b
    }

    /// A complete body-less request on `stream` in one HEADERS frame.
    pub fn get(stream: u32, path: &str, authority: &str, headers: &[(&str, &str)]) -> Vec<u8> {
        frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            stream,
            &request_block("GET", path, authority, headers),
        )
    }

    #[derive(Debug)]
    pub struct Frame {
        pub ty: u8,
        pub flags: u8,
        pub stream: u32,
        pub payload: Vec<u8>,
    }

    impl Frame {
        pub fn u32_at(&self, i: usize) -> u32 {
            let mut b = [0u8; 4];
            b.copy_from_slice(&self.payload[i..i + 4]);
            u32::from_be_bytes(b) & 0x7fff_ffff
        }
        /// GOAWAY: (last stream id, error code).
        pub fn goaway(&self) -> (u32, u32) {
            (self.u32_at(0), self.u32_at(4))
        }
        pub fn rst_code(&self) -> u32 {
            self.u32_at(0)
        }
    }

    /// Parse one frame from the front of `buf`.
    pub fn parse(buf: &mut Vec<u8>) -> Option<Frame> {
        if buf.len() < 9 {
            return None;
        }
        let len = (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
        if buf.len() < 9 + len {
            return None;
        }
        let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
        let f = Frame {
            ty: buf[3],
            flags: buf[4],
            stream,
            payload: buf[9..9 + len].to_vec(),
        };
        buf.drain(..9 + len);
        Some(f)
    }

    /// `:status` of a response header block: static-table indexed or a literal with the
    /// `:status` name index (plain or Huffman-coded digits). `None` if encoded otherwise.
    pub fn status(block: &[u8]) -> Option<u16> {
        let mut i = 0;
        while block.get(i)? & 0xe0 == 0x20 {
            // dynamic table size update (5-bit prefix int)
            i += 1;
            if block[i - 1] & 0x1f == 0x1f {
                while block.get(i)? & 0x80 != 0 {
                    i += 1;
                }
                i += 1;
            }
        }
        match block[i] {
            0x88 => Some(200),
            0x89 => Some(204),
            0x8a => Some(206),
            0x8b => Some(304),
            0x8c => Some(400),
            0x8d => Some(404),
            0x8e => Some(500),
            0x48 | 0x08 | 0x18 => {
                let l = *block.get(i + 1)?;
                let len = usize::from(l & 0x7f);
                let v = block.get(i + 2..i + 2 + len)?;
                if l & 0x80 == 0 {
                    std::str::from_utf8(v).ok()?.parse().ok()
                } else {
                    huffman_digits(v)
                }
            }
            _ => None,
        }
    }

    /// Decode three Huffman-coded ASCII digits (RFC 7541 Appendix B: '0'–'2' are 5 bits,
    /// '3'–'9' are 6 bits 011001–011111).
    fn huffman_digits(v: &[u8]) -> Option<u16> {
        let bit = |n: usize| -> Option<u32> {
            let byte = *v.get(n / 8)?;
            Some(u32::from((byte >> (7 - n % 8)) & 1))
        };
        let bits = |from: usize, n: usize| -> Option<u32> {
            let mut x = 0;
            for k in 0..n {
                x = (x << 1) | bit(from + k)?;
            }
            Some(x)
        };
        let mut pos = 0;
        let mut out = 0u16;
        for _ in 0..3 {
            let p = bits(pos, 5)?;
            let d = if p <= 2 {
                pos += 5;
                p
            } else {
                let c = bits(pos, 6)?;
                pos += 6;
                if !(25..=31).contains(&c) {
                    return None;
                }
                c - 22
            };
            out = out * 10 + d as u16;
        }
        Some(out)
    }

    pub struct Conn {
        pub s: TcpStream,
        pub buf: Vec<u8>,
        pub eof: bool,
    }

    impl Conn {
        /// Connect and send the preface plus our (empty) SETTINGS.
        pub async fn open(addr: SocketAddr) -> Self {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let _ = s.set_nodelay(true);
            s.write_all(&[PREFACE, &settings(&[])].concat())
                .await
                .unwrap();
            Self {
                s,
                buf: Vec::new(),
                eof: false,
            }
        }

        pub async fn send(&mut self, b: &[u8]) -> bool {
            self.s.write_all(b).await.is_ok()
        }

        /// Next frame before `deadline` (SETTINGS and PING are acknowledged on the way).
        pub async fn next(&mut self, deadline: tokio::time::Instant) -> Option<Frame> {
            loop {
                if let Some(f) = parse(&mut self.buf) {
                    if f.ty == SETTINGS && f.flags & ACK == 0 {
                        let _ = self.s.write_all(&frame(SETTINGS, ACK, 0, &[])).await;
                    }
                    if f.ty == PING && f.flags & ACK == 0 {
                        let _ = self.s.write_all(&frame(PING, ACK, 0, &f.payload)).await;
                    }
                    return Some(f);
                }
                if self.eof {
                    return None;
                }
                let mut tmp = vec![0u8; 65536];
                match tokio::time::timeout_at(deadline, self.s.read(&mut tmp)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => self.eof = true,
                    Ok(Ok(n)) => self.buf.extend_from_slice(&tmp[..n]),
                    Err(_) => return None,
                }
            }
        }
    }
}

/// A normal request on a fresh HTTP/1.1 connection and a fresh h2c connection: both 200 fast.
async fn others_are_served(gw: &Gateway, what: &str) {
    let t = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(3),
        send(get(&gw.url("/v1/models"), Some(CLIENT_KEY_B))),
    )
    .await;
    assert!(
        matches!(r, Ok((200, _, _))),
        "{what}: HTTP/1.1 client not served promptly: {:?}",
        r.map(|r| r.0)
    );
    let r = tokio::time::timeout(
        Duration::from_secs(3),
        h2_client().request(get(&gw.url("/v1/models"), Some(CLIENT_KEY_B))),
    )
    .await;
    let st = match &r {
        Ok(Ok(resp)) => Some(resp.status().as_u16()),
        _ => None,
    };
    assert_eq!(st, Some(200), "{what}: h2 client not served promptly");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "{what}: other clients slowed down: {:?}",
        t.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// 1. Request smuggling
// ---------------------------------------------------------------------------------------------

fn smuggled(i: usize) -> String {
    format!(
        "GET /v1/models?smuggled={i} HTTP/1.1\r\nHost: gw.example\r\nAuthorization: Bearer {CLIENT_KEY}\r\n\r\n"
    )
}

/// (name, raw bytes) of every framing attack; case `i` targets `...?case={i}` and embeds a
/// complete authenticated `GET /v1/models?smuggled={i}` where a desynchronised parser would
/// see a second request.
fn smuggling_cases() -> Vec<(&'static str, Vec<u8>)> {
    let head = |i: usize, version: &str, framing: &str| {
        format!(
            "POST /v1/chat/completions?case={i} {version}\r\nHost: gw.example\r\n{}Content-Type: application/json\r\n{framing}\r\n",
            auth_line()
        )
    };
    // TE.CL shape: chunked ends after "0\r\n\r\n"; Content-Length covers the smuggled request.
    let te_cl = |i: usize, te_lines: &str| {
        let body = format!("0\r\n\r\n{}", smuggled(i));
        let framing = format!("Content-Length: {}\r\n{te_lines}", body.len());
        format!("{}{body}", head(i, "HTTP/1.1", &framing)).into_bytes()
    };
    let chunked = |i: usize, chunks: &str| {
        format!(
            "{}{chunks}{}",
            head(i, "HTTP/1.1", "Transfer-Encoding: chunked\r\n"),
            smuggled(i)
        )
        .into_bytes()
    };
    let with_cl = |i: usize, cl: &str| {
        format!(
            "{}{}",
            head(i, "HTTP/1.1", &format!("Content-Length: {cl}\r\n")),
            smuggled(i)
        )
        .into_bytes()
    };
    let mut v: Vec<(&'static str, Vec<u8>)> = Vec::new();
    let mut i = 0;
    let mut next = || {
        i += 1;
        i - 1
    };
    let n = next();
    v.push((
        "CL + TE: chunked",
        te_cl(n, "Transfer-Encoding: chunked\r\n"),
    ));
    let n = next();
    v.push(("TE: chunked before CL", {
        let body = format!("0\r\n\r\n{}", smuggled(n));
        let framing = format!(
            "Transfer-Encoding: chunked\r\nContent-Length: {}\r\n",
            body.len()
        );
        format!("{}{body}", head(n, "HTTP/1.1", &framing)).into_bytes()
    }));
    let n = next();
    v.push(("two different Content-Length headers", {
        let body = format!("0\r\n\r\n{}", smuggled(n));
        let framing = format!("Content-Length: 5\r\nContent-Length: {}\r\n", body.len());
        format!("{}{body}", head(n, "HTTP/1.1", &framing)).into_bytes()
    }));
    let n = next();
    v.push(("Content-Length list with different values", {
        let body = format!("0\r\n\r\n{}", smuggled(n));
        let framing = format!("Content-Length: 5, {}\r\n", body.len());
        format!("{}{body}", head(n, "HTTP/1.1", &framing)).into_bytes()
    }));
    let n = next();
    v.push((
        "TE: chunked, identity (+CL)",
        te_cl(n, "Transfer-Encoding: chunked, identity\r\n"),
    ));
    let n = next();
    v.push((
        "TE: identity, chunked (+CL)",
        te_cl(n, "Transfer-Encoding: identity, chunked\r\n"),
    ));
    let n = next();
    v.push((
        "TE: '  chunked' leading spaces (+CL)",
        te_cl(n, "Transfer-Encoding:   chunked\r\n"),
    ));
    let n = next();
    v.push((
        "TE: tab chunked (+CL)",
        te_cl(n, "Transfer-Encoding:\tchunked\r\n"),
    ));
    let n = next();
    v.push((
        "TE obs-fold (+CL)",
        te_cl(n, "Transfer-Encoding:\r\n chunked\r\n"),
    ));
    let n = next();
    v.push((
        "TE: xchunked (+CL)",
        te_cl(n, "Transfer-Encoding: xchunked\r\n"),
    ));
    let n = next();
    v.push((
        "TE: \"chunked\" quoted (+CL)",
        te_cl(n, "Transfer-Encoding: \"chunked\"\r\n"),
    ));
    let n = next();
    v.push((
        "'Transfer-Encoding : chunked' space before colon (+CL)",
        te_cl(n, "Transfer-Encoding : chunked\r\n"),
    ));
    let n = next();
    v.push((
        "two TE headers chunked then identity (+CL)",
        te_cl(
            n,
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
        ),
    ));
    let n = next();
    v.push((
        "TE: CHUNKED upper case (+CL)",
        te_cl(n, "Transfer-Encoding: CHUNKED\r\n"),
    ));
    let n = next();
    v.push(("TE on HTTP/1.0 (+CL)", {
        let body = format!("0\r\n\r\n{}", smuggled(n));
        let framing = format!(
            "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
            body.len()
        );
        format!("{}{body}", head(n, "HTTP/1.0", &framing)).into_bytes()
    }));
    let n = next();
    v.push(("chunk size 'zz'", chunked(n, "zz\r\nhello\r\n0\r\n\r\n")));
    let n = next();
    v.push(("chunk size '-1'", chunked(n, "-1\r\nhello\r\n0\r\n\r\n")));
    let n = next();
    v.push(("chunk size '+5'", chunked(n, "+5\r\nhello\r\n0\r\n\r\n")));
    let n = next();
    v.push(("chunk size '0x5'", chunked(n, "0x5\r\nhello\r\n0\r\n\r\n")));
    let n = next();
    v.push((
        "chunk size hex overflow",
        chunked(n, "fffffffffffffffffffffff5\r\nhello\r\n0\r\n\r\n"),
    ));
    let n = next();
    v.push((
        "chunk data longer than its size",
        chunked(n, "3\r\nhello\r\n0\r\n\r\n"),
    ));
    let n = next();
    v.push(("Content-Length over max_body_bytes", with_cl(n, "17000000")));
    let n = next();
    v.push(("Content-Length -1", with_cl(n, "-1")));
    let n = next();
    v.push(("Content-Length +5", with_cl(n, "+5")));
    let n = next();
    v.push((
        "Content-Length overflow",
        with_cl(n, "99999999999999999999999"),
    ));
    let n = next();
    v.push(("Content-Length 0x10", with_cl(n, "0x10")));
    v
}

#[tokio::test]
async fn request_smuggling_is_rejected_and_never_reaches_the_nim() {
    let gw = start().await;
    let addr = gw.addr;
    let cases = smuggling_cases();
    let mut set = tokio::task::JoinSet::new();
    for (i, (name, bytes)) in cases.iter().cloned().enumerate() {
        set.spawn(async move {
            let mut c = H1::connect(addr).await;
            c.send(&bytes).await;
            let first = c.response(Duration::from_secs(3)).await;
            let closed = c.closed_within(Duration::from_millis(1500)).await;
            let extra = c.extra_responses();
            (i, name, first.map(|r| r.status), closed, extra)
        });
    }
    let mut results = Vec::new();
    while let Some(r) = set.join_next().await {
        results.push(r.unwrap());
    }
    results.sort_by_key(|r| r.0);
    let seen = gw.nim.seen();
    let mut failures = Vec::new();
    for (i, name, status, closed, extra) in &results {
        let reached = seen
            .iter()
            .filter(|s| s.uri.ends_with(&format!("?case={i}")))
            .count();
        let smuggled = seen
            .iter()
            .filter(|s| s.uri.contains(&format!("smuggled={i}")))
            .count();
        let rejected = matches!(status, Some(400 | 413 | 501));
        let line = format!(
            "case {i} [{name}]: status {status:?}, server closed: {closed}, extra responses: {extra}, NIM saw it {reached}x, smuggled request reached NIM {smuggled}x"
        );
        eprintln!("{line}");
        if !(rejected || *closed) || *extra > 0 || reached > 1 || smuggled > 0 {
            failures.push(line);
        }
    }
    assert!(
        !seen.iter().any(|s| s.uri.contains("smuggled")),
        "a smuggled request reached the NIM: {:?}",
        seen.iter().map(|s| &s.uri).collect::<Vec<_>>()
    );
    assert!(
        failures.is_empty(),
        "smuggling cases not defended:\n{}",
        failures.join("\n")
    );
    assert!(seen.len() <= cases.len());
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 2. Credential override
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn raw_credential_tricks_get_401_and_reach_nothing() {
    let gw = start().await;
    let a = format!("Bearer {CLIENT_KEY}");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "two Authorization lines with the client key",
            h1_get(
                "/v1/models?cred=0",
                &format!("Authorization: {a}\r\n"),
            ),
            "malformed_key",
        ),
        (
            "authorization + AUTHORIZATION (case variants)",
            format!(
                "GET /v1/models?cred=1 HTTP/1.1\r\nHost: gw\r\nauthorization: {a}\r\nAUTHORIZATION: Bearer {NIM_KEY}\r\n\r\n"
            )
            .into_bytes(),
            "malformed_key",
        ),
        (
            "Authorization carrying the NIM key",
            format!(
                "GET /v1/models?cred=2 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {NIM_KEY}\r\n\r\n"
            )
            .into_bytes(),
            "unknown_key",
        ),
        (
            "comma-joined client and NIM key",
            format!(
                "GET /v1/models?cred=3 HTTP/1.1\r\nHost: gw\r\nAuthorization: {a}, Bearer {NIM_KEY}\r\n\r\n"
            )
            .into_bytes(),
            "malformed_key",
        ),
        (
            "non-UTF-8 Authorization",
            cat(&[
                b"GET /v1/models?cred=4 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer \xff\xfe",
                CLIENT_KEY.as_bytes(),
                b"\r\n\r\n",
            ]),
            "malformed_key",
        ),
        (
            "Latin-1 byte inside the key",
            cat(&[
                b"GET /v1/models?cred=5 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer ",
                CLIENT_KEY.as_bytes(),
                b"\xe9\r\n\r\n",
            ]),
            "malformed_key",
        ),
        (
            "X-Api-Key with the client key and no Authorization",
            format!(
                "GET /v1/models?cred=6 HTTP/1.1\r\nHost: gw\r\nX-Api-Key: {CLIENT_KEY}\r\napi-key: {CLIENT_KEY}\r\n\r\n"
            )
            .into_bytes(),
            "missing_key",
        ),
        (
            "key only in ?api_key=",
            format!("GET /v1/models?cred=7&api_key={CLIENT_KEY} HTTP/1.1\r\nHost: gw\r\n\r\n")
                .into_bytes(),
            "missing_key",
        ),
    ];
    let mut failures = Vec::new();
    for (name, bytes, _) in &cases {
        let r = exchange(gw.addr, bytes, Duration::from_secs(3)).await;
        match &r {
            Some(r) if r.status == 401 => {
                assert_eq!(r.error_code(), "invalid_api_key", "{name}");
                let body = String::from_utf8_lossy(&r.body);
                assert!(
                    !body.contains(NIM_KEY) && !body.contains(CLIENT_KEY),
                    "{name}: key echoed"
                );
                assert!(r.header("www-authenticate").is_some(), "{name}");
            }
            other => failures.push(format!(
                "{name}: expected 401, got {:?}",
                other.as_ref().map(|r| r.status)
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        gw.nim.requests.load(Ordering::Relaxed),
        0,
        "no rejected request may reach the NIM: {:?}",
        gw.nim.seen().iter().map(|s| &s.uri).collect::<Vec<_>>()
    );
    let denied = gw.audit_events("denied").await;
    assert_eq!(denied.len(), cases.len(), "{denied:?}");
    // Requests were sequential, so the records are in case order.
    for ((name, _, reason), rec) in cases.iter().zip(&denied) {
        assert_eq!(rec["status"], 401, "{name}: {rec}");
        assert_eq!(rec["reason"], *reason, "{name}: {rec}");
        assert!(rec.get("key_fingerprint").is_none(), "{name}: {rec}");
    }
    let trail = std::fs::read_to_string(&gw.audit_file).unwrap();
    assert!(!trail.contains(NIM_KEY) && !trail.contains(CLIENT_KEY));
    gw.stop().await;
}

#[tokio::test]
async fn raw_client_credentials_are_stripped_in_every_combination() {
    let gw = start().await;
    let extras = [
        "Proxy-Authorization: Basic Y2xpZW50LXNlY3JldA==\r\n",
        "X-Api-Key: client-secret-x\r\nX-API-KEY: client-secret-x2\r\n",
        "api-key: client-secret-y\r\nApi-Key: client-secret-y2\r\n",
    ];
    let queries = [
        "",
        "&api_key=client-secret-q",
        "&API-KEY=client-secret-q&Api_Key=client-secret-r",
        "&api%5Fkey=client-secret-q&api%2dkey=client-secret-r&api_key",
    ];
    let mut n = 0;
    for mask in 0u8..8 {
        for (qi, q) in queries.iter().enumerate() {
            let mut extra = String::new();
            for (i, e) in extras.iter().enumerate() {
                if mask & (1 << i) != 0 {
                    extra.push_str(e);
                }
            }
            let target = format!("/v1/chat/completions?combo={mask}-{qi}&keep=1{q}");
            let r = exchange(gw.addr, &h1_chat(&target, &extra), Duration::from_secs(3))
                .await
                .unwrap_or_else(|| panic!("no response for {target}"));
            assert_eq!(r.status, 200, "{target} {extra}");
            assert!(!String::from_utf8_lossy(&r.body).contains(NIM_KEY));
            n += 1;
        }
    }
    let seen = gw.nim.seen();
    assert_eq!(seen.len(), n, "one upstream request per client request");
    for s in &seen {
        assert_only_our_credential(s, &s.uri);
        assert!(s.uri.contains("keep=1"), "other params survive: {}", s.uri);
    }
    gw.stop().await;
}

#[tokio::test]
async fn percent_encoded_api_key_query_names_are_stripped() {
    let gw = start().await;
    let mut failures = Vec::new();
    for (i, q) in [
        "%61pi_key=client-secret-a",
        "api%5fKEY=client-secret-b",
        "%41%50%49%5F%4B%45%59=client-secret-c",
        "api%2Dkey=client-secret-d",
        "api%5Fkey=client-secret-e&%61pi-key=client-secret-f",
    ]
    .iter()
    .enumerate()
    {
        let target = format!("/v1/chat/completions?enc={i}&{q}");
        let r = exchange(gw.addr, &h1_chat(&target, ""), Duration::from_secs(3)).await;
        let status = r.as_ref().map(|r| r.status);
        assert!(matches!(status, Some(200 | 400)), "{q}: {status:?}");
        for s in seen_with(&gw, &format!("enc={i}")) {
            let decoded = percent_decode(&s.uri).to_ascii_lowercase();
            eprintln!(
                "encoded query {q}: client got {status:?}, NIM saw {}",
                s.uri
            );
            if decoded.contains("api_key")
                || decoded.contains("api-key")
                || s.uri.contains("client-secret")
            {
                failures.push(format!("{q}: client got {status:?}, NIM saw {}", s.uri));
            }
            let auth: Vec<_> = s.headers.get_all("authorization").iter().collect();
            assert_eq!(auth, [format!("Bearer {NIM_KEY}").as_str()], "{q}");
        }
    }
    assert!(
        failures.is_empty(),
        "percent-encoded api_key/api-key parameters reached the NIM:\n{}",
        failures.join("\n")
    );
    gw.stop().await;
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------------
// 3. Hop-by-hop abuse
// ---------------------------------------------------------------------------------------------

const HOP_CASES: [&str; 7] = [
    "Connection: close, authorization\r\n",
    "Connection: keep-alive, x-request-id\r\nX-Request-Id: rid-hop-1\r\n",
    "Connection: Authorization, Host\r\n",
    "Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n",
    "Connection: x-hop-secret, te, trailer, keep-alive\r\nX-Hop-Secret: 1\r\nTE: trailers\r\nTrailer: x-t\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n",
    "Connection: keep-alive\r\nConnection: authorization, x-hop-b\r\nX-Hop-B: 1\r\n",
    "Connection: AUTHORIZATION,,, ,authorization , X-Api-Key\r\nX-Api-Key: client-secret-x\r\n",
];

const HOP_HEADERS: [&str; 11] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "http2-settings",
    "x-hop-secret",
    "x-hop-b",
    "x-api-key",
    "transfer-encoding",
];

async fn hop_by_hop_abuse(gw: &Gateway, version: http::Version) {
    for (i, extra) in HOP_CASES.iter().enumerate() {
        let target = format!("/v1/chat/completions?hop={i}");
        let r = exchange(gw.addr, &h1_chat(&target, extra), Duration::from_secs(3)).await;
        assert_eq!(
            r.as_ref().map(|r| r.status),
            Some(200),
            "{extra:?}: {:?}",
            r.as_ref()
                .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        );
        let seen = seen_with(gw, &format!("hop={i}"));
        assert_eq!(seen.len(), 1, "{extra:?}");
        let s = &seen[0];
        assert_eq!(s.version, version);
        assert_only_our_credential(s, extra);
        for h in HOP_HEADERS {
            assert!(
                s.headers.get(h).is_none(),
                "{extra:?}: hop-by-hop or Connection-named header {h} reached the NIM"
            );
        }
        assert_eq!(
            seen_authority(s),
            gw.nim_addr.to_string(),
            "{extra:?}: upstream addressed elsewhere"
        );
        assert_eq!(seen_path(s), "/v1/chat/completions");
    }
}

#[tokio::test]
async fn hop_by_hop_abuse_cannot_touch_the_key_http1_upstream() {
    let gw = start().await;
    hop_by_hop_abuse(&gw, http::Version::HTTP_11).await;
    gw.stop().await;
}

#[tokio::test]
async fn hop_by_hop_abuse_cannot_touch_the_key_http2_upstream() {
    let gw = start_with(Opts {
        upstream_extra: "http2 = true".into(),
        ..Opts::default()
    })
    .await;
    hop_by_hop_abuse(&gw, http::Version::HTTP_2).await;
    gw.stop().await;
}

#[tokio::test]
async fn connection_header_with_a_non_utf8_token_still_strips_the_named_headers() {
    let gw = start().await;
    let req = cat(&[
        format!(
            "GET /v1/models?hopx=1 HTTP/1.1\r\nHost: gw\r\n{}X-Hop-C: 1\r\nConnection: x-hop-c, caf",
            auth_line()
        )
        .as_bytes(),
        b"\xe9\r\n\r\n",
    ]);
    let r = exchange(gw.addr, &req, Duration::from_secs(3)).await;
    let status = r.as_ref().map(|r| r.status);
    assert!(matches!(status, Some(200 | 400)), "{status:?}");
    for s in seen_with(&gw, "hopx=1") {
        assert_only_our_credential(&s, "non-utf8 Connection");
        assert!(
            s.headers.get("x-hop-c").is_none(),
            "x-hop-c is named in Connection but reached the NIM (client got {status:?}): {:?}",
            s.headers
        );
    }
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 4. Routing: the key only ever goes to the configured upstream
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn absolute_form_host_connect_and_redirects_never_reach_another_host() {
    let gw = start().await;
    let c = canary().await;
    let ca = c.addr;
    let a = auth_line();
    let mut failures = Vec::new();

    // Absolute-form targets naming the canary (http and https), with a matching Host.
    for (i, scheme) in ["http", "https"].iter().enumerate() {
        let body = chat_body(false);
        let req = format!(
            "POST {scheme}://{ca}/v1/chat/completions?route=abs{i} HTTP/1.1\r\nHost: {ca}\r\n{a}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let r = exchange(gw.addr, req.as_bytes(), Duration::from_secs(3)).await;
        let st = r.as_ref().map(|r| r.status);
        if !matches!(st, Some(200 | 400)) {
            failures.push(format!("absolute-form {scheme}: {st:?}"));
        }
        for s in seen_with(&gw, &format!("route=abs{i}")) {
            assert_eq!(seen_authority(&s), gw.nim_addr.to_string());
            assert_eq!(seen_path(&s), "/v1/chat/completions");
            assert_only_our_credential(&s, "absolute-form");
        }
    }
    // Spoofed Host / X-Forwarded-Host / Forwarded.
    let r = exchange(
        gw.addr,
        format!(
            "GET /v1/models?route=host HTTP/1.1\r\nHost: {ca}\r\nX-Forwarded-Host: {ca}\r\nForwarded: host={ca};proto=https\r\n{a}\r\n"
        )
        .as_bytes(),
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(r.as_ref().map(|r| r.status), Some(200), "spoofed Host");
    let s = seen_with(&gw, "route=host");
    assert_eq!(s.len(), 1);
    assert_eq!(seen_authority(&s[0]), gw.nim_addr.to_string());
    assert!(s[0].headers.get("forwarded").is_none());

    // CONNECT to the canary, authenticated and not; then try to use the "tunnel".
    for (who, auth) in [("authenticated", a.as_str()), ("anonymous", "")] {
        let mut conn = H1::connect(gw.addr).await;
        conn.send(format!("CONNECT {ca} HTTP/1.1\r\nHost: {ca}\r\n{auth}\r\n").as_bytes())
            .await;
        let r = conn.response(Duration::from_secs(3)).await;
        let want = if auth.is_empty() { 401 } else { 405 };
        match &r {
            Some(r) if r.status == want => {
                let code = r.error_code();
                assert!(
                    code == "method_not_allowed" || code == "invalid_api_key",
                    "{code}"
                );
            }
            other => failures.push(format!(
                "CONNECT {who}: expected {want}, got {:?}",
                other.as_ref().map(|r| r.status)
            )),
        }
        conn.send(b"GET /steal HTTP/1.1\r\nHost: canary\r\n\r\n")
            .await;
        let _ = conn.response(Duration::from_millis(500)).await;
    }
    // TRACE.
    let r = exchange(
        gw.addr,
        &h1_get("/v1/models?route=trace", "").replacen(b"GET", b"TRACE"),
        Duration::from_secs(3),
    )
    .await;
    if r.as_ref().map(|r| r.status) != Some(405) {
        failures.push(format!("TRACE: {:?}", r.map(|r| r.status)));
    }
    // h2: :authority naming the canary.
    let mut h = h2::Conn::open(gw.addr).await;
    h.send(&h2::get(
        1,
        "/v1/models?route=h2auth",
        &ca.to_string(),
        &[("authorization", &format!("Bearer {CLIENT_KEY}"))],
    ))
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut h2_status = None;
    while let Some(f) = h.next(deadline).await {
        if f.ty == h2::HEADERS && f.stream == 1 {
            h2_status = h2::status(&f.payload);
            break;
        }
    }
    assert_eq!(h2_status, Some(200), "h2 :authority spoof");
    for s in seen_with(&gw, "route=h2auth") {
        assert_eq!(seen_authority(&s), gw.nim_addr.to_string());
    }
    // Upstream redirect to the canary: passed back, never followed.
    let steal = format!("http://{ca}/steal");
    let r = exchange(
        gw.addr,
        &h1_get(
            "/v1/models?route=redirect",
            &format!("x-fake-redirect: {steal}\r\n"),
        ),
        Duration::from_secs(3),
    )
    .await
    .expect("redirect response");
    assert_eq!(r.status, 302, "the redirect goes back to the client");
    assert_eq!(r.header("location"), Some(steal.as_str()));
    assert_eq!(seen_with(&gw, "route=redirect").len(), 1);

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        c.hits.load(Ordering::SeqCst),
        0,
        "the canary was contacted: the key may have left for another host"
    );
    assert!(gw
        .nim
        .seen()
        .iter()
        .all(|s| !s.uri.contains("steal") && seen_authority(s) == gw.nim_addr.to_string()));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    gw.stop().await;
}

trait ReplaceBytes {
    fn replacen(&self, from: &[u8], to: &[u8]) -> Vec<u8>;
}

impl ReplaceBytes for Vec<u8> {
    fn replacen(&self, from: &[u8], to: &[u8]) -> Vec<u8> {
        match find(self, from) {
            Some(i) => cat(&[&self[..i], to, &self[i + from.len()..]]),
            None => self.clone(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Paths
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn path_allow_list_applies_after_normalisation() {
    let gw = start().await;
    // (raw target, allowed statuses, the path the NIM may see if forwarded)
    let cases: Vec<(&str, &[u16], Option<&str>)> = vec![
        ("/v1/../admin", &[404], None),
        ("/v1/%2e%2e/admin", &[404], None),
        ("/v1/%2E%2E%2Fadmin", &[400], None),
        ("/v1%2Fmodels", &[400], None),
        ("/v1%2fmodels", &[400], None),
        ("//v1/models", &[200, 400, 404], Some("/v1/models")),
        ("/v1;/models", &[400], None),
        ("/v1/models;x=1", &[400], None),
        ("/V1/models", &[404], None),
        ("/v1/models%00", &[400], None),
        ("/v1/models%0d%0aX-Injected:%201", &[400], None),
        ("/v1/%2e%2e/%2e%2e/etc/passwd", &[400, 404], None),
        ("/v1/models/..%2f..%2fadmin", &[400], None),
        ("/v1/chat/completions/../../../admin", &[404], None),
        ("/v1/%5c..%5cadmin", &[400], None),
        ("/v1/.%2e/admin", &[404], None),
        ("/%2e%2e/v1/models", &[400, 404], None),
        ("/%76%31/models", &[200], Some("/v1/models")),
        ("/v1/./models", &[200], Some("/v1/models")),
        ("/v1//models", &[200], Some("/v1/models")),
        (
            "/v1/%C0%AE%C0%AE/admin",
            &[400, 404],
            Some("/v1/%C0%AE%C0%AE/admin"),
        ),
    ];
    let mut failures = Vec::new();
    for (i, (target, want, nim_path)) in cases.iter().enumerate() {
        let tag = format!("p={i}x");
        let full = format!("{target}?{tag}");
        let r = exchange(gw.addr, &h1_get(&full, ""), Duration::from_secs(3)).await;
        let status = r.as_ref().map(|r| r.status);
        let seen = seen_with(&gw, &tag);
        let ok_status = status.is_some_and(|s| want.contains(&s));
        let ok_nim = match nim_path {
            None => seen.is_empty(),
            Some(p) => seen.iter().all(|s| seen_path(s) == *p) && seen.len() <= 1,
        };
        let forwarded_ok = status != Some(200) || seen.len() == 1;
        eprintln!(
            "path {target}: status {status:?}, NIM saw {:?}",
            seen.iter().map(|s| &s.uri).collect::<Vec<_>>()
        );
        // Refusals by the gateway itself (the NIM saw nothing) carry the OpenAI error shape.
        if let Some(r) = r
            .as_ref()
            .filter(|r| r.status != 200 && !r.body.is_empty() && seen.is_empty())
        {
            let code = r.error_code();
            assert!(
                matches!(code.as_str(), "bad_request" | "not_found"),
                "{target}: {code}"
            );
        }
        if !(ok_status && ok_nim && forwarded_ok) {
            failures.push(format!(
                "{target}: status {status:?} (want {want:?}), NIM saw {:?}",
                seen.iter().map(|s| &s.uri).collect::<Vec<_>>()
            ));
        }
    }
    // Raw bytes hyper itself must refuse.
    for (name, target) in [
        ("raw NUL", &b"/v1/models\0"[..]),
        ("raw backslash", &b"/v1\\..\\admin"[..]),
        ("raw CR", &b"/v1/models\rX"[..]),
    ] {
        let req = cat(&[
            b"GET ",
            target,
            b" HTTP/1.1\r\nHost: gw\r\n",
            auth_line().as_bytes(),
            b"\r\n",
        ]);
        let r = exchange(gw.addr, &req, Duration::from_secs(3)).await;
        let st = r.as_ref().map(|r| r.status);
        if !matches!(st, Some(400) | None) {
            failures.push(format!("{name}: {st:?}"));
        }
    }
    for s in gw.nim.seen() {
        let p = seen_path(&s);
        let l = p.to_ascii_lowercase();
        if !p.starts_with("/v1/")
            || p.contains("//")
            || p.split('/').any(|seg| seg == ".." || seg == ".")
            || l.contains("%2e")
            || l.contains("%2f")
            || l.contains("%5c")
            || l.contains(';')
        {
            failures.push(format!("NIM saw an un-normalised path: {}", s.uri));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 6. Header anomalies
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn malformed_and_oversized_headers_are_refused() {
    let gw = start().await;
    let a = auth_line();
    let get_with_lines = |i: usize, lines: &[u8]| {
        cat(&[
            format!("GET /v1/models?hdr={i} HTTP/1.1\r\nHost: gw\r\n{a}").as_bytes(),
            lines,
            b"\r\n",
        ])
    };
    let many: String = (0..120).map(|n| format!("X-H{n}: {n}\r\n")).collect();
    let big = format!("X-Big: {}\r\n", "a".repeat(40_000));
    let long_target = format!(
        "GET /v1/models?hdr=13&q={} HTTP/1.1\r\nHost: gw\r\n{a}\r\n",
        "b".repeat(70_000)
    );
    // (name, bytes, allowed statuses; 0 = connection closed without a response)
    let cases: Vec<(&str, Vec<u8>, &[u16])> = vec![
        ("bare CR in value", get_with_lines(0, b"X-Evil: a\rX-Injected: b\r\n"), &[400, 0]),
        ("NUL in value", get_with_lines(1, b"X-Evil: a\0b\r\n"), &[400, 0]),
        ("NUL in name", get_with_lines(2, b"X-Ev\0il: a\r\n"), &[400, 0]),
        ("obs-fold", get_with_lines(3, b"X-Folded: a\r\n b\r\n"), &[400, 200, 0]),
        ("line without colon", get_with_lines(4, b"X-No-Colon value\r\n"), &[400, 0]),
        ("space in name", get_with_lines(5, b"X Evil: 1\r\n"), &[400, 0]),
        ("empty name", get_with_lines(6, b": value\r\n"), &[400, 0]),
        ("space before colon", get_with_lines(7, b"X-Evil : 1\r\n"), &[400, 0]),
        ("Latin-1 value", get_with_lines(8, b"X-Latin: caf\xe9\r\n"), &[200, 400]),
        ("control char 0x01 in value", get_with_lines(9, b"X-Ctl: a\x01b\r\n"), &[400, 0]),
        ("more headers than max_headers", get_with_lines(10, many.as_bytes()), &[431, 400, 0]),
        ("header larger than max_header_bytes", get_with_lines(11, big.as_bytes()), &[431, 400, 0]),
        (
            "obs-folded Authorization",
            format!("GET /v1/models?hdr=12 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer\r\n {CLIENT_KEY}\r\n\r\n").into_bytes(),
            &[400, 401, 0],
        ),
        ("request line larger than max_header_bytes", long_target.into_bytes(), &[414, 431, 400, 0]),
    ];
    let mut failures = Vec::new();
    for (i, (name, bytes, want)) in cases.iter().enumerate() {
        let r = exchange(gw.addr, bytes, Duration::from_secs(3)).await;
        let st = r.as_ref().map_or(0, |r| r.status);
        let seen = seen_with(&gw, &format!("hdr={i}"));
        eprintln!(
            "header case [{name}]: status {st}, NIM saw it {}x",
            seen.len()
        );
        if !want.contains(&st) {
            failures.push(format!(
                "{name}: status {st} (0 = no response), want {want:?}"
            ));
        }
        if st != 200 && !seen.is_empty() {
            failures.push(format!("{name}: refused ({st}) but the NIM saw it"));
        }
        for s in &seen {
            assert_only_our_credential(s, name);
            assert!(s.headers.get("x-injected").is_none(), "{name}");
            for v in s.headers.values() {
                assert!(
                    !v.as_bytes()
                        .iter()
                        .any(|b| *b == b'\r' || *b == b'\n' || *b == 0),
                    "{name}: CR/LF/NUL forwarded upstream"
                );
            }
            if *name == "Latin-1 value" {
                assert_eq!(s.headers["x-latin"].as_bytes(), b"caf\xe9");
            }
        }
    }
    // Just under the limits still works.
    let ok: String = (0..90).map(|n| format!("X-H{n}: {n}\r\n")).collect();
    let r = exchange(
        gw.addr,
        &get_with_lines(99, ok.as_bytes()),
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(r.map(|r| r.status), Some(200), "90 headers are fine");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 7. Slow and stalled clients
// ---------------------------------------------------------------------------------------------

fn timeouts(extra: &str) -> Opts {
    Opts {
        limits_extra: format!(
            "header_read_timeout = \"1s\"\nbody_timeout = \"1s\"\nsend_timeout = \"1s\"\n{extra}"
        ),
        ..Opts::default()
    }
}

/// Time until the server closes `s` (reading and discarding), capped at `cap`.
async fn time_to_close(s: &mut tokio::net::tcp::OwnedReadHalf, cap: Duration) -> Option<Duration> {
    let t = Instant::now();
    let mut buf = vec![0u8; 4096];
    let r = tokio::time::timeout(cap, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    r.ok().map(|_| t.elapsed())
}

#[tokio::test]
async fn slowloris_trickled_request_head_is_cut_off() {
    let gw = start_with(timeouts("")).await;
    let s = TcpStream::connect(gw.addr).await.unwrap();
    let _ = s.set_nodelay(true);
    let (mut rd, mut wr) = s.into_split();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n{}X-Slow: {}",
        auth_line(),
        "s".repeat(200)
    );
    let writer = tokio::spawn(async move {
        for b in head.bytes().take(40) {
            if wr.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let closed = time_to_close(&mut rd, Duration::from_secs(5)).await;
    writer.abort();
    eprintln!("slowloris: closed after {closed:?}");
    assert!(
        closed.is_some_and(|d| d <= Duration::from_millis(3000)),
        "slowloris connection not closed within 3 s (header_read_timeout = 1s): {closed:?}"
    );
    assert_eq!(gw.nim.requests.load(Ordering::Relaxed), 0);
    others_are_served(&gw, "after slowloris").await;
    gw.stop().await;
}

#[tokio::test]
async fn silent_connection_is_closed_after_header_read_timeout() {
    let gw = start_with(timeouts("")).await;
    // Connect and send nothing at all.
    let s = TcpStream::connect(gw.addr).await.unwrap();
    let (mut rd, _wr) = s.into_split();
    let closed = time_to_close(&mut rd, Duration::from_secs(4)).await;
    assert!(
        closed.is_some_and(|d| d <= Duration::from_millis(3000)),
        "a connection that never sends a byte is still open after 4 s (header_read_timeout = 1s): {closed:?}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn partial_h2_preface_is_closed_after_header_read_timeout() {
    let gw = start_with(timeouts("")).await;
    let s = TcpStream::connect(gw.addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    // A prefix of the HTTP/2 preface, then silence.
    wr.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let closed = time_to_close(&mut rd, Duration::from_secs(4)).await;
    assert!(
        closed.is_some_and(|d| d <= Duration::from_millis(3000)),
        "a connection stuck inside the HTTP/2 preface is still open after 4 s (header_read_timeout = 1s): {closed:?}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn slow_request_bodies_get_408() {
    let gw = start_with(timeouts("")).await;
    let addr = gw.addr;
    // Content-Length 1000, only 10 bytes sent.
    let short = tokio::spawn(async move {
        let mut c = H1::connect(addr).await;
        let t = Instant::now();
        c.send(
            format!(
                "POST /v1/chat/completions?slow=cl HTTP/1.1\r\nHost: gw\r\n{}Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"model\":",
                auth_line()
            )
            .as_bytes(),
        )
        .await;
        let r = c.response(Duration::from_secs(4)).await;
        let closed = r.is_some() || c.closed_within(Duration::from_millis(100)).await;
        (r, closed, t.elapsed())
    });
    // Chunked, one byte every 200 ms for 5 s.
    let trickle = tokio::spawn(async move {
        let mut c = H1::connect(addr).await;
        let t = Instant::now();
        c.send(
            format!(
                "POST /v1/chat/completions?slow=te HTTP/1.1\r\nHost: gw\r\n{}Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
                auth_line()
            )
            .as_bytes(),
        )
        .await;
        for _ in 0..25 {
            if !c.send(b"1\r\n \r\n").await {
                break;
            }
            if let Some(r) = c.response(Duration::from_millis(200)).await {
                return (Some(r), t.elapsed());
            }
            if c.eof {
                break;
            }
        }
        (c.try_parse(), t.elapsed())
    });
    let (r, closed, took) = short.await.unwrap();
    eprintln!(
        "slow body (CL 1000, 10 sent): {:?} after {took:?}",
        r.as_ref().map(|r| r.status)
    );
    assert!(
        r.as_ref().is_some_and(|r| r.status == 408) || (r.is_none() && closed),
        "short body: {:?} after {took:?}",
        r.as_ref().map(|r| r.status)
    );
    if let Some(r) = &r {
        assert_eq!(r.error_code(), "request_timeout");
    }
    assert!(took < Duration::from_secs(3), "short body took {took:?}");
    let (r, took) = trickle.await.unwrap();
    eprintln!(
        "slow body (chunked trickle): {:?} after {took:?}",
        r.as_ref().map(|r| r.status)
    );
    assert_eq!(
        r.as_ref().map(|r| r.status),
        Some(408),
        "trickled chunked body after {took:?}"
    );
    assert!(took < Duration::from_secs(3), "trickled body took {took:?}");
    assert!(seen_with(&gw, "slow=").is_empty(), "NIM saw a slow request");
    gw.stop().await;
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed_after_header_read_timeout() {
    let gw = start_with(timeouts("")).await;
    let mut c = H1::connect(gw.addr).await;
    c.send(&h1_get("/v1/models?idle=1", "")).await;
    let r = c.response(Duration::from_secs(3)).await;
    assert_eq!(r.map(|r| r.status), Some(200));
    let t = Instant::now();
    let closed = c.closed_within(Duration::from_secs(4)).await;
    eprintln!("idle keep-alive: closed {closed} after {:?}", t.elapsed());
    assert!(
        closed && t.elapsed() <= Duration::from_millis(2500),
        "idle keep-alive connection still open {:?} after its response (closed: {closed})",
        t.elapsed()
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_never_reads_a_stream_is_disconnected() {
    let gw = start_with(Opts {
        sse_delay: Duration::ZERO,
        ..timeouts("")
    })
    .await;
    gw.nim.sse_events.store(100_000, Ordering::Relaxed);
    let rss_before = rss_kb();
    // A small receive window so the gateway's writes stall quickly.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(gw.addr).await.unwrap();
    let body = chat_body(true);
    s.write_all(
        format!(
            "POST /v1/chat/completions?stall=1 HTTP/1.1\r\nHost: gw\r\n{}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            auth_line(),
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let t = Instant::now();
    // Meanwhile other clients are served.
    tokio::time::sleep(Duration::from_millis(300)).await;
    others_are_served(&gw, "while a client stalls").await;
    let mut cancelled = false;
    while t.elapsed() < Duration::from_secs(8) {
        if gw.nim.streams_cancelled.load(Ordering::Relaxed) >= 1 {
            cancelled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "stalled reader: upstream cancelled {cancelled} after {:?}",
        t.elapsed()
    );
    assert!(
        cancelled,
        "the upstream stream was not cancelled within 8 s of a client that never reads (send_timeout = 1s); completed: {}",
        gw.nim.streams_completed.load(Ordering::Relaxed)
    );
    assert!(
        t.elapsed() < Duration::from_secs(6),
        "stalled client cut off only after {:?}",
        t.elapsed()
    );
    assert_eq!(gw.nim.streams_completed.load(Ordering::Relaxed), 0);
    // The client side sees the connection end (after whatever was buffered).
    let mut buf = vec![0u8; 65536];
    let drained = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    })
    .await
    .unwrap_or(false);
    assert!(drained, "the stalled connection was not closed");
    others_are_served(&gw, "after the stall").await;
    let grown_mb = rss_kb().saturating_sub(rss_before) / 1024;
    eprintln!("stalled reader: RSS grew {grown_mb} MB");
    assert!(grown_mb < 50, "RSS grew by {grown_mb} MB during the stall");
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 8. HTTP/2 abuse
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_rapid_reset_gets_goaway_and_others_are_served() {
    let gw = start().await;
    let rss_before = rss_kb();
    let s = TcpStream::connect(gw.addr).await.unwrap();
    let _ = s.set_nodelay(true);
    let (mut rd, mut wr) = s.into_split();
    // Read concurrently so a GOAWAY is consumed before any reset of the socket.
    let reader = tokio::spawn(async move {
        let mut buf = Vec::new();
        let mut tmp = vec![0u8; 65536];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut frames = 0usize;
        loop {
            while let Some(f) = h2::parse(&mut buf) {
                frames += 1;
                if f.ty == h2::GOAWAY {
                    return (Some(f.goaway()), frames, false);
                }
            }
            match tokio::time::timeout_at(deadline, rd.read(&mut tmp)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return (None, frames, true),
                Ok(Ok(n)) => buf.extend_from_slice(&tmp[..n]),
                Err(_) => return (None, frames, false),
            }
        }
    });
    let authority = gw.addr.to_string();
    let bearer = format!("Bearer {CLIENT_KEY}");
    let hdrs = [
        ("authorization", bearer.as_str()),
        ("x-fake-delay-ms", "1500"),
    ];
    let mut sent = 0u32;
    let _ = wr
        .write_all(&[h2::PREFACE, &h2::settings(&[])].concat())
        .await;
    'attack: for batch in 0..20u32 {
        let mut out = Vec::new();
        for k in 0..50u32 {
            let id = 2 * (batch * 50 + k) + 1;
            out.extend(h2::get(
                id,
                &format!("/v1/models?rr={id}"),
                &authority,
                &hdrs,
            ));
            out.extend(h2::rst(id, h2::CANCEL));
        }
        if wr.write_all(&out).await.is_err() {
            break 'attack;
        }
        sent += 50;
        tokio::task::yield_now().await;
    }
    let (goaway, frames, eof) = reader.await.unwrap();
    eprintln!(
        "rapid reset: {sent} streams opened+reset, GOAWAY {goaway:?}, {frames} frames, eof {eof}, NIM requests {}",
        gw.nim.requests.load(Ordering::Relaxed)
    );
    others_are_served(&gw, "after rapid reset").await;
    let (last, code) = goaway.expect("the attacking connection got no GOAWAY");
    assert_eq!(code, 0xb, "GOAWAY should say ENHANCE_YOUR_CALM");
    assert!(
        last < 2 * 1000 - 1,
        "the server processed every one of the 1000 reset streams (last id {last})"
    );
    let grown_mb = rss_kb().saturating_sub(rss_before) / 1024;
    assert!(grown_mb < 50, "RSS grew by {grown_mb} MB");
    gw.stop().await;
}

#[tokio::test]
async fn h2_streams_beyond_max_h2_streams_never_reach_the_nim_concurrently() {
    let gw = start_with(Opts {
        limits_extra: "max_h2_streams = 4".into(),
        ..Opts::default()
    })
    .await;
    let mut c = h2::Conn::open(gw.addr).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut advertised = None;
    while let Some(f) = c.next(deadline).await {
        if f.ty == h2::SETTINGS && f.flags & h2::ACK == 0 {
            for p in f.payload.chunks(6) {
                if u16::from_be_bytes([p[0], p[1]]) == h2::SETTINGS_MAX_CONCURRENT_STREAMS {
                    advertised = Some(u32::from_be_bytes([p[2], p[3], p[4], p[5]]));
                }
            }
            break;
        }
    }
    assert_eq!(advertised, Some(4), "SETTINGS_MAX_CONCURRENT_STREAMS");
    let authority = gw.addr.to_string();
    let bearer = format!("Bearer {CLIENT_KEY}");
    let hdrs = [
        ("authorization", bearer.as_str()),
        ("x-fake-delay-ms", "800"),
    ];
    let mut out = Vec::new();
    for k in 0..10u32 {
        let id = 2 * k + 1;
        out.extend(h2::get(
            id,
            &format!("/v1/models?h2c={id}"),
            &authority,
            &hdrs,
        ));
    }
    assert!(c.send(&out).await);
    // Watch the NIM while every admitted request is still sleeping there.
    let t = Instant::now();
    let mut peak = 0;
    while t.elapsed() < Duration::from_millis(650) {
        peak = peak.max(gw.nim.requests.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    let mut ok = 0;
    let mut refused = 0;
    let mut other = Vec::new();
    let mut goaway = None;
    while ok + refused + other.len() < 10 {
        let Some(f) = c.next(deadline).await else {
            break;
        };
        match f.ty {
            h2::HEADERS => match h2::status(&f.payload) {
                Some(200) => ok += 1,
                st => other.push(format!("stream {} status {st:?}", f.stream)),
            },
            h2::RST_STREAM if f.rst_code() == h2::REFUSED_STREAM => refused += 1,
            h2::RST_STREAM => other.push(format!("stream {} reset {}", f.stream, f.rst_code())),
            h2::GOAWAY => {
                goaway = Some(f.goaway());
                break;
            }
            _ => {}
        }
    }
    eprintln!("max_h2_streams=4: peak {peak}, 200s {ok}, refused {refused}, other {other:?}, goaway {goaway:?}");
    assert!(
        peak <= 4,
        "{peak} requests in flight at the NIM from one connection with max_h2_streams = 4"
    );
    assert!((1..=10).contains(&ok), "some streams must be served: {ok}");
    assert!(other.is_empty(), "{other:?}");
    assert_eq!(ok + refused, 10, "every stream answered or refused");
    assert!(gw.nim.requests.load(Ordering::Relaxed) <= 10);
    gw.stop().await;
}

#[tokio::test]
async fn h2_oversized_header_list_is_refused_and_others_are_unaffected() {
    let gw = start().await;
    let mut c = h2::Conn::open(gw.addr).await;
    let authority = gw.addr.to_string();
    let bearer = format!("Bearer {CLIENT_KEY}");
    // ~48 KiB of headers (max_header_bytes = 32768), split over HEADERS + CONTINUATION.
    let mut block = h2::request_block(
        "GET",
        "/v1/models?huge=1",
        &authority,
        &[("authorization", bearer.as_str())],
    );
    for n in 0..6 {
        h2::literal(&mut block, &format!("x-pad-{n}"), &[b'p'; 8000]);
    }
    let mut out = Vec::new();
    let pieces: Vec<&[u8]> = block.chunks(16_000).collect();
    for (i, p) in pieces.iter().enumerate() {
        let ty = if i == 0 {
            h2::HEADERS
        } else {
            h2::CONTINUATION
        };
        let mut flags = if i == 0 { h2::END_STREAM } else { 0 };
        if i + 1 == pieces.len() {
            flags |= h2::END_HEADERS;
        }
        out.extend(h2::frame(ty, flags, 1, p));
    }
    // A normal stream right behind it on the same connection.
    out.extend(h2::get(
        3,
        "/v1/models?huge=0",
        &authority,
        &[("authorization", bearer.as_str())],
    ));
    let _ = c.send(&out).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut huge = None;
    let mut normal = None;
    let mut goaway = None;
    while huge.is_none() || normal.is_none() {
        let Some(f) = c.next(deadline).await else {
            break;
        };
        match (f.ty, f.stream) {
            (h2::HEADERS, 1) => huge = Some(format!("status {:?}", h2::status(&f.payload))),
            (h2::RST_STREAM, 1) => huge = Some(format!("reset {}", f.rst_code())),
            (h2::HEADERS, 3) => normal = h2::status(&f.payload),
            (h2::GOAWAY, _) => {
                goaway = Some(f.goaway());
                break;
            }
            _ => {}
        }
    }
    eprintln!("oversized h2 header list: huge stream {huge:?}, normal stream {normal:?}, goaway {goaway:?}, eof {}", c.eof);
    assert!(
        huge.is_some() || goaway.is_some() || c.eof,
        "the oversized stream got no answer at all"
    );
    assert_ne!(
        huge.as_deref(),
        Some("status Some(200)"),
        "oversized header list served"
    );
    assert!(
        seen_with(&gw, "huge=1").is_empty(),
        "the NIM saw the oversized request"
    );
    if goaway.is_none() && !c.eof {
        assert_eq!(normal, Some(200), "the connection survives a stream error");
    }
    others_are_served(&gw, "after an oversized header list").await;
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 9. Concurrency and rate limits
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn global_concurrency_limit_answers_503_overloaded() {
    let gw = start_with(Opts {
        limits_extra: "max_concurrent_requests = 2".into(),
        ..Opts::default()
    })
    .await;
    let url = gw.url("/v1/models");
    let slow: Vec<_> = [CLIENT_KEY, CLIENT_KEY_B]
        .into_iter()
        .map(|k| {
            let req = get_with(&url, k, &[("x-fake-delay-ms", "1000")]);
            tokio::spawn(send(req))
        })
        .collect();
    assert!(eventually(|| gw.nim.requests.load(Ordering::Relaxed) == 2).await);
    let (s, h, b) = send(get(&url, Some(CLIENT_KEY))).await;
    assert_eq!(s, 503, "{}", String::from_utf8_lossy(&b));
    let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(error_code(&v), "overloaded");
    assert!(h.get("x-request-id").is_some());
    assert_eq!(
        gw.nim.requests.load(Ordering::Relaxed),
        2,
        "the 3rd never reached the NIM"
    );
    for t in slow {
        assert_eq!(t.await.unwrap().0, 200);
    }
    assert_eq!(
        send(get(&url, Some(CLIENT_KEY))).await.0,
        200,
        "capacity is released"
    );
    let denied = gw.audit_events("denied").await;
    assert!(denied
        .iter()
        .any(|d| d["reason"] == "overloaded" && d["status"] == 503));
    gw.stop().await;
}

#[tokio::test]
async fn per_client_concurrency_limit_answers_429() {
    let gw = start_with(Opts {
        client_extra: "max_concurrent = 1".into(),
        ..Opts::default()
    })
    .await;
    let url = gw.url("/v1/models");
    let slow = tokio::spawn(send(get_with(
        &url,
        CLIENT_KEY,
        &[("x-fake-delay-ms", "800")],
    )));
    assert!(eventually(|| gw.nim.requests.load(Ordering::Relaxed) == 1).await);
    let (s, _, b) = send(get(&url, Some(CLIENT_KEY))).await;
    assert_eq!(s, 429, "{}", String::from_utf8_lossy(&b));
    let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(error_code(&v), "rate_limit_exceeded");
    assert_eq!(v["error"]["type"], "rate_limit_error");
    // Another client is not affected.
    assert_eq!(send(get(&url, Some(CLIENT_KEY_B))).await.0, 200);
    assert_eq!(slow.await.unwrap().0, 200);
    assert_eq!(
        send(get(&url, Some(CLIENT_KEY))).await.0,
        200,
        "slot released"
    );
    gw.stop().await;
}

#[tokio::test]
async fn per_client_rate_limit_answers_429_with_retry_after_and_audit() {
    let gw = start_with(Opts {
        client_extra: "rpm = 60\nburst = 2".into(),
        ..Opts::default()
    })
    .await;
    let url = gw.url("/v1/models");
    assert_eq!(send(get(&url, Some(CLIENT_KEY))).await.0, 200);
    assert_eq!(send(get(&url, Some(CLIENT_KEY))).await.0, 200);
    let (s, h, b) = send(get(&url, Some(CLIENT_KEY))).await;
    assert_eq!(s, 429, "{}", String::from_utf8_lossy(&b));
    let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(error_code(&v), "rate_limit_exceeded");
    let retry: u64 = h
        .get("retry-after")
        .expect("Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After in whole seconds");
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    assert_eq!(gw.nim.requests.load(Ordering::Relaxed), 2);
    assert_eq!(
        send(get(&url, Some(CLIENT_KEY_B))).await.0,
        200,
        "team-b unaffected"
    );
    let denied = gw.audit_events("denied").await;
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0]["reason"], "rate_limit_exceeded");
    assert_eq!(denied[0]["status"], 429);
    assert_eq!(denied[0]["client_id"], "team-a");
    assert!(denied[0].get("key_fingerprint").is_none());
    gw.stop().await;
}
