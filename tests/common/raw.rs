//! Raw HTTP/1.1 over a loopback socket: write exact bytes, parse whatever comes back
//! (Content-Length, chunked or read-to-close bodies), and tell whether the server closed.

use super::{chat_body, error_code, CLIENT_KEY};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The OpenAI error `code` of a gateway-generated error (asserts the shape).
    pub fn error_code(&self) -> String {
        let v = self.json();
        error_code(&v)
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parse a chunked body at the start of `b`: (body, bytes used), `None` if incomplete.
pub fn dechunk(b: &[u8]) -> Option<(Vec<u8>, usize)> {
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

pub struct H1 {
    pub s: TcpStream,
    pub buf: Vec<u8>,
    pub eof: bool,
}

impl H1 {
    pub async fn connect(addr: SocketAddr) -> Self {
        let s = TcpStream::connect(addr).await.unwrap();
        let _ = s.set_nodelay(true);
        Self {
            s,
            buf: Vec::new(),
            eof: false,
        }
    }

    /// Write (errors ignored: the server may already have closed).
    pub async fn send(&mut self, b: &[u8]) -> bool {
        self.s.write_all(b).await.is_ok()
    }

    /// Read once more before `deadline`; false on timeout or EOF (EOF also sets `eof`).
    pub async fn fill(&mut self, deadline: tokio::time::Instant) -> bool {
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

    pub fn try_parse(&mut self) -> Option<Resp> {
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
    pub async fn response(&mut self, t: Duration) -> Option<Resp> {
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
    pub async fn closed_within(&mut self, t: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + t;
        while !self.eof {
            if !self.fill(deadline).await && !self.eof {
                return false;
            }
        }
        true
    }

    /// Status lines still unread in the buffer (extra responses).
    pub fn extra_responses(&self) -> usize {
        let text = String::from_utf8_lossy(&self.buf);
        text.matches("HTTP/1.").count()
    }
}

/// Connect, send, read one response.
pub async fn exchange(addr: SocketAddr, bytes: &[u8], t: Duration) -> Option<Resp> {
    let mut c = H1::connect(addr).await;
    c.send(bytes).await;
    c.response(t).await
}

pub fn auth_line() -> String {
    format!("Authorization: Bearer {CLIENT_KEY}\r\n")
}

/// A GET with our client key; `extra` is whole header lines ("Name: v\r\n").
pub fn h1_get(target: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET {target} HTTP/1.1\r\nHost: gw.example\r\n{}{extra}\r\n",
        auth_line()
    )
    .into_bytes()
}

/// A non-streaming chat POST with our client key.
pub fn h1_chat(target: &str, extra: &str) -> Vec<u8> {
    let body = chat_body(false);
    format!(
        "POST {target} HTTP/1.1\r\nHost: gw.example\r\n{}Content-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n{body}",
        auth_line(),
        body.len()
    )
    .into_bytes()
}

pub fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}
