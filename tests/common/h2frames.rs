//! Hand-written HTTP/2 frames (h2c prior knowledge): frame and HPACK-literal builders, a frame
//! parser, `:status` decoding, and a connection that acknowledges SETTINGS and PING on the way.

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
